"""`kubectl teal lint`: validate manifests offline as the apiserver and then the operator would.

The CRDs shipped with the package (teal/crds/*.yaml; the repository's crds/ as a
fallback) are the rules of the apiserver. For every manifest of a kind they define, the
steps follow a `kubectl create` and what the operator does with the stored object:

0. the YAML becomes JSON as kubectl sends it: NaN and Infinity cannot be sent (kubectl
   and the apiserver refuse them), a whole float like 2.0 arrives as the integer 2;
1. strict field validation: fields the schema does not declare are errors
   (`unknown field "spec.x"`, kubectl's default `--validate=strict`);
2. nulls in non-nullable fields are dropped, then the schema's defaults are applied;
3. the OpenAPI schema, converted to JSON Schema and checked with `jsonschema` (like the
   apiserver, not `format`: int32 fields of the CRDs say `maximum: 2147483647`);
4. the CEL rules (`x-kubernetes-validations`), evaluated with `celpy` (cel-python)
   plus the Kubernetes CEL library functions the rules use;
5. the operator's own parsers, the same code the operator runs on the stored object:
   `teal.api.parse_spec`, `teal.analysis.parse_metrics` for every metric (with the
   AnalysisTemplates found among the linted files), the Prometheus settings, and
   `teal.policy.policy_from_spec` for release policies.

`status` is ignored (the apiserver drops it on create when the status subresource is
on). Messages of steps 1-4 follow the apiserver's wording, so a test can check that
`lint` and the apiserver reject a manifest for the same reason; step 5 says what the
operator would say at run time. tests/test_validation_agree.py checks that lint, the
apiserver and the operator agree on generated manifests (and lists where they cannot).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import functools
import importlib.resources
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

Found = list[tuple[str, str]]  # (path, message)

# ---------------------------------------------------------------- CRD index


@dataclasses.dataclass(frozen=True)
class CrdVersion:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    schema: Mapping[str, Any]
    status_subresource: bool
    source: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


class CrdIndex:
    """The kinds defined by a set of CRD files, by (apiVersion, kind)."""

    def __init__(self, versions: Iterable[CrdVersion] = ()):
        self.versions = {(v.api_version, v.kind): v for v in versions}
        self.groups = {v.group for v in self.versions.values()}

    def __len__(self) -> int:
        return len(self.versions)

    def kinds(self) -> list[str]:
        return sorted({f"{k} ({a})" for a, k in self.versions})

    def lookup(self, api_version: str, kind: str) -> CrdVersion | None:
        return self.versions.get((api_version, kind))

    @classmethod
    def from_documents(cls, docs: Iterable[tuple[str, Any]]) -> CrdIndex:
        found = []
        for source, doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc.get("spec") or {}
            names = spec.get("names") or {}
            for ver in spec.get("versions") or []:
                if ver.get("served", True):
                    schema = ((ver.get("schema") or {}).get("openAPIV3Schema")) or {"type": "object"}
                    found.append(
                        CrdVersion(
                            group=spec.get("group", ""),
                            version=ver.get("name", ""),
                            kind=names.get("kind", ""),
                            plural=names.get("plural", ""),
                            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                            schema=schema,
                            status_subresource="status" in (ver.get("subresources") or {}),
                            source=source,
                        )
                    )
        return cls(found)

    @classmethod
    def from_paths(cls, paths: Iterable[Path]) -> CrdIndex:
        docs: list[tuple[str, Any]] = []
        for path in paths:
            files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
            for f in files:
                docs.extend((str(f), doc) for doc in yaml.safe_load_all(f.read_text()))
        return cls.from_documents(docs)


def default_crd_dirs() -> list[Path]:
    """The package's CRDs (teal/crds) if shipped, else the repository's crds/."""
    candidates = [Path(str(importlib.resources.files("teal") / "crds")), Path(__file__).resolve().parents[2] / "crds"]
    return [d for d in candidates if d.is_dir() and any(d.glob("*.yaml"))][:1]


# ---------------------------------------------------------------- errors


@dataclasses.dataclass(frozen=True)
class Problem:
    file: str
    kind: str
    name: str
    path: str
    message: str

    def line(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}: {self.path}: {self.message}"


def _fmt_path(parts: Iterable[str | int]) -> str:
    out = ""
    for p in parts:
        out = f"{out}[{p}]" if isinstance(p, int) else (f"{out}.{p}" if out else str(p))
    return out or "<root>"


def _go_value(v: Any) -> str:
    """A value as the apiserver quotes it in messages."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return '"object"' if isinstance(v, dict) else '"array"'
    return json.dumps(v if v is None or isinstance(v, (str, int, float)) else str(v))


