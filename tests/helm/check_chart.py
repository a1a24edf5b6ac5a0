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
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MISSING = []
try:
    import helm_python as helm
except ImportError:
    MISSING.append("helm-python-sdk (import helm_python)")
try:
    import jsonschema  # kubernetes-validate's dependencies, like PyYAML
    import kubernetes_validate
    import kubernetes_validate.utils as kv_utils
except ImportError:
    MISSING.append("kubernetes-validate (import kubernetes_validate)")
if MISSING:
    print("SKIPPED: python packages not importable: " + ", ".join(MISSING)
          + "; install: python3 -m pip install helm-python-sdk kubernetes-validate")
    sys.exit(77)

# After the check above (they import yaml); no __pycache__ in the source tree.
sys.dont_write_bytecode = True
from manifests import (NAMESPACE, RELEASE, SERVICE_MONITOR_SCHEMA, Failures, Rendered, config_texts,  # noqa: E402
                       container, merged_config)
from variants import REFUSED, VARIANTS, check_common  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "chatmq"
# The chart's kubeVersion floor (Chart.yaml) and the newest schemas shipped.
KUBE_VERSIONS = ["1.29.0", kv_utils.latest_version()]


def check_binary(r, f, chatmq):
    """The real binary accepts the rendered files: `chatmq migrate` loads the
    whole configuration (an unknown key is an error) and, on the embedded
    store, has nothing to migrate. A ScyllaDB variant is checked with the
    backend switched to embedded by environment, so no database is needed.
    The first Deployment's files are checked, and in cluster mode also the
    bridge StatefulSet's (they add cluster.toml). Returns a word for the
    summary line."""
    if chatmq is None:
        return "not run (no --chatmq)"
    workloads = [r.kind("Deployment")[0]] + r.kind("StatefulSet")
    words = [binary_accepts(r, w, f, chatmq) for w in workloads]
    if len(words) == 1:
        return words[0]
    return ", ".join(f"{w['kind']} {container(w)['args'][0]} {word}" for w, word in zip(workloads, words))


def binary_accepts(r, workload, f, chatmq):
    """`chatmq migrate` with one workload's config files."""
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
    f.expect(run.returncode == 0, f"chatmq refuses {workload['metadata']['name']}'s rendered config ({run.returncode}): "
             f"{run.stderr.strip()} {run.stdout.strip()}")
    return "accepted"


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
