"""Checks the Helm chart (k8s/charts/sluice) and the chaos experiments (k8s/chaos) with the
real Helm engine (helm-python-sdk embeds Helm's Go SDK) and the real schemas:

- `helm lint --strict` finds nothing, with each values file.
- The chart renders with its defaults, with values-big.yaml (more clusters, cert-manager TLS,
  every monitoring object) and with values-plain.yaml (plain text, external etcd).
- Every rendered object is valid for Kubernetes 1.29 and the newest version kubernetes-validate
  knows, strictly (no unknown fields); ServiceMonitor, PrometheusRule, PodChaos, NetworkChaos
  and Schedule objects are valid against their CRDs' schemas (copies in k8s/tests/crds).
- Every Service, PodDisruptionBudget, NetworkPolicy, ServiceMonitor and chaos selector selects
  pods (or Services) the chart renders, and what the backends need holds: PDBs that never allow
  a majority down, headless Services that list not-ready pods, probes, requests, non-root
  containers with read-only root file systems.
- Values of the wrong type or unknown keys are refused.
- The chart's copies of the dashboards and alert rules are those of deploy/.
- Every command the chart runs is a binary the image (deploy/docker/Dockerfile) installs, and
  the image's user is the one the chart runs pods as.

Run by scripts/test.sh in a virtualenv; exits non-zero with a list of what failed.
"""

import copy
import json
import pathlib
import re
import sys

import helm_python
import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "charts" / "sluice"
TESTS = ROOT / "k8s" / "tests"
CHAOS = ROOT / "k8s" / "chaos"
RELEASE = NAMESPACE = "sluice"
OLDEST_KUBERNETES = "1.29.0"

failures: list[str] = []


def fail(what: str) -> None:
    failures.append(what)
    print(f"FAIL {what}", file=sys.stderr)


def values_file(name: str) -> dict:
    return yaml.safe_load((TESTS / name).read_text())


def render(values: dict) -> list[dict]:
    chart = helm_python.Chart.load(str(CHART))
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
                objects.append(doc)
    return objects


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the openAPIV3Schema of each copied CRD version."""
    schemas = {}
    for path in sorted((TESTS / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(f"{group}/{version['name']}", kind)] = to_json_schema(schema)
    return schemas


def to_json_schema(schema):
    """An OpenAPI v3 schema as strict JSON Schema: objects with properties refuse unknown
    fields (as the API server prunes and a strict client refuses them), unless the CRD keeps
    them with x-kubernetes-preserve-unknown-fields; int-or-string allows both."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: to_json_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        out.pop("nullable", None)
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validate(objects: list[dict], label: str, crds: dict) -> None:
    newest = kubernetes_validate.latest_version()
    for obj in objects:
        name = f"{label}: {obj['kind']}/{obj['metadata'].get('name')}"
        key = (obj["apiVersion"], obj["kind"])
        if key in crds:
            errors = sorted(
                jsonschema.Draft7Validator(crds[key]).iter_errors(obj), key=lambda e: e.path
            )
            for err in errors[:3]:
                fail(f"{name} against its CRD: {'/'.join(map(str, err.path))}: {err.message}")
            continue
        if obj["apiVersion"].startswith("cert-manager.io/"):
            check_certificate(obj, name)
            continue
        for version in (OLDEST_KUBERNETES, newest):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                fail(f"{name} for Kubernetes {version}: {err.message}")
            except kubernetes_validate.SchemaNotFoundError:
                fail(f"{name}: Kubernetes {version} has no {obj['apiVersion']} {obj['kind']}")


