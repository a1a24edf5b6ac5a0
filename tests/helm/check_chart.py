#!/usr/bin/env python3
"""Checks the chatmq Helm chart offline, with Helm's own engine.

For the default values and every helm/chatmq/ci/*.yaml variant:
  1. lint (helm-python-sdk, Helm's Go library): strict, so warnings fail;
  2. render, then validate every manifest with kubernetes-validate (strict:
     unknown fields fail) for the chart's oldest and the newest Kubernetes
     version the package ships; the ServiceMonitor's CRD is not among those
     schemas, so it is checked against a structural schema written here;
  3. assert what the templates must produce (workloads per mode, probes,
     security context, chatmq.toml and secret.toml content, how the pieces
     refer to each other).
  4. with --chatmq PATH: the binary accepts the rendered config files
     (`chatmq migrate` loads and checks the whole configuration).
Then values that must be refused (typos, bad enums, missing required
values) are rendered and must fail.

Exit status: 0 passed, 1 failed, 77 Python packages missing (a SKIPPED line).
Run: python3 tests/helm/check_chart.py [--chatmq target/debug/chatmq]
"""

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

MISSING = []
try:
    import helm_python as helm
except ImportError:
    MISSING.append("helm-python-sdk (import helm_python)")
try:
    import jsonschema
    import kubernetes_validate
    import kubernetes_validate.utils as kv_utils
    import yaml
except ImportError:
    MISSING.append("kubernetes-validate (import kubernetes_validate)")
if MISSING:
    print("SKIPPED: python packages not importable: " + ", ".join(MISSING)
          + "; install: python3 -m pip install helm-python-sdk kubernetes-validate")
    sys.exit(77)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "chatmq"
RELEASE, NAMESPACE = "demo", "chat"
FULLNAME = f"{RELEASE}-chatmq"
# The chart's kubeVersion floor (Chart.yaml) and the newest schemas shipped.
KUBE_VERSIONS = ["1.29.0", kv_utils.latest_version()]

DNS_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
DURATION = r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$"

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# The ServiceMonitor fields this chart may use, as the Prometheus Operator
# defines them (monitoring.coreos.com/v1); anything else is refused.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
                "namespace": {"type": "string", "pattern": DNS_LABEL},
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": STRING_MAP,
                        "matchExpressions": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


class Failures:
    """Collects failed expectations of one variant instead of stopping at the first."""

    def __init__(self, variant):
        self.variant = variant
        self.messages = []

    def expect(self, condition, message):
        if not condition:
            self.messages.append(f"{self.variant}: {message}")
        return condition


class Rendered:
    """One render of the chart: its manifests by kind and name, plus NOTES.txt."""

    def __init__(self, files):
        self.notes = ""
        self.docs = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.docs.append((path, doc))

    def kind(self, kind):
        return [d for _, d in self.docs if d["kind"] == kind]

    def get(self, kind, name):
        found = [d for d in self.kind(kind) if d["metadata"]["name"] == name]
        return found[0] if found else None

    def deployment(self, mode):
        for d in self.kind("Deployment"):
            if container(d)["args"][0] == mode:
                return d
        return None


def container(workload):
    return workload["spec"]["template"]["spec"]["containers"][0]


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def is_hook(doc):
    return "helm.sh/hook" in doc["metadata"].get("annotations", {})


