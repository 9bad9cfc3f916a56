#!/usr/bin/env python3
"""deploy/grafana's dashboard: valid JSON; rates over $__rate_interval (a hard-coded [1m] is
empty at a 1-minute scrape); job and instance variables, and every series selector in every
panel restricted by both (replicas are not summed together unless chosen)."""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SELECTOR = re.compile(r'\b(gqa_[a-z_]+|process_[a-z_]+)(\{[^}]*\})?')


def main():
    failures = []
    dashboard = json.loads((ROOT / "deploy/grafana/gqa-serve-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("datasource", "job", "instance"):
        if name not in variables:
            failures.append(f"no ${name} variable")
    if "instance" in variables and "$job" not in json.dumps(variables["instance"]["query"]):
        failures.append("the instance variable does not follow $job")
    exprs = 0
    for panel in dashboard["panels"]:
        if not panel.get("targets"):
            failures.append(f"panel {panel.get('title')!r} has no targets")
        for target in panel.get("targets", []):
            expr = target["expr"]
            exprs += 1
            if re.search(r"\[\d+[smhdw]\]", expr):
                failures.append(f"{panel['title']!r}: a hard-coded range in {expr}")
            if "rate(" in expr and "[$__rate_interval]" not in expr:
                failures.append(f"{panel['title']!r}: a rate without $__rate_interval: {expr}")
            for match in SELECTOR.finditer(expr):
                labels = match.group(2) or ""
                if 'job=~"$job"' not in labels or 'instance=~"$instance"' not in labels:
                    failures.append(f"{panel['title']!r}: {match.group(0)} lacks job/instance")
    for f in failures:
        print("FAIL " + f)
    print(f"{len(dashboard['panels'])} panels, {exprs} queries: " +
          ("all checks passed" if not failures else f"{len(failures)} failure(s)"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