def check_certificate(obj: dict, name: str) -> None:
    """No copy of cert-manager's CRD is at hand, so a Certificate is checked for what this
    chart relies on: a Secret name, an issuer, and each Sluice kind named as a SPIFFE URI."""
    spec = obj.get("spec", {})
    for field in ("secretName", "issuerRef", "usages"):
        if field not in spec:
            fail(f"{name}: no spec.{field}")
    if not spec.get("issuerRef", {}).get("name"):
        fail(f"{name}: spec.issuerRef.name is empty")
    kind = obj["metadata"]["name"].rsplit("-", 1)[-1]
    if kind != "etcd" and spec.get("uris") != [f"spiffe://sluice/{kind}"]:
        fail(f"{name}: does not name its kind as spiffe://sluice/{kind}")
    if not {"server auth", "client auth"} <= set(spec.get("usages", [])):
        fail(f"{name}: not both a server and a client certificate")


def pods_of(objects: list[dict]) -> list[dict]:
    """Each pod the workloads make: its name (for StatefulSets) and labels."""
    pods = []
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        replicas = obj["spec"].get("replicas", 1)
        for i in range(replicas):
            name = f"{obj['metadata']['name']}-{i}" if obj["kind"] == "StatefulSet" else None
            pods.append({"name": name, "labels": labels, "owner": obj})
    return pods


def matches(selector: dict, labels: dict) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def check_wiring(objects: list[dict], label: str) -> None:
    pods = pods_of(objects)
    services = [o for o in objects if o["kind"] == "Service"]
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        where = f"{label}: {kind}/{name}"
        if kind == "Service":
            selected = [p for p in pods if matches({"matchLabels": obj["spec"]["selector"]}, p["labels"])]
            if not selected:
                fail(f"{where} selects no pod")
            owners = {p["owner"]["metadata"]["name"] for p in selected}
            if len(owners) != 1:
                fail(f"{where} selects pods of {sorted(owners)}, not of one workload")
            # Every port it serves is one the pods open, by name.
            named = {
                port["name"]
                for c in selected[0]["owner"]["spec"]["template"]["spec"]["containers"]
                for port in c.get("ports", [])
            }
            for port in obj["spec"]["ports"]:
                target = port.get("targetPort")
                if isinstance(target, str) and target not in named:
                    fail(f"{where}: port {port['name']} targets {target!r}, which no container opens")
            if obj["spec"].get("clusterIP") == "None" and not obj["spec"].get("publishNotReadyAddresses"):
                fail(f"{where}: a headless Service of peers must list pods before they are ready")
        if kind == "PodDisruptionBudget":
            selected = [p for p in pods if matches(obj["spec"]["selector"], p["labels"])]
            if not selected:
                fail(f"{where} selects no pod")
            owner = selected[0]["owner"] if selected else None
            component = owner and owner["metadata"]["labels"].get("app.kubernetes.io/component")
            # The parts that keep a quorum: a Raft cluster of backends, etcd's members.
            if component in ("backend", "etcd"):
                replicas = owner["spec"]["replicas"]
                if obj["spec"].get("minAvailable", 0) <= replicas // 2:
                    fail(f"{where} allows a majority of {replicas} down")
        if kind in ("Deployment", "StatefulSet"):
            template = obj["spec"]["template"]
            if not matches(obj["spec"]["selector"], template["metadata"]["labels"]):
                fail(f"{where}: its selector does not select its own pods")
            if kind == "StatefulSet":
                service = obj["spec"]["serviceName"]
                if not any(s["metadata"]["name"] == service and s["spec"].get("clusterIP") == "None" for s in services):
                    fail(f"{where}: no headless Service {service}")
            check_pod(template["spec"], where)
        if kind == "NetworkPolicy":
            if not any(matches(obj["spec"]["podSelector"], p["labels"]) for p in pods):
                fail(f"{where}: its podSelector selects no pod")
            for rule in obj["spec"].get("ingress", []):
                for peer in rule.get("from", []):
                    if "podSelector" in peer and not any(matches(peer["podSelector"], p["labels"]) for p in pods):
                        fail(f"{where}: a 'from' selects no pod")
        if kind == "ServiceMonitor":
            scraped = [s for s in services if matches(obj["spec"]["selector"], s["metadata"].get("labels", {}))]
            components = {s["metadata"]["labels"].get("app.kubernetes.io/component") for s in scraped}
            expected = {p["labels"]["app.kubernetes.io/component"] for p in pods}
            if components != expected:
                fail(f"{where} scrapes {sorted(components)}, not every part {sorted(expected)}")
            if len(scraped) != len({s['metadata']['name'] for s in scraped}):
                fail(f"{where} scrapes a Service twice")
            for s in scraped:
                if not any(p.get("name") == "admin" for p in s["spec"]["ports"]):
                    fail(f"{where}: Service {s['metadata']['name']} has no admin port")
        if kind == "StatefulSet" and obj["metadata"]["labels"].get("app.kubernetes.io/component") == "backend":
            spec = obj["spec"]
            if spec.get("podManagementPolicy") != "Parallel":
                fail(f"{where}: a new cluster forms only once every node runs; use Parallel")
            if spec["template"]["spec"].get("terminationGracePeriodSeconds", 30) < 45:
                fail(f"{where}: too little time for a leader to hand over and drain")
            if not spec.get("volumeClaimTemplates"):
                fail(f"{where}: no volume for the node's data")
            args = spec["template"]["spec"]["containers"][0]["args"]
            peers = next(a for a in args if a.startswith("--peers="))[len("--peers="):].split(",")
            names = [p.split("=", 1)[0] for p in peers]
            expected = [f"{obj['metadata']['name']}-{i}" for i in range(spec["replicas"])]
            if names != expected:
                fail(f"{where}: --peers names {names}, not its pods {expected}")


