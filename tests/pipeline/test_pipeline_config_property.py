"""Property: every FineTuneJob spec the cluster admits, `configs_from_spec` accepts (issue 8, one definition).

Candidate specs are generated from the CRD's own openAPI schema (crds/gptops.io_finetunejobs.yaml, as packaged): every
field of spec, with values inside and at the edges of its bounds. The CEL rules filter them: only what
`gptops.validate.validate_object` admits (schema + CEL, offline, as the API server would) is kept, wrapped in a whole
FineTuneJob and mapped to the stage configs against a pretrained GPTModel and against a scratch one.

Documented exceptions (runtime or cross-object rules that no CRD can express):
- training.method lora on a scratch GPTModel: a ValueError naming training.method;
- startFrom serving while the GPTModel serves nothing yet: a ValueError naming startFrom.

The generator walks the schema itself (hypothesis-jsonschema 0.23.1, its last release, does not run on current
hypothesis); number bounds that only CEL states (`self > 0.0 && self <= 0.5`) are read back from the rule as a hint.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from gptops.pipeline.config import configs_from_spec
from gptops.validate import apply_defaults, crd_schema, validate_object

MAX_EXAMPLES = 300
MIN_ADMITTED = 100
TEXT_CAP = 12  # strings longer than this are drawn only at their maxLength edge

PRETRAINED = {"apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel", "metadata": {"name": "pretrained"},
              "spec": {"source": {"huggingface": {"repo": "org/model"}}, "artifacts": {"pvc": {"claimName": "art"}}}}
SCRATCH = {"apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel", "metadata": {"name": "scratch"},
           "spec": {"source": {"scratch": {"layers": 2, "heads": 2, "hidden": 64, "contextLength": 64}},
                    "artifacts": {"pvc": {"claimName": "art"}}}}
SERVED = {"servingArtifact": "/mnt/pvc/art/default/pretrained/rev/model"}

_BOUND = re.compile(r"self\s*(>=|<=|>|<)\s*(-?[0-9.]+)")
_EXACTLY_ONE = re.compile(r"\.filter\(x, x\)\.size\(\) == 1")


def _cel_bounds(schema: dict[str, Any]) -> dict[str, Any]:
    """floats() bounds from rules like `self > 0.0 && self <= 0.5` (a generation hint; the CEL still decides)."""
    out: dict[str, Any] = {}
    for rule in schema.get("x-kubernetes-validations", []):
        for op, num in _BOUND.findall(rule["rule"]):
            if op in (">", ">="):
                out.update(min_value=float(num), exclude_min=op == ">")
            else:
                out.update(max_value=float(num), exclude_max=op == "<")
    return out


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    lo, hi = schema.get("minLength", 0), schema.get("maxLength", 64)
    if "pattern" in schema:
        pattern = schema["pattern"]
        # Go's RE2 (the API server) ends `$` at the end of the text; generate full matches, not "4\n".
        strat = st.from_regex(pattern, fullmatch=pattern.endswith("$"))
        return strat.filter(lambda s: lo <= len(s) <= hi)
    short = st.text(min_size=lo, max_size=min(hi, max(lo, TEXT_CAP)))
    return st.one_of(short, st.text(min_size=hi, max_size=hi)) if hi > TEXT_CAP else short


def _number(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    b = _cel_bounds(schema)
    floats = st.floats(allow_nan=False, allow_infinity=False, **b)
    lo, hi = b.get("min_value"), b.get("max_value")
    ilo = None if lo is None else math.floor(lo) + 1 if b.get("exclude_min") else math.ceil(lo)
    ihi = None if hi is None else math.ceil(hi) - 1 if b.get("exclude_max") else math.floor(hi)
    strategies = [floats, st.sampled_from([v for v in (lo, hi) if v is not None] or [0.5])]
    if ilo is None or ihi is None or ilo <= ihi:  # JSON integers are numbers too
        strategies.append(st.integers(min_value=ilo, max_value=ihi))
    return st.one_of(strategies)


def from_crd(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values shaped by a structural CRD schema: types, enums, bounds (edges included), required/optional fields."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("x-kubernetes-int-or-string"):
        return st.one_of(st.integers(min_value=0, max_value=2**40), _string({**schema, "type": "string"}))
    t = schema.get("type")
    if t == "boolean":
        return st.booleans()
    if t == "integer":
        # Every integer is an int64 to the API server (format: int64 says so too); it refuses larger ones.
        lo, hi = schema.get("minimum", -(2**63)), schema.get("maximum", 2**63 - 1)
        return st.one_of(st.integers(min_value=lo, max_value=hi), st.sampled_from([lo, hi]))
    if t == "number":
        return _number(schema)
    if t == "string":
        return _string(schema)
    if t == "array":
        items = from_crd(schema["items"])
        unique = schema.get("x-kubernetes-list-type") == "set"
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 3), 3),
                        unique=unique)
    if t == "object" and "properties" in schema:
        props = schema["properties"]
        if any(_EXACTLY_ONE.search(r["rule"]) for r in schema.get("x-kubernetes-validations", [])):
            # "set exactly one of ...": one branch per property (the rule itself is still checked).
            return st.one_of([st.fixed_dictionaries({k: from_crd(v)}) for k, v in props.items()])
        required = set(schema.get("required", []))
        return st.fixed_dictionaries({k: from_crd(v) for k, v in props.items() if k in required},
                                     optional={k: from_crd(v) for k, v in props.items() if k not in required})
    if t == "object" and isinstance(schema.get("additionalProperties"), dict):
        return st.dictionaries(st.text(min_size=1, max_size=TEXT_CAP), from_crd(schema["additionalProperties"]),
                               max_size=min(schema.get("maxProperties", 3), 3))
    if t == "object":
        return st.just({})
    raise AssertionError(f"no strategy for schema {schema!r}")


def _ftj(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "run"}, "spec": spec}


def _source_kind(spec: dict[str, Any]) -> str:
    (kind,) = spec["dataset"]["source"]
    return kind


def test_configs_accept_every_spec_the_cluster_admits(tmp_path):
    spec_schema = crd_schema("FineTuneJob")["properties"]["spec"]
    counts: Counter[str] = Counter()
    seen: dict[str, set[Any]] = {"source": set(), "method": set(), "startFrom": set(), "format": set()}

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow,
                                     HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(spec=from_crd(spec_schema), served=st.booleans(), method=st.sampled_from([None, "full", "lora"]))
    def check(spec: dict[str, Any], served: bool, method: str | None) -> None:
        if method is not None:  # a hint: an optional field among many is drawn rarely, and lora needs it
            spec = {**spec, "training": {**spec.get("training", {}), "method": method}}
        counts["tried"] += 1
        problems = validate_object(_ftj(spec))
        event("admitted" if not problems else f"refused at {problems[0].path}")
        assume(not problems)
        counts["admitted"] += 1
        stored = apply_defaults(_ftj(spec), crd_schema("FineTuneJob"))  # what the operator reads back
        defaulted = stored["spec"]
        method, start_from = defaulted["training"]["method"], defaulted["startFrom"]
        for key, value in (("source", _source_kind(spec)), ("method", method), ("startFrom", start_from),
                           ("format", defaulted["dataset"]["format"])):
            seen[key].add(value)
        pretrained = {**PRETRAINED, "status": SERVED} if served else PRETRAINED
        root = tmp_path / "run"

        for obj in (_ftj(spec), stored):
            # A pretrained GPTModel: every admitted spec maps, except startFrom serving with nothing served yet.
            if start_from == "serving" and not served:
                with pytest.raises(ValueError, match="startFrom"):
                    configs_from_spec(copy.deepcopy(obj), pretrained, root, base_dir=tmp_path)
            else:
                c = configs_from_spec(copy.deepcopy(obj), pretrained, root, base_dir=tmp_path)
                assert (c.train.method, c.evaluate.method) == (method, method)
                assert c.evaluate.metrics == defaulted["evaluation"]["metrics"]
                assert c.prepare.validation_split == defaulted["dataset"]["validationSplit"]

            # A scratch GPTModel: full maps; lora is the cross-object rule no CRD can state.
            if start_from == "serving":
                with pytest.raises(ValueError, match="startFrom"):
                    configs_from_spec(copy.deepcopy(obj), SCRATCH, root, base_dir=tmp_path)
            elif method == "lora":
                with pytest.raises(ValueError, match=r"training\.method"):
                    configs_from_spec(copy.deepcopy(obj), SCRATCH, root, base_dir=tmp_path)
            else:
                c = configs_from_spec(copy.deepcopy(obj), SCRATCH, root, base_dir=tmp_path)
                assert c.train.model.is_scratch and c.prepare.block_size is not None
        counts["scratch-" + method] += 1

    started = time.monotonic()
    check()
    elapsed = time.monotonic() - started
    print(f"\ntried={counts['tried']} admitted={counts['admitted']} in {elapsed:.1f}s; "
          f"scratch full={counts['scratch-full']} lora={counts['scratch-lora']}; "
          + "; ".join(f"{k}={sorted(v)}" for k, v in seen.items()))
    assert counts["admitted"] >= MIN_ADMITTED, counts
    # The generator reached every dataset source kind, both methods and every startFrom.
    assert seen["source"] == set(spec_schema["properties"]["dataset"]["properties"]["source"]["properties"]), seen
    assert seen["method"] == {"full", "lora"} and seen["startFrom"] == {"auto", "source", "serving"}, seen
    assert counts["scratch-lora"] >= MIN_ADMITTED // 5, counts


def test_stop_words_languages_are_the_lists_stop_words_ships():
    """The CRD's stopWordsLanguage enum (and the api model's) is what the prepare stage can load, no more, no less."""
    stop_words = pytest.importorskip("stop_words")
    from typing import get_args

    from gptops.api.finetunejob import StopWordsLanguage

    node = crd_schema("FineTuneJob")["properties"]["spec"]["properties"]["dataset"]["properties"]["preprocessing"]
    enum = node["properties"]["stopWordsLanguage"]["enum"]
    shipped = set(stop_words.AVAILABLE_LANGUAGES) | set(stop_words.LANGUAGE_MAPPING)
    assert set(enum) == set(get_args(StopWordsLanguage)) == shipped
