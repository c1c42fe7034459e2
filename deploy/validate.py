"""Render every overlay of deploy/k8s with kustomize and check what comes out.

    python deploy/validate.py            # all overlays; exit 1 on any problem
    python deploy/validate.py dev        # one overlay

Rendering: ``kubectl kustomize`` (kustomize built into kubectl), or a standalone
``kustomize build``. Checks, on each rendered overlay:

- every object against the Kubernetes OpenAPI schemas of the oldest and newest
  versions we claim (kubernetes-validate, strict: unknown fields are errors);
  kinds it has no schema for are errors too, except the Prometheus Operator's
  ServiceMonitor and PodMonitor, which are checked against the part of their CRD
  schema these manifests use (CRD_SCHEMAS below, strict as well);
- yamllint with the repository's .yamllint (line length aside: the dashboard JSON
  is embedded as is), and the source files under deploy/ with .yamllint unchanged.

tests/deploy/test_manifests.py runs the same functions, plus checks of what the
manifests mean (env vars the server reads, probes, drain hook, selectors).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS_DIR = DEPLOY / "k8s" / "overlays"
YAMLLINT_CONFIG = ROOT / ".yamllint"
# The oldest Kubernetes the manifests are checked against (autoscaling/v2, policy/v1
# and DaemonSet maxSurge are all GA before it); also the newest kubernetes-validate has.
OLDEST_KUBERNETES = "1.27.0"


class RenderError(Exception):
    pass


def overlays() -> list[str]:
    return sorted(p.name for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())


def kustomize_command() -> list[str]:
    """How to run kustomize here: kubectl's built-in one, or the standalone binary."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    raise RenderError("neither kubectl nor kustomize is installed: nothing can render the overlays")


def render(overlay: str | Path) -> str:
    path = Path(overlay) if Path(overlay).is_absolute() else OVERLAYS_DIR / overlay
    result = subprocess.run([*kustomize_command(), str(path)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RenderError(f"kustomize failed on {path}:\n{result.stderr}")
    return result.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# --- the Prometheus Operator's kinds (monitoring.coreos.com/v1) ----------------------------

_DURATION = {"type": "string",
             "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": {"type": "string"}, "operator": {"type": "string"},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
_RELABEL = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                            "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                            "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                            "dropequal", "DropEqual"]},
        "modulus": {"type": "integer"}, "regex": {"type": "string"}, "replacement": {"type": "string"},
        "separator": {"type": "string"}, "sourceLabels": {"type": "array", "items": _LABEL_NAME},
        "targetLabel": {"type": "string"},
    },
}
_ENDPOINT = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
        "honorTimestamps": {"type": "boolean"}, "params": {"type": "object"},
        "relabelings": {"type": "array", "items": _RELABEL},
        "metricRelabelings": {"type": "array", "items": _RELABEL},
    },
}
_NAMESPACE_SELECTOR = {"type": "object", "additionalProperties": False,
                       "properties": {"any": {"type": "boolean"},
                                      "matchNames": {"type": "array", "items": {"type": "string"}}}}


def _crd(spec_properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"type": "string"},
            "metadata": {"type": "object", "required": ["name"], "additionalProperties": False,
                         "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                        "labels": _STRING_MAP, "annotations": _STRING_MAP}},
            "spec": {"type": "object", "additionalProperties": False, "required": required,
                     "properties": {"selector": _LABEL_SELECTOR, "namespaceSelector": _NAMESPACE_SELECTOR,
                                    "jobLabel": {"type": "string"}, **spec_properties}},
        },
    }


CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd(
        {"endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
         "targetLabels": {"type": "array", "items": {"type": "string"}},
         "podTargetLabels": {"type": "array", "items": {"type": "string"}}},
        ["selector", "endpoints"]),
    ("monitoring.coreos.com/v1", "PodMonitor"): _crd(
        {"podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
         "podTargetLabels": {"type": "array", "items": {"type": "string"}}},
        ["selector", "podMetricsEndpoints"]),
}


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def kubernetes_versions() -> tuple[str, str]:
    from kubernetes_validate import utils as kv

    return OLDEST_KUBERNETES, kv.latest_version()


def validate_resources(docs: list[dict[str, Any]], versions: tuple[str, ...] | None = None) -> list[str]:
    """Problems found (empty: all valid), with kubernetes-validate in strict mode."""
    from kubernetes_validate import utils as kv

    versions = versions or kubernetes_versions()
    problems = []
    for doc in docs:
        crd = CRD_SCHEMAS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
        if crd is not None:
            for error in jsonschema.Draft202012Validator(crd).iter_errors(doc):
                where = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"{_name(doc)}: {where}: {error.message}")
            continue
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                problems.append(f"{_name(doc)} (Kubernetes {version}): {where}: {error.message}")
            except kv.SchemaNotFoundError as error:
                problems.append(f"{_name(doc)}: {error.message}")
    return problems


# --- yamllint ------------------------------------------------------------------------------

def _yamllint_config(relaxed: bool) -> Any:
    from yamllint.config import YamlLintConfig

    if relaxed:  # rendered output: the dashboard's JSON lines come through as they are
        return YamlLintConfig(f"extends: {YAMLLINT_CONFIG}\nrules:\n  line-length: disable\n")
    return YamlLintConfig(file=str(YAMLLINT_CONFIG))


def lint_text(text: str, name: str = "<rendered>", relaxed: bool = True) -> list[str]:
    from yamllint import linter

    return [f"{name}:{p.line}:{p.column}: [{p.level}] {p.message} ({p.rule})"
            for p in linter.run(text, _yamllint_config(relaxed))]


def yaml_sources() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def lint_sources(paths: list[Path] | None = None) -> list[str]:
    problems = []
    for path in paths if paths is not None else [*yaml_sources(), YAMLLINT_CONFIG]:
        problems += lint_text(path.read_text(), str(path.relative_to(ROOT)), relaxed=False)
    return problems


def check_overlay(overlay: str) -> list[str]:
    try:
        text = render(overlay)
    except RenderError as exc:
        return [str(exc)]
    return validate_resources(documents(text)) + lint_text(text, f"{overlay} (rendered)")


def main(argv: list[str]) -> int:
    names = argv or overlays()
    problems = lint_sources()
    for name in names:
        found = check_overlay(name)
        print(f"{name}: {'ok' if not found else f'{len(found)} problem(s)'}")
        problems += found
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