def check_pod(spec: dict, where: str) -> None:
    security = spec.get("securityContext", {})
    if not security.get("runAsNonRoot"):
        fail(f"{where}: pods may run as root")
    for container in spec["containers"]:
        c = f"{where} container {container['name']}"
        sc = container.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem"):
            fail(f"{c}: writable root file system")
        if sc.get("allowPrivilegeEscalation", True):
            fail(f"{c}: allows privilege escalation")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in container:
                fail(f"{c}: no {probe}")
        if not container.get("resources", {}).get("requests"):
            fail(f"{c}: no resource requests")


def check_chaos(objects: list[dict], crds: dict) -> None:
    """The experiments are valid and select pods of the default install."""
    pods = pods_of(objects)
    experiments = []
    for path in sorted(CHAOS.glob("*.yaml")):
        experiments.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    validate(experiments, "k8s/chaos", crds)
    seen = set()
    for exp in experiments:
        name = f"k8s/chaos: {exp['kind']}/{exp['metadata']['name']}"
        seen.add(exp["kind"])
        spec = exp["spec"]
        if exp["kind"] == "Schedule":
            spec = spec[spec["type"][0].lower() + spec["type"][1:]]
        selectors = [spec["selector"]]
        if "target" in spec:
            selectors.append(spec["target"]["selector"])
        for selector in selectors:
            if selector.get("namespaces", [NAMESPACE]) != [NAMESPACE]:
                fail(f"{name}: selects namespaces {selector['namespaces']}")
            if "pods" in selector:
                names = {p["name"] for p in pods if p["name"]}
                for ns, listed in selector["pods"].items():
                    for pod in listed:
                        if ns != NAMESPACE or pod not in names:
                            fail(f"{name}: no pod {ns}/{pod} in the default install")
                continue
            as_k8s = {
                "matchLabels": selector.get("labelSelectors", {}),
                "matchExpressions": selector.get("expressionSelectors", []),
            }
            if not any(matches(as_k8s, p["labels"]) for p in pods):
                fail(f"{name}: selects no pod of the default install")
    for kind in ("PodChaos", "NetworkChaos", "Schedule"):
        if kind not in seen:
            fail(f"k8s/chaos has no {kind}")
    components = set()
    for exp in experiments:
        if exp["kind"] == "PodChaos":
            labels = exp["spec"]["selector"].get("labelSelectors", {})
            components.add(labels.get("app.kubernetes.io/component", "backend-by-name"))
    for part in ("backend", "frontend", "metadata", "manager", "etcd"):
        if part not in components:
            fail(f"k8s/chaos kills no {part} pod")


