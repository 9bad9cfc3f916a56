#!/usr/bin/env python3
"""deploy/kubernetes and the Dockerfile, offline: every Kubernetes object validated against the
pinned Kubernetes API schemas that kubernetes-validate bundles (strict: unknown fields fail), the
ServiceMonitor (a Prometheus Operator CRD, not bundled) checked by hand, and what an operator
needs: a startupProbe, probes that work with TLS on gRPC (HTTP on the plain metrics port, never a
grpc probe), a pinned image tag pulled IfNotPresent, non-root security contexts, every
PersistentVolumeClaim the Deployments mount shipped, matching ports; and an image that runs as a
non-root user. The InferencePool example (gqa-serve-inferencepool.yaml): its Gateway API and
Inference Extension objects validated against the CRD schemas pinned in tests/deploy/schemas/
(jsonschema, unknown fields refused), and the endpoint picker's configuration checked against
the pool, the pods and the metric names gqa-server exports."""
import json
import pathlib
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.30"  # the API the manifests are validated against
SCHEMAS = ROOT / "tests/deploy/schemas"
# Plugin types of llm-d-router v0.10.0's endpoint picker that the example may name.
EPP_PLUGIN_TYPES = {"metrics-data-source", "core-metrics-extractor", "queue-scorer",
                    "kv-cache-utilization-scorer", "prefix-cache-scorer", "max-score-picker",
                    "weighted-random-picker", "running-requests-size-scorer"}
SERVER = "gqa-serve"  # the container name of gqa-server in every Deployment
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
    print(("ok   " if ok else "FAIL ") + what, flush=True)


def strict(schema):
    """The CRD schema refusing fields it does not name, as kubectl apply --validate=strict does."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


def crd_schema(doc):
    """The pinned schema of a custom resource's apiVersion and kind, or None."""
    group, _, version = doc["apiVersion"].rpartition("/")
    path = SCHEMAS / f"{group}_{version}_{doc['kind']}.json"
    return strict(json.loads(path.read_text())) if path.exists() else None


def validate(doc, what):
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        return  # the ServiceMonitor: checked by hand below
    schema = crd_schema(doc)
    if schema is not None:
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
        check(not errors, f"{what} valid against the pinned CRD schema" +
              (f": {errors[0].json_path}: {errors[0].message}" if errors else ""))
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        check(True, f"{what} valid against Kubernetes {KUBERNETES_VERSION}")
    except Exception as e:  # ValidationError, SchemaNotFoundError, InvalidSchemaError
        check(False, f"{what} invalid: {str(e).splitlines()[0]}")


def exported_metric_names():
    """The series names gqa-server registers (server/metrics/*.cc), to check the picker's specs."""
    names = set()
    for source in (ROOT / "server/metrics").glob("*.cc"):
        names |= set(re.findall(r'"(gqa_[a-z_]+)"', source.read_text()))
    return names


