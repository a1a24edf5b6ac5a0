"""What the chart must render: checks common to every variant, one function
per helm/chatmq/ci/*.yaml variant, and values the chart must refuse."""

import re

from manifests import (DNS_SUBDOMAIN, FULLNAME, LABEL_KEY, LABEL_VALUE, NAMESPACE, container, is_hook,
                       merged_config, mount_of, pod_spec, volume_of)

# values.yaml's cluster block, for variants that leave keys out.
CLUSTER_DEFAULTS = {"partitions": 64, "brokerReplicas": 3, "bridgeReplicas": 2, "minReadySeconds": 30,
                    "resolveIntervalMs": 5000, "presenceGraceMs": 10000}


def selects(selector, workload):
    """A label selector (a Service's selector, a PDB's matchLabels) picks the workload's pods."""
    return selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()


def check_common(r, values, f):
    """What holds for every variant."""
    for path, doc in r.docs:
        meta = doc["metadata"]
        f.expect(re.match(DNS_SUBDOMAIN, meta["name"]) and len(meta["name"]) <= 253,
                 f"{path}: name {meta['name']!r} is a DNS subdomain")
        for k, v in meta.get("labels", {}).items():
            f.expect(isinstance(v, str) and re.match(LABEL_VALUE, v) and re.match(LABEL_KEY, k),
                     f"{path}: label {k}={v!r} is valid")
    cluster_mode = values.get("mode") == "cluster"
    cluster = {**CLUSTER_DEFAULTS, **values.get("cluster", {})}
    f.expect(cluster_mode or not r.kind("StatefulSet"), "a StatefulSet only in cluster mode")
    # Deployments, then the cluster's bridge StatefulSet.
    workloads = r.workloads()
    for d in workloads:
        name = d["metadata"]["name"]
        spec, c = pod_spec(d), container(d)
        if not cluster_mode:
            f.expect(d["spec"]["replicas"] == 1, f"{name}: replicas 1 (without the cluster, one rumqttd router)")
            f.expect(d["spec"]["strategy"]["type"] == "Recreate", f"{name}: strategy Recreate")
        elif d["kind"] == "Deployment":
            # The brokers: replaced one at a time, never one fewer, each new
            # one ready for minReadySeconds before the next old one stops.
            f.expect(c["args"][0] == "broker", f"{name}: cluster mode's only Deployment is the brokers'")
            f.expect(d["spec"]["replicas"] == cluster["brokerReplicas"], f"{name}: replicas cluster.brokerReplicas")
            f.expect(d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     f"{name}: RollingUpdate, maxSurge 1, maxUnavailable 0: {d['spec']['strategy']}")
            f.expect(d["spec"].get("minReadySeconds") == cluster["minReadySeconds"], f"{name}: minReadySeconds cluster.minReadySeconds")
        else:
            f.expect(d["kind"] == "StatefulSet" and c["args"][0] == "bridge", f"{name}: the StatefulSet is the bridges'")
            f.expect(d["spec"]["replicas"] == cluster["bridgeReplicas"], f"{name}: replicas cluster.bridgeReplicas")
            f.expect(d["spec"].get("updateStrategy", {}).get("type") == "RollingUpdate", f"{name}: updateStrategy RollingUpdate")
        f.expect(d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items(),
                 f"{name}: selector matches its pod labels")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        f.expect(ports.get("metrics") == 9090, f"{name}: metrics port 9090")
        f.expect(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"},
                 f"{name}: liveness probe on /healthz: {c['livenessProbe']}")
        f.expect(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"},
                 f"{name}: readiness probe on /readyz: {c['readinessProbe']}")
        f.expect(spec["securityContext"].get("runAsUser") == 65532 and spec["securityContext"].get("runAsNonRoot"),
                 f"{name}: runs as 65532, non-root")
        f.expect(c["securityContext"].get("readOnlyRootFilesystem") is True, f"{name}: read-only root filesystem")
        f.expect(c["securityContext"].get("allowPrivilegeEscalation") is False, f"{name}: no privilege escalation")
        f.expect(c["image"].startswith(values.get("image", {}).get("repository", "chatmq") + ":"), f"{name}: image {c['image']}")
        f.expect(spec.get("terminationGracePeriodSeconds", 30) > values.get("gracePeriodSeconds", 20),
                 f"{name}: the pod's grace period outlasts chatmq's drain")
        cfg = merged_config(r, d, f)
        f.expect(cfg.get("server", {}).get("http") == "0.0.0.0:9090", f"{name}: [server] http on 9090")
        f.expect(cfg.get("server", {}).get("demo") is values.get("demoPage", False),
                 f"{name}: the demo page only with demoPage")
        f.expect(cfg.get("server", {}).get("grace_period_ms") == 1000 * values.get("gracePeriodSeconds", 20),
                 f"{name}: grace_period_ms")
        if "mqtt" in ports:
            f.expect(cfg["broker"]["tcp"] == "0.0.0.0:1883" and ports["mqtt"] == 1883, f"{name}: MQTT on 1883")
            f.expect(cfg["broker"]["auth"]["demo_users"] is values.get("auth", {}).get("demoUsers", False),
                     f"{name}: demo users off unless asked for")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        f.expect(env.get("CHAT_LOG") == values.get("logLevel", "info,rumqttd=warn"), f"{name}: CHAT_LOG")

    # Services select pods that have the ports they target.
    for svc in r.kind("Service"):
        name = svc["metadata"]["name"]
        selected = [w for w in workloads if selects(svc["spec"]["selector"], w)]
        f.expect(selected, f"Service {name} selects a pod")
        for w in selected:
            names = {p["name"] for p in container(w).get("ports", [])}
            for p in svc["spec"]["ports"]:
                f.expect(p["targetPort"] in names, f"Service {name}: targetPort {p['targetPort']} exists in the pod")
    # An Ingress only when asked for, and every backend it names is a
    # rendered Service's port (by name, or by number).
    ingress = values.get("ingress", {})
    f.expect(bool(r.kind("Ingress")) == bool(ingress.get("enabled", False)), "an Ingress exactly when ingress.enabled")
    for ing in r.kind("Ingress"):
        for backend in ingress_backends(ing):
            ref = backend.get("service", {})
            svc, port = r.get("Service", ref.get("name", "")), ref.get("port", {})
            what = f"Ingress {ing['metadata']['name']}: backend {ref.get('name')}:{port.get('name', port.get('number'))}"
            if f.expect(svc is not None, f"{what} is a rendered Service"):
                f.expect(any(p.get("name") == port["name"] if "name" in port else p["port"] == port.get("number")
                             for p in svc["spec"]["ports"]), f"{what} is a port of that Service")
    mqtt = r.get("Service", FULLNAME)
    f.expect(mqtt is not None and any(p["port"] == 1883 for p in mqtt["spec"]["ports"]), "the MQTT Service has port 1883")
    metrics = r.get("Service", f"{FULLNAME}-metrics")
    if f.expect(metrics is not None, "a metrics Service"):
        selected = [w for w in workloads if selects(metrics["spec"]["selector"], w)]
        f.expect(len(selected) == len(workloads), "the metrics Service selects every workload's pods")
        f.expect([p["name"] for p in metrics["spec"]["ports"]] == ["metrics"], "the metrics Service's port is named metrics")
    for sm in r.kind("ServiceMonitor"):
        labels = sm["spec"]["selector"]["matchLabels"]
        f.expect(metrics and labels.items() <= metrics["metadata"]["labels"].items(), "the ServiceMonitor selects the metrics Service")
        f.expect(mqtt and not labels.items() <= mqtt["metadata"]["labels"].items(), "the ServiceMonitor does not select the MQTT Service")
        f.expect(sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["path"] == "/metrics",
                 "the ServiceMonitor scrapes port metrics, /metrics")

    for pdb in r.kind("PodDisruptionBudget"):
        matching = [w for w in workloads if selects(pdb["spec"]["selector"]["matchLabels"], w)]
        f.expect(len(matching) == 1, f"PDB {pdb['metadata']['name']} covers exactly one workload")

    # No secret value leaks into a ConfigMap.
    secrets = secret_values(values)
    for cm in r.kind("ConfigMap"):
        text = "\n".join(cm["data"].values())
        for s in secrets:
            f.expect(s not in text, f"ConfigMap {cm['metadata']['name']} holds the secret value {s!r}")
    f.expect("mosquitto_pub" in r.notes, "NOTES.txt shows a mosquitto_pub example")
    if values.get("websocket", {}).get("enabled", True):
        f.expect("/mqtt" in r.notes and "ws://" in r.notes, "NOTES.txt shows the WebSocket URL")


