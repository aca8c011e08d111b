"""A tiny, safe expression language for successCondition / failureCondition.

Conditions are compiled once (when the metric is parsed) and evaluated against the
measured value. The grammar is a small subset of Python's expressions, with the
operators Argo Rollouts users already type accepted as aliases:

    result < 0.01
    result[0] >= 0.99 && result[0] <= 1        # result[0] is the same as result
    !(result > 2 * baseline)                    # `baseline` exists when the metric has one
    isNaN(result) || result < 1

Names: ``result``, ``baseline``, ``true``, ``false``. Functions: ``isNaN``, ``isInf``,
``abs``, ``min``, ``max``. Operators: ``< <= > >= == !=``, ``and or not`` (or
``&& || !``), ``+ - * /``. Nothing else is allowed: no attribute access, no other calls.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ExprError", "Condition", "compile_condition"]


class ExprError(ValueError):
    """The condition is not a valid expression of this language."""


_FUNCS: dict[str, Callable[..., Any]] = {
    "isNaN": lambda x: isinstance(x, float) and math.isnan(x),
    "isInf": lambda x: isinstance(x, float) and math.isinf(x),
    "abs": abs,
    "min": min,
    "max": max,
}
_CONSTS = {"true": True, "false": False}
_CMP = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_BOOLEAN_TOP = (ast.Compare, ast.BoolOp)


def _translate(text: str) -> str:
    text = text.replace("&&", " and ").replace("||", " or ")
    return re.sub(r"!(?!=)", " not ", text)


class Condition:
    """A compiled condition; call :meth:`evaluate` with the measured values."""

    def __init__(self, source: str, tree: ast.Expression, names: frozenset[str]):
        self.source = source
        self._tree = tree
        self.names = names

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def evaluate(self, variables: Mapping[str, float | None]) -> bool:
        """True or False; raises ExprError when it cannot be evaluated (e.g. x / 0)."""
        try:
            value = _eval(self._tree.body, variables)
        except ExprError:
            raise
        except (ArithmeticError, TypeError, ValueError) as e:
            raise ExprError(f"cannot evaluate `{self.source}`: {e}") from None
        if not isinstance(value, bool):
            raise ExprError(f"`{self.source}` gives {value!r}, not true or false")
        return value


def compile_condition(source: str, allowed: frozenset[str] = frozenset({"result"})) -> Condition:
    """Parse and check a condition; raise ExprError with a clear message when invalid."""
    if not isinstance(source, str) or not source.strip():
        raise ExprError("the condition is empty")
    try:
        tree = ast.parse(_translate(source.strip()), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"`{source}` is not a valid expression ({e.msg})") from None
    names: set[str] = set()
    _check(tree.body, source, allowed, names)
    body = tree.body
    boolean = (
        isinstance(body, _BOOLEAN_TOP)
        or (isinstance(body, ast.UnaryOp) and isinstance(body.op, ast.Not))
        or (isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id in ("isNaN", "isInf"))
        or (isinstance(body, ast.Constant) and isinstance(body.value, bool))
        or (isinstance(body, ast.Name) and body.id in _CONSTS)
    )
    if not boolean:
        raise ExprError(f"`{source}` must be a comparison (for example `result < 0.01`), not a number")
    return Condition(source.strip(), tree, frozenset(names))


def _check(node: ast.AST, source: str, allowed: frozenset[str], names: set[str]) -> None:
    def bad(what: str) -> ExprError:
        return ExprError(f"`{source}`: {what} is not allowed (use result, numbers, comparisons, and/or/not)")

    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, source, allowed, names)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            raise bad(type(node.op).__name__)
        _check(node.operand, source, allowed, names)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BIN:
            raise bad(f"operator {type(node.op).__name__}")
        _check(node.left, source, allowed, names)
        _check(node.right, source, allowed, names)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMP:
                raise bad(f"operator {type(op).__name__}")
        _check(node.left, source, allowed, names)
        for c in node.comparators:
            _check(c, source, allowed, names)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool | int | float):
            return
        raise bad(f"the constant {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id in _CONSTS:
            return
        if node.id not in allowed:
            known = ", ".join(sorted(allowed))
            raise ExprError(f"`{source}`: unknown name {node.id!r} (known: {known})")
        names.add(node.id)
    elif isinstance(node, ast.Subscript):
        # result[0]: Argo Rollouts' spelling of the (single) value
        if not (
            isinstance(node.value, ast.Name)
            and node.value.id in allowed
            and isinstance(node.slice, ast.Constant)
            and node.slice.value == 0
            and not isinstance(node.slice.value, bool)
        ):
            raise bad("indexing other than result[0]")
        names.add(node.value.id)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
            raise bad("this function call")
        if not node.args:
            raise bad(f"{node.func.id}() without arguments")
        for a in node.args:
            _check(a, source, allowed, names)
    else:
        raise bad(type(node).__name__)


def _eval(node: ast.AST, env: Mapping[str, float | None]) -> Any:
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_truth(_eval(v, env)) for v in node.values)
        return any(_truth(_eval(v, env)) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not _truth(v)
        return -_num(v) if isinstance(node.op, ast.USub) else +_num(v)
    if isinstance(node, ast.BinOp):
        return _BIN[type(node.op)](_num(_eval(node.left, env)), _num(_eval(node.right, env)))
    if isinstance(node, ast.Compare):
        left = _num(_eval(node.left, env))
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _num(_eval(comp, env))
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in _CONSTS:
            return _CONSTS[node.id]
        return _lookup(node.id, env)
    if isinstance(node, ast.Subscript):
        return _lookup(node.value.id, env)  # type: ignore[attr-defined]
    if isinstance(node, ast.Call):
        return _FUNCS[node.func.id](*(_num(_eval(a, env)) for a in node.args))  # type: ignore[attr-defined]
    raise ExprError(f"unexpected {type(node).__name__}")  # pragma: no cover - _check rejects it


def _lookup(name: str, env: Mapping[str, float | None]) -> float:
    value = env.get(name)
    if value is None:
        raise ExprError(f"{name} has no value")
    return float(value)


def _num(v: Any) -> float:
    if isinstance(v, bool):
        raise ExprError("a comparison was used as a number")
    return float(v)


def _truth(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ExprError(f"{v!r} is a number where true/false was expected")
    return v
