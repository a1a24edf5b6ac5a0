"""A render of the chatmq chart, read the way the checks need it: manifests
by kind and name, pod specs, and the config files a workload's args name,
merged the way chatmq merges them. Also what valid names, labels and a
ServiceMonitor look like."""

import base64
import tomllib

import yaml

RELEASE, NAMESPACE = "demo", "chat"
FULLNAME = f"{RELEASE}-chatmq"

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

    def statefulset(self, mode):
        for s in self.kind("StatefulSet"):
            if container(s)["args"][0] == mode:
                return s
        return None

    def workloads(self):
        """The long-running pods' owners: Deployments, then StatefulSets (cluster mode's bridges)."""
        return self.kind("Deployment") + self.kind("StatefulSet")


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


def mount_of(workload, volume):
    for m in container(workload)["volumeMounts"]:
        if m["name"] == volume:
            return m["mountPath"]
    return None


def volume_of(workload, name):
    return next(v for v in pod_spec(workload)["volumes"] if v["name"] == name)
