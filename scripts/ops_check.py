#!/usr/bin/env python3
"""Checks of the deploy files, driven by scripts/ops-check (run from the repository root).

  ops_check.py static --loopwatch BIN   deploy/kubernetes: its layout (one base, overlays
                                        that patch it, components), each overlay as
                                        `kubectl kustomize` builds it, the monitoring
                                        resources (PrometheusRule == alerts.yml, generated);
                                        dashboard structure; shipped configs
  ops_check.py live --prometheus URL    every PromQL expression of the dashboard and of the
                                        alerts evaluated against a Prometheus scraping a
                                        live `loopwatch demo`
  ops_check.py notify --loopwatch BIN   `loopwatch run` with the systemd config against an
                                        emulated notify socket: READY, WATCHDOG, RELOADING,
                                        STOPPING
  ops_check.py pg-tls --loopwatch BIN   a throw-away PostgreSQL with TLS from a private CA:
                                        sslrootcert and PGSSLROOTCERT connect, no CA fails
  ops_check.py wait-http URL            poll until URL answers 200 (with a deadline); exit 3
                                        when --pid exits first, 1 on timeout
  ops_check.py fetch URL                print the body of URL
  ops_check.py free-port                print a free TCP port on 127.0.0.1

Every check prints one PASS or FAIL line; the exit status is 1 when any failed.
Needs PyYAML (and kubernetes-validate and kubectl, for its built-in kustomize, on PATH for
`static`).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ALERTS = Path("deploy/prometheus/alerts.yml")
K8S = Path("deploy/kubernetes")
K8S_BASE = K8S / "base"
K8S_OVERLAYS = K8S / "overlays"
K8S_MONITORING = K8S / "monitoring"
DASHBOARD = Path("deploy/grafana/loopwatch.json")
SYSTEMD_UNIT = Path("deploy/systemd/loopwatch.service")
SYSTEMD_CONFIG = Path("deploy/systemd/loopwatch.toml")
# Kubernetes versions the built-in manifests are validated against (oldest, newest).
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
# Kinds kubernetes-validate has no schema for: checked structurally here.
CUSTOM_KINDS = {
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "kustomize.config.k8s.io/v1beta1/Kustomization",
}

# Values of Grafana's built-in variables while evaluating the dashboard's expressions.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}


class Report:
    """PASS/FAIL lines and the final verdict."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def ok(self, what: str, detail: str = "") -> None:
        self.passed += 1
        print(f"PASS  {what}" + (f"  ({detail})" if detail else ""), flush=True)

    def fail(self, what: str, detail: str) -> None:
        self.failed.append(what)
        print(f"FAIL  {what}: {detail}", flush=True)

    def check(self, cond: bool, what: str, detail: str = "") -> bool:
        if cond:
            self.ok(what)
        else:
            self.fail(what, detail or "not true")
        return cond

    def finish(self, name: str) -> int:
        if self.failed:
            print(f"{name}: {len(self.failed)} FAILED, {self.passed} passed", flush=True)
            return 1
        print(f"{name}: all {self.passed} checks passed", flush=True)
        return 0


# --- PromQL: find the signal of an alert expression -------------------------------------------

CMP_OPS = ("==", "!=", ">=", "<=", ">", "<")
SET_OPS = ("or", "and", "unless")
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(Inf|NaN)", re.I)
MODIFIERS = re.compile(
    r"^\s*(bool\s*)?((on|ignoring)\s*\([^)]*\)\s*)?((group_left|group_right)\s*(\([^)]*\))?\s*)?"
)


def top_level_ops(expr: str):
    """(index, operator) of each binary comparison or set operator outside any brackets."""
    depth, i, n = 0, 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if expr[j] == "\\" and c != "`" else 1
            i = j + 1
            continue
        if c == "#":
            while i < n and expr[i] != "\n":
                i += 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            two = expr[i : i + 2]
            if two in CMP_OPS:
                yield i, two
                i += 2
                continue
            if c in "<>":
                yield i, c
            elif c.isalpha() or c == "_":
                j = i
                while j < n and (expr[j].isalnum() or expr[j] in "_:"):
                    j += 1
                if expr[i:j].lower() in SET_OPS:
                    yield i, expr[i:j].lower()
                i = j
                continue
        i += 1


def closing(expr: str, open_at: int) -> int:
    """Index of the bracket closing the one at open_at (strings skipped)."""
    depth, i = 0, open_at
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < len(expr) and expr[j] != c:
                j += 2 if expr[j] == "\\" and c != "`" else 1
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unbalanced brackets in {expr!r}")


def strip_parens(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and closing(expr, 0) == len(expr) - 1:
        expr = expr[1:-1].strip()
    return expr


def split_at(expr: str, ops: tuple[str, ...]) -> list[str]:
    cuts = [(i, op) for i, op in top_level_ops(expr) if op in ops]
    parts, start = [], 0
    for i, op in cuts:
        parts.append(expr[start:i])
        start = i + len(op)
    parts.append(expr[start:])
    return [MODIFIERS.sub("", p, count=1).strip() for p in parts]


def signals(expr: str) -> list[str]:
    """The parts of an alert expression that must return data from a healthy loopwatch:
    `S op N` -> S; `absent(S)` -> S; `A or B`, `A and B`, `A unless B` -> both sides."""
    expr = strip_parens(expr)
    for ops in (("or",), ("and", "unless")):
        parts = split_at(expr, ops)
        if len(parts) > 1:
            return [s for p in parts for s in signals(p)]
    cmps = [(i, op) for i, op in top_level_ops(expr) if op in CMP_OPS]
    if cmps:
        i, op = cmps[-1]
        rhs = MODIFIERS.sub("", expr[i + len(op) :], count=1).strip()
        if not NUMBER.fullmatch(rhs):
            raise ValueError(
                f"not of the form `<signal> {op} <number>`: right-hand side {rhs!r}"
            )
        return signals(expr[:i])
    m = re.match(r"(absent|absent_over_time)\s*\(", expr)
    if m and closing(expr, m.end() - 1) == len(expr) - 1:
        inner = expr[m.end() : -1].strip()
        if m.group(1) == "absent_over_time":
            inner = re.sub(r"\[[^\]]*\]\s*$", "", inner)
        return signals(inner)
    return [expr]


def selftest() -> None:
    cases = {
        "x > 0": ["x"],
        'up{job=~"a.*"} == 0 or absent(up{job=~"a.*"})': ['up{job=~"a.*"}', 'up{job=~"a.*"}'],
        "sum by (a) (rate(x[5m])) / sum by (a) (rate(y[5m])) > 0.5": [
            "sum by (a) (rate(x[5m])) / sum by (a) (rate(y[5m]))"
        ],
        "time() - x > 900": ["time() - x"],
        "(x > bool 1) == 1": ["x"],
        'a{l="or >"} > 1 and on (t) b < 2': ['a{l="or >"}', "b"],
        "absent_over_time(x[10m])": ["x"],
        "x": ["x"],
        "a > 1 unless ignoring (i) group_left c": ["a", "c"],
        "x >= 1e3": ["x"],
    }
    for expr, want in cases.items():
        got = signals(expr)
        assert got == want, f"signals({expr!r}) = {got!r}, want {want!r}"
    for bad in ("x > y", "x > 0 * y"):
        try:
            signals(bad)
        except ValueError:
            continue
        raise AssertionError(f"signals({bad!r}) should be refused")


# --- Grafana ----------------------------------------------------------------------------------

VAR_REF = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def substitute(expr: str, values: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(name)
        return values[name]

    return VAR_REF.sub(repl, expr)


def grafana_escape(value: str) -> str:
    """A variable value as Grafana puts it inside a regex matcher of a PromQL string
    (its Prometheus data source's prometheusSpecialRegexEscape)."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def dashboard_panels(dash: dict):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])  # collapsed rows hold their panels


def label_values_query(q: str):
    """`label_values(selector, label)` -> (selector, label); `label_values(label)` -> (None, label)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q, re.S)
    if m:
        return m.group(1).strip(), m.group(2)
    m = re.fullmatch(r"\s*label_values\(\s*(\w+)\s*\)\s*", q)
    if m:
        return None, m.group(1)
    return None


def variable_query(v: dict) -> str:
    q = v.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or v.get("definition", ""))