def check_refusals() -> None:
    """Wrong types and unknown keys do not render."""
    chart = helm_python.Chart.load(str(CHART))
    wrong = [
        {"backend": {"replicas": "three"}},
        {"backend": {"clusters": "a"}},
        {"backend": {"antiAffinity": "sometimes"}},
        {"frontend": {"service": {"port": "grpc"}}},
        {"frontend": {"sqs": {"accountId": "12345"}}},
        {"tls": {"enabled": "yes"}},
        {"backend": {"replica": 3}},
        {"etcd": {"enabled": False}},
        {"backend": {"config": {"nested": {"table": 1}}}},
    ]
    for values in wrong:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmError as err:
            print(f"refused {json.dumps(values)}: {str(err).splitlines()[-1].strip()}")
            continue
        fail(f"rendered with the wrong values {json.dumps(values)}")


def check_lint(values: dict, label: str) -> None:
    report = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v1.29.0")
    for message in report.get("messages", []):
        if message["severity"] >= 2:
            fail(f"helm lint ({label}): {message['path']}: {message['error']}")
    for error in report.get("errors", []):
        fail(f"helm lint ({label}): {error}")


def check_monitoring_copies() -> None:
    pairs = [(p, ROOT / "deploy" / "grafana" / p.name) for p in (CHART / "files" / "grafana").glob("*.json")]
    pairs.append((CHART / "files/prometheus/sluice-alerts.yaml", ROOT / "deploy/prometheus/sluice-alerts.yaml"))
    if len(pairs) != len(list((ROOT / "deploy" / "grafana").glob("*.json"))) + 1:
        fail("the chart lacks a dashboard of deploy/grafana")
    for copy_, original in pairs:
        if not original.exists() or copy_.read_bytes() != original.read_bytes():
            fail(f"{copy_.relative_to(ROOT)} differs from {original.relative_to(ROOT)}: run `sluice monitoring render`")


def check_image(objects: list[dict], values: dict) -> None:
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    listed = re.search(r"for bin in ([^;]+);", dockerfile)
    installed = set(listed.group(1).split()) if listed else set()
    if "etcd-server" in dockerfile:
        installed.add("etcd")
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            command = container.get("command", ["<none>"])[0]
            if command not in installed:
                fail(f"{obj['kind']}/{obj['metadata']['name']} runs {command}, which the image does not install")
    user = values["podSecurityContext"]["runAsUser"]
    if f"USER {user}:" not in dockerfile:
        fail(f"the image does not run as user {user}, which the chart runs pods as")


def main() -> int:
    crds = crd_schemas()
    defaults = None
    for label, values in [
        ("defaults", {}),
        ("values-big.yaml", values_file("values-big.yaml")),
        ("values-plain.yaml", values_file("values-plain.yaml")),
    ]:
        check_lint(values, label)
        objects = render(copy.deepcopy(values))
        kinds = sorted({o["kind"] for o in objects})
        print(f"{label}: {len(objects)} objects ({', '.join(kinds)})")
        validate(objects, label, crds)
        check_wiring(objects, label)
        if label == "defaults":
            defaults = objects
            chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
            check_image(objects, chart_values)
        if label == "values-big.yaml":
            for kind in ("ServiceMonitor", "PrometheusRule", "Certificate", "HorizontalPodAutoscaler"):
                if kind not in kinds:
                    fail(f"{label}: no {kind}")
            rules = next(o for o in objects if o["kind"] == "PrometheusRule")
            urls = [r["annotations"]["runbook_url"] for g in rules["spec"]["groups"] for r in g["rules"]]
            if not all(u.startswith(values["monitoring"]["runbookBase"] + "#") for u in urls):
                fail(f"{label}: runbook links do not use monitoring.runbookBase")
    check_chaos(defaults, crds)
    check_refusals()
    check_monitoring_copies()
    if failures:
        print(f"\n{len(failures)} chart check(s) failed", file=sys.stderr)
        return 1
    print("chart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
