"""`gptops validate`: checks GPTModel and FineTuneJob documents the way the API server would, offline.

It applies the CRDs' own schemas (types, enums, bounds, required and unknown fields, defaults) and evaluates their
own x-kubernetes-validations CEL rules with cel-python, so the messages are the cluster's. No kopf, no kubernetes.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import re2
import typer
import yaml

from gptops.api.constants import API_VERSION, KIND_FINETUNEJOB, KIND_GPTMODEL

CRD_FILES = {KIND_GPTMODEL: "gptops.io_gptmodels.yaml", KIND_FINETUNEJOB: "gptops.io_finetunejobs.yaml"}
Schema = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    """One reason a document would be refused."""

    kind: str
    name: str
    path: str
    message: str
    file: str = ""

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}: {self.path}: {self.message}"


# --- loading the CRDs ----------------------------------------------------------------------------------------


def crd_text(kind: str) -> str:
    """The CRD YAML for a kind: the copy packaged with gptops, else the repository's crds/ (an editable checkout)."""
    name = CRD_FILES[kind]
    packaged = resources.files("gptops").joinpath("crds", name)
    if packaged.is_file():
        return packaged.read_text()
    repo = Path(__file__).resolve().parents[2] / "crds" / name
    return repo.read_text()


@cache
def load_crd(kind: str) -> dict[str, Any]:
    """The parsed CustomResourceDefinition of a kind."""
    return yaml.safe_load(crd_text(kind))


