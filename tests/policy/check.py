"""Checks what `ktrail policy generate` wrote, with tools Kubernetes users trust:

1. every object validates against the Kubernetes OpenAPI schemas (kubernetes-validate,
   strict): PodSecurityPolicy against 1.24 (its last release), the rest against 1.33;
2. every ValidatingAdmissionPolicy, evaluated with a CEL interpreter (cel-python) as the
   apiserver evaluates it, admits the workload's own pod, does not match other pods, and
   denies the same pod with one privilege more.

Usage: check.py DIR CASES.json   (CASES: [{"file": ..., "pod": {...}}], written by the test)
Prints one line per failure; exit 1 if any.
"""
import copy
import json
import pathlib
import sys

import celpy
import kubernetes_validate
import yaml

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL", msg)


def validate_schemas(directory):
    count = 0
    for path in sorted(directory.glob("*.yaml")):
        if path.name.endswith(".patch.yaml"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            version = "1.24.0" if doc["kind"] == "PodSecurityPolicy" else "1.33.0"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                count += 1
            except Exception as e:  # ValidationError, SchemaNotFoundError, ...
                fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']} against {version}: {e}")
    return count


ENV = celpy.Environment()
PROGRAMS = {}


def evaluate(expr, activation):
    if expr not in PROGRAMS:
        PROGRAMS[expr] = ENV.program(ENV.compile(expr))
    return PROGRAMS[expr].evaluate(activation)


def admits(vap, pod):
    """(matched, [failed validation messages]) for `pod` under `vap`."""
    spec = vap["spec"]
    activation = {"object": celpy.json_to_cel(pod)}
    for cond in spec.get("matchConditions", []):
        if not bool(evaluate(cond["expression"], activation)):
            return False, []
    variables = {}
    for var in spec.get("variables", []):
        activation["variables"] = celpy.json_to_cel(variables)
        value = evaluate(var["expression"], activation)
        variables[var["name"]] = value
    activation["variables"] = celpy.celtypes.MapType(
        {celpy.celtypes.StringType(k): v for k, v in variables.items()}
    )
    failed = []
    for rule in spec.get("validations", []):
        result = evaluate(rule["expression"], activation)
        if not isinstance(result, celpy.celtypes.BoolType):
            fail(f"{vap['metadata']['name']}: {rule['expression']!r} gave {result!r}")
        elif not bool(result):
            failed.append(rule["message"])
    return True, failed


def escalations(pod):
    """The pod with one privilege more, each with what was added."""
    spec = pod["spec"]
    first = spec["containers"][0]

    def variant(what, change):
        p = copy.deepcopy(pod)
        change(p["spec"], p["spec"]["containers"][0])
        return what, p

    out = []
    if not first.get("securityContext", {}).get("privileged"):
        out.append(variant("privileged", lambda s, c: c.setdefault("securityContext", {}).update(privileged=True)))
    for ns in ("hostNetwork", "hostPID", "hostIPC"):
        if not spec.get(ns):
            out.append(variant(ns, lambda s, c, ns=ns: s.update({ns: True})))
    out.append(variant("SYS_MODULE", lambda s, c: c.setdefault("securityContext", {})
                       .setdefault("capabilities", {}).setdefault("add", []).append("SYS_MODULE")))
    out.append(variant("hostPath /var/lib/kubelet", lambda s, c: s.setdefault("volumes", []).append(
        {"name": "escalation", "hostPath": {"path": "/var/lib/kubelet"}})))
    out.append(variant("hostPort 2222", lambda s, c: c.setdefault("ports", []).append(
        {"containerPort": 22, "hostPort": 2222})))
    out.append(variant("debug container", lambda s, c: s.setdefault("ephemeralContainers", []).append(
        {"name": "debugger", "image": "busybox", "securityContext": {"privileged": True}})))
    return out


def check_policies(directory, cases):
    checked = 0
    for case in cases:
        docs = list(yaml.safe_load_all((directory / case["file"]).read_text()))
        vap = next(d for d in docs if d and d["kind"] == "ValidatingAdmissionPolicy")
        name = vap["metadata"]["name"]
        pod = case["pod"]
        matched, failed = admits(vap, pod)
        if not matched:
            fail(f"{name}: does not match the workload's own pod")
            continue
        if failed:
            fail(f"{name}: denies the workload's own pod: {failed}")
        other = copy.deepcopy(pod)
        other["metadata"]["name"] = "someone-else"
        other["metadata"]["generateName"] = "someone-else-"
        other["metadata"]["labels"] = {"app": "someone-else"}
        if admits(vap, other)[0]:
            fail(f"{name}: matches a pod of another workload")
        for what, escalated in escalations(pod):
            if not admits(vap, escalated)[1]:
                fail(f"{name}: admits the pod with {what} added")
        checked += 1
    return checked


def main():
    directory = pathlib.Path(sys.argv[1])
    cases = json.loads(pathlib.Path(sys.argv[2]).read_text())
    objects = validate_schemas(directory)
    policies = check_policies(directory, cases)
    print(f"schema-valid objects: {objects}; policies checked with CEL: {policies}; failures: {len(failures)}")
    sys.exit(1 if failures else 0)


main()
