"""The Kubernetes manifests (deploy/k8s): every overlay renders with kustomize, passes
kubernetes-validate --strict and yamllint, and says what the server understands.

Rendering needs kubectl (its built-in kustomize) or a standalone kustomize; the
validators come from the test extra (pyproject.toml). A missing tool fails the test.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


validate = _load("sfu_deploy_validate", ROOT / "deploy" / "validate.py")

OVERLAYS = validate.overlays()
SECRET_NAME = "sfu-secrets"
SECRET_KEYS = {"auth-secret", "redis-password", "admin-token"}  # documented in deploy/README.md
NOT_OPTIONS = {"SFU_ADMIN_TOKEN"}  # read by sfu-drain (the preStop hook), not by the server
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, str, list[dict[str, Any]]]:
    text = validate.render(request.param)
    return request.param, text, validate.documents(text)


def _objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _containers(workload: dict[str, Any], init: bool = False) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("containers", []), *(spec.get("initContainers", []) if init else [])]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _sfu_workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS
            and any(c["name"] == "sfu" for c in _containers(d))]


def _sfu_container(workload: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in _containers(workload) if c["name"] == "sfu")


def test_there_are_overlays() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


def test_every_overlay_has_the_layout(rendered) -> None:
    name, _, docs = rendered
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "sfu-signalling"), ("Service", "sfu-signalling"),
            ("HorizontalPodAutoscaler", "sfu-signalling"), ("PodDisruptionBudget", "sfu-signalling"),
            ("DaemonSet", "sfu-media"), ("Service", "sfu-media"), ("PodDisruptionBudget", "sfu-media"),
            ("StatefulSet", "sfu-redis"), ("Service", "sfu-redis"),
            ("ServiceMonitor", "sfu-signalling"), ("PodMonitor", "sfu-media"),
            ("ConfigMap", "sfu-grafana-dashboard"), ("Namespace", f"sfu-{name}" if name != "production" else "sfu"),
            } <= kinds, sorted(kinds)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, namespaces


def test_kubernetes_validate_strict(rendered) -> None:
    name, _, docs = rendered
    assert validate.validate_resources(docs) == []


def test_kubernetes_validate_is_strict_and_knows_no_unknown_kind(rendered) -> None:
    """A misspelt field, a misspelt kind and a bad ServiceMonitor are all caught."""
    _, _, docs = rendered
    deployment = json.loads(json.dumps(_objects(docs, "Deployment")["sfu-signalling"]))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 1
    assert any("terminationGracePeriodSecond" in p for p in validate.validate_resources([deployment]))
    typo = {**_objects(docs, "Service")["sfu-media"], "kind": "Servcie"}
    assert validate.validate_resources([typo])
    monitor = json.loads(json.dumps(_objects(docs, "ServiceMonitor")["sfu-signalling"]))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in p for p in validate.validate_resources([monitor]))
    monitor = json.loads(json.dumps(_objects(docs, "PodMonitor")["sfu-media"]))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    assert validate.validate_resources([monitor])


def test_rendered_yamllint(rendered) -> None:
    name, text, _ = rendered
    assert validate.lint_text(text, f"{name} (rendered)") == []


def test_sources_yamllint() -> None:
    assert validate.yaml_sources(), "no YAML under deploy/"
    assert validate.lint_sources() == []


def test_yamllint_catches_problems() -> None:
    assert validate.lint_text("a: 1\na: 2\n", relaxed=False)  # duplicate key
    assert validate.lint_text("enabled: yes\n", relaxed=False)  # a boolean Kubernetes may not want


def test_no_secret_values_in_the_repository(rendered) -> None:
    _, _, docs = rendered
    assert not [d for d in docs if d["kind"] == "Secret"]
    for path in (ROOT / "deploy").rglob("kustomization.yaml"):
        assert "secretGenerator" not in path.read_text(), path
    refs = set()
    for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        for container in _containers(workload, init=True):
            for var in container.get("env", []):
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
            assert "envFrom" not in container
    assert {name for name, _ in refs} == {SECRET_NAME}
    assert {key for _, key in refs} == SECRET_KEYS
    readme = (ROOT / "deploy" / "README.md").read_text()
    for key in SECRET_KEYS:
        assert f"--from-literal={key}=" in readme or f"`{key}`" in readme, key


def test_env_vars_are_options_the_server_reads(rendered) -> None:
    """Every SFU_* variable names a config field; $(VAR) only refers to earlier variables."""
    from sfu.config import ENV_PREFIX, Config

    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Config)}
    _, _, docs = rendered
    for workload in _sfu_workloads(docs):
        container = _sfu_container(workload)
        seen: set[str] = set()
        for var in container["env"]:
            name = var["name"]
            if name.startswith(ENV_PREFIX):
                assert name in known | NOT_OPTIONS, f"{workload['metadata']['name']}: {name}"
            for ref in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                assert ref in seen, f"{name} uses $({ref}) before it is defined: Kubernetes leaves it as is"
            seen.add(name)
        assert "command" not in container  # the image's entrypoint: tini -- sfu serve
        assert not container.get("args")


def test_env_values_parse_as_config(rendered, monkeypatch) -> None:
    """The literal values load through the server's own config code."""
    from sfu.config import ENV_PREFIX, Config, load_config

    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Config)}
    _, _, docs = rendered
    for workload in _sfu_workloads(docs):
        env = {}
        for var in _sfu_container(workload)["env"]:
            if var["name"] not in known:
                continue
            if "value" in var:
                env[var["name"]] = re.sub(r"\$\(\w+\)", "10.0.0.1", var["value"])
            elif "resourceFieldRef" in var["valueFrom"]:
                env[var["name"]] = "2"
            elif "fieldRef" in var["valueFrom"]:
                env[var["name"]] = "10.0.0.1"
            else:
                env[var["name"]] = "x" * 32  # a secret
        config = load_config({}, environ=env)
        assert not config.dev and config.auth_secret and config.redis_url
        assert config.http_port == 8080
        if workload["kind"] == "DaemonSet":  # a media node: shards on the node's address
            assert config.shards >= 1 and config.rtc_host == "10.0.0.1"
        else:  # a signalling replica: placement and redirects only
            assert config.shards == 0