def crd_schema(kind: str) -> Schema:
    """The openAPIV3Schema of the served version."""
    (version,) = [v for v in load_crd(kind)["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]


# --- defaulting (as the API server does, before validation) ---------------------------------------------------


def apply_defaults(value: Any, schema: Schema) -> Any:
    """Fill in schema defaults recursively, into defaulted objects too; returns a new value."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for key, sub in schema["properties"].items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(out[key], sub)
        return out
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: apply_defaults(v, schema["additionalProperties"]) for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def prune_nulls(value: Any, schema: Schema) -> Any:
    """Drop object fields set to null, as the API server does before defaulting (a list item or map value that is
    null stays, and is refused by its type); returns a new value."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        return {k: prune_nulls(v, props[k]) if k in props else v for k, v in value.items()
                if not (v is None and k in props and not props[k].get("nullable"))}
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: prune_nulls(v, schema["additionalProperties"]) for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [prune_nulls(v, schema["items"]) for v in value]
    return value


# --- structural validation -----------------------------------------------------------------------------------


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_ok(value: Any, schema: Schema) -> str | None:
    """None when value has the schema's type, else the expected type's name. A whole number written as a float
    (2.0) is an integer, as the API server decodes it."""
    if schema.get("x-kubernetes-int-or-string"):
        ok = (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str) or \
            (isinstance(value, float) and value.is_integer())
        return None if ok else "integer or string"
    t = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or
        (isinstance(v, float) and v.is_integer()),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if t is None or checks[t](value):
        return None
    return t


def json_type(value: Any) -> str:
    """The JSON type of a value, as the API server names it in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or isinstance(value, float) and value.is_integer():
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


#: Schema errors after which the API server does not evaluate the CEL rules (its "blocking" error types).
BLOCKING = ("Required value", "Unsupported value", "Too long", "Too many")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return go_quote(value)
    return json.dumps(value) if not isinstance(value, (dict, list)) else f'"{json_type(value)}"'


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               '"': '\\"', "\\": "\\\\"}


def go_quote(text: str) -> str:
    """A string as the API server quotes it in messages (Go's strconv.Quote): printable characters as they are."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def check_schema(value: Any, schema: Schema, path: str) -> list[tuple[str, str]]:
    """(path, message) for every schema violation under `path` (CEL rules excluded), in the API server's words."""
    errors: list[tuple[str, str]] = []
    if isinstance(value, dict) and value and (schema.get("type") not in ("object", None) or
                                              schema.get("x-kubernetes-int-or-string")):
        # The API server prunes the fields of an object where the schema has no object; strict decoding names them.
        return [(_join(path, key), f'unknown field "{key}"') for key in value]
    expected = _type_ok(value, schema)
    shown = json.dumps(json_type(value))
    fraction = isinstance(value, float) and not value.is_integer()
    if expected == "integer or string":  # the CRDs write int-or-string as anyOf [integer, string]
        return [(path, f"Invalid value: {shown}: {path} in body must be of type integer,string: {shown}"),
                (path, f'Invalid value: "": "{path}" must validate at least one schema (anyOf)'),
                (path, f"Invalid value: {shown}: {path} in body must be of type integer: {shown}")] + \
            ([(path, f'Invalid value: "": Checked value must be of type integer (default format) in {path}')]
             if fraction else [])
    if expected == "integer" and fraction:
        # A fraction where an integer belongs: the API server says so twice (once naming the field in the message), and
        # still checks the bounds.
        fmt = schema.get("format")
        if fmt in ("int32", "int64"):
            errors.append((path, f'Invalid value: "float64": {path} in body must be of type {fmt}: "float64"'))
            errors.append((path, f'Invalid value: "": Checked value must be of type integer with format {fmt} in {path}'))
        else:
            errors.append((path, f'Invalid value: "": Checked value must be of type integer (default format) in {path}'))
            errors.append((path, f"Invalid value: {shown}: {path} in body must be of type integer: {shown}"))
        expected = None
    elif expected:
        errors.append((path, f"Invalid value: {shown}: {path} in body must be of type {expected}: {shown}"))
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(json.dumps(e) for e in schema["enum"])
        errors.append((path, f"Unsupported value: {_show(value)}: supported values: {allowed}"))
    if expected:
        return errors
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and (value < schema["minimum"] or
                                    (schema.get("exclusiveMinimum") and value == schema["minimum"])):
            op = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
            errors.append((path, (f"Invalid value: {_number(value)}: {path} in body should be {op} "
                                 f"{_number(schema['minimum'])}")))
        if "maximum" in schema and (value > schema["maximum"] or
                                    (schema.get("exclusiveMaximum") and value == schema["maximum"])):
            op = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
            errors.append((path, (f"Invalid value: {_number(value)}: {path} in body should be {op} "
                                 f"{_number(schema['maximum'])}")))
    if isinstance(value, str):  # the API server reports the first of these that fails, in this order
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append((path, f"Too long: may not be more than {schema['maxLength']} bytes"))
        elif "minLength" in schema and len(value) < schema["minLength"]:
            errors.append((path, (f"Invalid value: {go_quote(value)}: {path} in body "
                                 f"should be at least {schema['minLength']} chars long")))
        # RE2, as the API server: Python's `$` would also match before a trailing newline.
        elif "pattern" in schema and not re2.search(schema["pattern"], value):
            errors.append((path, (f"Invalid value: {go_quote(value)}: {path} in body "
                                 f"should match '{schema['pattern']}'")))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append((path, (f"Invalid value: {len(value)}: {path} in body "
                                 f"should have at least {schema['minItems']} items")))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append((path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
        if schema.get("x-kubernetes-list-type") == "set":
            seen: list[Any] = []
            reported: list[Any] = []
            for i, item in enumerate(value):  # the API server names the first repeat of each value
                if item in seen and item not in reported:
                    errors.append((_join(path, i), f"Duplicate value: {_show(item)}"))
                    reported.append(item)
                seen.append(item)
        if "items" in schema:
            for i, item in enumerate(value):
                errors += check_schema(item, schema["items"], _join(path, i))
    if isinstance(value, dict):
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append((path, f"Too many: {len(value)}: must have at most {schema['maxProperties']} items"))
        for key in schema.get("required", []):
            if key not in value:
                errors.append((_join(path, key), "Required value"))
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                errors += check_schema(item, props[key], _join(path, key))
            elif isinstance(extra, dict):
                errors += check_schema(item, extra, _join(path, key))
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append((_join(path, key), f'unknown field "{key}"'))
    return errors


def _number(value: float) -> str:
    """A number as Go's %v writes it: 2.0 is 2."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e21 else repr(float(value))


def blocks_cel(message: str) -> bool:
    """True when the API server would not evaluate the CEL rules after this schema error."""
    return message.startswith(BLOCKING) or " must be of type " in message


# --- CEL -----------------------------------------------------------------------------------------------------


def to_cel(value: Any, schema: Schema) -> Any:
    """A CEL value typed by the schema, as the API server builds it (a `number` is a double even when written 1)."""
    from celpy import celtypes

    if schema.get("x-kubernetes-int-or-string"):
        return celtypes.IntType(value) if isinstance(value, int) else celtypes.StringType(value)
    t = schema.get("type")
    if t == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return celtypes.MapType({celtypes.StringType(k): to_cel(v, props.get(k, extra)) for k, v in value.items()})
    if t == "array":
        return celtypes.ListType([to_cel(v, schema.get("items", {})) for v in value])
    if t == "integer":
        return _float_as_int()(value) if isinstance(value, float) else celtypes.IntType(value)
    if t == "number":
        return celtypes.DoubleType(value)
    if t == "boolean":
        return celtypes.BoolType(value)
    if t == "string":
        return celtypes.StringType(value)
    import celpy

    return celpy.json_to_cel(value)


FLOAT_AS_INT = "expected int, got float64"


@cache
def _float_as_int() -> type:
    """A CEL integer that was written as a float (2.0): any rule that reads it fails, as on the API server; has()
    and rules that never reach it (`||` already true) still pass."""
    from celpy import celtypes

    def refuse(*_: Any) -> Any:
        raise TypeError(FLOAT_AS_INT)

    ops = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__radd__", "__sub__", "__rsub__",
           "__mul__", "__rmul__", "__mod__", "__rmod__", "__truediv__", "__rtruediv__", "__floordiv__",
           "__rfloordiv__", "__neg__")
    return type("FloatAsInt", (celtypes.IntType,), {**dict.fromkeys(ops, refuse), "__hash__": int.__hash__})


@cache
def _program(rule: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def _uses_old_self(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


def check_cel(value: Any, schema: Schema, path: str, old: Any = None, *, root: bool = False) -> list[tuple[str, str]]:
    """(path, message) for every x-kubernetes-validations rule that fails under `path`.

    Transition rules (those naming oldSelf) run only when an old value is given, as on an update.
    """
    import celpy

    errors: list[tuple[str, str]] = []
    rules = schema.get("x-kubernetes-validations", [])
    if rules:
        self_value = value
        if root:  # at the root, CEL sees metadata.name and metadata.generateName only
            meta = value.get("metadata") or {}
            self_value = {**value, "metadata": {k: meta[k] for k in ("name", "generateName") if k in meta}}
            schema = {**schema, "properties": {**schema.get("properties", {}), "metadata": {
                "type": "object", "properties": {"name": {"type": "string"}, "generateName": {"type": "string"}}}}}
        activation = {"self": to_cel(self_value, schema)}
        for rule in rules:
            if _uses_old_self(rule["rule"]):
                if old is None:
                    continue
                activation = {**activation, "oldSelf": to_cel(old, schema)}
            where = path + rule.get("fieldPath", "") if path else rule.get("fieldPath", "").lstrip(".") or "<root>"
            try:
                result = _program(rule["rule"]).evaluate(activation)
            except celpy.CELEvalError as e:
                result = e
            if isinstance(result, celpy.CELEvalError) and FLOAT_AS_INT in str(result):
                # The API server keeps 2.0 a float: a rule that reads it where the schema says integer fails.
                errors.append((path or "<root>", (f"Invalid value: {json.dumps(json_type(value))}: invalid data, "
                                                 f"{FLOAT_AS_INT} evaluating rule: {rule.get('message') or rule['rule']}")))
            elif isinstance(result, celpy.CELEvalError):
                errors.append((where, f"rule evaluation error: {rule['rule']}: {result}"))
            elif not result:
                errors.append((where, rule.get("message") or f"failed rule: {rule['rule']}"))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
        for key, item in value.items():
            sub = props.get(key, extra)
            if sub is None or key == "metadata" and root:
                continue
            sub_old = old.get(key) if isinstance(old, dict) else None
            errors += check_cel(item, sub, _join(path, key), sub_old)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += check_cel(item, schema["items"], _join(path, i))
    return errors


# --- documents -----------------------------------------------------------------------------------------------


def validate_object(obj: dict[str, Any], old: dict[str, Any] | None = None, *, file: str = "") -> list[Problem]:
    """Every problem the API server would report for a GPTModel or FineTuneJob (defaults applied first)."""
    kind = obj.get("kind", "")
    name = str((obj.get("metadata") or {}).get("name") or "<unnamed>")

    def problem(path: str, message: str) -> Problem:
        return Problem(kind=kind, name=name, path=path, message=message, file=file)

    if obj.get("apiVersion") != API_VERSION:
        return [problem("apiVersion", f"Unsupported value: {json.dumps(obj.get('apiVersion'))}: "
                                      f"supported values: {json.dumps(API_VERSION)}")]
    if not (obj.get("metadata") or {}).get("name"):
        return [problem("metadata.name", "Required value: name or generateName is required")]
    schema = crd_schema(kind)
    body = {k: v for k, v in obj.items() if k != "status"}  # status is the operator's, set through its subresource
    body = prune_nulls(body, schema)
    schema_errors = check_schema(body, schema, "")
    unknown = [(p, m) for p, m in schema_errors if m.startswith("unknown field")]
    if unknown:  # the API server's strict decoding refuses unknown fields before it validates anything else
        return [problem(p, m) for p, m in unknown]
    if any(blocks_cel(m) for _, m in schema_errors):
        return [problem(p, m) for p, m in check_name(str(obj["metadata"]["name"])) + schema_errors]
    defaulted = apply_defaults(body, schema)
    old_defaulted = apply_defaults(prune_nulls(old, schema), schema) if old is not None else None
    cel_errors = check_cel(defaulted, schema, "", old_defaulted, root=True)
    return [problem(p, m) for p, m in check_name(str(obj["metadata"]["name"])) + schema_errors + cel_errors]


SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"


def check_name(name: str) -> list[tuple[str, str]]:
    """The API server's own check of every object's name: a lowercase RFC 1123 subdomain (the CRDs' rules add more)."""
    errors = []
    if len(name) > 253:
        errors.append(("metadata.name", f"Invalid value: {go_quote(name)}: must be no more than 253 characters"))
    if not re2.fullmatch(SUBDOMAIN, name):
        errors.append(("metadata.name", (f"Invalid value: {go_quote(name)}: a lowercase RFC 1123 subdomain must consist "
                       "of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                       "character (e.g. 'example.com', regex used for validation is "
                       f"'{SUBDOMAIN}')")))
    return errors


def is_gptops_object(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") in CRD_FILES and \
        str(doc.get("apiVersion", "")).startswith("gptops.io/")


def load_documents(path: Path) -> Iterator[dict[str, Any]]:
    """The YAML documents of a file (multi-document), skipping empty ones; `-` reads stdin."""
    import sys

    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from (d for d in doc["items"] if d)
        else:
            yield doc


def validate_files(paths: list[Path]) -> tuple[list[Problem], int]:
    """(problems, number of gptops documents checked) for every GPTModel and FineTuneJob in the files."""
    problems: list[Problem] = []
    checked = 0
    for path in paths:
        try:
            docs = list(load_documents(path))
        except (OSError, yaml.YAMLError) as e:
            problems.append(Problem(kind="File", name=str(path), path="<file>", message=str(e).replace("\n", " "),
                                    file=str(path)))
            continue
        for doc in docs:
            if is_gptops_object(doc):
                checked += 1
                problems += validate_object(doc, file=str(path))
    return problems, checked


def validate_cli(
    files: Annotated[list[Path], typer.Argument(help="YAML files (multi-document); - reads stdin.")],
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """Check GPTModels and FineTuneJobs against the CRDs' schemas and CEL rules, offline, as the cluster would."""
    if output not in ("text", "json"):
        raise typer.BadParameter("expected text or json", param_hint="--output")
    raise typer.Exit(report(files, output))


def report(files: list[Path], output: str = "text") -> int:
    """Print the problems of the files (text or json); returns 1 when there is any, else 0."""
    problems, checked = validate_files(files)
    if output == "json":
        typer.echo(json.dumps({"valid": not problems, "checked": checked,
                               "problems": [asdict(p) for p in problems]}, indent=2))
    else:
        for p in problems:
            typer.echo(str(p))
        if not problems:
            typer.echo(f"{checked} object(s) valid")
    return 1 if problems else 0
