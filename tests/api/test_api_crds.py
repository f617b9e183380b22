"""crds/ is canonical: the pydantic models, the packaged copies and the conventions are tested against it."""

import filecmp
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gptops.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from gptops.api.gptmodel import GPTModelSpec, GPTModelStatus

ROOT = Path(__file__).resolve().parents[2]
CRDS = {"GPTModel": "gptops.io_gptmodels.yaml", "FineTuneJob": "gptops.io_finetunejobs.yaml"}
MODELS = {"GPTModel": (GPTModelSpec, GPTModelStatus), "FineTuneJob": (FineTuneJobSpec, FineTuneJobStatus)}


def crd(kind):
    return yaml.safe_load((ROOT / "crds" / CRDS[kind]).read_text())


def schema(kind):
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node, path="spec"):
    """Every (path, schema node) below `node`."""
    yield path, node
    for key, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def nested_model(annotation):
    """The BaseModel inside Optional[...] / list[...] / dict[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = nested_model(arg)
        if found is not None:
            return found
    return None


def compare(model: type[BaseModel], node: dict, path: str, check_defaults: bool, problems: list[str]):
    props = node.get("properties") or {}
    fields = {f.alias or name: f for name, f in model.model_fields.items()}
    for missing in sorted(set(props) - set(fields)):
        problems.append(f"{path}.{missing}: in the CRD, not in {model.__name__}")
    for missing in sorted(set(fields) - set(props)):
        problems.append(f"{path}.{missing}: in {model.__name__}, not in the CRD")
    for key in sorted(set(props) & set(fields)):
        field, sub = fields[key], props[key]
        if check_defaults:
            required = key in node.get("required", [])
            if required != field.is_required():
                problems.append(f"{path}.{key}: required in CRD={required}, in model={field.is_required()}")
            if "default" in sub:
                default = field.get_default(call_default_factory=True)
                dumped = default.model_dump(by_alias=True, exclude_none=True, mode="json") \
                    if isinstance(default, BaseModel) else default
                if sub["default"] != {} and dumped != sub["default"]:
                    problems.append(f"{path}.{key}: default {sub['default']!r} in CRD, {dumped!r} in model")
            elif not field.is_required() and field.get_default(call_default_factory=True) not in (None, [], {}):
                problems.append(f"{path}.{key}: the model has a default, the CRD has none")
        inner = nested_model(field.annotation)
        target = sub.get("items") or (sub.get("additionalProperties") if isinstance(
            sub.get("additionalProperties"), dict) else sub)
        if inner is not None and target.get("properties"):
            compare(inner, target, f"{path}.{key}", check_defaults, problems)


@pytest.mark.parametrize("kind", CRDS)
def test_spec_model_matches_the_crd(kind):
    problems: list[str] = []
    compare(MODELS[kind][0], schema(kind)["properties"]["spec"], "spec", True, problems)
    assert problems == []


@pytest.mark.parametrize("kind", CRDS)
def test_status_model_matches_the_crd(kind):
    problems: list[str] = []
    compare(MODELS[kind][1], schema(kind)["properties"]["status"], "status", False, problems)
    assert problems == []


@pytest.mark.parametrize("kind", CRDS)
def test_every_field_has_a_description(kind):
    root = schema(kind)
    missing = [p for part in ("spec", "status") for p, n in walk(root["properties"][part], part)
               if "description" not in n and not p.endswith(("[]", ".*"))]
    assert missing == []


@pytest.mark.parametrize("kind", CRDS)
def test_every_spec_string_list_and_map_is_bounded(kind):
    """Bounded sizes keep the CEL cost estimate within the API server's budget."""
    unbounded = []
    for path, node in walk(schema(kind)["properties"]["spec"]):
        t = node.get("type")
        if t == "string" and "enum" not in node and "maxLength" not in node:
            unbounded.append(path)
        if t == "array" and "maxItems" not in node:
            unbounded.append(path)
        if t == "object" and isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
            unbounded.append(path)
        if node.get("x-kubernetes-int-or-string") and "maxLength" not in node:
            unbounded.append(path)
    assert unbounded == []


