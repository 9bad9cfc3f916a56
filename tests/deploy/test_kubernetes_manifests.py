#!/usr/bin/env python3
"""deploy/kubernetes and the Dockerfile, offline: every Kubernetes object validated against the
pinned Kubernetes API schemas that kubernetes-validate bundles (strict: unknown fields fail), the
ServiceMonitor (a Prometheus Operator CRD, not bundled) checked by hand, and what an operator
needs: a startupProbe, probes that work with TLS on gRPC (HTTP on the plain metrics port, never a
grpc probe), a pinned image tag pulled IfNotPresent, non-root security contexts, every
PersistentVolumeClaim the Deployments mount shipped, matching ports; and an image that runs as a
non-root user."""
import pathlib
import re
import sys

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.30"  # the API the manifests are validated against
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
    print(("ok   " if ok else "FAIL ") + what, flush=True)


def main():
    objects = []
    for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects.append((path.name, doc))
    by_kind = {}
    for name, doc in objects:
        by_kind.setdefault(doc["kind"], []).append((name, doc))
        what = f"{name}: {doc['kind']} {doc['metadata']['name']}"
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            check(True, f"{what} valid against Kubernetes {KUBERNETES_VERSION}")
        except Exception as e:  # ValidationError, SchemaNotFoundError, InvalidSchemaError
            check(False, f"{what} invalid: {str(e).splitlines()[0]}")

    claims = {doc["metadata"]["name"] for _, doc in by_kind.get("PersistentVolumeClaim", [])}
    services = by_kind.get("Service", [])
    check(bool(by_kind.get("Deployment")), "Deployments shipped")
    for name, deployment in by_kind.get("Deployment", []):
        pod = deployment["spec"]["template"]["spec"]
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        sc = pod.get("securityContext", {})
        check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0,
              f"{name}: the pod runs as non-root (runAsNonRoot, runAsUser {sc.get('runAsUser')})")
        for volume in pod.get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                check(claim in claims, f"{name}: the PVC {claim} is shipped")
        for c in pod["containers"]:
            image = c["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            check(tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag) is not None,
                  f"{name}: image {image} has a pinned version tag")
            check(c.get("imagePullPolicy") == "IfNotPresent",
                  f"{name}: imagePullPolicy {c.get('imagePullPolicy')}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe)
                check(p is not None, f"{name}: {probe} present")
                if p is None:
                    continue
                check("grpc" not in p and ("httpGet" in p or "tcpSocket" in p or "exec" in p),
                      f"{name}: {probe} works with TLS on gRPC ({sorted(set(p) - {'periodSeconds', 'failureThreshold', 'timeoutSeconds', 'initialDelaySeconds'})})")
                port = p.get("httpGet", {}).get("port")
                check(port in (None, "metrics"), f"{name}: {probe} asks the metrics port")
            csc = c.get("securityContext", {})
            check(csc.get("allowPrivilegeEscalation") is False and
                  "ALL" in csc.get("capabilities", {}).get("drop", []),
                  f"{name}: the container drops privileges")
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            check(str(ports.get("metrics")) == annotations.get("prometheus.io/port"),
                  f"{name}: prometheus.io/port {annotations.get('prometheus.io/port')} is the "
                  f"metrics port {ports.get('metrics')}")
            selector = deployment["spec"]["selector"]["matchLabels"]
            for sname, service in services:
                if service["spec"]["selector"] == selector:
                    sports = {p["name"]: p for p in service["spec"]["ports"]}
                    check(set(sports) == set(ports) and all(
                        sports[k]["targetPort"] == k for k in sports),
                          f"{sname}: Service {service['metadata']['name']} exposes {sorted(ports)}")

    monitors = by_kind.get("ServiceMonitor", [])
    check(bool(monitors), "a ServiceMonitor example is shipped")
    for name, monitor in monitors:
        spec = monitor["spec"]
        apps = set()
        for expr in spec["selector"].get("matchExpressions", []):
            apps |= set(expr["values"])
        apps |= {spec["selector"].get("matchLabels", {}).get("app")} - {None}
        selected = [s for _, s in services if s["metadata"]["labels"].get("app") in apps]
        check(bool(selected), f"{name}: selects the Services {sorted(apps)}")
        for endpoint in spec["endpoints"]:
            check(all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
                      for s in selected), f"{name}: scrapes the port {endpoint['port']}")

    # The Dockerfile: each runtime stage switches to a non-root user before its ENTRYPOINT; the
    # unpinned apt packages carry hadolint's ignore and the reason (DL3008).
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    for stage in stages:
        header = stage.splitlines()[0]
        if "ENTRYPOINT" not in stage:
            continue
        user = re.findall(r"^USER (\S+)", stage, flags=re.M)
        check(bool(user) and not user[-1].startswith(("0", "root")) and
              stage.index("USER") < stage.index("ENTRYPOINT"),
              f"Dockerfile stage {header}: runs as {user[-1] if user else 'root'}")
    installs = len(re.findall(r"apt-get install", dockerfile))
    ignored = len(re.findall(r"# hadolint ignore=DL3008\nRUN apt-get update[^\n]*apt-get install",
                             dockerfile))
    check(installs == ignored and "DL3008" in dockerfile.split("FROM", 1)[0],
          f"Dockerfile: {ignored} of {installs} apt-get installs document DL3008")

    print(f"{len(failures)} failure(s)" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