# ---------------------------------------------------------------- step 0: YAML as JSON


def as_sent(value: Any, path: list[str | int], found: Found) -> Any:
    """`value` as kubectl sends it (sigs.k8s.io/yaml: YAML -> JSON) and the apiserver decodes it:
    NaN/Infinity are refused, whole floats below 1e21 are integers, integers beyond int64
    are floats, dates stay strings and keys are strings."""
    if isinstance(value, float):
        if not math.isfinite(value):
            shown = "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
            found.append(
                (
                    _fmt_path(path),
                    f"Invalid value: {shown}: JSON has no NaN or Infinity "
                    f"(kubectl and the apiserver refuse it: json: unsupported value)",
                )
            )
        elif value.is_integer() and abs(value) < 1e21 and -(2**63) <= value < 2**63:
            return int(value)
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return float(value)
    elif isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    elif isinstance(value, dict):
        return {_key(k): as_sent(v, [*path, _key(k)], found) for k, v in value.items()}
    elif isinstance(value, list):
        return [as_sent(v, [*path, i], found) for i, v in enumerate(value)]
    return value


def _key(k: Any) -> str:
    return k if isinstance(k, str) else ("true" if k is True else "false" if k is False else "null" if k is None else str(k))


# ---------------------------------------------------------------- step 1: unknown fields

OBJECT_META_FIELDS = {
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
}