def deep_merge(base, override):
    """What chatmq does with several --config files: later tables merge in."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_texts(r, workload, f):
    """The files a workload's --config args name, as (path, text), in order
    (ConfigMap, then Secret); a Secret the operator provides is left out."""
    spec = pod_spec(workload)
    args = container(workload)["args"]
    paths = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    f.expect(paths and paths[0] == "/etc/chatmq/chatmq.toml", f"first --config is chatmq.toml: {args}")
    f.expect(paths and paths[-1] == "/etc/chatmq/secret/secret.toml", f"last --config is secret.toml: {args}")
    f.expect("--data-dir" in args and args[args.index("--data-dir") + 1] == "/var/lib/chatmq", f"--data-dir: {args}")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = container(workload)["volumeMounts"]
    texts = []
    for path in paths:
        mount = next((m for m in mounts if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")), None)
        if not f.expect(mount is not None, f"{path} is mounted"):
            continue
        volume = volumes[mount["name"]]
        key = mount.get("subPath") or path[len(mount["mountPath"]) + 1:]
        if "configMap" in volume:
            cm = r.get("ConfigMap", volume["configMap"]["name"])
            if not f.expect(cm is not None, f"ConfigMap {volume['configMap']['name']} is rendered"):
                continue
            text = cm["data"].get(key)
        else:
            secret = r.get("Secret", volume["secret"]["secretName"])
            if secret is None:  # an existing Secret the operator provides
                continue
            text = base64.b64decode(secret["data"].get(key, "")).decode()
        if f.expect(text is not None, f"{path}: key {key} exists"):
            texts.append((path, text))
    return texts


def merged_config(r, workload, f):
    """What chatmq reads: the files in order, later tables merged over earlier ones."""
    config = {}
    for path, text in config_texts(r, workload, f):
        try:
            config = deep_merge(config, tomllib.loads(text))
        except tomllib.TOMLDecodeError as e:
            f.expect(False, f"{path} is not valid TOML: {e}\n{text}")
    return config


def check_binary(r, f, chatmq):
    """The real binary accepts the rendered files: `chatmq migrate` loads the
    whole configuration (an unknown key is an error) and, on the embedded
    store, has nothing to migrate. A ScyllaDB variant is checked with the
    backend switched to embedded by environment, so no database is needed.
    Returns a word for the summary line."""
    if chatmq is None:
        return "not run (no --chatmq)"
    workload = r.kind("Deployment")[0]
    cfg = merged_config(r, workload, f)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT__")}
    if cfg.get("store", {}).get("backend") == "scylla":
        defaults = subprocess.run([chatmq, "generate-config"], capture_output=True, text=True, timeout=60).stdout
        if "[store.scylla]" not in defaults:
            return "not run (this chatmq has no [store.scylla] yet)"
        env["CHAT__STORE__BACKEND"] = "embedded"
    with tempfile.TemporaryDirectory() as tmp:
        args = [chatmq, "migrate"]
        for i, (path, text) in enumerate(config_texts(r, workload, f)):
            file = Path(tmp) / f"{i}-{Path(path).name}"
            file.write_text(text)
            args += ["--config", str(file)]
        args += ["--data-dir", str(Path(tmp) / "data")]
        run = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    f.expect(run.returncode == 0, f"chatmq refuses the rendered config ({run.returncode}): {run.stderr.strip()} {run.stdout.strip()}")
    return "accepted"


def check_common(r, values, f):
    """What holds for every variant."""
    for path, doc in r.docs:
        meta = doc["metadata"]
        f.expect(jsonschema.Draft202012Validator({"pattern": DNS_SUBDOMAIN, "maxLength": 253}).is_valid(meta["name"]),
                 f"{path}: name {meta['name']!r} is a DNS subdomain")
        for k, v in meta.get("labels", {}).items():
            f.expect(isinstance(v, str) and jsonschema.Draft202012Validator({"pattern": LABEL_VALUE}).is_valid(v)
                     and jsonschema.Draft202012Validator({"pattern": LABEL_KEY}).is_valid(k),
                     f"{path}: label {k}={v!r} is valid")
    deployments = r.kind("Deployment")
    for d in deployments:
        name = d["metadata"]["name"]
        spec, c = pod_spec(d), container(d)
        f.expect(d["spec"]["replicas"] == 1, f"{name}: replicas 1 (rumqttd does not cluster)")
        f.expect(d["spec"]["strategy"]["type"] == "Recreate", f"{name}: strategy Recreate")
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
        f.expect(cfg.get("server", {}).get("grace_period_ms") == 1000 * values.get("gracePeriodSeconds", 20),
                 f"{name}: grace_period_ms")
        if "mqtt" in ports:
            f.expect(cfg["broker"]["tcp"] == "0.0.0.0:1883" and ports["mqtt"] == 1883, f"{name}: MQTT on 1883")
            f.expect(values.get("auth", {}).get("existingSecret") or cfg["broker"]["auth"]["users"].get("alice") == "",
                     f"{name}: the demo user alice is blanked")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        f.expect(env.get("CHAT_LOG") == values.get("logLevel", "info,rumqttd=warn"), f"{name}: CHAT_LOG")

    # Services select pods that have the ports they target.
    templates = [d["spec"]["template"] for d in deployments]
    for svc in r.kind("Service"):
        name = svc["metadata"]["name"]
        selected = [t for t in templates if svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        f.expect(selected, f"Service {name} selects a pod")
        for t in selected:
            names = {p["name"] for p in t["spec"]["containers"][0].get("ports", [])}
            for p in svc["spec"]["ports"]:
                f.expect(p["targetPort"] in names, f"Service {name}: targetPort {p['targetPort']} exists in the pod")
    mqtt = r.get("Service", FULLNAME)
    f.expect(mqtt is not None and any(p["port"] == 1883 for p in mqtt["spec"]["ports"]), "the MQTT Service has port 1883")
    metrics = r.get("Service", f"{FULLNAME}-metrics")
    if f.expect(metrics is not None, "a metrics Service"):
        selected = [t for t in templates if metrics["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        f.expect(len(selected) == len(deployments), "the metrics Service selects every Deployment's pods")
        f.expect([p["name"] for p in metrics["spec"]["ports"]] == ["metrics"], "the metrics Service's port is named metrics")
    for sm in r.kind("ServiceMonitor"):
        labels = sm["spec"]["selector"]["matchLabels"]
        f.expect(metrics and labels.items() <= metrics["metadata"]["labels"].items(), "the ServiceMonitor selects the metrics Service")
        f.expect(mqtt and not labels.items() <= mqtt["metadata"]["labels"].items(), "the ServiceMonitor does not select the MQTT Service")
        f.expect(sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["path"] == "/metrics",
                 "the ServiceMonitor scrapes port metrics, /metrics")

    for pdb in r.kind("PodDisruptionBudget"):
        matching = [d for d in deployments
                    if pdb["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        f.expect(len(matching) == 1, f"PDB {pdb['metadata']['name']} covers exactly one Deployment")

    # No secret value leaks into a ConfigMap.
    secrets = secret_values(values)
    for cm in r.kind("ConfigMap"):
        text = "\n".join(cm["data"].values())
        for s in secrets:
            f.expect(s not in text, f"ConfigMap {cm['metadata']['name']} holds the secret value {s!r}")
    f.expect("mosquitto_pub" in r.notes, "NOTES.txt shows a mosquitto_pub example")
    if values.get("websocket", {}).get("enabled", True):
        f.expect("/mqtt" in r.notes and "ws://" in r.notes, "NOTES.txt shows the WebSocket URL")


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
    f.expect(cfg["broker"]["auth"]["users"] == {"alice": "", "bob": ""}, "only the blanked demo users")
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
    f.expect(b["auth"]["users"] == {"alice": "", "bob": "", "carol": "carol-secret-pw", "dave": 'dave "quoted" pw'},
             f"users: {b['auth']['users']}")
    f.expect(b["auth"]["jwt"] == {"hs256_secret": "jwt-hs256-test-secret", "issuer": "https://auth.example.com",
                                  "audience": "chat", "leeway_secs": 30}, f"jwt: {b['auth']['jwt']}")
    f.expect(b["auth"]["services"] == {"pusher": {"password": "pusher-test-pw", "allow": ["talk/hooks/#"]}},
             f"all-in-one: only the configured service account (the process makes the bridge's): {b['auth']['services']}")
    f.expect(b.get("tls_listen") == "0.0.0.0:8883" and "wss" not in b, "MQTT/TLS without WSS")
    f.expect(b["tls"]["cert"].startswith(mount_of(d, "tls") + "/"), "the certificate lies in the mounted TLS Secret")
    f.expect(cfg["bridge"]["batch"] == 256 and cfg["bridge"]["sends_per_sec"] == 2.5
             and isinstance(cfg["bridge"]["sends_burst"], float), f"[bridge]: {cfg['bridge']}")
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


def mount_of(workload, volume):
    for m in container(workload)["volumeMounts"]:
        if m["name"] == volume:
            return m["mountPath"]
    return None


def volume_of(workload, name):
    return next(v for v in pod_spec(workload)["volumes"] if v["name"] == name)


VARIANTS = {
    "default": (None, check_default),
    "all-in-one": ("all-in-one-values.yaml", check_all_in_one),
    "split-scylla-tls": ("split-scylla-tls-values.yaml", check_split_scylla_tls),
    "split-embedded-existing-secret": ("split-embedded-existing-secret-values.yaml", check_split_embedded_existing_secret),
}

# Values the chart must refuse, and a fragment of the expected error.
REFUSED = [
    ({"moed": "split"}, "additional properties 'moed'"),
    ({"mode": "cluster"}, "/mode"),
    ({"store": {"backend": "cassandra"}}, "/store/backend"),
    ({"store": {"fsync": "sometimes"}}, "/store/fsync"),
    ({"store": {"scylla": {"keyspce": "x"}}}, "keyspce"),
    ({"limits": {"max_conections": 10}}, "max_conections"),
    ({"service": {"type": "Ingress"}}, "/service/type"),
    ({"auth": {"users": {"bad user": "pw"}}}, "'bad user'"),
    ({"mode": "split"}, "bridge.password"),
    ({"tls": {"enabled": True}}, "tls.secretName"),
    ({"podDisruptionBudget": {"minAvailable": 1}}, "only one of"),
]


def validate_manifests(r, f):
    counted = 0
    for path, doc in r.docs:
        what = f"{path}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            errors = sorted(jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).iter_errors(doc), key=str)
            f.expect(not errors, f"{what}: {'; '.join(e.message for e in errors)}")
            counted += 1
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                f.expect(False, f"{what} invalid for Kubernetes {version}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                f.expect(False, f"{what}: {e.message}")
        counted += 1
    return counted


def lint(values, f):
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSIONS[-1]}")
    for m in report.get("messages", []):
        f.expect(m["severity"] < 2, f"helm lint {m['path']}: {m['error'].strip()}")
    for e in report.get("errors", []):
        f.expect(False, f"helm lint: {e.strip()}")


def main():
    parser = argparse.ArgumentParser(description="Lint, render and validate the chatmq Helm chart.")
    parser.add_argument("--chatmq", help="a chatmq binary: check that it accepts each variant's rendered config")
    chatmq = parser.parse_args().chatmq
    chart = helm.Chart.load(str(CHART))
    ci_files = {p.name for p in (CHART / "ci").glob("*.yaml")}
    named = {file for file, _ in VARIANTS.values() if file}
    failures = []
    if ci_files != named:
        failures.append(f"helm/chatmq/ci/ files without checks here, or checks without files: {sorted(ci_files ^ named)}")
    print(f"Kubernetes schemas: {', '.join(KUBE_VERSIONS)} (kubernetes-validate {kubernetes_validate.__version__}, strict); "
          f"ServiceMonitor: checked against this script's structural schema (its CRD is not in kubernetes-validate)")
    total = 0
    for variant, (file, check) in VARIANTS.items():
        f = Failures(variant)
        values = helm.values_from_yaml((CHART / "ci" / file).read_text()) if file else {}
        lint(values, f)
        try:
            r = Rendered(chart.render(values or None, name=RELEASE, namespace=NAMESPACE, is_install=True))
        except helm.HelmError as e:
            failures.append(f"{variant}: render failed: {e}")
            continue
        n = validate_manifests(r, f)
        total += n
        binary = "not run"
        try:
            check_common(r, values, f)
            check(r, values, f)
            binary = check_binary(r, f, chatmq)
        except (KeyError, TypeError, IndexError, AttributeError, StopIteration) as e:
            f.expect(False, f"unexpected manifest shape: {type(e).__name__}: {e}")
        kinds = sorted({d["kind"] for _, d in r.docs})
        status = "ok   {}: lint, schemas and checks pass" if not f.messages else "FAIL {}: see below"
        print(status.format(variant) + f"; {n} manifests ({', '.join(kinds)}); config by chatmq: {binary}")
        failures += f.messages
    for values, fragment in REFUSED:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
            failures.append(f"refused values: {values} rendered, expected an error mentioning {fragment!r}")
        except helm.HelmError as e:
            if fragment not in str(e):
                failures.append(f"refused values: {values} failed without {fragment!r}: {e}")
    if not any(m.startswith("refused") for m in failures):
        print(f"ok   {len(REFUSED)} invalid value sets refused (schema typos and enums, required values)")
    if failures:
        print(f"\n{len(failures)} chart check failure(s):")
        for m in failures:
            print(f"  - {m}")
        return 1
    print(f"chart check passed: {len(VARIANTS)} variants, {total} manifests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
