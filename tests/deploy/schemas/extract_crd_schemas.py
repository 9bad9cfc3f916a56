#!/usr/bin/env python3
"""Writes the openAPIV3Schema of the stored version of the given CustomResourceDefinition YAML
files, descriptions removed, as <group>_<version>_<kind>.json beside this script (the pinned schemas that
tests/deploy/test_kubernetes_manifests.py validates the Gateway API and Inference Extension
objects against). README.md here names the upstream tags and commits they were taken from.

  extract_crd_schemas.py CRD.yaml...
"""
import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent


def without_descriptions(node):
    """The schema less its prose (the "description" of every node), which validation ignores."""
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def main(paths):
    for path in paths:
        crd = yaml.safe_load(pathlib.Path(path).read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("storage"):
                continue
            schema = without_descriptions(version["schema"]["openAPIV3Schema"])
            name = f"{spec['group']}_{version['name']}_{spec['names']['kind']}.json"
            (HERE / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