# --- Prometheus HTTP API ----------------------------------------------------------------------


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}")
        try:
            doc = json.loads(body)
        except json.JSONDecodeError:
            return {"status": "error", "error": f"HTTP {status}: {body[:200]!r}"}
        if doc.get("status") != "success" and "error" not in doc:
            doc["error"] = f"HTTP {status}"
        return doc

    def query(self, expr: str) -> tuple[list | None, str]:
        """(result, error): result is None on error; a list of samples otherwise."""
        doc = self.api("query", query=expr)
        if doc.get("status") != "success":
            return None, f"{doc.get('errorType', 'error')}: {doc.get('error')}"
        data = doc["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}], ""
        return data["result"], ""


def wait_until(what: str, deadline: float, probe, interval: float = 0.5):
    """Call probe() until it returns a truthy value or the deadline passes."""
    last = None
    while True:
        try:
            last = probe()
        except ProcessLookupError:
            raise
        except Exception as e:  # noqa: BLE001 - report whatever went wrong at the end
            last = None
            err = e
        else:
            err = None
            if last:
                return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out waiting for {what}" + (f": {err}" if err else ""))
        time.sleep(interval)


# --- static checks ----------------------------------------------------------------------------


class Variant:
    """One overlay of deploy/kubernetes, as `kubectl kustomize` renders it, and what its
    Deployment must look like."""

    def __init__(self, directory: Path, title: str, replicated: bool, private_ca: bool = False) -> None:
        self.dir = directory
        self.title = title
        # False: one replica on SQLite (Recreate, a PVC). True: several replicas on PostgreSQL
        # (RollingUpdate, a PodDisruptionBudget, store.url from a Secret env, no PVC).
        self.replicated = replicated
        # The private-ca component: PGSSLROOTCERT names ca.crt of the mounted ConfigMap.
        self.private_ca = private_ca


VARIANTS = [
    Variant(K8S_OVERLAYS / "sqlite", "one replica on SQLite", replicated=False),
    Variant(K8S_OVERLAYS / "postgres", "several replicas on PostgreSQL", replicated=True),
    Variant(K8S_OVERLAYS / "postgres-private-ca", "PostgreSQL with a private CA", replicated=True,
            private_ca=True),
]
# Values the downward API gives the env of the Deployments (check-config sees them).
DOWNWARD_API = {"metadata.name": "loopwatch-5d8f7c9b6-x7k2p", "metadata.namespace": "loopwatch"}


class Scoped:
    """A Report whose every line is prefixed (e.g. with the manifests' directory)."""

    def __init__(self, rep: Report, prefix: str) -> None:
        self.rep, self.prefix = rep, prefix

    def ok(self, what: str, detail: str = "") -> None:
        self.rep.ok(f"{self.prefix}: {what}", detail)

    def fail(self, what: str, detail: str) -> None:
        self.rep.fail(f"{self.prefix}: {what}", detail)

    def check(self, cond: bool, what: str, detail: str = "") -> bool:
        if cond:
            self.ok(what)
        else:
            self.fail(what, detail or "not true")
        return cond


def by_kind(docs: dict[str, list[dict]], kind: str) -> list[dict]:
    return [d for ds in docs.values() for d in ds if d.get("kind") == kind]


def selects(selector: dict, labels: dict) -> bool:
    """A non-empty matchLabels selector that the labels satisfy."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def kustomize(rep, directory: Path) -> list[dict] | None:
    """`kubectl kustomize DIR`: the resources it builds, or None (and a FAIL) when it fails."""
    r = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True)
    if r.returncode != 0:
        rep.fail(f"kubectl kustomize {directory}", r.stderr.strip())
        return None
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    rep.ok(f"kubectl kustomize {directory} builds",
           ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
    return docs


def kubernetes_validate(rep, docs: list[dict], what: str) -> None:
    """kubernetes-validate --strict (unknown fields are errors) on built-in kinds, against the
    oldest and newest Kubernetes versions supported: every resource must be named "passed"."""
    builtin = [d for d in docs if f"{d.get('apiVersion')}/{d.get('kind')}" not in CUSTOM_KINDS]
    want = sorted(f"{d['kind'].lower()}/{d['metadata']['name']}" for d in builtin)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="ops-check-k8s-") as f:
        yaml.safe_dump_all(builtin, f)
        f.flush()
        for version in KUBERNETES_VERSIONS:
            r = subprocess.run(["kubernetes-validate", "--strict", "-k", version, f.name],
                               capture_output=True, text=True)
            out = (r.stdout + r.stderr).strip()
            passed = sorted(re.findall(r"^INFO .* passed for resource (\S+) against", out, re.M))
            bad = [l for l in out.splitlines() if not l.startswith("INFO ")]
            if r.returncode == 0 and passed == want and not bad:
                rep.ok(f"kubernetes-validate --strict -k {version}: {what}",
                       f"{len(passed)} resources: {', '.join(passed)}")
            else:
                rep.fail(f"kubernetes-validate --strict -k {version}: {what}",
                         (out or f"exit {r.returncode}") + f"\n      expected to pass: {want}")


def check_layout(top: Report) -> None:
    """One base, overlays that only add to it, components, and no manifest kept twice."""
    rep = Scoped(top, str(K8S))
    print(f"----  {K8S}: layout", flush=True)
    kusts = sorted(K8S.rglob("kustomization.yaml"))
    for k in kusts:
        doc = yaml.safe_load(k.read_text()) or {}
        kind = doc.get("kind")
        api = {"Kustomization": "kustomize.config.k8s.io/v1beta1",
               "Component": "kustomize.config.k8s.io/v1alpha1"}.get(kind)
        rep.check(api is not None and doc.get("apiVersion") == api,
                  f"{k.relative_to(K8S)} is a {kind} of {api}", f"apiVersion {doc.get('apiVersion')}")
        for r in doc.get("resources") or []:
            target = (k.parent / r)
            rep.check(target.is_file() or (target / "kustomization.yaml").is_file(),
                      f"{k.relative_to(K8S)} lists {r}, which exists")
            rep.check("secret.example" not in r, f"{k.relative_to(K8S)} does not list an example Secret",
                      "the example would overwrite the real one")
        for c in doc.get("components") or []:
            cdoc = yaml.safe_load(((k.parent / c) / "kustomization.yaml").read_text()) or {}
            rep.check(cdoc.get("kind") == "Component", f"{k.relative_to(K8S)}: component {c} is a Component")
        for p in doc.get("patches") or []:
            rep.check("path" not in p or (k.parent / p["path"]).is_file(),
                      f"{k.relative_to(K8S)} patch {p.get('path')} exists")
    overlays = [v.dir for v in VARIANTS]
    for o in overlays:
        doc = yaml.safe_load((o / "kustomization.yaml").read_text())
        res = doc.get("resources") or []
        rep.check(any(r.rstrip("/").endswith("base") or (o / r / "kustomization.yaml").is_file() for r in res),
                  f"{o.relative_to(K8S)} builds on the base (or another overlay)", str(res))
        rep.check("configMapGenerator" not in doc and not (o / "configmap.yaml").exists(),
                  f"{o.relative_to(K8S)} uses the base's config (one loopwatch.toml for every overlay)")
    # No full Deployment outside the base: overlays hold patches only.
    deployments = [f for f in K8S.rglob("*.yaml")
                   if any(d and d.get("kind") == "Deployment" and (d.get("spec") or {}).get("selector")
                          for d in yaml.safe_load_all(f.read_text()))]
    rep.check(deployments == [K8S_BASE / "deployment.yaml"],
              "only base/deployment.yaml is a whole Deployment (the overlays patch it)",
              str([str(d) for d in deployments]))
    base = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    gens = base.get("configMapGenerator") or []
    rep.check(any(g.get("name") == "loopwatch-config" and "loopwatch.toml" in (g.get("files") or [])
                  and not (g.get("options") or {}).get("disableNameSuffixHash")
                  and not (base.get("generatorOptions") or {}).get("disableNameSuffixHash") for g in gens),
              "base: configMapGenerator loopwatch-config from loopwatch.toml, with the hash suffix "
              "(a config edit rolls the pods)", str(gens))
    r = subprocess.run([sys.executable, "scripts/gen_prometheusrule.py", "--check"], capture_output=True, text=True)
    rep.check(r.returncode == 0, f"{K8S_MONITORING / 'prometheusrule.yaml'} is generated from {ALERTS}",
              (r.stdout + r.stderr).strip())


def check_monitoring(top: Report) -> None:
    """The optional ServiceMonitor and PrometheusRule, applied on their own."""
    rep = Scoped(top, str(K8S_MONITORING))
    print(f"----  {K8S_MONITORING}: Prometheus Operator resources", flush=True)
    docs = kustomize(rep, K8S_MONITORING)
    base = kustomize(rep, K8S_BASE)
    if docs is None or base is None:
        return
    for d in docs:
        rep.check("namespace" not in d["metadata"], f"{d['kind']}/{d['metadata']['name']} is namespace-agnostic")
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    alerts = yaml.safe_load(ALERTS.read_text())
    if rep.check(len(rules) == 1, "one PrometheusRule"):
        pr = rules[0]
        rep.check(pr.get("apiVersion") == "monitoring.coreos.com/v1", "PrometheusRule apiVersion is monitoring.coreos.com/v1")
        rep.check(set(pr) <= {"apiVersion", "kind", "metadata", "spec"} and set(pr.get("spec") or {}) == {"groups"},
                  "PrometheusRule has only metadata and spec.groups")
        rep.check((pr.get("spec") or {}).get("groups") == alerts["groups"],
                  f"PrometheusRule groups are identical to {ALERTS}",
                  "they differ; run scripts/gen_prometheusrule.py")
    monitors = [d for d in docs if d.get("kind") == "ServiceMonitor"]
    services = [d for d in base if d.get("kind") == "Service"]
    if rep.check(len(monitors) == 1 and len(services) == 1, "one ServiceMonitor, for the base's one Service"):
        sm, svc = monitors[0], services[0]
        rep.check(sm.get("apiVersion") == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion is monitoring.coreos.com/v1")
        sel = ((sm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        svc_labels = svc["metadata"].get("labels") or {}
        rep.check(selects(sel, svc_labels), "ServiceMonitor selector matches the Service's labels", f"{sel} vs {svc_labels}")
        svc_ports = {p.get("name") for p in svc["spec"].get("ports", [])}
        eps = (sm.get("spec") or {}).get("endpoints") or []
        rep.check(bool(eps) and all(e.get("port") in svc_ports and e.get("path", "/metrics") == "/metrics" for e in eps),
                  "ServiceMonitor endpoints name a Service port and scrape /metrics", str(eps))


def check_kubernetes(top: Report, loopwatch: str | None, variant: Variant) -> None:
    rep = Scoped(top, str(variant.dir))
    print(f"----  {variant.dir}: {variant.title}", flush=True)
    built = kustomize(rep, variant.dir)
    if built is None:
        return
    for d in built:
        what = f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
        rep.check(bool(d.get("apiVersion") and d.get("kind") and (d.get("metadata") or {}).get("name")),
                  f"{what} has apiVersion, kind and metadata.name")
        rep.check("namespace" not in (d.get("metadata") or {}), f"{what} is namespace-agnostic",
                  "metadata.namespace is set; leave it to `kubectl apply -n`")
    kubernetes_validate(rep, built, f"kubectl kustomize {variant.dir}")
    docs = {"(built)": built}
    services = by_kind(docs, "Service")
    deployments = by_kind(docs, "Deployment")
    if rep.check(len(services) == 1 and len(deployments) == 1, "one Service, one Deployment"):
        svc, dep = services[0], deployments[0]
        pod = dep["spec"]["template"]
        pod_labels = pod["metadata"].get("labels") or {}
        svc_ports = {p.get("name"): p for p in svc["spec"].get("ports", [])}
        rep.check(selects(svc["spec"].get("selector") or {}, pod_labels), "Service selector matches the pods")
        rep.check(selects((dep["spec"].get("selector") or {}).get("matchLabels") or {}, pod_labels),
                  "Deployment selector matches its pod template")
        cms = by_kind(docs, "ConfigMap")
        rep.check(any(re.fullmatch(r"loopwatch-config-[a-z0-9]{8,}", c["metadata"]["name"]) for c in cms),
                  "the ConfigMap is generated with a content hash (loopwatch-config-<hash>)",
                  str([c["metadata"]["name"] for c in cms]))
        check_network_policy(rep, by_kind(docs, "NetworkPolicy"), pod_labels)
        check_dashboard_configmap(rep, cms)
        # The example Secrets stand in for the real ones (created by hand, never applied from here).
        docs["secret.example.yaml"] = [d for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text()) if d]
        check_deployment(rep, dep, docs, svc_ports, loopwatch, variant)


def check_network_policy(rep, policies: list[dict], pod_labels: dict) -> None:
    """The base's NetworkPolicy: selects the pods and admits ingress on the metrics port only."""
    if not rep.check(len(policies) == 1, "one NetworkPolicy"):
        return
    spec = policies[0].get("spec") or {}
    rep.check(selects((spec.get("podSelector") or {}).get("matchLabels") or {}, pod_labels),
              "NetworkPolicy selects the pods", str(spec.get("podSelector")))
    ports = [p for rule in spec.get("ingress") or [] for p in rule.get("ports") or []]
    rep.check("Ingress" in (spec.get("policyTypes") or []) and bool(ports)
              and all(p.get("port") in ("metrics", 9464) and p.get("protocol", "TCP") == "TCP" for p in ports),
              "NetworkPolicy admits ingress on the metrics port (9464/TCP) only", str(spec))


def check_dashboard_configmap(rep, configmaps: list[dict]) -> None:
    """The Grafana sidecar's ConfigMap: labelled grafana_dashboard=1, the dashboard as is."""
    dash = [c for c in configmaps if (c["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    if not rep.check(len(dash) == 1, "one ConfigMap labelled grafana_dashboard=1 (for Grafana's dashboard sidecar)",
                     str([c["metadata"]["name"] for c in configmaps])):
        return
    data = dash[0].get("data") or {}
    rep.check(list(data) == ["loopwatch.json"]
              and json.loads(data["loopwatch.json"]) == json.loads(DASHBOARD.read_text()),
              f"the dashboard ConfigMap carries {DASHBOARD} unchanged", str(list(data)))
    rep.check(re.fullmatch(r"loopwatch-dashboard-[a-z0-9]{8,}", dash[0]["metadata"]["name"]) is not None,
              "the dashboard ConfigMap is generated with a content hash", dash[0]["metadata"]["name"])


def container_env(rep, c: dict, secrets: dict) -> dict[str, str]:
    """The container's environment as the kubelet would set it, from the example Secrets and
    DOWNWARD_API; every reference must resolve."""
    env: dict[str, str] = {}
    for e in c.get("env", []):
        name, vf = e.get("name"), e.get("valueFrom") or {}
        if "value" in e:
            env[name] = str(e["value"])
        elif "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            s = secrets.get(ref.get("name"))
            data = {**(s or {}).get("stringData", {}),
                    **{k: base64.b64decode(v).decode() for k, v in (s or {}).get("data", {}).items()}}
            if rep.check(ref.get("key") in data,
                         f"Deployment: env {name} from Secret {ref.get('name')} key {ref.get('key')}, "
                         "which secret.example.yaml has", f"secrets: { {k: sorted(v.get('stringData', {})) for k, v in secrets.items()} }"):
                env[name] = data[ref["key"]]
        elif "fieldRef" in vf:
            path = vf["fieldRef"].get("fieldPath")
            if rep.check(path in DOWNWARD_API, f"Deployment: env {name} from the downward API {path}"):
                env[name] = DOWNWARD_API[path]
        else:
            rep.fail(f"Deployment: env {name}", f"unsupported source {e}")
    return env


def check_deployment(rep, dep: dict, docs, svc_ports: dict, loopwatch: str | None,
                     variant: Variant) -> None:
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels") or {}
    c = pod["containers"][0]
    csc, psc = c.get("securityContext") or {}, pod.get("securityContext") or {}
    either = lambda k: csc.get(k, psc.get(k))  # noqa: E731
    strategy = spec.get("strategy") or {}
    rolling = strategy.get("rollingUpdate") or {}
    replicas = spec.get("replicas", 1)
    if variant.replicated:
        expect = {
            "replicas >= 2": isinstance(replicas, int) and replicas >= 2,
            "strategy is RollingUpdate, maxUnavailable 1, maxSurge 1":
                strategy.get("type") == "RollingUpdate"
                and rolling.get("maxUnavailable") == 1 and rolling.get("maxSurge") == 1,
        }
    else:
        expect = {
            "replicas is 1": replicas == 1,
            "strategy is Recreate": strategy.get("type") == "Recreate",
        }
    expect |= {
        "runAsNonRoot": either("runAsNonRoot") is True,
        "runAsUser 65532": either("runAsUser") == 65532,
        "readOnlyRootFilesystem": csc.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation false": csc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": (csc.get("capabilities") or {}).get("drop") == ["ALL"],
        "seccompProfile RuntimeDefault": (either("seccompProfile") or {}).get("type") == "RuntimeDefault",
        "terminationGracePeriodSeconds 30": pod.get("terminationGracePeriodSeconds") == 30,
        "liveness probe GET /healthz on port metrics":
            (c.get("livenessProbe") or {}).get("httpGet", {}) .get("path") == "/healthz"
            and c["livenessProbe"]["httpGet"].get("port") == "metrics",
        "readiness probe GET /readyz on port metrics":
            (c.get("readinessProbe") or {}).get("httpGet", {}).get("path") == "/readyz"
            and c["readinessProbe"]["httpGet"].get("port") == "metrics",
        "container port 9464 named metrics":
            any(p.get("name") == "metrics" and p.get("containerPort") == 9464 for p in c.get("ports", [])),
        "Service targets the metrics port":
            all(p.get("targetPort") in ("metrics", 9464) for p in svc_ports.values()),
        "resources requests and limits": bool((c.get("resources") or {}).get("requests"))
            and bool((c.get("resources") or {}).get("limits")),
    }
    for what, ok in expect.items():
        rep.check(ok, f"Deployment: {what}", f"replicas {replicas}, strategy {strategy}" if "strategy" in what else "")

    # Volumes: each source exists among the manifests, each mount has a volume.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    rep.check(all(n in volumes for n in mounts.values()), "Deployment: every volumeMount has a volume")
    rep.check("emptyDir" in volumes.get(mounts.get("/tmp", ""), {}), "Deployment: an emptyDir on /tmp")
    names = lambda kind: {d["metadata"]["name"]: d for d in by_kind(docs, kind)}  # noqa: E731
    cms, pvcs, secrets = names("ConfigMap"), names("PersistentVolumeClaim"), names("Secret")
    cfg_text, secret_keys, pvc_mounted = None, set(), False
    for path, vname in mounts.items():
        v = volumes.get(vname, {})
        if "configMap" in v:
            name = v["configMap"]["name"]
            if path == "/etc/loopwatch/ca":
                rep.check(variant.private_ca and name == "loopwatch-ca",
                          "Deployment: the private CA's ConfigMap loopwatch-ca (created by hand) at /etc/loopwatch/ca")
                continue
            cm = cms.get(name)
            if rep.check(cm is not None, f"Deployment: ConfigMap {name} exists"):
                rep.check(path == "/etc/loopwatch" and "loopwatch.toml" in cm.get("data", {}),
                          "ConfigMap mounted at /etc/loopwatch holds loopwatch.toml")
                cfg_text = cm["data"].get("loopwatch.toml")
        if "persistentVolumeClaim" in v:
            pvc_mounted = True
            rep.check(v["persistentVolumeClaim"]["claimName"] in pvcs and path == "/var/lib/loopwatch",
                      f"Deployment: PVC {v['persistentVolumeClaim']['claimName']} exists, mounted at /var/lib/loopwatch")
        if "secret" in v:
            s = secrets.get(v["secret"]["secretName"])
            if rep.check(s is not None, f"Deployment: Secret {v['secret']['secretName']} exists (secret.example.yaml)"):
                secret_keys = {f"{path}/{k}" for k in {**s.get("stringData", {}), **s.get("data", {})}}
    rep.check(c.get("args") == ["run", "-c", "/etc/loopwatch/loopwatch.toml"],
              "Deployment: args run -c /etc/loopwatch/loopwatch.toml", str(c.get("args")))
    env = container_env(rep, c, secrets)

    if variant.replicated:
        rep.check(not pvc_mounted and not pvcs, "Deployment: no PersistentVolumeClaim (the state is in PostgreSQL)",
                  f"PVCs: {sorted(pvcs)}")
        url = env.get("LOOPWATCH__STORE__URL", "")
        url_src = next((e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", [])
                        if e.get("name") == "LOOPWATCH__STORE__URL"), None)
        rep.check(bool(url_src) and url.startswith(("postgres://", "postgresql://")),
                  "Deployment: env LOOPWATCH__STORE__URL from a Secret, a postgres:// URL",
                  f"source {url_src}, example value {url!r}")
        rid = next((e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])
                    if e.get("name") == "LOOPWATCH__STORE__REPLICA_ID"), None)
        rep.check(rid == "metadata.name", "Deployment: env LOOPWATCH__STORE__REPLICA_ID is the pod name",
                  f"fieldPath {rid}")
        lease = env.get("LOOPWATCH__STORE__LEASE_TTL")
        rep.check(bool(lease), "Deployment: env LOOPWATCH__STORE__LEASE_TTL is set", str(lease))
        if variant.private_ca:
            root = env.get("PGSSLROOTCERT", "")
            rep.check(root.startswith("/etc/loopwatch/ca/") and "/etc/loopwatch/ca" in mounts,
                      "Deployment: env PGSSLROOTCERT names a file of the mounted CA ConfigMap", root)
            rep.check(env.get("PGSSLMODE") == "verify-full", "Deployment: env PGSSLMODE is verify-full",
                      str(env.get("PGSSLMODE")))
        check_spread(rep, pod, pod_labels)
        pdbs = by_kind(docs, "PodDisruptionBudget")
        if rep.check(len(pdbs) == 1, "one PodDisruptionBudget"):
            check_pdb(rep, pdbs[0], pod_labels, replicas)

    if cfg_text is None:
        return
    try:
        cfg = tomllib.loads(cfg_text)
    except tomllib.TOMLDecodeError as e:
        rep.fail("ConfigMap loopwatch.toml is TOML", str(e))
        return
    store = cfg.get("store") or {}
    rep.check((cfg.get("server") or {}).get("listen") == "0.0.0.0:9464",
              "ConfigMap: server.listen is 0.0.0.0:9464")
    rep.check(not store, "ConfigMap: no [store] (each overlay sets it in the Deployment's env)", str(store))
    if not variant.replicated:
        url = env.get("LOOPWATCH__STORE__URL", "")
        rep.check(pvc_mounted and url.startswith("sqlite:///var/lib/loopwatch/"),
                  "Deployment: env LOOPWATCH__STORE__URL is on the PVC (sqlite:///var/lib/loopwatch/...)", url)
    files = [cfg.get("api", {}).get("api_key_file")] + [s.get("secret_file") for s in cfg.get("sinks", [])]
    files = [f for f in files if f]
    rep.check(bool(files) and set(files) <= secret_keys,
              "ConfigMap: api_key_file/secret_file name keys of the mounted Secret",
              f"{files} vs {sorted(secret_keys)}")
    out = check_config(rep, loopwatch, "ConfigMap loopwatch.toml" + (" with the Deployment's env" if env else ""),
                       cfg_text, "/var/run/secrets/loopwatch/", env)
    if out is not None:
        # The effective config proves the env overrides took: the store is the overlay's (with
        # PostgreSQL the database of the Secret, the replica named after the pod).
        try:
            eff = tomllib.loads(out.split("\n", 1)[1] if out.startswith("#") else out)
        except tomllib.TOMLDecodeError as e:
            rep.fail("check-config prints TOML", str(e))
            return
        est = eff.get("store") or {}
        if variant.replicated:
            rep.check(str(est.get("url", "")).startswith("postgres") and est.get("replica_id") == DOWNWARD_API["metadata.name"]
                      and est.get("lease_ttl") == env.get("LOOPWATCH__STORE__LEASE_TTL"),
                      "effective config: store.url is the Secret's postgres URL, replica_id the pod name, "
                      "lease_ttl the Deployment's", str(est))
        else:
            rep.check(est.get("url") == env.get("LOOPWATCH__STORE__URL"),
                      "effective config: store.url is the Deployment's SQLite file", str(est))


def check_spread(rep, pod: dict, pod_labels: dict) -> None:
    """The replicas prefer distinct nodes: a topologySpreadConstraint or a podAntiAffinity on
    kubernetes.io/hostname that selects these very pods."""
    host = "kubernetes.io/hostname"
    spread = [t for t in pod.get("topologySpreadConstraints", [])
              if t.get("topologyKey") == host and selects((t.get("labelSelector") or {}).get("matchLabels") or {}, pod_labels)]
    anti = (pod.get("affinity") or {}).get("podAntiAffinity") or {}
    terms = [w.get("podAffinityTerm") or {} for w in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    anti_ok = [t for t in terms
               if t.get("topologyKey") == host and selects((t.get("labelSelector") or {}).get("matchLabels") or {}, pod_labels)]
    rep.check(bool(spread or anti_ok),
              f"Deployment: replicas spread across nodes (topologySpreadConstraints or podAntiAffinity on {host})",
              "none selects the pods on that key")


def check_pdb(rep, pdb: dict, pod_labels: dict, replicas: int) -> None:
    """policy/v1, selects the pods, keeps at least one replica up and lets at least one go."""
    spec = pdb.get("spec") or {}
    rep.check(pdb.get("apiVersion") == "policy/v1", "PodDisruptionBudget apiVersion is policy/v1")
    rep.check(selects((spec.get("selector") or {}).get("matchLabels") or {}, pod_labels),
              "PodDisruptionBudget selector matches the pods")
    mn, mx = spec.get("minAvailable"), spec.get("maxUnavailable")
    ok = (mn is None) != (mx is None) and (
        (isinstance(mn, int) and 1 <= mn <= replicas - 1) or (isinstance(mx, int) and 1 <= mx <= replicas - 1))
    rep.check(ok, f"PodDisruptionBudget keeps a replica up and allows one disruption of {replicas}",
              f"minAvailable {mn}, maxUnavailable {mx}")


def clean_env() -> dict[str, str]:
    """This environment without LOOPWATCH* overrides or a systemd notify socket."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("LOOPWATCH", "NOTIFY_SOCKET", "WATCHDOG_"))}


def materialize_config(text: str, secret_dir: str, tmp: str) -> Path:
    """Write a shipped config into tmp with its secret files (named under secret_dir) replaced
    by fresh ones in tmp: a random whsec_ secret for *secret*, a placeholder API key else."""
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    for m in set(re.findall(re.escape(secret_dir) + r"([\w.-]+)", text)):
        Path(tmp, m).write_text(secret + "\n" if "secret" in m else "placeholder-api-key\n")
    cfg = Path(tmp, "loopwatch.toml")
    cfg.write_text(text.replace(secret_dir, tmp + "/"))
    return cfg


def check_config(rep, loopwatch: str | None, what: str, text: str, secret_dir: str,
                 env: dict[str, str] | None = None) -> str | None:
    """`loopwatch check-config` on a shipped config, its secret files replaced by temp ones and
    env (e.g. a Deployment's LOOPWATCH__* overrides) set; its stdout when it passes."""
    if not loopwatch:
        return None
    with tempfile.TemporaryDirectory(prefix="ops-check-config-") as tmp:
        cfg = materialize_config(text, secret_dir, tmp)
        r = subprocess.run([loopwatch, "check-config", "-c", str(cfg)], capture_output=True, text=True,
                           env=clean_env() | (env or {}))
        if r.returncode == 0:
            rep.ok(f"loopwatch check-config accepts {what}", ", ".join(sorted(env or {})))
            return r.stdout
        rep.fail(f"loopwatch check-config accepts {what}", f"exit {r.returncode}: {r.stderr.strip()}")
        return None


def check_systemd(rep: Report, loopwatch: str | None) -> None:
    unit = SYSTEMD_UNIT.read_text()
    creds = dict(re.findall(r"^LoadCredential=([\w.-]+):(\S+)$", unit, re.M))
    text = SYSTEMD_CONFIG.read_text()
    cfg = tomllib.loads(text)
    files = [cfg.get("api", {}).get("api_key_file")] + [s.get("secret_file") for s in cfg.get("sinks", [])]
    prefix = "/run/credentials/loopwatch.service/"
    rep.check(all(f and f.startswith(prefix) and f[len(prefix):] in creds for f in files),
              f"{SYSTEMD_CONFIG}: every *_file is a credential the unit loads",
              f"{files} vs LoadCredential={sorted(creds)}")
    m = re.search(r"^ExecStart=\S+ run -c (\S+)$", unit, re.M)
    rep.check(bool(m) and m.group(1) == "/etc/loopwatch/loopwatch.toml",
              f"{SYSTEMD_UNIT}: ExecStart reads /etc/loopwatch/loopwatch.toml")
    check_config(rep, loopwatch, str(SYSTEMD_CONFIG), text, prefix)


def check_dashboard_structure(rep: Report) -> None:
    dash = json.loads(DASHBOARD.read_text())
    rep.check(38 <= dash.get("schemaVersion", 0) <= 41, f"{DASHBOARD}: schemaVersion ~39", str(dash.get("schemaVersion")))
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    rep.check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
              "dashboard: `datasource` variable of type prometheus")
    for name in ("target", "sink"):
        v = variables.get(name, {})
        rep.check(v.get("type") == "query" and label_values_query(variable_query(v)) is not None,
                  f"dashboard: `{name}` variable from label_values")
    panels = list(dashboard_panels(dash))
    ids = [p.get("id") for p in panels]
    rep.check(len(ids) == len(set(ids)) and None not in ids, "dashboard: panel ids are unique")
    for p in panels:
        if p.get("type") == "row":
            continue
        what = f"dashboard panel {p.get('title')!r}"
        refs = [t.get("refId") for t in p.get("targets", [])]
        ok = bool(refs) and len(refs) == len(set(refs)) and all(t.get("expr") for t in p["targets"])
        ok = ok and (p.get("datasource") or {}).get("uid") == "${datasource}"
        ok = ok and all((t.get("datasource") or {}).get("uid") == "${datasource}" for t in p["targets"])
        rep.check(ok, f"{what}: targets have refIds and exprs and use ${{datasource}}")
        for t in p.get("targets", []):
            for var in ("target", "sink"):
                for m in re.finditer(r"(\w+)\s*(=~|!~|=|!=)\s*\"\$\{?" + var + r"\b", t["expr"]):
                    rep.check(m.group(2) == "=~", f"{what} {t['refId']}: ${var} used with =~",
                              f"{m.group(0)!r}: a multi-value variable needs a regex matcher")


def cmd_static(args) -> int:
    rep = Report()
    check_layout(rep)
    for variant in VARIANTS:
        check_kubernetes(rep, args.loopwatch, variant)
    check_monitoring(rep)
    check_systemd(rep, args.loopwatch)
    check_dashboard_structure(rep)
    return rep.finish("static checks")


# --- live checks ------------------------------------------------------------------------------


def resolve_variables(rep: Report, prom: Prometheus, dash: dict) -> dict[str, str] | None:
    """The value each dashboard variable takes with "All" selected, as Grafana computes it."""
    values = dict(GRAFANA_BUILTINS)
    now = time.time()
    for v in dash.get("templating", {}).get("list", []):
        name, kind = v["name"], v.get("type")
        what = f"dashboard variable ${name}"
        if kind == "datasource":
            values[name] = "prometheus"
            continue
        if kind in ("interval", "custom", "constant", "textbox"):
            opts = [o.get("value") for o in v.get("options", [])] or [str(v.get("query", ""))]
            values[name] = v.get("allValue") or "(" + "|".join(opts) + ")"
            continue
        q = variable_query(v)
        try:
            q = substitute(q, values)
        except KeyError as e:
            rep.fail(what, f"refers to an unknown variable ${e.args[0]}")
            return None
        lv = label_values_query(q)
        found: list[str] = []
        if lv:
            selector, label = lv
            params = {"start": f"{now - 300:.3f}", "end": f"{now:.3f}"}
            if selector:
                params["match[]"] = selector
                result, err = prom.query(selector)
                if err or not result:
                    rep.fail(f"{what} query {selector}", err or "no samples")
                    return None
            doc = prom.api(f"label/{label}/values", **params)
            found = doc.get("data") or []
            detail = doc.get("error")
        else:  # query_result(...) or a plain PromQL expression
            inner = re.fullmatch(r"\s*query_result\((.*)\)\s*", q, re.S)
            result, detail = prom.query(inner.group(1) if inner else q)
            found = sorted({json.dumps(s["metric"]) for s in result or []})
        if not found:
            rep.fail(f"{what}: {q}", detail or "no values")
            return None
        rep.ok(f"{what}: {q}", f"values {found}")
        if v.get("includeAll"):
            values[name] = v.get("allValue") or "(" + "|".join(map(grafana_escape, found)) + ")"
        else:
            values[name] = grafana_escape(found[0])
    return values


def eval_expr(rep: Report, prom: Prometheus, what: str, expr: str, deadline: float,
              legend: str = "") -> None:
    """PASS when expr evaluates without error and returns at least one sample; an empty result
    is retried until the deadline (data may still be on its way), an error is final."""
    while True:
        result, err = prom.query(expr)
        if err:
            rep.fail(what, f"{err}\n      expr: {expr}")
            return
        if result:
            break
        if time.monotonic() >= deadline:
            rep.fail(what, f"no samples\n      expr: {expr}")
            return
        time.sleep(1)
    labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    missing = [l for l in labels if not any(l in s["metric"] for s in result)]
    if missing:
        rep.fail(what, f"legend {legend!r} names labels no series has: {missing}\n      expr: {expr}")
        return
    rep.ok(what, f"{len(result)} series, e.g. {result[0]['value'][1]}  | {expr}")


def cmd_live(args) -> int:
    selftest()
    rep = Report()
    prom = Prometheus(args.prometheus)
    start = time.monotonic()
    deadline = start + args.timeout

    # 1. Prometheus has scraped the demo for a full window, and evaluated every rule.
    job = args.job
    def ready() -> bool:
        if args.pid and not pid_alive(args.pid):
            raise ProcessLookupError(f"Prometheus (pid {args.pid}) exited")
        return http_get(f"{prom.url}/-/ready", timeout=2)[0] == 200

    try:
        wait_until("Prometheus to be ready", deadline, ready)
    except (TimeoutError, ProcessLookupError) as e:
        rep.fail("Prometheus is ready", str(e))
        return rep.finish("live checks")
    rep.ok("Prometheus is ready")

    def scraped() -> bool:
        result, _ = prom.query(f'count_over_time(up{{job="{job}"}}[1m]) >= {args.min_samples} and up{{job="{job}"}} == 1')
        return bool(result)

    wait_until(f"{args.min_samples} successful scrapes of job {job} within a minute", deadline, scraped)
    rep.ok(f"Prometheus scraped job {job} at least {args.min_samples} times in the last minute",
           f"after {time.monotonic() - start:.0f}s")

    alerts_doc = yaml.safe_load(ALERTS.read_text())
    want_groups = {g["name"]: len(g["rules"]) for g in alerts_doc["groups"]}

    def rules_healthy():
        doc = prom.api("rules")
        groups = {g["name"]: g for g in (doc.get("data") or {}).get("groups", [])}
        if set(groups) != set(want_groups):
            return None
        for name, g in groups.items():
            if len(g["rules"]) != want_groups[name]:
                return None
            if any(r.get("health") != "ok" for r in g["rules"]):
                return None
        return groups

    try:
        groups = wait_until("every rule to be evaluated with health ok", deadline, rules_healthy)
        for name, g in groups.items():
            rep.ok(f"Prometheus loaded rule group {name!r}: {len(g['rules'])} rules, health ok")
    except TimeoutError as e:
        doc = prom.api("rules")
        rep.fail("Prometheus loaded every rule group with health ok",
                 f"{e}; /api/v1/rules: {json.dumps(doc)[:1500]}")

    # 2. The dashboard: variables, then every panel's expressions. Data is there by now: an
    # expression still empty after a short grace is broken, so do not wait the full deadline.
    deadline = min(deadline, time.monotonic() + args.empty_grace)
    dash = json.loads(DASHBOARD.read_text())
    values = resolve_variables(rep, prom, dash)
    if values is not None:
        for p in dashboard_panels(dash):
            for t in p.get("targets", []):
                what = f"dashboard {p.get('title')!r} {t.get('refId')}"
                try:
                    expr = substitute(t["expr"], values)
                except KeyError as e:
                    rep.fail(what, f"unknown variable ${e.args[0]} in {t['expr']}")
                    continue
                eval_expr(rep, prom, what, expr, deadline, t.get("legendFormat", ""))

    # 3. The alerts: the full expression must evaluate; each signal must return data.
    for g in alerts_doc["groups"]:
        for r in g["rules"]:
            name = r.get("alert") or r.get("record")
            result, err = prom.query(r["expr"])
            if err:
                rep.fail(f"alert {name} expression", f"{err}\n      expr: {r['expr']}")
                continue
            rep.ok(f"alert {name} expression evaluates", f"{len(result)} series now (quiet when healthy)")
            try:
                sigs = signals(r["expr"]) if r.get("alert") else [r["expr"]]
            except ValueError as e:
                rep.fail(f"alert {name} expression shape", str(e))
                continue
            for i, s in enumerate(sigs, 1):
                eval_expr(rep, prom, f"alert {name} signal {i}/{len(sigs)}", s, deadline)

    # 4. A healthy loopwatch raises no alert.
    doc = prom.api("alerts")
    firing = [a for a in (doc.get("data") or {}).get("alerts", []) if a.get("state") == "firing"]
    rep.check(doc.get("status") == "success" and not firing, "no alert fires for a healthy demo",
              json.dumps(firing)[:1000])

    print(f"live checks took {time.monotonic() - start:.0f}s")
    return rep.finish("live checks")


# --- the systemd notify protocol -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotifySocket:
    """An emulated systemd notify socket: every datagram with its sender's pid."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.t0 = time.monotonic()
        self.messages: list[tuple[float, int, str]] = []  # (seconds since t0, sender pid, text)

    def until(self, pred, seconds: float) -> bool:
        """Receive until pred() holds or seconds pass; return pred()."""
        import struct

        end = time.monotonic() + seconds
        while not pred() and time.monotonic() < end:
            self.sock.settimeout(max(0.05, min(0.5, end - time.monotonic())))
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            pid = -1
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            self.messages.append((time.monotonic() - self.t0, pid, data.decode(errors="replace")))
        return pred()

    def times(self, field: str) -> list[float]:
        return [t for t, _, text in self.messages if field in text.split("\n")]


def cmd_notify(args) -> int:
    """Run `loopwatch run` with deploy/systemd/loopwatch.toml the way the unit does (Type=notify,
    NotifyAccess=main, WatchdogSec) against an emulated systemd notify socket, the Loops API
    unreachable: READY=1 once serving, WATCHDOG=1 pings, STOPPING=1 and exit 0 on SIGTERM
    within TimeoutStopSec, every message from the main process."""
    import signal

    rep = Report()
    unit = SYSTEMD_UNIT.read_text()
    setting = lambda key: (re.search(rf"^{key}=(.*)$", unit, re.M) or [None, None])[1]  # noqa: E731
    rep.check(setting("Type") == "notify" and setting("NotifyAccess") == "main" and bool(setting("WatchdogSec")),
              f"{SYSTEMD_UNIT}: Type=notify, NotifyAccess=main, WatchdogSec set")
    rep.check(setting("ExecReload") == "/bin/kill -HUP $MAINPID",
              f"{SYSTEMD_UNIT}: ExecReload= sends SIGHUP (systemctl reload)", f"ExecReload={setting('ExecReload')}")
    start_timeout = int((setting("TimeoutStartSec") or "90s").rstrip("s"))
    stop_timeout = int((setting("TimeoutStopSec") or "90s").rstrip("s"))
    watchdog_usec = 2_000_000  # the unit's 60s would make the check slow; the protocol is the same
    with tempfile.TemporaryDirectory(prefix="ops-check-notify-") as tmp:
        log_path = os.path.join(tmp, "loopwatch.log")
        proc = None
        try:
            # A free port may be taken before loopwatch binds it: then it exits, and runs again.
            for _attempt in range(3):
                port = free_port()
                text = SYSTEMD_CONFIG.read_text()
                text = text.replace("[api]\n", f'[api]\nbase_url = "http://127.0.0.1:{free_port()}"\n', 1)
                text = re.sub(r'^url = "sqlite://[^"]*"', f'url = "sqlite://{tmp}/loopwatch.db"', text,
                              count=1, flags=re.M)
                text = re.sub(r'^listen = "[^"]*"', f'listen = "127.0.0.1:{port}"', text, count=1, flags=re.M)
                cfg = materialize_config(text, "/run/credentials/loopwatch.service/", tmp)
                sock_path = os.path.join(tmp, f"notify{_attempt}")
                notify = NotifySocket(sock_path)
                env = clean_env() | {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": str(watchdog_usec)}
                with open(log_path, "w") as log:
                    proc = subprocess.Popen([args.loopwatch, "run", "-c", str(cfg)], env=env, cwd=tmp,
                                            stdout=log, stderr=subprocess.STDOUT)
                notify.until(lambda: notify.times("READY=1") or proc.poll() is not None, start_timeout)
                if proc.poll() is None or "already in use" not in Path(log_path).read_text():
                    break
                print(f"exit  loopwatch run: port {port} taken; running it again")

            ready = notify.times("READY=1")
            if rep.check(bool(ready), f"READY=1 within TimeoutStartSec={start_timeout}s",
                         f"got {notify.messages}, exit {proc.poll()}"):
                status, _ = http_get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                rep.check(status == 200, f"READY=1 after {ready[0]:.2f}s, /healthz serving (Loops API unreachable)",
                          f"/healthz answered {status}")
            n = len(notify.times("WATCHDOG=1"))
            notify.until(lambda: len(notify.times("WATCHDOG=1")) >= n + 2, 3 * watchdog_usec / 1e6)
            pings = notify.times("WATCHDOG=1")
            gaps = [b - a for a, b in zip(pings, pings[1:])]
            rep.check(len(pings) >= 2 and max(gaps) < watchdog_usec / 1e6,
                      f"WATCHDOG=1 more often than WATCHDOG_USEC={watchdog_usec}",
                      f"pings at {[round(p, 2) for p in pings]}")
            # systemctl reload: SIGHUP -> RELOADING=1 with MONOTONIC_USEC (Type=notify-reload
            # requires it) -> READY=1 once the config is re-read.
            n_ready = len(notify.times("READY=1"))
            proc.send_signal(signal.SIGHUP)
            notify.until(lambda: len(notify.times("READY=1")) > n_ready, start_timeout)
            reloading = [text for _, _, text in notify.messages if "RELOADING=1" in text.split("\n")]
            rep.check(bool(reloading) and any(l.startswith("MONOTONIC_USEC=") for l in reloading[-1].split("\n")),
                      "RELOADING=1 with MONOTONIC_USEC on SIGHUP", f"got {notify.messages[-3:]}")
            rep.check(len(notify.times("READY=1")) > n_ready and proc.poll() is None,
                      "READY=1 again after the reload, still running", f"got {notify.messages[-3:]}")
            proc.send_signal(signal.SIGTERM)
            t_term = time.monotonic()
            notify.until(lambda: proc.poll() is not None, stop_timeout)
            code = proc.poll()
            notify.until(lambda: notify.times("STOPPING=1"), 0.5)
            rep.check(bool(notify.times("STOPPING=1")), "STOPPING=1 on SIGTERM", f"got {notify.messages[-3:]}")
            rep.check(code == 0, f"exit 0 within TimeoutStopSec={stop_timeout}s of SIGTERM",
                      f"exit {code} after {time.monotonic() - t_term:.1f}s")
            senders = {pid for _, pid, _ in notify.messages}
            rep.check(senders == {proc.pid}, "every notification comes from the main process (NotifyAccess=main)",
                      f"senders {senders}, main {proc.pid}")
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if rep.failed:
                print("--- loopwatch log")
                print(Path(log_path).read_text()[-3000:])
    return rep.finish("systemd notify checks")


# --- PostgreSQL TLS with a private CA -----------------------------------------------------------


def cmd_pg_tls(args) -> int:
    """A throw-away PostgreSQL with ssl=on and a certificate from a private CA made here; then
    `loopwatch deliveries list` (which connects to the store and reads it) through each path
    docs/deployment.md documents: sslrootcert in the URL, PGSSLROOTCERT/PGSSLMODE in the
    environment (components/private-ca), and verify-full without the CA, which must fail."""
    rep = Report()
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: [int(x) for x in re.findall(r"\d+", str(p))])
    if not bindirs or not (bindirs[-1] / "initdb").exists():
        print("skip  PostgreSQL TLS: no server binaries under /usr/lib/postgresql (apt-get install postgresql)")
        return 0
    bindir = bindirs[-1]
    as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    tmp = tempfile.mkdtemp(prefix="ops-check-pgtls-")
    os.chmod(tmp, 0o755)
    data = os.path.join(tmp, "data")
    started = False
    try:
        def run(cmd, **kw):
            return subprocess.run(cmd, capture_output=True, text=True, **kw)
        # A CA, and a server certificate it signs for localhost and 127.0.0.1.
        ca_key, ca_crt = os.path.join(tmp, "ca.key"), os.path.join(tmp, "ca.crt")
        key, csr, crt = (os.path.join(tmp, f"server.{x}") for x in ("key", "csr", "crt"))
        ext = os.path.join(tmp, "server.ext")
        Path(ext).write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                             "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for cmd in (["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt, "-days", "2",
                     "-subj", "/CN=loopwatch ops-check private CA"],
                    ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
                    ["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
                     "-out", crt, "-days", "2", "-extfile", ext]):
            r = run(cmd)
            if r.returncode != 0:
                rep.fail("openssl makes a CA and a server certificate", r.stderr.strip())
                return rep.finish("PostgreSQL TLS checks")
        if as_pg:
            shutil.chown(key, "postgres")
            shutil.chown(crt, "postgres")
            shutil.chown(tmp, "postgres")
        os.chmod(key, 0o600)
        r = run([*as_pg, str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres"])
        if r.returncode != 0:
            rep.fail("initdb", r.stdout + r.stderr)
            return rep.finish("PostgreSQL TLS checks")
        port = free_port()
        r = run([*as_pg, str(bindir / "pg_ctl"), "-D", data, "-l", os.path.join(tmp, "server.log"), "-w", "-o",
                 f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on "
                 f"-c ssl_cert_file={crt} -c ssl_key_file={key}", "start"])
        if r.returncode != 0:
            rep.fail("PostgreSQL starts with ssl=on", Path(tmp, "server.log").read_text()[-2000:])
            return rep.finish("PostgreSQL TLS checks")
        started = True
        rep.ok(f"PostgreSQL {bindir.parent.name} with ssl=on, its certificate from a private CA", f"port {port}")
        cfg = Path(tmp, "loopwatch.toml")
        cfg.write_text('[[targets]]\nname = "t"\nrun_id = "r"\n')
        base = f"postgres://postgres@localhost:{port}/postgres"
        env = clean_env() | {"BASETEN_API_KEY": "unused"}
        env = {k: v for k, v in env.items() if not k.startswith("PG") and not k.startswith("SSL_CERT")}

        def store(url: str, extra: dict[str, str] | None = None):
            return run([args.loopwatch, "deliveries", "list", "-o", "json", "-c", str(cfg)],
                       env=env | {"LOOPWATCH__STORE__URL": url} | (extra or {}), timeout=60)

        r = store(f"{base}?sslmode=verify-full&sslrootcert={ca_crt}")
        rep.check(r.returncode == 0, "sslmode=verify-full&sslrootcert=<CA> in store.url: connects and reads the store",
                  f"exit {r.returncode}: {r.stderr.strip()}")
        r = store(base, {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": ca_crt})
        rep.check(r.returncode == 0, "PGSSLMODE=verify-full PGSSLROOTCERT=<CA> (components/private-ca): connects",
                  f"exit {r.returncode}: {r.stderr.strip()}")
        r = store(f"{base}?sslmode=verify-full")
        rep.check(r.returncode == 1 and "certificate" in r.stderr.lower(),
                  "sslmode=verify-full without the CA: refused (the bundled public roots do not trust it)",
                  f"exit {r.returncode}: {r.stderr.strip()}")
        r = store(f"postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca_crt}")
        rep.check(r.returncode == 0, "verify-full by IP address (127.0.0.1 in the certificate's names): connects",
                  f"exit {r.returncode}: {r.stderr.strip()}")
    finally:
        if started:
            subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                           capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return rep.finish("PostgreSQL TLS checks")


# --- small helpers for the bash driver --------------------------------------------------------


def cmd_wait_http(args) -> int:
    deadline = time.monotonic() + args.timeout
    last = ""
    while True:
        if args.pid and not pid_alive(args.pid):
            print(f"exit  {args.url}: process {args.pid} exited before answering {args.status}")
            return 3
        try:
            status, body = http_get(args.url, timeout=2)
            if status == args.status:
                print(f"PASS  {args.url} answered {status}: {body.decode(errors='replace').strip()[:80]}")
                return 0
            last = f"HTTP {status}: {body.decode(errors='replace').strip()[:200]}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        if time.monotonic() >= deadline:
            print(f"FAIL  {args.url} did not answer {args.status} within {args.timeout}s; last: {last}")
            return 1
        time.sleep(0.25)


def pid_alive(pid: int) -> bool:
    """False once pid has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cmd_fetch(args) -> int:
    status, body = http_get(args.url)
    sys.stdout.buffer.write(body)
    return 0 if status == 200 else 1


def cmd_free_port(_args) -> int:
    print(free_port())
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("static")
    p.add_argument("--loopwatch", help="a loopwatch binary, to run check-config on the shipped configs")
    p.set_defaults(func=cmd_static)
    p = sub.add_parser("live")
    p.add_argument("--prometheus", required=True, help="e.g. http://127.0.0.1:9090")
    p.add_argument("--job", default="loopwatch")
    p.add_argument("--pid", type=int, help="Prometheus's pid, to stop waiting if it exits")
    p.add_argument("--min-samples", type=int, default=50, help="scrapes within the last minute to wait for")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds for the whole live check")
    p.add_argument("--empty-grace", type=float, default=20.0,
                   help="seconds an expression may stay empty once the scrapes are in")
    p.set_defaults(func=cmd_live)
    p = sub.add_parser("notify")
    p.add_argument("--loopwatch", required=True)
    p.set_defaults(func=cmd_notify)
    p = sub.add_parser("pg-tls")
    p.add_argument("--loopwatch", required=True)
    p.set_defaults(func=cmd_pg_tls)
    p = sub.add_parser("wait-http")
    p.add_argument("url")
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--pid", type=int, help="give up as soon as this process has exited")
    p.set_defaults(func=cmd_wait_http)
    p = sub.add_parser("fetch")
    p.add_argument("url")
    p.set_defaults(func=cmd_fetch)
    p = sub.add_parser("free-port")
    p.set_defaults(func=cmd_free_port)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