def ingress_backends(ing):
    """Every backend an Ingress names: the default one and each path's."""
    spec = ing["spec"]
    out = [spec["defaultBackend"]] if "defaultBackend" in spec else []
    for rule in spec.get("rules", []):
        out += [p["backend"] for p in rule.get("http", {}).get("paths", [])]
    return out


def secret_values(values):
    auth = values.get("auth", {})
    out = list(auth.get("users", {}).values())
    out += [a["password"] for a in auth.get("services", {}).values()]
    out += [auth.get("jwt", {}).get("hs256Secret", ""), values.get("bridge", {}).get("password", "")]
    out.append(values.get("store", {}).get("scylla", {}).get("password", ""))
    pem = auth.get("jwt", {}).get("rs256PublicKey", "")
    out += [line for line in pem.splitlines() if "-----" not in line]
    return [s for s in out if s]


def check_default(r, values, f):
    f.expect([container(d)["args"][0] for d in r.kind("Deployment")] == ["all"], "one `chatmq all` Deployment")
    f.expect(len(r.kind("PersistentVolumeClaim")) == 1, "a PVC for the embedded store")
    f.expect(not r.kind("Job"), "no migration Job with the embedded store")
    f.expect(not r.kind("ServiceMonitor"), "no ServiceMonitor unless enabled")
    cfg = merged_config(r, r.deployment("all"), f)
    f.expect(cfg["store"] == {"backend": "embedded", "fsync": "always"}, f"[store]: {cfg['store']}")
    f.expect(not cfg["broker"]["auth"].get("users"), "no users configured by default")
    f.expect(cfg["broker"]["limits"] == {"max_packet_bytes": 66560}, f"[broker.limits]: {cfg['broker'].get('limits')}")
    f.expect((cfg["bridge"]["payload_max_bytes"], cfg["bridge"]["body_max_bytes"], cfg["bridge"]["meta_max_bytes"],
              cfg["bridge"]["history_limit_default"], cfg["bridge"]["history_limit_max"]) == (65536, 16384, 4096, 50, 1000),
             f"[bridge] limits are PROTOCOL.md's by default: {cfg['bridge']}")
    f.expect({p["name"] for p in r.get("Service", FULLNAME)["spec"]["ports"]} == {"mqtt", "ws"}, "Service ports mqtt, ws")
    f.expect("WARNING: no users" in r.notes, "NOTES.txt warns that nobody can log in")


