#!/usr/bin/env python3
"""Writes deploy/kubernetes/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yml.

The alerting rules have one source, alerts.yml (loaded by a plain Prometheus and unit-tested
by `promtool test rules`); the Prometheus Operator's PrometheusRule carries the same groups,
indented under `spec:`. Run from anywhere after editing alerts.yml:

  scripts/gen_prometheusrule.py            rewrite the PrometheusRule
  scripts/gen_prometheusrule.py --check    exit 1 when it is out of date (scripts/ops-check)

Standard library only.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALERTS = Path("deploy/prometheus/alerts.yml")
PROMETHEUSRULE = Path("deploy/kubernetes/monitoring/prometheusrule.yaml")


def prometheusrule_text() -> str:
    alerts = (ROOT / ALERTS).read_text()
    body = alerts[alerts.index("\ngroups:") + 1 :]
    indented = "".join("  " + l if l.strip() else l for l in body.splitlines(True))
    return (
        f"# GENERATED from {ALERTS} by scripts/gen_prometheusrule.py: edit alerts.yml and run it\n"
        "# again (scripts/ops-check fails while this file is out of date).\n"
        "# Your Prometheus may select PrometheusRules by a label (e.g. release: kube-prometheus-stack).\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: loopwatch\n"
        "  labels:\n"
        "    app.kubernetes.io/name: loopwatch\n"
        "spec:\n" + indented
    )


def main() -> int:
    want = prometheusrule_text()
    path = ROOT / PROMETHEUSRULE
    if sys.argv[1:] == ["--check"]:
        if path.exists() and path.read_text() == want:
            print(f"PASS  {PROMETHEUSRULE} is generated from {ALERTS}, up to date")
            return 0
        print(f"FAIL  {PROMETHEUSRULE} is out of date with {ALERTS}; run scripts/gen_prometheusrule.py")
        return 1
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    path.write_text(want)
    print(f"wrote {PROMETHEUSRULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
