"""hypothesis strategies for GPTModel and FineTuneJob documents, valid and invalid, built around the CRDs' own schemas:
a valid base (an example) with a few fields set to values drawn from each field's schema (in bounds, at the bounds,
just past them, of the wrong type, unknown, missing)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from gptops.api.constants import KIND_FINETUNEJOB, KIND_GPTMODEL
from gptops.validate import crd_schema
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
Schema = dict[str, Any]


def _examples() -> dict[str, list[dict[str, Any]]]:
    docs = [*yaml.safe_load_all((ROOT / "examples" / "gptmodel.yaml").read_text()),
            *yaml.safe_load_all((ROOT / "examples" / "finetunejob.yaml").read_text()),
            *yaml.safe_load_all((ROOT / "examples" / "quickstart" / "quickstart.yaml").read_text())]
    out: dict[str, list[dict[str, Any]]] = {KIND_GPTMODEL: [], KIND_FINETUNEJOB: []}
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") in out:
            out[doc["kind"]].append(doc)
    return out


BASES = _examples()


def schema_paths(schema: Schema, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Schema]]:
    """Every (path, schema) under an object schema: objects and leaves, map values as the key "k"."""
    out = [(path, schema)] if path else []
    if "properties" in schema:
        for key, sub in schema["properties"].items():
            out += schema_paths(sub, (*path, key))
    elif isinstance(schema.get("additionalProperties"), dict):
        out += schema_paths(schema["additionalProperties"], (*path, "k"))
    return out


SPEC_PATHS = {kind: schema_paths(crd_schema(kind)["properties"]["spec"], ("spec",)) for kind in BASES}

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
WRONG = st.sampled_from([None, True, 7, 0.5, -1, "x", "", [], {}, ["x"], {"x": 1}]).map(copy.deepcopy)
QUANTITY = st.one_of(st.integers(-2, 10**6), st.sampled_from(["1", "500m", "16Gi", "1.5", "2e3", "-1", "lots", "1Qi",
                                                              "", " 1", "1 "]))


def values(schema: Schema, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for one field: mostly of its type and near its bounds; some of the wrong type."""
    return st.one_of(_typed(schema, depth), WRONG) if depth == 0 else _typed(schema, depth)


def _typed(schema: Schema, depth: int) -> st.SearchStrategy[Any]:
    if schema.get("x-kubernetes-int-or-string"):
        return QUANTITY
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), st.sampled_from(["", "none", "Auto", "other"]))
    t = schema.get("type")
    if t == "boolean":
        return st.booleans()
    if t in ("integer", "number"):
        lo, hi = schema.get("minimum", -(10**6)), schema.get("maximum", 10**7)
        edges = [lo, hi, lo - 1, hi + 1, 0, 1]
        ints = st.one_of(st.integers(int(lo) - 1 if t == "integer" else int(lo), min(int(hi) + 1, 10**9)),
                         st.sampled_from([int(e) for e in edges]))
        if t == "integer":
            return st.one_of(ints, st.sampled_from([1.5, 2.0]))
        floats = st.floats(min_value=float(lo) - 1, max_value=float(hi) + 1, allow_nan=False, allow_infinity=False)
        return st.one_of(floats, ints, st.sampled_from([float(e) for e in edges]))
    if t == "string":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 64)
        options = [TEXT, st.sampled_from(["", "a" * lo, "a" * hi, "a" * (hi + 1), "x\n", "model-1", "9lives",
                                          "UPPER", "a.b", "s3://bucket/key", "https://example.com/d.jsonl"])]
        if "pattern" in schema:
            options.append(st.from_regex(schema["pattern"].replace("\\d", "[0-9]"), fullmatch=True)
                           .filter(lambda s: s.isascii()).map(lambda s: s[:hi]))
        return st.one_of(*options)
    if t == "array":
        item = schema.get("items", {})
        hi = schema.get("maxItems", 4)
        return st.one_of(st.lists(_typed(item, depth + 1), max_size=min(hi, 4)),
                         st.just([]), st.lists(st.just(None), min_size=1, max_size=1).flatmap(
                             lambda _: st.lists(_typed(item, depth + 1), min_size=hi + 1, max_size=hi + 1)))
    if t == "object":
        props = schema.get("properties", {})
        if not props and isinstance(schema.get("additionalProperties"), dict):
            return st.dictionaries(st.sampled_from(["a", "b", "nvidia.com/gpu.product", "team", "k"]),
                                   _typed(schema["additionalProperties"], depth + 1), max_size=3)
        if depth >= 2 or not props:
            return st.just({})
        required = schema.get("required", [])
        return st.fixed_dictionaries(
            {k: _typed(props[k], depth + 1) for k in required},
            optional={k: _typed(v, depth + 1) for k, v in props.items() if k not in required})
    return WRONG


NAMES = st.one_of(st.sampled_from(["run-1", "m", "a" * 63, "a" * 64, "9lives", "Upper", "a.b", "a-", "x" * 253]),
                  st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True))


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A GPTModel or FineTuneJob: an example with zero to three fields replaced, removed or added."""
    kind = draw(st.sampled_from(sorted(BASES)))
    doc = copy.deepcopy(draw(st.sampled_from(BASES[kind])))
    doc.pop("status", None)
    doc["metadata"] = {"name": draw(NAMES) if draw(st.integers(0, 9)) == 0 else doc["metadata"]["name"]}
    for _ in range(draw(st.integers(0, 3))):
        path, schema = draw(st.sampled_from(SPEC_PATHS[kind]))
        node = doc
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        how = draw(st.sampled_from(["set", "set", "set", "delete", "unknown"]))
        if how == "delete":
            node.pop(path[-1], None)
        elif how == "unknown" and isinstance(node.get(path[-1]), dict):
            node[path[-1]]["notAField"] = draw(WRONG)
        else:
            node[path[-1]] = copy.deepcopy(draw(values(schema)))
    return doc