def check_inference_pool(by_kind):
    """The pool selects gqa-server pods on their HTTP port, its picker is a shipped Service and
    Deployment, the picker's configuration names our metrics and the pods' engine label, and the
    HTTPRoute sends the Gateway's traffic to the pool."""
    pools = by_kind.get("InferencePool", [])
    check(bool(pools), "an InferencePool example is shipped")
    deployments = [d for _, d in by_kind.get("Deployment", [])]
    services = {s["metadata"]["name"]: s for _, s in by_kind.get("Service", [])}
    config_maps = {c["metadata"]["name"]: c for _, c in by_kind.get("ConfigMap", [])}
    metrics = exported_metric_names()
    for name, pool in pools:
        spec = pool["spec"]
        selected = [d for d in deployments if all(
            d["spec"]["template"]["metadata"]["labels"].get(k) == v
            for k, v in spec["selector"]["matchLabels"].items())]
        check(len(selected) == 1, f"{name}: InferencePool {pool['metadata']['name']} selects one "
              f"Deployment ({[d['metadata']['name'] for d in selected]})")
        if not selected:
            continue
        pod = selected[0]["spec"]["template"]
        server = next(c for c in pod["spec"]["containers"] if c["name"] == SERVER)
        ports = {p["name"]: p["containerPort"] for p in server["ports"]}
        target = [p["number"] for p in spec["targetPorts"]]
        check(target == [ports.get("http")] == [8000],
              f"{name}: the pool's target port {target} is the server's HTTP port (8000)")
        http_flag = server["args"][server["args"].index("--http_port") + 1] \
            if "--http_port" in server["args"] else None
        check(http_flag == "8000", f"{name}: the server is started with --http_port {http_flag}")
        picker = spec["endpointPickerRef"]
        service = services.get(picker["name"])
        check(service is not None and picker["port"]["number"] in
              [p["port"] for p in service["spec"]["ports"]],
              f"{name}: the endpoint picker Service {picker['name']}:{picker['port']['number']} "
              "is shipped")
        epp = [d for d in deployments if service and all(
            d["spec"]["template"]["metadata"]["labels"].get(k) == v
            for k, v in service["spec"]["selector"].items())]
        check(len(epp) == 1, f"{name}: a Deployment backs the picker Service")
        if not epp:
            continue
        args = epp[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        check(args[args.index("--pool-name") + 1] == pool["metadata"]["name"],
              f"{name}: the picker serves the pool {pool['metadata']['name']}")
        volumes = epp[0]["spec"]["template"]["spec"]["volumes"]
        config_map = config_maps.get(volumes[0].get("configMap", {}).get("name"))
        check(config_map is not None, f"{name}: the picker's ConfigMap is shipped")
        if config_map is None:
            continue
        config_file = args[args.index("--config-file") + 1].rsplit("/", 1)[1]
        config = yaml.safe_load(config_map["data"][config_file])
        check(config["apiVersion"] == "llm-d.ai/v1alpha1" and
              config["kind"] == "EndpointPickerConfig", f"{name}: an EndpointPickerConfig")
        plugins = {p.get("name", p["type"]): p for p in config["plugins"]}
        unknown = {p["type"] for p in plugins.values()} - EPP_PLUGIN_TYPES
        check(not unknown, f"{name}: the picker's plugin types exist ({sorted(unknown)} unknown)")
        refs = {r["pluginRef"] for profile in config["schedulingProfiles"]
                for r in profile["plugins"]}
        check(refs <= set(plugins), f"{name}: every pluginRef names a plugin")
        source = plugins.get("metrics-data-source", {}).get("parameters", {})
        check(source.get("port") == ports.get("metrics") and source.get("path") == "/metrics",
              f"{name}: the picker scrapes the metrics port {ports.get('metrics')} "
              f"(port {source.get('port')}, path {source.get('path')})")
        extractor = plugins.get("core-metrics-extractor", {}).get("parameters", {})
        engine = pod["metadata"]["labels"].get("llm-d.ai/engine-type")
        engines = {e["name"]: e for e in extractor.get("engineConfigs", [])}
        check(engine in engines and extractor.get("defaultEngine") == engine,
              f"{name}: the pods' llm-d.ai/engine-type {engine} has an engine config")
        for key in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "cacheInfoSpec"):
            metric = engines.get(engine, {}).get(key, "").split("{")[0]
            check(metric in metrics, f"{name}: {key} {metric} is a series gqa-server exports")
    gateways = {g["metadata"]["name"] for _, g in by_kind.get("Gateway", [])}
    pool_names = {p["metadata"]["name"] for _, p in pools}
    for name, route in by_kind.get("HTTPRoute", []):
        parents = {r["name"] for r in route["spec"]["parentRefs"]}
        check(parents <= gateways, f"{name}: HTTPRoute {route['metadata']['name']} is attached to "
              f"a shipped Gateway ({sorted(parents)})")
        backends = [b for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
        check(backends and all(b.get("kind") == "InferencePool" and
                               b.get("group") == "inference.networking.k8s.io" and
                               b["name"] in pool_names for b in backends),
              f"{name}: HTTPRoute {route['metadata']['name']} routes to the InferencePool")


def main():
    objects = []
    for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects.append((path.name, doc))
    by_kind = {}
    for name, doc in objects:
        by_kind.setdefault(doc["kind"], []).append((name, doc))
        validate(doc, f"{name}: {doc['kind']} {doc['metadata']['name']}")

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
            check(tag and tag != "latest" and re.match(r"v?\d+\.\d+\.\d+", tag) is not None,
                  f"{name}: image {image} has a pinned version tag")
            check(c.get("imagePullPolicy") == "IfNotPresent",
                  f"{name}: imagePullPolicy {c.get('imagePullPolicy')}")
            csc = c.get("securityContext", {})
            check(csc.get("allowPrivilegeEscalation") is False and
                  "ALL" in csc.get("capabilities", {}).get("drop", []),
                  f"{name}: the container {c['name']} drops privileges")
            if c["name"] != SERVER:
                continue  # the endpoint picker: its own probes (gRPC health, no TLS) and ports
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe)
                check(p is not None, f"{name}: {probe} present")
                if p is None:
                    continue
                check("grpc" not in p and ("httpGet" in p or "tcpSocket" in p or "exec" in p),
                      f"{name}: {probe} works with TLS on gRPC ({sorted(set(p) - {'periodSeconds', 'failureThreshold', 'timeoutSeconds', 'initialDelaySeconds'})})")
                port = p.get("httpGet", {}).get("port")
                check(port in (None, "metrics"), f"{name}: {probe} asks the metrics port")
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

    check_inference_pool(by_kind)

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
