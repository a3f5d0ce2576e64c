#!/usr/bin/env python3
"""Validate custom resources (Modules, ManagedClusterModules) against kmm-rs's generated CRD schemas, as the API
server does before any webhook runs: kubernetes-validate only warns about custom resources, so this checks them.

usage: validate_crs.py CRD_DIR FILE...   (multi-document YAML; objects of other kinds are skipped)
"""
import sys

import jsonschema
import yaml


def schemas(crd_dir):
    import glob
    out = {}
    for path in sorted(glob.glob(f"{crd_dir}/*.yaml")):
        with open(path) as f:
            doc = yaml.safe_load(f)
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        group = doc["spec"]["group"]
        kind = doc["spec"]["names"]["kind"]
        for version in doc["spec"]["versions"]:
            out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def main():
    crd_dir, files = sys.argv[1], sys.argv[2:]
    known = schemas(crd_dir)
    checked, failed = 0, 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            schema = known.get((doc.get("apiVersion"), doc.get("kind")))
            if schema is None:
                continue
            checked += 1
            errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
            name = doc.get("metadata", {}).get("name")
            for e in errors:
                failed += 1
                field = ".".join(str(p) for p in e.path)
                print(f"FAIL {path}: {doc['kind']} {name}: {field}: {e.message}")
    print(f"custom resources checked against the CRD schemas: {checked}, violations: {failed}")
    if checked == 0:
        print("no custom resource found", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
