#!/usr/bin/env python3
"""Lints the deploy files (run by .ci/run; no container engine, kustomize or cluster needed).

1. hadolint on deploy/docker/Dockerfile and Dockerfile.cuda.
2. Each overlay of deploy/k8s is built the way `kubectl apply -k` builds it, for the
   features the files use (resources, labels with selectors, image tags, strategic-merge
   patches of containers by name), and every built resource of a built-in kind is validated
   with kubernetes-validate --strict against the Kubernetes schemas. The ServiceMonitor
   (a Prometheus Operator CRD, not in those schemas) gets a structural check.
3. deploy/compose.yaml parses and names files that exist.

Usage: python scripts/validate_deploy.py HADOLINT KUBERNETES_VALIDATE
"""
import copy
import os
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEPLOY = os.path.join(ROOT, "deploy")


def load_kustomization(path):
    """The resources of the kustomization at `path`, built (see the module header)."""
    with open(os.path.join(path, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    docs = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(path, r))
        if os.path.isdir(p):
            docs.extend(load_kustomization(p))
        else:
            with open(p) as f:
                docs.extend(d for d in yaml.safe_load_all(f) if d)
    for label in k.get("labels", []):
        for d in docs:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for patch in k.get("patches", []):
        with open(os.path.join(path, patch["path"])) as f:
            body = yaml.safe_load(f)
        t = patch["target"]
        hits = [d for d in docs if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]]
        assert hits, f"{path}: patch {patch['path']} matches no resource"
        for d in hits:
            merge(d, body)
    for image in k.get("images", []):
        for d in docs:
            for c in containers(d):
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image['name']}:{image['newTag']}"
    return docs


def containers(doc):
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def merge(into, patch):
    """Strategic merge for what the patches use: maps merge, lists of named items merge by
    name, other lists are appended."""
    for key, value in patch.items():
        have = into.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            merge(have, value)
        elif isinstance(value, list) and isinstance(have, list):
            for item in value:
                named = isinstance(item, dict) and "name" in item
                match = [h for h in have if named and isinstance(h, dict) and h.get("name") == item["name"]]
                if match:
                    merge(match[0], item)
                else:
                    have.append(copy.deepcopy(item))
        else:
            into[key] = copy.deepcopy(value)


def check_servicemonitor(doc, service):
    spec = doc["spec"]
    want = spec["selector"]["matchLabels"]
    labels = service["metadata"].get("labels", {})
    assert all(labels.get(k) == v for k, v in want.items()), "ServiceMonitor selects no Service"
    ports = {p["name"] for p in service["spec"]["ports"]}
    for e in spec["endpoints"]:
        assert e["port"] in ports and e["path"] == "/metrics", e


def main():
    hadolint, validate = sys.argv[1], sys.argv[2]
    dockerfiles = [os.path.join(DEPLOY, "docker", f) for f in ("Dockerfile", "Dockerfile.cuda")]
    subprocess.run([hadolint, *dockerfiles], check=True)
    print("hadolint: ok")
    for overlay in ("cpu", "gpu"):
        docs = load_kustomization(os.path.join(DEPLOY, "k8s", "overlays", overlay))
        service = next(d for d in docs if d["kind"] == "Service")
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for d in docs:
                if d["kind"] == "ServiceMonitor":
                    check_servicemonitor(d, service)
                    continue
                path = os.path.join(tmp, f"{d['kind']}-{d['metadata']['name']}.yaml")
                with open(path, "w") as f:
                    yaml.safe_dump(d, f)
                files.append(path)
            subprocess.run([validate, "--strict", "--quiet", *files], check=True)
        gpu = any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                  for d in docs for c in containers(d))
        assert gpu == (overlay == "gpu"), f"{overlay}: GPU resources {gpu}"
        print(f"k8s overlay {overlay}: {len(docs)} resources ok")
    with open(os.path.join(DEPLOY, "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    for name, svc in compose["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert os.path.exists(os.path.join(DEPLOY, src)) or src == "./models", (name, src)
    print("compose: ok")


if __name__ == "__main__":
    main()