def check_all_in_one(r, values, f):
    f.expect([container(d)["args"][0] for d in r.kind("Deployment")] == ["all"], "one `chatmq all` Deployment")
    f.expect(not r.kind("Job"), "no migration Job with the embedded store")
    pvcs = r.kind("PersistentVolumeClaim")
    if f.expect(len(pvcs) == 1, "a PVC for the embedded store"):
        pvc = pvcs[0]
        f.expect(pvc["spec"]["storageClassName"] == "fast-ssd", "PVC storage class")
        f.expect(pvc["spec"]["resources"]["requests"]["storage"] == "50Gi", "PVC size")
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod_spec(r.deployment("all"))["volumes"]
                  if "persistentVolumeClaim" in v]
        f.expect(claims == [pvc["metadata"]["name"]], "the Deployment mounts the PVC")
    d = r.deployment("all")
    args = container(d)["args"]
    f.expect(args.count("--config") == 3 and "/etc/chatmq/extra.toml" in args, f"extraConfig is a third --config: {args}")
    cfg = merged_config(r, d, f)
    b = cfg["broker"]
    f.expect(b["prefix"] == "talk", "prefix")
    f.expect(b["limits"]["max_connections"] == 5000 and b["limits"]["connections_per_user"] == 4, "[broker.limits]")
    f.expect(b["limits"]["publishes_per_sec"] == 100, "extraConfig applied")
    f.expect(b["router"]["bridge_segments"] == 32, "[broker.router]")
    f.expect(b["auth"]["users"] == {"carol": "carol-secret-pw", "dave": 'dave "quoted" pw'},
             f"users: {b['auth']['users']}")
    f.expect(b["auth"]["jwt"] == {"hs256_secret": "jwt-hs256-test-secret", "issuer": "https://auth.example.com",
                                  "audience": "chat", "leeway_secs": 30}, f"jwt: {b['auth']['jwt']}")
    f.expect(b["auth"]["services"] == {"pusher": {"password": "pusher-test-pw", "allow": ["talk/hooks/#"]}},
             f"all-in-one: only the configured service account (the process makes the bridge's): {b['auth']['services']}")
    f.expect(b.get("tls_listen") == "0.0.0.0:8883" and "wss" not in b, "MQTT/TLS without WSS")
    f.expect(b["tls"]["cert"].startswith(mount_of(d, "tls") + "/"), "the certificate lies in the mounted TLS Secret")
    f.expect(cfg["bridge"]["batch"] == 256 and cfg["bridge"]["sends_per_sec"] == 2.5
             and isinstance(cfg["bridge"]["sends_burst"], float), f"[bridge]: {cfg['bridge']}")
    f.expect(cfg["bridge"]["payload_max_bytes"] == 131072 and cfg["bridge"]["body_max_bytes"] == 32768
             and cfg["bridge"]["meta_max_bytes"] == 4096 and cfg["bridge"]["history_limit_max"] == 500
             and cfg["bridge"]["history_limit_default"] == 50, f"[bridge] limits: {cfg['bridge']}")
    f.expect(b["limits"]["max_packet_bytes"] == 131072 + 1024,
             f"the packet limit follows the payload limit: {b['limits']}")
    f.expect(cfg["store"]["fsync"] == {"intervalms": 10}, f"fsync: {cfg['store']}")
    svc = r.get("Service", FULLNAME)
    f.expect({p["port"] for p in svc["spec"]["ports"]} == {1883, 8083, 8883}, "Service ports 1883, 8083, 8883")
    f.expect(svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["externalTrafficPolicy"] == "Local", "LoadBalancer Service")
    f.expect(len(r.kind("ServiceMonitor")) == 1, "a ServiceMonitor")
    f.expect(r.kind("ServiceMonitor")[0]["metadata"]["labels"].get("release") == "prometheus", "ServiceMonitor labels")
    f.expect([p["spec"].get("minAvailable") for p in r.kind("PodDisruptionBudget")] == [1], "PDB minAvailable 1")
    f.expect(container(d)["image"] == "registry.example.com/chatmq:0.1.0-test", "image tag")
    f.expect("jwt-hs256-test-secret" not in str(d), "no secret in the Deployment")


