"""Safe parsing of model equations into sympy, with units checked and conversions inserted.

An equation is a text like ``"ka * depot - CL / V * central"``. It is parsed with Python's `ast`
module (which only reads syntax, it never runs anything) and every node is checked against a
whitelist: numbers, names, ``+ - * / **``, unary minus, calls of the functions in `FUNCTIONS`,
and comparisons / ``and`` / ``or`` inside conditions. Anything else (attribute access, indexing,
strings, lambdas, comprehensions, keyword arguments) is rejected with the offending text, so an
equation such as ``__import__("os").system("...")`` is refused at load time and nothing runs.

`build` turns a parsed expression into two sympy expressions and a unit:

- ``raw``: the expression as written (for rendering to LaTeX);
- ``converted``: the same with unit-conversion factors inserted wherever two terms of the same
  dimension but different units meet (``mg/h + ug/h``), or a ratio must be dimensionless
  (``exp(t / tau)`` with ``t`` in days and ``tau`` in hours);
- ``unit``: the pint unit of the result.

A sum of different dimensions, a dimensional exponent, or a function of a dimensional argument
is a `ExpressionError`. A literal ``0`` takes whatever unit it is added to.

Functions
---------
``exp, log, log10, sqrt, abs, tanh, min, max`` (two or more arguments), and the helpers

- ``hill(x, c50, n)`` = ``x^n / (c50^n + x^n)`` (stimulation, 0..1);
- ``hill_inh(x, c50, n)`` = ``c50^n / (c50^n + x^n)`` (inhibition, 1..0);
- ``sigmoid(x)`` = ``1 / (1 + exp(-x))`` (``x`` dimensionless);
- ``smoothstep(x, x0, width)`` = ``sigmoid((x - x0) / width)``: a smooth switch from 0 to 1;
- ``pos(x)`` = ``max(x, 0)``;
- ``piecewise(cond, a, b)`` (alias ``if_else``) = ``a`` where ``cond`` holds, else ``b``.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sympy as sp

from pkpd import units as U

#: Callable functions and their number of arguments (None: two or more).
FUNCTIONS: dict[str, int | None] = {
    "exp": 1,
    "log": 1,
    "log10": 1,
    "sqrt": 1,
    "abs": 1,
    "tanh": 1,
    "sigmoid": 1,
    "pos": 1,
    "min": None,
    "max": None,
    "hill": 3,
    "hill_inh": 3,
    "smoothstep": 3,
    "piecewise": 3,
    "if_else": 3,
}

#: Names with a fixed meaning inside equations.
RESERVED = frozenset({"t", "pi", *FUNCTIONS})

_MAX_LENGTH = 10_000


class ExpressionError(ValueError):
    """An equation that is not allowed or not consistent (the loader adds file, line, name)."""


@dataclass(frozen=True)
class Parsed:
    """A validated expression tree.

    Attributes
    ----------
    text : str
        The source text.
    tree : ast.expr
        The validated syntax tree (only whitelisted nodes).
    names : frozenset of str
        Every symbol the expression refers to (excluding functions, ``t`` and ``pi``).
    uses_time : bool
        Whether the expression refers to the time ``t``.
    """

    text: str
    tree: ast.expr
    names: frozenset[str]
    uses_time: bool = False


@dataclass(frozen=True)
class Built:
    """An expression in sympy form with its unit (see the module docstring)."""

    raw: sp.Expr
    converted: sp.Expr
    unit: Any


_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)
_CMPOPS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _snippet(text: str, node: ast.AST) -> str:
    try:
        return ast.get_source_segment(text, node) or ast.dump(node)
    except Exception:  # pragma: no cover - get_source_segment is best effort
        return type(node).__name__


def parse(text: Any) -> Parsed:
    """Parse and validate an equation.

    Parameters
    ----------
    text : str or number
        The equation's right-hand side (a bare number is allowed).

    Returns
    -------
    Parsed

    Raises
    ------
    ExpressionError
        On a syntax error or any construct outside the whitelist.
    """
    if isinstance(text, bool):
        raise ExpressionError(f"expected an equation, got {text!r}")
    if isinstance(text, int | float):
        text = repr(float(text))
    if not isinstance(text, str):
        raise ExpressionError(f"an equation must be text, got {type(text).__name__}")
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"equation longer than {_MAX_LENGTH} characters")
    source = text.strip()
    if not source:
        raise ExpressionError("empty equation")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        pos = f" at column {exc.offset}" if exc.offset else ""
        raise ExpressionError(f"syntax error in {source!r}{pos}: {exc.msg}") from None
    names: set[str] = set()
    _check(tree.body, source, names, in_condition=False)
    uses_time = any(isinstance(n, ast.Name) and n.id == "t" for n in ast.walk(tree.body))
    return Parsed(source, tree.body, frozenset(names), uses_time)


def _check(node: ast.AST, text: str, names: set[str], in_condition: bool) -> None:
    def bad(why: str) -> ExpressionError:
        return ExpressionError(f"{why}: {_snippet(text, node)!r} in {text!r}")

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise bad("only numbers are allowed as constants")
        return
    if isinstance(node, ast.Name):
        if node.id.startswith("_"):
            raise bad("names may not start with an underscore")
        if node.id in FUNCTIONS:
            raise bad(f"{node.id} is a function; call it with arguments")
        if node.id not in ("t", "pi"):
            names.add(node.id)
        return
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        _check(node.left, text, names, False)
        _check(node.right, text, names, False)
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check(node.operand, text, names, False)
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise bad(f"only these functions may be called: {', '.join(sorted(FUNCTIONS))}")
        if node.keywords:
            raise bad("keyword arguments are not allowed")
        nargs = FUNCTIONS[node.func.id]
        if nargs is None and len(node.args) < 2:
            raise bad(f"{node.func.id} takes two or more arguments")
        if nargs is not None and len(node.args) != nargs:
            raise bad(f"{node.func.id} takes {nargs} argument(s)")
        for k, arg in enumerate(node.args):
            if isinstance(arg, ast.Starred):
                raise bad("* arguments are not allowed")
            cond = node.func.id in ("piecewise", "if_else") and k == 0
            _check(arg, text, names, cond)
        return
    if in_condition and isinstance(node, ast.Compare):
        if len(node.ops) != 1 or not isinstance(node.ops[0], _CMPOPS):
            raise bad("conditions compare two values with <, <=, > or >=")
        _check(node.left, text, names, False)
        _check(node.comparators[0], text, names, False)
        return
    if in_condition and isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, text, names, True)
        return
    raise bad(f"{type(node).__name__} is not allowed in an equation")


def symbol(name: str) -> sp.Symbol:
    """Return the sympy symbol of a model name (all symbols are real)."""
    return sp.Symbol(name, real=True)


def _num(value: float) -> sp.Expr:
    if float(value).is_integer():
        return sp.Integer(int(value))
    return sp.Float(value, 17)


class _Builder:
    def __init__(self, parsed: Parsed, units: Mapping[str, Any], time_unit: Any):
        self.text = parsed.text
        self.units = units
        self.time_unit = time_unit

    def fail(self, node: ast.AST, why: str) -> ExpressionError:
        return ExpressionError(f"{why} in {_snippet(self.text, node)!r}")

    @staticmethod
    def is_zero(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value == 0

    def to(self, b: Built, unit: Any, node: ast.AST, what: str) -> Built:
        """Convert ``b`` to ``unit`` (same dimension), inserting the factor."""
        if b.unit is None:  # a literal zero takes any unit
            return Built(b.raw, b.converted, unit)
        if not U.same_dimension(b.unit, unit):
            raise self.fail(
                node, f"{what}: {U.pretty(b.unit)} is not compatible with {U.pretty(unit)}"
            )
        f = U.factor(b.unit, unit)
        conv = b.converted if f == 1.0 else _num(f) * b.converted
        return Built(b.raw, conv, unit)

    def common(self, nodes: list[ast.AST], what: str) -> tuple[list[Built], Any]:
        built = [self.build(n) for n in nodes]
        target = next((b.unit for b in built if b.unit is not None), None)
        if target is None:
            return built, None
        return [self.to(b, target, n, what) for b, n in zip(built, nodes, strict=True)], target

    def dimensionless(self, node: ast.AST, what: str) -> Built:
        return self.to(self.build(node), U.DIMENSIONLESS, node, what)

    def build(self, node: ast.AST) -> Built:  # noqa: C901 - one branch per node type
        if isinstance(node, ast.Constant):
            value = _num(float(node.value))
            return Built(value, value, None if node.value == 0 else U.DIMENSIONLESS)
        if isinstance(node, ast.Name):
            if node.id == "t":
                s = symbol("t")
                return Built(s, s, self.time_unit)
            if node.id == "pi":
                return Built(sp.pi, sp.pi, U.DIMENSIONLESS)
            if node.id not in self.units:
                raise self.fail(node, f"unknown symbol {node.id!r}")
            s = symbol(node.id)
            return Built(s, s, self.units[node.id])
        if isinstance(node, ast.UnaryOp):
            b = self.build(node.operand)
            if isinstance(node.op, ast.USub):
                return Built(-b.raw, -b.converted, b.unit)
            return b
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(node, "unexpected construct")  # pragma: no cover - _check forbids it

    def binop(self, node: ast.BinOp) -> Built:
        op = node.op
        if isinstance(op, ast.Add | ast.Sub):
            (a, b), unit = self.common([node.left, node.right], "cannot add or subtract")
            if isinstance(op, ast.Add):
                return Built(a.raw + b.raw, a.converted + b.converted, unit)
            return Built(a.raw - b.raw, a.converted - b.converted, unit)
        if isinstance(op, ast.Mult | ast.Div):
            a, b = self.build(node.left), self.build(node.right)
            ua = U.DIMENSIONLESS if a.unit is None else a.unit
            ub = U.DIMENSIONLESS if b.unit is None else b.unit
            if isinstance(op, ast.Mult):
                return Built(a.raw * b.raw, a.converted * b.converted, ua * ub)
            return Built(a.raw / b.raw, a.converted / b.converted, ua / ub)
        # Power: a dimensional base needs a plain-number exponent.
        expo = self.dimensionless(node.right, "an exponent must be dimensionless")
        base = self.build(node.left)
        if base.unit is not None and not U.is_dimensionless(base.unit):
            if not expo.converted.is_number:
                raise self.fail(node, "a quantity with units can only be raised to a number")
            unit = base.unit ** float(expo.converted)
            return Built(base.raw**expo.raw, base.converted**expo.converted, unit)
        base = self.to(base, U.DIMENSIONLESS, node.left, "base")
        return Built(base.raw**expo.raw, base.converted**expo.converted, U.DIMENSIONLESS)

    def call(self, node: ast.Call) -> Built:
        name = node.func.id  # type: ignore[attr-defined]
        args = node.args
        if name in ("exp", "log", "log10", "tanh", "sigmoid"):
            a = self.dimensionless(args[0], f"the argument of {name} must be dimensionless")
            fn = {
                "exp": sp.exp,
                "log": sp.log,
                "log10": lambda x: sp.log(x, 10),
                "tanh": sp.tanh,
                "sigmoid": lambda x: 1 / (1 + sp.exp(-x)),
            }[name]
            return Built(fn(a.raw), fn(a.converted), U.DIMENSIONLESS)
        if name == "sqrt":
            a = self.build(args[0])
            unit = None if a.unit is None else a.unit**0.5
            return Built(sp.sqrt(a.raw), sp.sqrt(a.converted), unit)
        if name == "abs":
            a = self.build(args[0])
            return Built(sp.Abs(a.raw), sp.Abs(a.converted), a.unit)
        if name == "pos":
            a = self.build(args[0])
            return Built(sp.Max(a.raw, 0), sp.Max(a.converted, 0), a.unit)
        if name in ("min", "max"):
            built, unit = self.common(list(args), f"the arguments of {name} differ in units")
            fn = sp.Min if name == "min" else sp.Max
            return Built(fn(*[b.raw for b in built]), fn(*[b.converted for b in built]), unit)
        if name in ("hill", "hill_inh"):
            (x, c50), _ = self.common(list(args[:2]), f"{name}(x, c50, n): x and c50 differ")
            n = self.dimensionless(args[2], f"{name}: the exponent n must be dimensionless")
            r_raw = (x.raw / c50.raw) ** n.raw
            r_conv = (x.converted / c50.converted) ** n.converted
            if name == "hill":
                return Built(r_raw / (1 + r_raw), r_conv / (1 + r_conv), U.DIMENSIONLESS)
            return Built(1 / (1 + r_raw), 1 / (1 + r_conv), U.DIMENSIONLESS)
        if name == "smoothstep":
            (x, x0, w), _ = self.common(list(args), "smoothstep(x, x0, width): units differ")
            z_raw = (x.raw - x0.raw) / w.raw
            z_conv = (x.converted - x0.converted) / w.converted
            return Built(1 / (1 + sp.exp(-z_raw)), 1 / (1 + sp.exp(-z_conv)), U.DIMENSIONLESS)
        if name in ("piecewise", "if_else"):
            cond_raw, cond_conv = self.condition(args[0])
            (a, b), unit = self.common(list(args[1:]), f"the branches of {name} differ in units")
            return Built(
                sp.Piecewise((a.raw, cond_raw), (b.raw, True)),
                sp.Piecewise((a.converted, cond_conv), (b.converted, True)),
                unit,
            )
        raise self.fail(node, f"unknown function {name}")  # pragma: no cover

    def condition(self, node: ast.AST) -> tuple[Any, Any]:
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v) for v in node.values]
            fn = sp.And if isinstance(node.op, ast.And) else sp.Or
            return fn(*[p[0] for p in parts]), fn(*[p[1] for p in parts])
        if isinstance(node, ast.Compare):
            (a, b), _ = self.common([node.left, node.comparators[0]], "cannot compare")
            op = {ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge}[type(node.ops[0])]
            return op(a.raw, b.raw), op(a.converted, b.converted)
        raise self.fail(node, "a condition must be a comparison")


def build(parsed: Parsed, units: Mapping[str, Any], time_unit: Any) -> Built:
    """Turn a parsed expression into sympy, checking units and inserting conversions.

    Parameters
    ----------
    parsed : Parsed
        From `parse`.
    units : mapping of str to pint.Unit
        The unit of every symbol the expression may use.
    time_unit : pint.Unit
        The unit of ``t``.

    Returns
    -------
    Built
        ``raw`` and ``converted`` sympy expressions and the result ``unit`` (dimensionless for
        a bare literal zero).

    Raises
    ------
    ExpressionError
        Unknown symbol or inconsistent units.
    """
    built = _Builder(parsed, units, time_unit).build(parsed.tree)
    if built.unit is None:
        return Built(built.raw, built.converted, U.DIMENSIONLESS)
    return built


def convert(built: Built, unit: Any, what: str) -> sp.Expr:
    """Return ``built.converted`` expressed in ``unit``.

    Parameters
    ----------
    built : Built
        An expression with its unit.
    unit : pint.Unit
        The required unit (e.g. a state's unit per model time unit).
    what : str
        Words for the error message ("the equation of state X").

    Returns
    -------
    sympy.Expr

    Raises
    ------
    ExpressionError
        If the dimensions differ.
    """
    if built.raw == 0:
        return sp.Integer(0)
    if not U.same_dimension(built.unit, unit):
        raise ExpressionError(
            f"{what} has unit {U.pretty(built.unit)}, expected {U.pretty(unit)} "
            "(or another unit of the same dimension)"
        )
    f = U.factor(built.unit, unit)
    return built.converted if f == 1.0 else _num(f) * built.converted
