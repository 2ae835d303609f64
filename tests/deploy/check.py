"""Checks deploy/kubernetes as a cluster would take it:

1. every object validates against the Kubernetes 1.33 OpenAPI schemas (kubernetes-validate,
   strict: no unknown fields);
2. kustomization.yaml lists every manifest, and only those;
3. the StatefulSet's ports, probes and mounted Secrets are the ones its Services and `ktrail
   serve` arguments name.

Usage: check.py DIR. Prints one line per failure; exit 1 if any.
"""
import pathlib
import sys

import kubernetes_validate
import yaml

directory = pathlib.Path(sys.argv[1])
failures = []
objects = {}
for path in sorted(directory.glob("*.yaml")):
    if path.name == "kustomization.yaml":
        continue
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        objects[(doc["kind"], doc["metadata"]["name"])] = doc
        try:
            kubernetes_validate.validate(doc, "1.33.0", strict=True)
        except Exception as e:
            failures.append(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {e}")

kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
listed = set(kustomization["resources"])
present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
if listed != present:
    failures.append(f"kustomization.yaml lists {sorted(listed)}, the directory has {sorted(present)}")

sts = objects[("StatefulSet", "ktrail")]
pod = sts["spec"]["template"]["spec"]
container = pod["containers"][0]
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
service = objects[("Service", "ktrail")]
for p in service["spec"]["ports"]:
    if ports.get(p["targetPort"]) is None:
        failures.append(f"Service port {p['name']} targets {p['targetPort']}, which the container does not name")
args = " ".join(container["args"])
for name, port in ports.items():
    if f":{port}" not in args:
        failures.append(f"container port {name} ({port}) is not a listener of `ktrail {args}`")
mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
for flag in ["--token-file", "--pg-password-file", "--pg-tls-cert", "--grpc-tls-cert"]:
    value = next(a.split("=", 1)[1] for a in container["args"] if a.startswith(flag + "="))
    if not any(value.startswith(m + "/") for m in mounts.values()):
        failures.append(f"{flag}={value} is under no mounted volume")
for probe in ["startupProbe", "readinessProbe"]:
    if container[probe]["httpGet"]["path"] != "/healthz":
        failures.append(f"{probe} is not on /healthz")

for f in failures:
    print("FAIL", f)
print(f"{len(objects)} objects checked")
sys.exit(1 if failures else 0)
