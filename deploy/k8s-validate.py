#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline, for `make k8s-check`.

    deploy/k8s-validate.py RENDERED.yaml...

- Kubernetes' own kinds against the API schemas that ship with `kubernetes-validate`,
  strictly (an unknown field is an error), for the oldest and the newest Kubernetes
  release the manifests support;
- CloudNativePG's kinds against the operator's CRDs in k8s/schemas/, strictly too;
- the rules of docs/deploy.md that no schema knows: no secret in a ConfigMap or in a
  plain environment value (a path to a mounted Secret is fine), every Secret used is one docs/deploy.md tells the operator to
  create (or the operator creates), every Deployment probes /healthz and /readyz and
  has a PodDisruptionBudget and a HorizontalPodAutoscaler, and the printer load
  balancer reaches only pods that run the relay.

Prints one line per problem and exits 1 if there is any.
"""

import copy
import pathlib
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
CNPG_SCHEMAS = ROOT / "k8s" / "schemas" / "cloudnative-pg-1.30.0"
# Secrets the CloudNativePG operator creates for the Cluster.
OPERATOR_SECRETS = {"printworks-db-app", "printworks-db-restored-app"}
SECRET_NAMES = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|SMTP_URL|DATABASE_URL)$")


def strict(schema):
    """The CRD schema with unknown fields refused (the API server would drop them)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            if isinstance(value, dict):
                walk(value)
            elif isinstance(value, list):
                for item in value:
                    walk(item)

    walk(schema)
    return schema


def crd_schemas():
    schemas = {}
    for path in sorted(CNPG_SCHEMAS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            schemas[(f"{group}/{version['name']}", kind)] = strict(schema)
    return schemas


def pod_spec(obj):
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"], obj["spec"]["template"]["metadata"]
    if kind == "CronJob":
        template = obj["spec"]["jobTemplate"]["spec"]["template"]
        return template["spec"], template["metadata"]
    return None, None


def secrets_used(spec):
    names = set()
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                names.add(source["secretRef"]["name"])
    return names


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check(path, docs, crds, deploy_doc):
    problems = []

    def problem(obj, message):
        problems.append(f"{path}: {obj['kind']} {obj['metadata']['name']}: {message}")

    for obj in docs:
        key = (obj["apiVersion"], obj["kind"])
        if key in crds:
            for error in jsonschema.Draft7Validator(crds[key]).iter_errors(obj):
                where = "/".join(str(p) for p in error.absolute_path)
                problem(obj, f"{where}: {error.message}")
        elif obj["apiVersion"].startswith("postgresql.cnpg.io"):
            problem(obj, "no CloudNativePG schema for this kind in k8s/schemas/")
        else:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = "/".join(str(p) for p in e.path)
                    problem(obj, f"Kubernetes {version}: {where}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    problem(obj, f"Kubernetes {version}: {e.message}")

        if obj["kind"] == "ConfigMap":
            for name, value in obj.get("data", {}).items():
                if SECRET_NAMES.search(name) and not value.startswith("/"):
                    problem(obj, f"{name} is a secret: it belongs in a Secret")
        spec, meta = pod_spec(obj)
        if spec is None:
            continue
        for container in spec["containers"]:
            for env in container.get("env", []):
                if SECRET_NAMES.search(env["name"]) and not env.get("value", "/").startswith("/"):
                    problem(obj, f"{env['name']} is a secret in a plain environment value")
        for name in secrets_used(spec) - OPERATOR_SECRETS:
            if f"`{name}`" not in deploy_doc:
                problem(obj, f"uses the Secret {name}, which docs/deploy.md does not say to create")

    by_kind = {}
    for obj in docs:
        by_kind.setdefault(obj["kind"], []).append(obj)
    for deployment in by_kind.get("Deployment", []):
        spec, meta = pod_spec(deployment)
        labels = meta.get("labels", {})
        container = spec["containers"][0]
        probes = {
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        for probe, want in probes.items():
            got = container.get(probe, {}).get("httpGet", {}).get("path")
            if got != want:
                problem(deployment, f"{probe} must GET {want} (it is {got})")
        name = deployment["metadata"]["name"]
        if not any(
            selects(p["spec"]["selector"]["matchLabels"], labels)
            for p in by_kind.get("PodDisruptionBudget", [])
        ):
            problem(deployment, "no PodDisruptionBudget selects its pods")
        if not any(
            h["spec"]["scaleTargetRef"]["name"] == name
            for h in by_kind.get("HorizontalPodAutoscaler", [])
        ):
            problem(deployment, "no HorizontalPodAutoscaler scales it")
        args = container.get("args", [])
        runs_relay = "--services" in args and any(
            s in ("all", "relay")
            for s in args[args.index("--services") + 1].split(",")
        )
        for service in by_kind.get("Service", []):
            selector = service["spec"].get("selector", {})
            if (
                service["spec"].get("type") == "LoadBalancer"
                and selects(selector, labels)
                and not runs_relay
            ):
                problem(
                    deployment,
                    f"the printer load balancer {service['metadata']['name']} selects "
                    "pods that do not run the relay",
                )
    return problems


def main(paths):
    crds = crd_schemas()
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    problems = []
    for path in paths:
        docs = [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
        if not docs:
            problems.append(f"{path}: nothing rendered")
        problems += check(path, docs, crds, deploy_doc)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
