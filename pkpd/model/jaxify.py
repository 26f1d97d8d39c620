"""Translate sympy expressions (built by `pkpd.expr`) into JAX functions.

A small recursive translator over the node types `pkpd.expr` can produce, rather than
`sympy.lambdify` (which generates and ``exec``-s source text): every node type is handled
explicitly and anything else is an error at compile time, never at sampling time. Translation
happens once, at trace time; the traced XLA program contains only the arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import sympy as sp

Env = Mapping[str, Any]


def _fold(op: Callable, parts: list[Callable]) -> Callable:
    def f(env: Env) -> Any:
        acc = parts[0](env)
        for p in parts[1:]:
            acc = op(acc, p(env))
        return acc

    return f


def _pow(base: Callable, expo: sp.Expr, expo_fn: Callable) -> Callable:
    if expo == sp.Rational(1, 2):
        return lambda env: jnp.sqrt(base(env))
    if expo == -1:
        return lambda env: 1.0 / base(env)
    if expo.is_Integer and 1 < int(expo) <= 4:
        n = int(expo)

        def ipow(env: Env) -> Any:
            b = base(env)
            out = b
            for _ in range(n - 1):
                out = out * b
            return out

        return ipow
    return lambda env: jnp.power(base(env), expo_fn(env))


def translate(expr: sp.Basic) -> Callable[[Env], Any]:  # noqa: C901 - one branch per node
    """Return ``f(env) -> value`` evaluating ``expr`` with JAX.

    Parameters
    ----------
    expr : sympy.Basic
        Expression over real symbols.

    Returns
    -------
    callable
        Takes a mapping from symbol name to a JAX scalar (or array, broadcasting).
    """
    if isinstance(expr, sp.Symbol):
        name = expr.name
        return lambda env: env[name]
    if expr is sp.pi:
        return lambda env: jnp.pi
    if expr is sp.E:
        return lambda env: jnp.e
    if isinstance(expr, sp.Number):
        value = float(expr)
        return lambda env: value
    if expr is sp.true:
        return lambda env: True
    if expr is sp.false:
        return lambda env: False
    args = [translate(a) for a in expr.args] if not isinstance(expr, sp.Piecewise) else []
    if isinstance(expr, sp.Add):
        return _fold(lambda a, b: a + b, args)
    if isinstance(expr, sp.Mul):
        return _fold(lambda a, b: a * b, args)
    if isinstance(expr, sp.Pow):
        return _pow(args[0], expr.args[1], args[1])
    if isinstance(expr, sp.exp):
        return lambda env: jnp.exp(args[0](env))
    if isinstance(expr, sp.log):
        if len(args) == 2:
            return lambda env: jnp.log(args[0](env)) / jnp.log(args[1](env))
        return lambda env: jnp.log(args[0](env))
    if isinstance(expr, sp.tanh):
        return lambda env: jnp.tanh(args[0](env))
    if isinstance(expr, sp.Abs):
        return lambda env: jnp.abs(args[0](env))
    if isinstance(expr, sp.Max):
        return _fold(jnp.maximum, args)
    if isinstance(expr, sp.Min):
        return _fold(jnp.minimum, args)
    if isinstance(expr, sp.Piecewise):
        pieces = [(translate(e), translate(c)) for e, c in expr.args]

        def piecewise(env: Env) -> Any:
            value, _ = pieces[-1]
            out = value(env)
            for val, cond in reversed(pieces[:-1]):
                out = jnp.where(cond(env), val(env), out)
            return out

        return piecewise
    relational = {
        sp.StrictLessThan: jnp.less,
        sp.LessThan: jnp.less_equal,
        sp.StrictGreaterThan: jnp.greater,
        sp.GreaterThan: jnp.greater_equal,
    }
    for kind, fn in relational.items():
        if isinstance(expr, kind):
            return lambda env, fn=fn: fn(args[0](env), args[1](env))
    if isinstance(expr, sp.And):
        return _fold(jnp.logical_and, args)
    if isinstance(expr, sp.Or):
        return _fold(jnp.logical_or, args)
    raise TypeError(f"cannot compile {type(expr).__name__} ({expr}) to JAX")
