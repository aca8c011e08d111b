"""`kubectl teal lint`: validate manifests offline the way the apiserver would.

The CRDs shipped with the package (teal/crds/*.yaml; the repository's crds/ as a
fallback) are the only source of rules. For every manifest of a kind they define, the
steps follow the apiserver's handling of a create request:

1. strict field validation: fields the schema does not declare are errors
   (`unknown field "spec.x"`, kubectl's default `--validate=strict`);
2. nulls in non-nullable fields are dropped, then the schema's defaults are applied;
3. the OpenAPI schema, converted to JSON Schema and checked with `jsonschema`;
4. the CEL rules (`x-kubernetes-validations`), evaluated with `celpy` (cel-python)
   plus the Kubernetes CEL library functions the rules use.

`status` is ignored (the apiserver drops it on create when the status subresource is
on). Messages follow the apiserver's wording, so a test can check that `lint` and the
apiserver reject a manifest for the same reason.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

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
        self.versions: dict[tuple[str, str], CrdVersion] = {}
        self.groups: set[str] = set()
        for v in versions:
            self.add(v)

    def add(self, v: CrdVersion) -> None:
        self.versions[(v.api_version, v.kind)] = v
        self.groups.add(v.group)

    def __len__(self) -> int:
        return len(self.versions)

    def kinds(self) -> list[str]:
        return sorted({f"{k} ({a})" for a, k in self.versions})

    def lookup(self, api_version: str, kind: str) -> CrdVersion | None:
        return self.versions.get((api_version, kind))

    @classmethod
    def from_documents(cls, docs: Iterable[tuple[str, Any]]) -> "CrdIndex":
        index = cls()
        for source, doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc.get("spec") or {}
            names = spec.get("names") or {}
            for ver in spec.get("versions") or []:
                if not ver.get("served", True):
                    continue
                schema = ((ver.get("schema") or {}).get("openAPIV3Schema")) or {"type": "object"}
                index.add(
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
        return index

    @classmethod
    def from_paths(cls, paths: Iterable[Path]) -> "CrdIndex":
        docs: list[tuple[str, Any]] = []
        for path in paths:
            files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
            for f in files:
                for doc in yaml.safe_load_all(f.read_text()):
                    docs.append((str(f), doc))
        return cls.from_documents(docs)


def default_crd_dirs() -> list[Path]:
    """The package's CRDs (teal/crds) if shipped, else the repository's crds/."""
    found: list[Path] = []
    try:
        pkg = importlib.resources.files("teal") / "crds"
        pkg_path = Path(str(pkg))
        if pkg_path.is_dir() and any(pkg_path.glob("*.yaml")):
            found.append(pkg_path)
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - teal is always importable here
        pass
    if not found:
        repo = Path(__file__).resolve().parents[2] / "crds"
        if repo.is_dir() and any(repo.glob("*.yaml")):
            found.append(repo)
    return found


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


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _fmt_path(parts: Iterable[str | int]) -> str:
    out = ""
    for p in parts:
        out = _join(out, p)
    return out or "<root>"


def _go_value(v: Any) -> str:
    """A value as the apiserver quotes it in messages."""
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    if isinstance(v, dict):
        return '"object"'
    if isinstance(v, list):
        return '"array"'
    return json.dumps(str(v))


# ---------------------------------------------------------------- step 1: unknown fields

OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
}


def _preserves(schema: Mapping[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def unknown_fields(obj: Any, schema: Mapping[str, Any], path: list[str | int]) -> Iterator[str]:
    """Dotted paths of fields the schema does not declare (strict field validation)."""
    if isinstance(obj, dict):
        if schema.get("x-kubernetes-embedded-resource"):
            known_extra = {"apiVersion", "kind", "metadata"}
        else:
            known_extra = set()
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        if schema.get("type") not in (None, "object") or schema.get("x-kubernetes-int-or-string"):
            # an object where the schema wants a scalar or a list: the decoder prunes every
            # field of it, and strict validation reports them as unknown
            if not _preserves(schema):
                for key in obj:
                    yield _fmt_path([*path, key])
            return
        if props is None and addl is None:
            return  # an object without a structure below it (or preserved)
        for key, value in obj.items():
            sub_path = [*path, key]
            if props is not None and key in props:
                yield from unknown_fields(value, props[key], sub_path)
            elif isinstance(addl, dict):
                yield from unknown_fields(value, addl, sub_path)
            elif addl is True or _preserves(schema) or key in known_extra:
                continue
            else:
                yield _fmt_path(sub_path)
    elif isinstance(obj, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, value in enumerate(obj):
                yield from unknown_fields(value, items, [*path, i])


def _meta_unknown(meta: Any) -> Iterator[str]:
    if isinstance(meta, dict):
        for key in meta:
            if key not in OBJECT_META_FIELDS:
                yield f"metadata.{key}"


# ---------------------------------------------------------------- step 2: nulls and defaults


def apply_defaults(obj: Any, schema: Mapping[str, Any]) -> Any:
    """Drop nulls the schema doesn't allow, then fill in defaults (like the apiserver)."""
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        for key in list(obj):
            sub = props.get(key) if key in props else (addl if isinstance(addl, dict) else None)
            if obj[key] is None and sub is not None and not sub.get("nullable"):
                if "default" in sub:
                    obj[key] = copy.deepcopy(sub["default"])
                else:
                    del obj[key]
                continue
            if sub is not None:
                obj[key] = apply_defaults(obj[key], sub)
        for key, sub in props.items():
            if key not in obj and isinstance(sub, dict) and "default" in sub:
                obj[key] = apply_defaults(copy.deepcopy(sub["default"]), sub)
    elif isinstance(obj, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [apply_defaults(v, items) for v in obj]
    return obj


# ---------------------------------------------------------------- step 3: OpenAPI via jsonschema

_KEEP = {
    "type", "required", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems", "minProperties",
    "maxProperties", "multipleOf",
}


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
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = to_json_schema(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [to_json_schema(s) for s in schema[key]]
    if "not" in schema:
        out["not"] = to_json_schema(schema["not"])
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


def _schema_problem(err: Any) -> list[tuple[str, str]]:
    """(path, message) in the apiserver's words for one jsonschema ValidationError."""
    parts = list(err.absolute_path)
    path = _fmt_path(parts)
    v, val = err.validator, err.validator_value
    inst = err.instance
    body = f"{path} in body"
    if v == "required":
        missing = [r for r in val if not isinstance(inst, dict) or r not in inst]
        return [(_fmt_path([*parts, m]), "Required value") for m in missing]
    if v == "type":
        want = val if isinstance(val, str) else " or ".join(val)
        got = _TYPE_NAMES.get(type(inst), "null" if inst is None else type(inst).__name__)
        return [(path, f"Invalid value: {_go_value(got)}: {body} must be of type {want}: {_go_value(got)}")]
    if v == "enum":
        supported = ", ".join(_go_value(x) for x in val)
        shown = json.dumps(inst, separators=(",", ":")) if isinstance(inst, (dict, list)) else _go_value(inst)
        return [(path, f"Unsupported value: {shown}: supported values: {supported}")]
    if v == "minimum":
        exclusive = err.schema.get("exclusiveMinimum") is True
        rel = "greater than" if exclusive else "greater than or equal to"
        return [(path, f"Invalid value: {_go_value(inst)}: {body} should be {rel} {val}")]
    if v == "maximum":
        exclusive = err.schema.get("exclusiveMaximum") is True
        rel = "less than" if exclusive else "less than or equal to"
        return [(path, f"Invalid value: {_go_value(inst)}: {body} should be {rel} {val}")]
    if v == "minItems":
        return [(path, f"Invalid value: {len(inst)}: {body} should have at least {val} items")]
    if v == "maxItems":
        return [(path, f"Too many: {len(inst)}: must have at most {val} items")]
    if v == "minLength":
        return [(path, f"Invalid value: {_go_value(inst)}: {body} should be at least {val} chars long")]
    if v == "maxLength":
        return [(path, f"Too long: may not be more than {val} bytes")]
    if v == "pattern":
        return [(path, f"Invalid value: {_go_value(inst)}: {body} should match '{val}'")]
    if v == "minProperties":
        return [(path, f"Invalid value: {len(inst)}: {body} should have at least {val} properties")]
    if v == "maxProperties":
        return [(path, f"Too many: {len(inst)}: must have at most {val} items")]
    if v == "uniqueItems":
        return [(path, f"Duplicate value: {_go_value(inst)}")]
    if v == "multipleOf":
        return [(path, f"Invalid value: {_go_value(inst)}: {body} should be a multiple of {val}")]
    if v == "anyOf" and any(s.get("type") == "integer" for s in val) and any(s.get("type") == "string" for s in val):
        got = _TYPE_NAMES.get(type(inst), "null")
        return [(path, f"Invalid value: {_go_value(got)}: {body} must be of type integer or string: {_go_value(got)}")]
    return [(path, f"Invalid value: {_go_value(inst)}: {err.message}")]


def openapi_problems(obj: Any, schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    import jsonschema

    validator = jsonschema.Draft4Validator(to_json_schema(schema))
    out: list[tuple[str, str]] = []
    for err in validator.iter_errors(obj):
        out.extend(_schema_problem(err))
    return out


# ---------------------------------------------------------------- step 4: CEL rules


class CelUnsupported(Exception):
    """A rule uses something the offline evaluator cannot do."""


_CEL_ENV = None
_CEL_CACHE: dict[str, Any] = {}


class _Absent:
    """`oldSelf` on create, for rules with optionalOldSelf: an optional without a value."""


def _cel_functions() -> dict[str, Any]:
    from celpy import celtypes

    def ordered(lst: Any) -> list:
        return list(lst)

    def is_sorted(lst: Any) -> Any:
        items = ordered(lst)
        return celtypes.BoolType(all(a <= b for a, b in zip(items, items[1:])))

    def cel_sum(lst: Any) -> Any:
        items = ordered(lst)
        if not items:
            return celtypes.IntType(0)
        total = items[0]
        for x in items[1:]:
            total = total + x
        return total

    def cel_min(lst: Any) -> Any:
        items = ordered(lst)
        if not items:
            raise ValueError("min() of an empty list")
        return min(items)

    def cel_max(lst: Any) -> Any:
        items = ordered(lst)
        if not items:
            raise ValueError("max() of an empty list")
        return max(items)

    def index_of(target: Any, x: Any) -> Any:
        if isinstance(target, str):
            return celtypes.IntType(str(target).find(str(x)))
        items = ordered(target)
        return celtypes.IntType(items.index(x) if x in items else -1)

    def last_index_of(target: Any, x: Any) -> Any:
        if isinstance(target, str):
            return celtypes.IntType(str(target).rfind(str(x)))
        items = ordered(target)
        return celtypes.IntType(len(items) - 1 - items[::-1].index(x) if x in items else -1)

    def has_value(x: Any) -> Any:
        return celtypes.BoolType(not isinstance(x, _Absent))

    def value(x: Any) -> Any:
        if isinstance(x, _Absent):
            raise ValueError("optional.none() has no value")
        return x

    def lower_ascii(s: Any) -> Any:
        return celtypes.StringType(str(s).lower())

    def upper_ascii(s: Any) -> Any:
        return celtypes.StringType(str(s).upper())

    def trim(s: Any) -> Any:
        return celtypes.StringType(str(s).strip())

    def split(s: Any, sep: Any) -> Any:
        return celtypes.ListType([celtypes.StringType(p) for p in str(s).split(str(sep))])

    def join(lst: Any, sep: Any = "") -> Any:
        return celtypes.StringType(str(sep).join(str(x) for x in lst))

    def replace(s: Any, old: Any, new: Any) -> Any:
        return celtypes.StringType(str(s).replace(str(old), str(new)))

    def substring(s: Any, start: Any, end: Any = None) -> Any:
        text = str(s)
        return celtypes.StringType(text[int(start):] if end is None else text[int(start):int(end)])

    def char_at(s: Any, i: Any) -> Any:
        text = str(s)
        return celtypes.StringType(text[int(i)] if int(i) < len(text) else "")

    return {
        "isSorted": is_sorted, "sum": cel_sum, "min": cel_min, "max": cel_max,
        "indexOf": index_of, "lastIndexOf": last_index_of, "hasValue": has_value, "value": value,
        "lowerAscii": lower_ascii, "upperAscii": upper_ascii, "trim": trim, "split": split,
        "join": join, "replace": replace, "substring": substring, "charAt": char_at,
    }


def _program(rule: str) -> Any:
    global _CEL_ENV
    import celpy

    if _CEL_ENV is None:
        _CEL_ENV = celpy.Environment()
    prog = _CEL_CACHE.get(rule)
    if prog is None:
        try:
            ast = _CEL_ENV.compile(rule)
        except Exception as exc:  # celpy raises CELParseError
            raise CelUnsupported(f"cannot parse rule {rule!r}: {exc}") from exc
        prog = _CEL_ENV.program(ast, functions=_cel_functions())
        _CEL_CACHE[rule] = prog
    return prog


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
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
        return celtypes.MapType(
            {celtypes.StringType(k): to_cel(v, props.get(k, addl)) for k, v in value.items()}
        )
    return value


def _root_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """At the root, CEL sees apiVersion, kind, metadata.name/generateName and the schema's fields."""
    view = {k: v for k, v in obj.items() if k != "metadata"}
    meta = obj.get("metadata") or {}
    view["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
    return view


def _uses_old_self(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


def cel_problems(
    obj: Any, schema: Mapping[str, Any], path: list[str | int], warnings: list[str], root: bool = False
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    rules = schema.get("x-kubernetes-validations") or []
    if rules:
        self_value = to_cel(_root_view(obj) if root and isinstance(obj, dict) else obj, schema)
        for r in rules:
            rule = r.get("rule", "")
            if _uses_old_self(rule) and not r.get("optionalOldSelf"):
                continue  # a transition rule: not evaluated on create
            activation = {"self": self_value}
            if _uses_old_self(rule):
                activation["oldSelf"] = _Absent()
            try:
                result = _program(rule).evaluate(activation)
            except CelUnsupported as exc:
                warnings.append(f"{_fmt_path(path)}: {exc}")
                continue
            except Exception as exc:  # evaluation errors: celpy raises CELEvalError
                warnings.append(f"{_fmt_path(path)}: could not evaluate rule {rule!r}: {str(exc)[:200]}")
                continue
            if type(result).__name__ == "CELEvalError":
                warnings.append(f"{_fmt_path(path)}: could not evaluate rule {rule!r}: {str(result)[:200]}")
                continue
            if not bool(result):
                where = path
                field_path = r.get("fieldPath")
                if field_path:
                    where = [*path, *_split_field_path(field_path)]
                message = r.get("message") or f"failed rule: {rule}"
                if r.get("messageExpression"):
                    try:
                        message = str(_program(r["messageExpression"]).evaluate(activation))
                    except Exception:
                        pass
                shown = json.dumps(schema.get("type") or _TYPE_NAMES.get(type(obj), "object"))
                out.append((_fmt_path(where), f"Invalid value: {shown}: {message}"))
    # recurse into the structure below
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
        for key, value in obj.items():
            if root and key == "metadata":
                continue
            sub = props.get(key, addl)
            if sub is not None:
                out.extend(cel_problems(value, sub, [*path, key], warnings))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            out.extend(cel_problems(value, schema["items"], [*path, i], warnings))
    return out


def _split_field_path(field_path: str) -> list[str | int]:
    """'.strategy.blueGreen.steps[0]' or ".x['a.b']" -> ['strategy', 'blueGreen', 'steps', 0]."""
    parts: list[str | int] = []
    for m in re.finditer(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\['([^']*)'\]", field_path):
        if m.group(1) is not None:
            parts.append(m.group(1))
        elif m.group(2) is not None:
            parts.append(int(m.group(2)))
        else:
            parts.append(m.group(3))
    return parts


# ---------------------------------------------------------------- metadata

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def metadata_problems(obj: Mapping[str, Any], crd: CrdVersion) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [("metadata.name", "Required value: name or generateName is required")]
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        out.append(("metadata.name", "Required value: name or generateName is required"))
    elif name:
        if len(name) > 253:
            out.append(("metadata.name", f"Invalid value: {_go_value(name)}: must be no more than 253 characters"))
        if not _DNS_SUBDOMAIN.match(name):
            out.append((
                "metadata.name",
                f"Invalid value: {_go_value(name)}: a lowercase RFC 1123 subdomain must consist of lower case "
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            ))
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())):
            out.append((f"metadata.{key}", "Invalid value: must be a map of strings"))
    return out


# ---------------------------------------------------------------- one object


def validate_object(obj: Mapping[str, Any], crd: CrdVersion, warnings: list[str] | None = None) -> list[tuple[str, str]]:
    """(path, message) for everything the apiserver would reject in a create of `obj`."""
    warnings = warnings if warnings is not None else []
    obj = copy.deepcopy(dict(obj))
    if crd.status_subresource:
        obj.pop("status", None)
    problems: list[tuple[str, str]] = []
    # 1. strict field validation
    unknown = [*_meta_unknown(obj.get("metadata")), *unknown_fields(
        {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, crd.schema, []
    )]
    for field in unknown:
        problems.append((field, f'unknown field "{field}"'))
    problems.extend(metadata_problems(obj, crd))
    # 2. defaults
    obj = apply_defaults(obj, crd.schema)
    # 3. OpenAPI
    schema_problems = openapi_problems(
        {k: v for k, v in obj.items() if k != "metadata"}, {**crd.schema, "properties": {
            k: v for k, v in (crd.schema.get("properties") or {}).items() if k != "metadata"}}
    )
    problems.extend(schema_problems)
    # 4. CEL. Like the apiserver, only on an object that passed the OpenAPI checks (it says
    # "some validation rules were not checked because the object was invalid").
    if schema_problems:
        warnings.append("the CEL validation rules were not checked because the object is invalid")
    else:
        problems.extend(cel_problems(obj, crd.schema, [], warnings, root=True))
    seen: set[tuple[str, str]] = set()
    unique = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


# ---------------------------------------------------------------- files


@dataclasses.dataclass
class LintResult:
    problems: list[Problem] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    checked: int = 0  # objects of a CRD kind that were validated
    skipped: int = 0  # objects of other kinds (not ours to judge)
    files: int = 0


def iter_documents(text: str) -> Iterator[Any]:
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from doc["items"]
        else:
            yield doc


def expand_paths(paths: Iterable[str], recursive: bool = False) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
            continue
        path = Path(p)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            out.extend(
                str(f) for f in sorted(path.glob(pattern)) if f.is_file() and f.suffix in (".yaml", ".yml", ".json")
            )
        else:
            out.append(p)
    return out


def lint_text(text: str, source: str, index: CrdIndex, result: LintResult) -> None:
    try:
        docs = list(iter_documents(text))
    except yaml.YAMLError as exc:
        result.problems.append(Problem(source, "?", "?", "<yaml>", f"cannot parse: {str(exc).splitlines()[0]}"))
        return
    for doc in docs:
        if not isinstance(doc, dict):
            result.problems.append(Problem(source, "?", "?", "<root>", "a manifest must be a mapping"))
            continue
        api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        name = str(meta.get("name") or meta.get("generateName") or "<no name>")
        crd = index.lookup(api_version, kind)
        if crd is None:
            group = api_version.split("/", 1)[0] if "/" in api_version else ""
            if group in index.groups:
                known = ", ".join(index.kinds())
                result.problems.append(Problem(
                    source, kind or "?", name, "<root>",
                    f'no matches for kind "{kind}" in version "{api_version}" (known: {known})',
                ))
            else:
                result.skipped += 1
            continue
        result.checked += 1
        warnings: list[str] = []
        found = list(validate_object(doc, crd, warnings))
        for path, message in found:
            result.problems.append(Problem(source, kind, name, path, message))
        if not found and kind in ("ReleasePolicy", "ClusterReleasePolicy"):
            from .policy import PolicyError, policy_from_spec  # what CEL cannot check: zones, cron
            try:
                policy_from_spec(name, doc.get("spec") or {})
            except PolicyError as e:
                result.problems.append(Problem(source, kind, name, "spec", str(e)))
        result.warnings.extend(f"{source}: {kind}/{name}: {w}" for w in warnings)


def lint_paths(paths: Iterable[str], index: CrdIndex, recursive: bool = False) -> LintResult:
    result = LintResult()
    for p in expand_paths(paths, recursive):
        try:
            text = sys.stdin.read() if p == "-" else Path(p).read_text()
        except OSError as exc:
            result.problems.append(Problem(p, "?", "?", "<file>", f"cannot read: {exc.strerror or exc}"))
            continue
        result.files += 1
        lint_text(text, "<stdin>" if p == "-" else p, index, result)
    return result