def check_split_scylla_tls(r, values, f):
    modes = sorted(container(d)["args"][0] for d in r.kind("Deployment"))
    f.expect(modes == ["bridge", "broker"], f"split: a broker and a bridge Deployment, got {modes}")
    f.expect(not r.kind("PersistentVolumeClaim"), "no PVC with ScyllaDB")
    jobs = r.kind("Job")
    if f.expect(len(jobs) == 1, "a migration Job"):
        job = jobs[0]
        ann = job["metadata"]["annotations"]
        f.expect(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", f"the Job is a pre-install,pre-upgrade hook: {ann}")
        f.expect(container(job)["args"][0] == "migrate", "the Job runs `chatmq migrate`")
        f.expect(pod_spec(job)["restartPolicy"] == "Never", "the Job's pods do not restart in place")
        f.expect("serviceAccountName" not in pod_spec(job), "the pre-install Job does not need the chart's ServiceAccount")
        weight = int(ann["helm.sh/hook-weight"])
        for v in pod_spec(job)["volumes"]:
            ref = v.get("configMap", {}).get("name") or v.get("secret", {}).get("secretName")
            if ref in (f"{FULLNAME}-migrate",):
                res = r.get("ConfigMap", ref) if "configMap" in v else r.get("Secret", ref)
                f.expect(res is not None and is_hook(res) and int(res["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight,
                         f"the Job's {ref} is a hook created before it (pre-install runs before the release's own objects)")
        job_cfg = merged_config(r, job, f)
        f.expect(job_cfg["store"]["scylla"]["password"] == "scylla-test-pw", "the Job gets the ScyllaDB credentials")
    broker, bridge = r.deployment("broker"), r.deployment("bridge")
    bcfg, rcfg = merged_config(r, broker, f), merged_config(r, bridge, f)
    # The bridge's login and the broker's service account come from one value.
    account = bcfg["broker"]["auth"]["services"].get("bridge-svc")
    f.expect(account == {"password": "bridge-test-pw", "allow": ["chat/#"]}, f"broker's bridge account: {account}")
    f.expect(rcfg["bridge"]["username"] == "bridge-svc" and rcfg["bridge"]["password"] == "bridge-test-pw"
             and rcfg["bridge"]["client_id"] == "bridge-1", f"bridge login: {rcfg['bridge']}")
    f.expect(bcfg["broker"]["auth"]["services"].get("pusher") == {"password": "pusher-pw", "allow": ["chat/hooks/#"]},
             "other service accounts")
    host, _, port = rcfg["bridge"]["broker"].partition(":")
    svc = r.get("Service", host)
    f.expect(svc is not None and any(p["port"] == int(port) and p["targetPort"] == "mqtt" for p in svc["spec"]["ports"]),
             f"bridge.broker {rcfg['bridge']['broker']} is the MQTT Service's port")
    f.expect(svc is not None and svc["spec"]["selector"].items() <= broker["spec"]["template"]["metadata"]["labels"].items()
             and not svc["spec"]["selector"].items() <= bridge["spec"]["template"]["metadata"]["labels"].items(),
             "the MQTT Service selects the broker, not the bridge")
    f.expect("ports" in container(bridge) and {p["name"] for p in container(bridge)["ports"]} == {"metrics"},
             "the bridge exposes only metrics")
    s = rcfg["store"]
    f.expect(s["backend"] == "scylla", "backend scylla")
    f.expect(s["scylla"]["nodes"] == ["scylla-0.scylla.db.svc:9042", "scylla-1.scylla.db.svc:9042"], "scylla nodes")
    f.expect(s["scylla"]["keyspace"] == "chat_prod" and s["scylla"]["local_dc"] == "dc1", "keyspace, local_dc")
    f.expect(s["scylla"]["username"] == "chatmq" and s["scylla"]["password"] == "scylla-test-pw", "scylla credentials")
    f.expect(s["scylla"]["request_timeout_ms"] == 5000, "request_timeout_ms")
    f.expect(s["scylla"]["tls_ca"].startswith(mount_of(bridge, "scylla-ca") + "/"), "tls_ca lies in the mounted CA Secret")
    # TLS listeners with the certificate Secret mounted where the config says.
    b = bcfg["broker"]
    f.expect(b.get("tls_listen") == "0.0.0.0:8883" and b.get("wss") == "0.0.0.0:8084", "TLS listeners")
    tls_dir = mount_of(broker, "tls")
    f.expect(tls_dir and b["tls"] == {"cert": f"{tls_dir}/tls.crt", "key": f"{tls_dir}/tls.key"}, f"[broker.tls]: {b.get('tls')}")
    f.expect(volume_of(broker, "tls")["secret"]["secretName"] == "chatmq-tls", "TLS Secret")
    f.expect(mount_of(bridge, "tls") is None, "the bridge does not mount the TLS Secret")
    f.expect({p["port"] for p in svc["spec"]["ports"]} == {1883, 8883, 8083, 8084}, "Service ports 1883, 8883, 8083, 8084")
    # RS256: the key file named in the config is in the Secret.
    key_path = b["auth"]["jwt"]["rs256_public_key"]
    secret = r.get("Secret", volume_of(broker, "secret")["secret"]["secretName"])
    f.expect(key_path.startswith(mount_of(broker, "secret") + "/")
             and key_path.rsplit("/", 1)[1] in secret["data"], f"rs256_public_key {key_path} is in the Secret")
    f.expect(len(r.kind("ServiceMonitor")) == 1, "a ServiceMonitor")
    f.expect(len(r.kind("PodDisruptionBudget")) == 2, "a PDB per Deployment")


def check_split_embedded_existing_secret(r, values, f):
    modes = sorted(container(d)["args"][0] for d in r.kind("Deployment"))
    f.expect(modes == ["bridge", "broker"], f"split: a broker and a bridge Deployment, got {modes}")
    f.expect(not r.kind("Secret"), "no Secret rendered with auth.existingSecret")
    f.expect(not r.kind("Job") and not r.kind("PersistentVolumeClaim") and not r.kind("PodDisruptionBudget")
             and not r.kind("ServiceAccount"), "no Job, PVC, PDB or ServiceAccount")
    for d in r.kind("Deployment"):
        f.expect(volume_of(d, "secret")["secret"]["secretName"] == "chatmq-logins", "the existing Secret is mounted")
        f.expect(pod_spec(d)["serviceAccountName"] == "chatmq-runner", "the given ServiceAccount")
    bridge, broker = r.deployment("bridge"), r.deployment("broker")
    f.expect(volume_of(bridge, "data").get("persistentVolumeClaim", {}).get("claimName") == "chatmq-data",
             "the bridge (the store's owner) mounts the existing claim")
    f.expect("emptyDir" in volume_of(broker, "data"), "the broker has no claim")
    f.expect({p["name"] for p in r.get("Service", FULLNAME)["spec"]["ports"]} == {"mqtt"}, "WebSocket off: Service has mqtt only")
    f.expect(merged_config(r, broker, f)["broker"]["ws"].startswith("127.0.0.1:"), "WebSocket off: listener on loopback only")


def check_cluster_scylla(r, values, f):
    c = values["cluster"]
    broker, bridge = r.deployment("broker"), r.statefulset("bridge")
    if not f.expect(broker is not None and bridge is not None, "cluster: a broker Deployment and a bridge StatefulSet"):
        return
    f.expect([container(d)["args"][0] for d in r.kind("Deployment")] == ["broker"], "cluster: one Deployment, the brokers'")
    f.expect(len(r.kind("StatefulSet")) == 1, "cluster: one StatefulSet, the bridges'")
    f.expect(not r.kind("PersistentVolumeClaim") and "volumeClaimTemplates" not in bridge["spec"],
             "no PVC: the store is ScyllaDB")

    # The brokers: rolled one at a time.
    f.expect(broker["spec"]["replicas"] == c["brokerReplicas"] == 4, f"broker replicas: {broker['spec']['replicas']}")
    f.expect(broker["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
             f"broker strategy: {broker['spec']['strategy']}")
    f.expect(broker["spec"].get("minReadySeconds") == c["minReadySeconds"] == 45, "broker minReadySeconds")
    spread = merged_config(r, broker, f)["broker"]["limits"].get("shutdown_spread_ms")
    f.expect(spread == 1000 * values.get("gracePeriodSeconds", 20) // 2,
             f"a broker closes its users over half the grace period at a rolling update: {spread}")

    # The bridges: stable names (the ordinal comes from the hostname).
    f.expect(bridge["spec"]["replicas"] == c["bridgeReplicas"] == 3, f"bridge replicas: {bridge['spec']['replicas']}")
    f.expect(bridge["spec"].get("podManagementPolicy") == "Parallel", "bridges: podManagementPolicy Parallel")
    f.expect(bridge["spec"].get("updateStrategy") == {"type": "RollingUpdate"}, f"bridges: {bridge['spec'].get('updateStrategy')}")
    governing = r.get("Service", bridge["spec"].get("serviceName", ""))
    f.expect(governing is not None and governing["spec"].get("clusterIP") == "None"
             and selects(governing["spec"]["selector"], bridge) and not selects(governing["spec"]["selector"], broker),
             f"the StatefulSet's serviceName {bridge['spec'].get('serviceName')!r} is a headless Service of the bridges")

    bcfg, rcfg = merged_config(r, broker, f), merged_config(r, bridge, f)
    bc, rc = bcfg.get("cluster", {}), rcfg.get("cluster", {})
    f.expect(bc.get("partitions") == rc.get("partitions") == 32, f"partitions equal on brokers and bridges: {bc}, {rc}")
    # The bridges' own keys are in cluster.toml, which the brokers do not
    # read: scaling the bridges does not restart the brokers.
    f.expect(bc == {"partitions": 32}, f"the brokers' [cluster] is partitions only: {bc}")
    f.expect("/etc/chatmq/cluster.toml" in container(bridge)["args"]
             and "/etc/chatmq/cluster.toml" not in container(broker)["args"], "only the bridges read cluster.toml")
    f.expect("checksum/cluster" in bridge["spec"]["template"]["metadata"]["annotations"]
             and "checksum/cluster" not in broker["spec"]["template"]["metadata"]["annotations"],
             "cluster.toml's checksum restarts the bridges only")
    f.expect(rc.get("bridges") == bridge["spec"]["replicas"], f"cluster.bridges is the StatefulSet's replicas: {rc}")
    f.expect("bridge_ordinal" not in rc, "no bridge_ordinal: each bridge takes it from its pod name")
    f.expect(rc.get("resolve_interval_ms") == 2000 and rc.get("presence_grace_ms") == 10000, f"intervals: {rc}")
    brokers = rc.get("brokers", [])
    if f.expect(len(brokers) == 1, f"cluster.brokers names one headless Service: {brokers}"):
        host, _, port = brokers[0].rpartition(":")
        name, _, domain = host.partition(".")
        f.expect(domain == f"{NAMESPACE}.svc", f"cluster.brokers {brokers[0]} is <service>.{NAMESPACE}.svc")
        f.expect(port == "1883", f"cluster.brokers port 1883: {brokers[0]}")
        headless = r.get("Service", name)
        if f.expect(headless is not None, f"cluster.brokers names a rendered Service: {name}"):
            hs = headless["spec"]
            f.expect(hs.get("clusterIP") == "None" and hs.get("publishNotReadyAddresses") is False,
                     f"Service {name} is headless and lists ready brokers only")
            f.expect(selects(hs["selector"], broker) and not selects(hs["selector"], bridge),
                     f"Service {name} selects the brokers, not the bridges")
            f.expect(any(p["name"] == "mqtt" and p["port"] == 1883 and p["targetPort"] == "mqtt" for p in hs["ports"]),
                     f"Service {name}: port mqtt 1883 -> mqtt")
        # A headless name resolves to pod addresses: the bridges dial the container port.
        f.expect({p["name"]: p["containerPort"] for p in container(broker)["ports"]}.get("mqtt") == int(port or 0),
                 "the brokers' container port is the one cluster.brokers dials")

    # The bridges' login and the brokers' service account come from one value.
    account = bcfg["broker"]["auth"]["services"].get("cluster-bridge")
    f.expect(account == {"password": "cluster-bridge-pw", "allow": ["chat/#"]}, f"brokers' bridge account: {account}")
    rb = rcfg["bridge"]
    f.expect(rb.get("username") == "cluster-bridge" and account and rb.get("password") == account["password"],
             f"the bridges log in with the brokers' service account: {rb}")
    f.expect("broker" not in rb, f"no [bridge] broker in cluster mode: {rb}")
    # The brokers reserve <client_id>-<k> for the bridges: the same client_id on both.
    f.expect(rb.get("client_id") == bcfg["bridge"]["client_id"] == "chat-bridge", "bridge client_id on brokers and bridges")

    # Both open the store: credentials and the CA where the config says.
    for role, cfg, w in (("broker", bcfg, broker), ("bridge", rcfg, bridge)):
        s = cfg["store"]
        f.expect(s["backend"] == "scylla", f"{role}: backend scylla")
        f.expect(s["scylla"]["keyspace"] == "chat_cluster" and len(s["scylla"]["nodes"]) == 3, f"{role}: [store.scylla]")
        f.expect(s["scylla"].get("username") == "chatmq" and s["scylla"].get("password") == "scylla-cluster-pw",
                 f"{role}: ScyllaDB credentials")
        ca_dir = mount_of(w, "scylla-ca")
        f.expect(ca_dir is not None and s["scylla"]["tls_ca"].startswith(ca_dir + "/")
                 and volume_of(w, "scylla-ca")["secret"]["secretName"] == "scylla-ca", f"{role}: the ScyllaDB CA is mounted")

    pdbs = r.kind("PodDisruptionBudget")
    for w in (broker, bridge):
        covering = [p for p in pdbs if selects(p["spec"]["selector"]["matchLabels"], w)]
        f.expect(len(covering) == 1 and covering[0]["spec"].get("maxUnavailable") == 1,
                 f"{w['kind']} {w['metadata']['name']}: a PDB with maxUnavailable 1")
    jobs = r.kind("Job")
    f.expect(len(jobs) == 1 and container(jobs[0])["args"][0] == "migrate"
             and jobs[0]["metadata"]["annotations"].get("helm.sh/hook") == "pre-install,pre-upgrade",
             "the migration hook Job")
    mqtt = r.get("Service", FULLNAME)
    f.expect(selects(mqtt["spec"]["selector"], broker) and not selects(mqtt["spec"]["selector"], bridge),
             "the MQTT Service selects the brokers, not the bridges")
    f.expect({p["name"] for p in container(bridge)["ports"]} == {"metrics"}, "the bridges expose only metrics")
    f.expect(len(r.kind("ServiceMonitor")) == 1, "a ServiceMonitor")
    f.expect("cluster: 4 brokers" in r.notes and "3 bridges" in r.notes, "NOTES.txt describes the cluster")


def check_ingress_wss(r, values, f):
    """wss://<host>/mqtt: the Ingress terminates TLS and forwards /mqtt to the
    MQTT Service's ws port, which reaches the brokers' WebSocket listener."""
    ing_values = values["ingress"]
    ingresses = r.kind("Ingress")
    if not f.expect(len(ingresses) == 1, f"one Ingress, got {len(ingresses)}"):
        return
    ing = ingresses[0]
    spec = ing["spec"]
    f.expect(ing["apiVersion"] == "networking.k8s.io/v1" and ing["metadata"]["name"] == FULLNAME,
             f"Ingress networking.k8s.io/v1 {FULLNAME}: {ing['apiVersion']} {ing['metadata']['name']}")
    f.expect(spec.get("ingressClassName") == ing_values["className"] == "nginx",
             f"ingressClassName is ingress.className: {spec.get('ingressClassName')}")
    f.expect(ing["metadata"].get("annotations") == ing_values["annotations"],
             f"ingress.annotations passed through: {ing['metadata'].get('annotations')}")
    f.expect("nginx.ingress.kubernetes.io/proxy-read-timeout" in ing["metadata"].get("annotations", {}),
             "the variant raises ingress-nginx's proxy timeouts (MQTT connections idle between keep-alives)")
    f.expect("defaultBackend" not in spec, "no default backend: only /mqtt is routed")

    # The route: each host's /mqtt to the MQTT Service's port ws.
    hosts = [h["host"] for h in ing_values["hosts"]]
    f.expect([rule.get("host") for rule in spec["rules"]] == hosts == ["chat.example.com", "mqtt.example.org"],
             f"one rule per ingress.hosts entry: {[rule.get('host') for rule in spec['rules']]}")
    mqtt = r.get("Service", FULLNAME)
    ws_ports = [p for p in mqtt["spec"]["ports"] if p["name"] == "ws"]
    if not f.expect(len(ws_ports) == 1, "the MQTT Service has a port ws"):
        return
    ws = ws_ports[0]
    f.expect(ws["port"] == values["service"]["ports"]["ws"] == 8080 and ws["targetPort"] == "ws",
             f"the MQTT Service's port ws is service.ports.ws and targets the pods' ws: {ws}")
    for rule in spec["rules"]:
        paths = rule.get("http", {}).get("paths", [])
        if not f.expect(len(paths) == 1, f"host {rule.get('host')}: one path, /mqtt: {paths}"):
            continue
        p = paths[0]
        # The broker answers only GET /mqtt.
        f.expect(p["path"] == "/mqtt" and p["pathType"] == "Exact", f"host {rule.get('host')}: path /mqtt, Exact: {p}")
        svc = p["backend"].get("service", {})
        port = svc.get("port", {})
        f.expect(svc.get("name") == FULLNAME, f"host {rule.get('host')}: routes to the MQTT Service {FULLNAME}: {svc}")
        f.expect(port.get("name") == "ws" or port.get("number") == ws["port"],
                 f"host {rule.get('host')}: routes to the Service's ws port: {port}")

    # The Service's ws port reaches the brokers' WebSocket listener (not the bridges).
    broker, bridge = r.deployment("broker"), r.statefulset("bridge")
    if f.expect(broker is not None and bridge is not None, "cluster: a broker Deployment and a bridge StatefulSet"):
        f.expect(selects(mqtt["spec"]["selector"], broker) and not selects(mqtt["spec"]["selector"], bridge),
                 "the Ingress's Service selects the brokers, not the bridges")
        container_ws = {p["name"]: p["containerPort"] for p in container(broker)["ports"]}.get("ws")
        listen = merged_config(r, broker, f)["broker"].get("ws", "")
        f.expect(container_ws is not None and listen == f"0.0.0.0:{container_ws}",
                 f"the brokers' container port ws ({container_ws}) is their WebSocket listener ({listen})")

    # TLS terminated at the Ingress, with the given Secrets, for every host.
    f.expect(spec.get("tls") == ing_values["tls"], f"ingress.tls passed through: {spec.get('tls')}")
    covered = {h for t in spec.get("tls", []) for h in t.get("hosts", [])}
    f.expect(set(hosts) <= covered, f"every host has a TLS Secret: {sorted(set(hosts) - covered)} without")
    f.expect({t.get("secretName") for t in spec.get("tls", [])} == {"chat-example-com-tls", "mqtt-example-org-tls"},
             "tls secretNames")
    for h in hosts:
        f.expect(f"wss://{h}/mqtt" in r.notes, f"NOTES.txt shows wss://{h}/mqtt")


VARIANTS = {
    "default": (None, check_default),
    "all-in-one": ("all-in-one-values.yaml", check_all_in_one),
    "split-scylla-tls": ("split-scylla-tls-values.yaml", check_split_scylla_tls),
    "split-embedded-existing-secret": ("split-embedded-existing-secret-values.yaml", check_split_embedded_existing_secret),
    "cluster-scylla": ("cluster-scylla-values.yaml", check_cluster_scylla),
    "ingress-wss": ("ingress-wss-values.yaml", check_ingress_wss),
}

# Values the chart must refuse, and a fragment of the expected error.
REFUSED = [
    ({"moed": "split"}, "additional properties 'moed'"),
    ({"mode": "mesh"}, "/mode"),
    ({"store": {"backend": "cassandra"}}, "/store/backend"),
    ({"store": {"fsync": "sometimes"}}, "/store/fsync"),
    ({"bridge": {"payloadMaxBytes": 1048576}}, "/bridge/payloadMaxBytes"),
    ({"store": {"scylla": {"keyspce": "x"}}}, "keyspce"),
    ({"limits": {"max_conections": 10}}, "max_conections"),
    ({"service": {"type": "Ingress"}}, "/service/type"),
    ({"auth": {"users": {"bad user": "pw"}}}, "'bad user'"),
    ({"mode": "split"}, "bridge.password"),
    ({"tls": {"enabled": True}}, "tls.secretName"),
    ({"podDisruptionBudget": {"minAvailable": 1}}, "only one of"),
    ({"mode": "cluster", "bridge": {"password": "pw"}}, "store.backend=scylla"),
    ({"mode": "cluster", "store": {"backend": "scylla"}, "bridge": {"password": "pw"},
      "cluster": {"partitions": 2, "bridgeReplicas": 3}}, "cluster.bridgeReplicas"),
    ({"mode": "cluster", "store": {"backend": "scylla"}}, "bridge.password"),
    ({"cluster": {"partitions": 8192}}, "/cluster/partitions"),
    ({"cluster": {"brokerReplica": 2}}, "brokerReplica"),
    ({"ingress": {"enabled": True}, "websocket": {"enabled": False}}, "websocket.enabled"),
    ({"ingress": {"enabled": True, "hosts": []}}, "ingress.hosts"),
    ({"ingress": {"hosts": [{"host": "chat.example.com", "path": "/"}]}}, "additional properties 'path'"),
    ({"ingress": {"clasName": "nginx"}}, "clasName"),
]