@pytest.mark.parametrize("kind", CRDS)
def test_names_columns_and_subresources(kind):
    c = crd(kind)
    spec = c["spec"]
    assert c["apiVersion"] == "apiextensions.k8s.io/v1"
    assert spec["group"] == "gptops.io"
    assert spec["names"]["kind"] == kind
    assert spec["names"]["shortNames"] == [{"GPTModel": "gm", "FineTuneJob": "ftj"}[kind]]
    assert spec["names"]["categories"] == ["gptops"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [col["name"] for col in version["additionalPrinterColumns"]]
    expected = {"GPTModel": ["Serving", "Ready", "Progressing", "Degraded", "Endpoint", "Age"],
                "FineTuneJob": ["Model", "Phase", "Perplexity", "Passed", "Promoted", "Age"]}[kind]
    assert columns == expected


@pytest.mark.parametrize("kind", CRDS)
def test_every_cel_rule_compiles_and_has_a_message(kind):
    import celpy

    env = celpy.Environment()
    rules = [r for _, n in walk(schema(kind)) for r in n.get("x-kubernetes-validations", [])]
    rules += schema(kind).get("x-kubernetes-validations", [])
    assert rules
    for rule in rules:
        env.compile(rule["rule"])
        assert rule.get("message"), rule["rule"]


@pytest.mark.parametrize("kind", CRDS)
def test_packaged_copy_is_identical(kind):
    """operator/gptops/crds/ ships with the package for `gptops validate`.

    Refresh it with: cp crds/*.yaml operator/gptops/crds/
    """
    assert filecmp.cmp(ROOT / "crds" / CRDS[kind], ROOT / "operator" / "gptops" / "crds" / CRDS[kind], shallow=False)


def test_the_comparison_notices_a_drift():
    node = schema("GPTModel")["properties"]["spec"]
    node["properties"]["serving"]["properties"]["replicas"]["default"] = 3
    node["properties"]["serving"]["properties"]["extra"] = {"type": "string", "description": "x"}
    problems: list[str] = []
    compare(GPTModelSpec, node, "spec", True, problems)
    assert any("spec.serving.replicas: default 3" in p for p in problems)
    assert any("spec.serving.extra: in the CRD" in p for p in problems)


@pytest.mark.parametrize("kind", CRDS)
def test_schema_defaults_pass_their_own_rules(kind):
    """The API server checks each `default` against the rules at its node, without defaulting inside it."""
    from gptops.validate import check_cel, check_schema

    problems = []
    for path, node in walk(schema(kind)["properties"]["spec"]):
        if "default" in node:
            problems += check_schema(node["default"], node, path) + check_cel(node["default"], node, path)
    assert problems == []


def _properties(schema: dict, path: str = ""):
    for name, prop in (schema.get("properties") or {}).items():
        yield f"{path}.{name}".lstrip("."), prop
        yield from _properties(prop, f"{path}.{name}")
        if "items" in prop:
            yield from _properties(prop["items"], f"{path}.{name}[]")


def _as_written(value) -> str:
    """A default as the CRD's YAML writes it: true, 0.00005, [perplexity]."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "f").rstrip("0").rstrip(".") if value < 1e-3 else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_as_written(v) for v in value) + "]"
    return str(value)


@pytest.mark.parametrize("kind", ["GPTModel", "FineTuneJob"])
def test_kubectl_explain_shows_every_default_and_bound(kind):
    """kubectl explain prints descriptions only: a field's default and range must be said there."""
    import yaml

    files = {"GPTModel": "gptops.io_gptmodels.yaml", "FineTuneJob": "gptops.io_finetunejobs.yaml"}
    crd = yaml.safe_load((ROOT / "crds" / files[kind]).read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing = []
    for path, prop in _properties(spec, "spec"):
        text = " ".join((prop.get("description") or "").split())
        default = prop.get("default")
        if default not in (None, {}, []) and f"Default {_as_written(default)}" not in text:
            missing.append(f"{path}: Default {_as_written(default)}")
        low, high = prop.get("minimum"), prop.get("maximum")
        if low is not None and high is not None and f"From {low} to {high}" not in text:
            missing.append(f"{path}: From {low} to {high}")
    assert not missing, missing


@pytest.mark.parametrize("kind", ["GPTModel", "FineTuneJob"])
def test_kubectl_explain_says_what_an_int_or_string_field_takes(kind):
    """kubectl explain guesses a field's type from `type`, which an int-or-string schema must leave empty, so it prints
    `<Object>` for a quantity: the description has to say that it takes an integer or a string."""
    files = {"GPTModel": "gptops.io_gptmodels.yaml", "FineTuneJob": "gptops.io_finetunejobs.yaml"}
    crd = yaml.safe_load((ROOT / "crds" / files[kind]).read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    quantities = [(path, prop) for path, prop in _properties(spec, "spec") if prop.get("x-kubernetes-int-or-string")]
    assert quantities
    assert [path for path, prop in quantities if "an integer or a string" not in prop.get("description", "")] == []