def _preserves(schema: Mapping[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def unknown_fields(obj: Any, schema: Mapping[str, Any], path: list[str | int]) -> Iterator[str]:
    """Dotted paths of fields the schema does not declare (strict field validation)."""
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            yield from unknown_fields(value, schema["items"], [*path, i])
    if not isinstance(obj, dict):
        return
    props, addl = schema.get("properties"), schema.get("additionalProperties")
    if schema.get("type") not in (None, "object") or schema.get("x-kubernetes-int-or-string"):
        # an object where the schema wants a scalar or a list: the decoder prunes every
        # field of it, and strict validation reports them as unknown
        yield from ([] if _preserves(schema) else (_fmt_path([*path, key]) for key in obj))
        return
    if props is None and addl is None:
        return  # an object without a structure below it (or preserved)
    extra = {"apiVersion", "kind", "metadata"} if schema.get("x-kubernetes-embedded-resource") else set()
    for key, value in obj.items():
        if props is not None and key in props:
            yield from unknown_fields(value, props[key], [*path, key])
        elif isinstance(addl, dict):
            yield from unknown_fields(value, addl, [*path, key])
        elif not (addl is True or _preserves(schema) or key in extra):
            yield _fmt_path([*path, key])


# ---------------------------------------------------------------- step 2: nulls and defaults


def _sub(schema: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The schema of field `key` of an object (a property or additionalProperties)."""
    props = schema.get("properties") or {}
    addl = schema.get("additionalProperties")
    return props.get(key) if key in props else (addl if isinstance(addl, dict) else None)


def apply_defaults(obj: Any, schema: Mapping[str, Any]) -> Any:
    """Drop nulls the schema doesn't allow, then fill in defaults (like the apiserver)."""
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(v, schema["items"]) for v in obj]
    if not isinstance(obj, dict):
        return obj
    for key in list(obj):
        sub = _sub(schema, key)
        if obj[key] is None and sub is not None and not sub.get("nullable"):
            if "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            else:
                del obj[key]
        elif sub is not None:
            obj[key] = apply_defaults(obj[key], sub)
    for key, sub in (schema.get("properties") or {}).items():
        if key not in obj and isinstance(sub, dict) and "default" in sub:
            obj[key] = apply_defaults(copy.deepcopy(sub["default"]), sub)
    return obj


# ---------------------------------------------------------------- step 3: OpenAPI via jsonschema

_KEEP = {
    "type",
    "required",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
}  # not `format`: the apiserver does not hold integers to int32 (the CRDs say `maximum: 2147483647`)


def to_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A Kubernetes structural schema as a JSON Schema (draft 4, like OpenAPI v3.0).

    Unknown fields are not rejected here (`unknown_fields` does that with the
    apiserver's message); nullable and int-or-string become JSON Schema types.
    """
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in schema.items() if k in _KEEP}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema:
        out["properties"] = {k: to_json_schema(v) for k, v in schema["properties"].items()}
    for key in ("additionalProperties", "items", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = to_json_schema(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [to_json_schema(s) for s in schema[key]]
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
_BOUNDS = {"minimum": ("greater than", "exclusiveMinimum"), "maximum": ("less than", "exclusiveMaximum")}
# validator -> message; {v}: the value as the apiserver quotes it, {n}: its length, {val}: the limit
_MESSAGES = {
    "minItems": "Invalid value: {n}: {body} should have at least {val} items",
    "maxItems": "Too many: {n}: must have at most {val} items",
    "minLength": "Invalid value: {v}: {body} should be at least {val} chars long",
    "maxLength": "Too long: may not be more than {val} bytes",
    "pattern": "Invalid value: {v}: {body} should match '{val}'",
    "minProperties": "Invalid value: {n}: {body} should have at least {val} properties",
    "maxProperties": "Too many: {n}: must have at most {val} items",
    "uniqueItems": "Duplicate value: {v}",
    "multipleOf": "Invalid value: {v}: {body} should be a multiple of {val}",
}


def _type_message(inst: Any, want: str, body: str) -> str:
    got = _go_value(_TYPE_NAMES.get(type(inst), "null" if inst is None else type(inst).__name__))
    return f"Invalid value: {got}: {body} must be of type {want}: {got}"


def _schema_problem(err: Any) -> Found:
    """(path, message) in the apiserver's words for one jsonschema ValidationError."""
    parts = list(err.absolute_path)
    path, v, val, inst = _fmt_path(parts), err.validator, err.validator_value, err.instance
    body = f"{path} in body"
    if v == "required":
        return [(_fmt_path([*parts, m]), "Required value") for m in val if not isinstance(inst, dict) or m not in inst]
    if v == "type":
        return [(path, _type_message(inst, val if isinstance(val, str) else " or ".join(val), body))]
    if v == "enum":
        shown = json.dumps(inst, separators=(",", ":")) if isinstance(inst, (dict, list)) else _go_value(inst)
        return [(path, f"Unsupported value: {shown}: supported values: {', '.join(_go_value(x) for x in val)}")]
    if v in _BOUNDS:
        rel, exclusive = _BOUNDS[v]
        rel += "" if err.schema.get(exclusive) is True else " or equal to"
        return [(path, f"Invalid value: {_go_value(inst)}: {body} should be {rel} {val}")]
    if v == "anyOf" and {s.get("type") for s in val} == {"integer", "string"}:
        return [(path, _type_message(inst, "integer or string", body))]
    if v in _MESSAGES:
        n = len(inst) if isinstance(inst, (str, list, dict)) else 0
        return [(path, _MESSAGES[v].format(v=_go_value(inst), n=n, val=val, body=body))]
    return [(path, f"Invalid value: {_go_value(inst)}: {err.message}")]


def openapi_problems(obj: Any, schema: Mapping[str, Any]) -> Found:
    import jsonschema

    validator = jsonschema.Draft4Validator(to_json_schema(schema))
    return [p for err in validator.iter_errors(obj) for p in _schema_problem(err)]


# ---------------------------------------------------------------- step 4: CEL rules


class CelUnsupported(Exception):
    """A rule uses something the offline evaluator cannot do."""


class _Absent:
    """`oldSelf` on create, for rules with optionalOldSelf: an optional without a value."""


def _items(lst: Any, what: str) -> list[Any]:
    items = list(lst)
    if not items and what:
        raise ValueError(f"{what}() of an empty list")
    return items


def _cel_sum(lst: Any) -> Any:
    from celpy import celtypes

    total: Any = celtypes.IntType(0)
    for i, x in enumerate(lst):
        total = x if i == 0 else total + x
    return total


def _index_of(target: Any, x: Any, last: bool = False) -> Any:
    from celpy import celtypes

    if isinstance(target, str):
        return celtypes.IntType(str(target).rfind(str(x)) if last else str(target).find(str(x)))
    items = list(reversed(list(target))) if last else list(target)
    if x not in items:
        return celtypes.IntType(-1)
    return celtypes.IntType(len(items) - 1 - items.index(x) if last else items.index(x))


def _optional_value(x: Any) -> Any:
    if isinstance(x, _Absent):
        raise ValueError("optional.none() has no value")
    return x


def _cel_functions() -> dict[str, Callable[..., Any]]:
    """The Kubernetes CEL library functions (lists, strings, optionals) the rules may use."""
    from celpy import celtypes

    S, B = celtypes.StringType, celtypes.BoolType

    def substring(s: Any, start: Any, end: Any = None) -> Any:
        return S(str(s)[int(start) :] if end is None else str(s)[int(start) : int(end)])

    return {
        "isSorted": lambda lst: B(all(a <= b for a, b in zip(list(lst), list(lst)[1:], strict=False))),
        "sum": _cel_sum,
        "min": lambda lst: min(_items(lst, "min")),
        "max": lambda lst: max(_items(lst, "max")),
        "indexOf": _index_of,
        "lastIndexOf": lambda target, x: _index_of(target, x, last=True),
        "hasValue": lambda x: B(not isinstance(x, _Absent)),
        "value": _optional_value,
        "lowerAscii": lambda s: S(str(s).lower()),
        "upperAscii": lambda s: S(str(s).upper()),
        "trim": lambda s: S(str(s).strip()),
        "split": lambda s, sep: celtypes.ListType([S(p) for p in str(s).split(str(sep))]),
        "join": lambda lst, sep="": S(str(sep).join(str(x) for x in lst)),
        "replace": lambda s, old, new: S(str(s).replace(str(old), str(new))),
        "substring": substring,
        "charAt": lambda s, i: S(str(s)[int(i)] if int(i) < len(str(s)) else ""),
    }


@functools.cache
def _cel_env() -> Any:
    import celpy

    return celpy.Environment()


@functools.lru_cache(maxsize=4096)
def _program(rule: str) -> Any:
    """The compiled rule (the CRDs hold a few hundred; each compiled once per process)."""
    env = _cel_env()
    try:
        ast = env.compile(rule)
    except Exception as exc:  # celpy raises CELParseError
        raise CelUnsupported(f"cannot parse rule {rule!r}: {exc}") from exc
    return env.program(ast, functions=_cel_functions())


def to_cel(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """A JSON value as CEL sees it, typed by the schema (numbers are doubles, ...)."""
    from celpy import celtypes

    schema = schema or {}
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, (int, float)):
        if schema.get("type") == "number" or isinstance(value, float):
            return celtypes.DoubleType(float(value))
        return celtypes.IntType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else None
        return celtypes.ListType([to_cel(v, items) for v in value])
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(k): to_cel(v, _sub(schema, k)) for k, v in value.items()})
    return value


def _root_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """At the root, CEL sees apiVersion, kind, metadata.name/generateName and the schema's fields."""
    view = {k: v for k, v in obj.items() if k != "metadata"}
    meta = obj.get("metadata") or {}
    view["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
    return view


def _uses_old_self(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


def _rule_problem(
    r: Mapping[str, Any],
    activation: dict[str, Any],
    obj: Any,
    schema: Mapping[str, Any],
    path: list[str | int],
    warnings: list[str],
) -> tuple[str, str] | None:
    """The apiserver's error for one rule (an evaluation error rejects the object there too)."""
    rule = r.get("rule", "")
    shown = json.dumps(schema.get("type") or _TYPE_NAMES.get(type(obj), "object"))
    try:
        result = _program(rule).evaluate(activation)
        failed = f"{result} evaluating rule" if type(result).__name__ == "CELEvalError" else None
    except CelUnsupported as exc:
        warnings.append(f"{_fmt_path(path)}: {exc}")
        return None
    except Exception as exc:  # evaluation errors: celpy raises CELEvalError
        failed = f"{str(exc)[:200]} evaluating rule"
    message = r.get("message") or f"failed rule: {rule}"
    if failed:
        return _fmt_path(path), f"Invalid value: {shown}: {failed}: {message}"
    if bool(result):
        return None
    if r.get("messageExpression"):
        try:
            message = str(_program(r["messageExpression"]).evaluate(activation))
        except Exception:
            pass
    where = [*path, *_split_field_path(r["fieldPath"])] if r.get("fieldPath") else path
    return _fmt_path(where), f"Invalid value: {shown}: {message}"


def cel_problems(obj: Any, schema: Mapping[str, Any], path: list[str | int], warnings: list[str], root: bool = False) -> Found:
    out: Found = []
    rules = [
        r
        for r in schema.get("x-kubernetes-validations") or []
        if r.get("optionalOldSelf") or not _uses_old_self(r.get("rule", ""))
    ]  # transition rules: not on create
    if rules:
        activation: dict[str, Any] = {
            "self": to_cel(_root_view(obj) if root and isinstance(obj, dict) else obj, schema),
            "oldSelf": _Absent(),
        }
        out.extend(p for r in rules if (p := _rule_problem(r, activation, obj, schema, path, warnings)))
    if isinstance(obj, dict):
        for key, value in obj.items():
            sub = _sub(schema, key)
            if sub is not None and not (root and key == "metadata"):
                out.extend(cel_problems(value, sub, [*path, key], warnings))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            out.extend(cel_problems(value, schema["items"], [*path, i], warnings))
    return out


def _split_field_path(field_path: str) -> list[str | int]:
    """'.strategy.blueGreen.steps[0]' or ".x['a.b']" -> ['strategy', 'blueGreen', 'steps', 0]."""
    parts: list[str | int] = []
    for m in re.finditer(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\['([^']*)'\]", field_path):
        parts.append(int(m.group(2)) if m.group(2) is not None else (m.group(1) or m.group(3)))
    return parts


# ---------------------------------------------------------------- metadata

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def metadata_problems(obj: Mapping[str, Any]) -> Found:
    """The apiserver's checks of ObjectMeta (not in any CRD): names, labels, annotations."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not (meta.get("name") or meta.get("generateName")):
        return [("metadata.name", "Required value: name or generateName is required")]
    out: Found = []
    name = meta.get("name")
    if name and len(name) > 253:
        out.append(("metadata.name", f"Invalid value: {_go_value(name)}: must be no more than 253 characters"))
    if name and not _DNS_SUBDOMAIN.match(name):
        out.append(
            (
                "metadata.name",
                f"Invalid value: {_go_value(name)}: a lowercase RFC 1123 subdomain must consist of "
                "lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        )
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())):
            out.append((f"metadata.{key}", "Invalid value: must be a map of strings"))
    return out


# ---------------------------------------------------------------- steps 1-4: one object


def check_object(obj: Mapping[str, Any], crd: CrdVersion, warnings: list[str]) -> tuple[Found, dict[str, Any]]:
    """What the apiserver would reject in a create of `obj`, and the object it would store (defaulted)."""
    stored: dict[str, Any] = copy.deepcopy(dict(obj))
    if crd.status_subresource:
        stored.pop("status", None)
    body = {k: v for k, v in stored.items() if k not in ("apiVersion", "kind", "metadata")}
    meta = stored.get("metadata")
    unknown = [f"metadata.{k}" for k in (meta if isinstance(meta, dict) else ()) if k not in OBJECT_META_FIELDS]
    problems = [(f, f'unknown field "{f}"') for f in [*unknown, *unknown_fields(body, crd.schema, [])]]
    problems += metadata_problems(stored)
    stored = apply_defaults(stored, crd.schema)
    props = {k: v for k, v in (crd.schema.get("properties") or {}).items() if k != "metadata"}
    schema_problems = openapi_problems({k: v for k, v in stored.items() if k != "metadata"}, {**crd.schema, "properties": props})
    problems += schema_problems
    # Like the apiserver, CEL only on an object that passed the OpenAPI checks (it says
    # "some validation rules were not checked because the object was invalid").
    if schema_problems:
        warnings.append("the CEL validation rules were not checked because the object is invalid")
    else:
        problems += cel_problems(stored, crd.schema, [], warnings, root=True)
    return list(dict.fromkeys(problems)), stored


# ---------------------------------------------------------------- step 5: the operator's parsers

TemplateKey = tuple[str, str | None, str]  # (kind, namespace or None, name)


class _NotLinted(Exception):
    """A metric's template is not among the linted objects: the cluster's decides."""


def _metric_path(i: int, e: Any) -> str:
    field = e.field or ""
    if field.startswith("spec.analysis"):
        return field
    return f"spec.analysis.metrics[{i}]" + (f".{field}" if field and not field.startswith("spec.") else "")


def _fetcher(
    namespace: str | None, templates: Mapping[TemplateKey, Mapping[str, Any]]
) -> Callable[[str, str], Mapping[str, Any]]:
    def fetch(kind: str, name: str) -> Mapping[str, Any]:
        for (k, ns, n), obj in templates.items():
            if (k, n) == (kind, name) and (kind != "AnalysisTemplate" or None in (ns, namespace) or ns == namespace):
                return obj
        raise _NotLinted(f"{kind}/{name}")

    return fetch


def _settings_secret(name: str, key: str) -> str:
    return "-----BEGIN CERTIFICATE----- (Secrets are read at run time)"


def rollout_problems(obj: Mapping[str, Any], templates: Mapping[TemplateKey, Mapping[str, Any]], warnings: list[str]) -> Found:
    """What the operator refuses in a stored Rollout: parse_spec, then every metric as its
    analysis would parse it (templates from `templates`), then the Prometheus settings."""
    from . import api
    from .analysis import AnalysisConfigError, parse_metrics

    spec = obj.get("spec") or {}
    try:
        api.parse_spec(spec)
    except api.SpecError as e:
        return [(e.field, e.message)]
    analysis = spec.get("analysis") or {}
    fetch = _fetcher((obj.get("metadata") or {}).get("namespace"), templates)
    out: Found = []
    for i, metric in enumerate(analysis.get("metrics") or []):
        try:
            parse_metrics(analysis, [metric["name"]], fetch)
        except _NotLinted as e:
            warnings.append(f"spec.analysis.metrics[{i}]: not checked with its template: {e} is not among the linted files")
        except AnalysisConfigError as e:
            out.append((_metric_path(i, e), str(e)))
    if analysis.get("prometheus"):
        from .analysis.prometheus import provider_settings  # what the operator reads before querying

        try:
            provider_settings(analysis["prometheus"], _settings_secret, None)
        except AnalysisConfigError as e:
            out.append((e.field or "spec.analysis.prometheus", e.detail))
    return out


def template_problems(obj: Mapping[str, Any]) -> Found:
    """What the operator refuses in any Rollout metric that uses this template (its count
    is checked only when the template sets one: else the Rollout's applies)."""
    from .analysis import AnalysisConfigError, parse_metrics
    from .analysis.model import MAX_COUNT, placeholders

    spec = obj.get("spec") or {}
    used = placeholders(f"{spec.get('query') or ''} {spec.get('baseline') or ''}")
    needed = [n[5:] for n in used if n.startswith("args.")] + [a["name"] for a in spec.get("args") or [] if "value" not in a]
    args = [{"name": n, "value": "1"} for n in dict.fromkeys(needed)]
    analysis: dict[str, Any] = {
        "metrics": [{"name": "template", "templateRef": {"kind": obj["kind"], "name": "template"}}],
        "args": args,
    }
    if "count" not in spec:
        analysis["count"] = MAX_COUNT
    try:
        parse_metrics(analysis, ["template"], lambda kind, name: obj)
    except AnalysisConfigError as e:
        field = e.field or ""
        return [(field if field.startswith("spec") else _fmt_path(["spec", *field.split(".")]) if field else "spec", e.detail)]
    return []


def policy_problems(obj: Mapping[str, Any], warnings: list[str]) -> Found:
    """What CEL cannot check in a release policy: time zones, cron schedules (refused), and
    overlapping windows (a warning: the operator acts on their union and says Ready=False)."""
    from .policy import PolicyError, overlaps, policy_from_spec

    name = str((obj.get("metadata") or {}).get("name"))
    try:
        policy = policy_from_spec(name, obj.get("spec") or {})
    except PolicyError as e:
        return [("spec", str(e))]
    warnings += [f"{obj.get('kind')} {name}: {o}" for o in overlaps(policy, dt.datetime.now(dt.UTC))]
    return []


def operator_problems(obj: Mapping[str, Any], templates: Mapping[TemplateKey, Mapping[str, Any]], warnings: list[str]) -> Found:
    kind = obj.get("kind")
    if kind == "Rollout":
        return rollout_problems(obj, templates, warnings)
    if kind in ("AnalysisTemplate", "ClusterAnalysisTemplate"):
        return template_problems(obj)
    if kind in ("ReleasePolicy", "ClusterReleasePolicy"):
        return policy_problems(obj, warnings)
    return []


def validate_object(
    obj: Mapping[str, Any],
    crd: CrdVersion,
    warnings: list[str] | None = None,
    templates: Mapping[TemplateKey, Mapping[str, Any]] | None = None,
) -> Found:
    """(path, message) for everything the apiserver would reject in a create of `obj`, or,
    when it would store it, what the operator would refuse (steps 0-5 above)."""
    warnings = warnings if warnings is not None else []
    sent: Found = []
    obj = as_sent(obj, [], sent)
    if sent:
        return sent
    problems, stored = check_object(obj, crd, warnings)
    return problems or operator_problems(stored, templates or {}, warnings)


# ---------------------------------------------------------------- files


@dataclasses.dataclass
class LintResult:
    problems: list[Problem] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    checked: int = 0  # objects of a CRD kind that were validated
    skipped: int = 0  # objects of other kinds (not ours to judge)
    files: int = 0


@dataclasses.dataclass
class _Doc:
    source: str
    kind: str
    name: str
    obj: dict[str, Any]
    crd: CrdVersion


class KubectlLoader(yaml.SafeLoader):
    """PyYAML as kubectl reads YAML (sigs.k8s.io/yaml, go-yaml v2): y, Y, n and N are booleans too."""

    bool_values = {**yaml.SafeLoader.bool_values, "y": True, "n": False}


KubectlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))


def iter_documents(text: str) -> Iterator[Any]:
    for doc in yaml.load_all(text, Loader=KubectlLoader):  # noqa: S506 - a SafeLoader
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from doc["items"]
        elif doc is not None:
            yield doc


def expand_paths(paths: Iterable[str], recursive: bool = False) -> list[str]:
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if p != "-" and path.is_dir():
            files = sorted(path.glob("**/*" if recursive else "*"))
            out.extend(str(f) for f in files if f.is_file() and f.suffix in (".yaml", ".yml", ".json"))
        else:
            out.append(p)
    return out


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return f"cannot parse: {str(exc).splitlines()[0]}"
    what = " ".join(x for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
    return f"cannot parse: line {mark.line + 1}, column {mark.column + 1}: {what}"


def read_documents(text: str, source: str, index: CrdIndex, result: LintResult) -> list[_Doc]:
    """The documents of one file (problems for what is not a manifest of a known kind)."""
    try:
        docs = list(iter_documents(text))
    except yaml.YAMLError as exc:
        result.problems.append(Problem(source, "?", "?", "<yaml>", _yaml_error(exc)))
        return []
    out = []
    for doc in docs:
        if not isinstance(doc, dict):
            result.problems.append(Problem(source, "?", "?", "<root>", "a manifest must be a mapping"))
            continue
        api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
        meta = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
        name = str(meta.get("name") or meta.get("generateName") or "<no name>")
        crd = index.lookup(api_version, kind)
        if crd is not None:
            out.append(_Doc(source, kind, name, doc, crd))
        elif (api_version.split("/", 1)[0] if "/" in api_version else "") in index.groups:
            message = f'no matches for kind "{kind}" in version "{api_version}" (known: {", ".join(index.kinds())})'
            result.problems.append(Problem(source, kind or "?", name, "<root>", message))
        else:
            result.skipped += 1
    return out


def lint_documents(docs: list[_Doc], result: LintResult) -> None:
    """Steps 0-4 for every document, then step 5 with the templates the apiserver would store."""
    checked: list[tuple[_Doc, Found, dict[str, Any], list[str]]] = []
    templates: dict[TemplateKey, Mapping[str, Any]] = {}
    for d in docs:
        result.checked += 1
        warnings: list[str] = []
        found: Found = []
        stored = as_sent(d.obj, [], found)
        if not found:
            found, stored = check_object(stored, d.crd, warnings)
        if not found and d.kind in ("AnalysisTemplate", "ClusterAnalysisTemplate"):
            ns = (stored.get("metadata") or {}).get("namespace") if d.kind == "AnalysisTemplate" else None
            templates[(d.kind, ns, d.name)] = stored
        checked.append((d, found, stored, warnings))
    for d, found, stored, warnings in checked:
        found = found or operator_problems(stored, templates, warnings)
        result.problems.extend(Problem(d.source, d.kind, d.name, path, message) for path, message in found)
        result.warnings.extend(f"{d.source}: {d.kind}/{d.name}: {w}" for w in warnings)


def lint_text(text: str, source: str, index: CrdIndex, result: LintResult) -> None:
    lint_documents(read_documents(text, source, index, result), result)


def lint_paths(paths: Iterable[str], index: CrdIndex, recursive: bool = False) -> LintResult:
    result = LintResult()
    docs: list[_Doc] = []
    for p in expand_paths(paths, recursive):
        try:
            text = sys.stdin.read() if p == "-" else Path(p).read_text()
        except OSError as exc:
            result.problems.append(Problem(p, "?", "?", "<file>", f"cannot read: {exc.strerror or exc}"))
            continue
        result.files += 1
        docs += read_documents(text, "<stdin>" if p == "-" else p, index, result)
    lint_documents(docs, result)
    return result