def test_one_cluster(rendered) -> None:
    """Replicas and media nodes share the directory and the secret (nodes call each
    other's internal API with admin tokens of it); node ids come from the pod or node."""
    _, _, docs = rendered
    workloads = {w["kind"]: _env(_sfu_container(w)) for w in _sfu_workloads(docs)}
    assert set(workloads) == {"Deployment", "DaemonSet"}
    signalling, media = workloads["Deployment"], workloads["DaemonSet"]
    for name in ("SFU_REDIS_URL", "SFU_AUTH_SECRET", "REDIS_PASSWORD"):
        assert signalling[name] == media[name], name
    assert signalling["SFU_SHARDS"] == {"name": "SFU_SHARDS", "value": "0"}
    assert signalling["SFU_NODE_ID"]["value"] == "$(POD_NAME)"
    assert media["SFU_NODE_ID"]["value"] == "$(NODE_NAME)"
    assert media["SFU_PUBLIC_URL"]["value"] == f"http://$(POD_IP):{media['SFU_HTTP_PORT']['value']}"


def test_media_nodes_are_on_the_host_network(rendered) -> None:
    _, _, docs = rendered
    media = _objects(docs, "DaemonSet")["sfu-media"]
    spec = media["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    env = _env(_sfu_container(media))
    assert env["SFU_RTC_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert media["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0  # host ports: no two pods a node
    assert media["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    shards = env["SFU_SHARDS"]
    assert "value" in shards or shards["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    # Recordings outlive the pod: a rollout must not delete them.
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "hostPath" in volumes["recordings"]


def test_probes_and_drain_hook(rendered) -> None:
    _, _, docs = rendered
    for workload in _sfu_workloads(docs):
        container = _sfu_container(workload)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = _env(container)
        assert ports["http"] == int(env["SFU_HTTP_PORT"]["value"])
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
        hook = container["lifecycle"]["preStop"]["exec"]["command"]
        assert hook[0] == "sfu-drain"
        settle = float(hook[hook.index("--settle") + 1]) if "--settle" in hook else 0.0
        shards = env["SFU_SHARDS"].get("value")
        drain = 0.0 if shards == "0" else float(env.get("SFU_DRAIN_TIMEOUT_S", {}).get("value", 30))
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # sfu-drain's own timeout is drain_timeout_s + 10; then SIGTERM and the shards' shutdown.
        assert grace >= settle + drain + 10 + 5, (workload["metadata"]["name"], grace)


def test_pods_run_unprivileged(rendered) -> None:
    _, _, docs = rendered
    for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert "memory" in container["resources"]["limits"]
        for container in spec.get("initContainers", []):  # chown of the recordings directory, nothing more
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}


def test_images_are_set_by_the_overlay(rendered) -> None:
    _, _, docs = rendered
    for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        for container in _containers(workload, init=True):
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), image
            assert image != "sfu", image


def test_selectors_and_references_match(rendered) -> None:
    """Services, budgets, monitors and the autoscaler point at pods that exist, by port names they have."""
    _, _, docs = rendered
    pods = [(w["spec"]["template"]["metadata"]["labels"], _containers(w), w)
            for w in docs if w["kind"] in WORKLOAD_KINDS]

    def matching(selector: dict[str, str]) -> list[tuple[dict[str, str], list[dict[str, Any]], dict[str, Any]]]:
        found = [p for p in pods if selector.items() <= p[0].items()]
        assert found, f"nothing matches {selector}"
        return found

    def port_names(found) -> set[str]:
        return {p["name"] for _, containers, _ in found for c in containers for p in c.get("ports", [])}

    for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        assert workload["spec"]["selector"]["matchLabels"].items() <= \
            workload["spec"]["template"]["metadata"]["labels"].items()
    for service in _objects(docs, "Service").values():
        found = matching(service["spec"]["selector"])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names(found), (service["metadata"]["name"], port)
    for pdb in _objects(docs, "PodDisruptionBudget").values():
        matching(pdb["spec"]["selector"]["matchLabels"])
    for monitor in _objects(docs, "PodMonitor").values():
        found = matching(monitor["spec"]["selector"]["matchLabels"])
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= port_names(found)
    services = _objects(docs, "Service")
    for monitor in _objects(docs, "ServiceMonitor").values():
        selected = [s for s in services.values()
                    if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert selected
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for s in selected
                                                                       for p in s["spec"]["ports"]}
    for hpa in _objects(docs, "HorizontalPodAutoscaler").values():
        ref = hpa["spec"]["scaleTargetRef"]
        target = _objects(docs, ref["kind"])[ref["name"]]
        assert "replicas" not in target["spec"]  # the autoscaler owns it
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for statefulset in _objects(docs, "StatefulSet").values():
        assert statefulset["spec"]["serviceName"] in services


def test_redis_url_points_at_redis(rendered) -> None:
    _, _, docs = rendered
    redis = _objects(docs, "Service")["sfu-redis"]
    port = next(p["port"] for p in redis["spec"]["ports"] if p["name"] == "redis")
    for workload in _sfu_workloads(docs):
        url = _env(_sfu_container(workload))["SFU_REDIS_URL"]["value"]
        assert re.fullmatch(rf"redis://:\$\(REDIS_PASSWORD\)@sfu-redis:{port}/0", url), url


def test_dashboard_ships_as_a_configmap(rendered) -> None:
    _, _, docs = rendered
    configmap = _objects(docs, "ConfigMap")["sfu-grafana-dashboard"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(configmap["data"]["sfu-dashboard.json"])
    assert shipped == json.loads((ROOT / "deploy" / "grafana" / "sfu-dashboard.json").read_text())


def test_production_media_pods_are_guaranteed() -> None:
    """Whole cores per shard: requests = limits in every container (Guaranteed QoS)."""
    docs = validate.documents(validate.render("production"))
    media = _objects(docs, "DaemonSet")["sfu-media"]
    for container in _containers(media, init=True):
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], container["name"]
    cpu = _sfu_container(media)["resources"]["requests"]["cpu"]
    assert re.fullmatch(r"\d+", str(cpu)), "whole cores: SFU_SHARDS is the request rounded up"
    assert media["spec"]["template"]["spec"]["nodeSelector"] == {"sfu/media": "true"}
