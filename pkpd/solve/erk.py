"""Explicit Runge-Kutta methods with the stages written out: diffrax's tableaus, no stage loop.

diffrax runs the stages of a Runge-Kutta step in an inner loop that writes every stage into a
buffer (``scan_kind``, one `equinox.internal.while_loop` per step). That is general (implicit
stages, any tableau) but on CPU, for the small systems of pharmacometric models, the loop and its
buffers cost far more than the right-hand side: on the T/B/I benchmark model (3 states, 20
subjects, Tsit5 at rtol 1e-6) one log-density and gradient took 10.7 ms with `diffrax.Tsit5` and
2.3 ms with `UnrolledTsit5` (``docs/inference.md``, "Speed: the T/B/I benchmark").

`UnrolledERK` takes the tableau of a diffrax explicit method and writes each stage as
straight-line code (a Python loop at trace time), so XLA fuses the whole step. The arithmetic is
that of diffrax's solver (same tableau, same error estimate, same first-same-as-last handling, same
dense interpolation), so solutions agree with diffrax's to rounding (``tests/solve/test_erk.py``);
the step-size controller is diffrax's. `pkpd.solve.Solver` uses these for ``"tsit5"``,
``"dopri5"`` and ``"dopri8"``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import diffrax
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


def _combine(coefs: np.ndarray, ks: list[Any]) -> Any:
    """``sum_i coefs[i] * ks[i]`` over the nonzero coefficients (pytrees of arrays)."""
    pairs = [(float(a), k) for a, k in zip(coefs, ks, strict=False) if float(a) != 0.0]
    if not pairs:
        return jtu.tree_map(jnp.zeros_like, ks[0])

    def leaf(*xs: jax.Array) -> jax.Array:
        total = pairs[0][0] * xs[0]
        for (a, _), x in zip(pairs[1:], xs[1:], strict=True):
            total = total + a * x
        return total

    return jtu.tree_map(leaf, *[k for _, k in pairs])


class UnrolledERK(diffrax.AbstractAdaptiveSolver):
    """An explicit Runge-Kutta method of a diffrax tableau, stages unrolled at trace time.

    Subclasses set ``tableau`` (a `diffrax.ButcherTableau` of an explicit method),
    ``interpolation_cls`` (diffrax's dense interpolation of that method) and ``method_order``.
    For ODE terms (`diffrax.ODETerm`) only.
    """

    tableau: ClassVar[Any]
    method_order: ClassVar[int]
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms: Any) -> int:
        """Order of the method."""
        return self.method_order

    def error_order(self, terms: Any) -> int:
        """Order used by the step-size controller (as diffrax's explicit RK methods)."""
        return self.method_order

    def init(self, terms: Any, t0: Any, t1: Any, y0: Any, args: Any) -> Any:
        """First-same-as-last methods carry the derivative at the start of the next step."""
        return terms.vf(t0, y0, args) if self.tableau.fsal else None

    def func(self, terms: Any, t0: Any, y0: Any, args: Any) -> Any:
        """Evaluate the vector field."""
        return terms.vf(t0, y0, args)

    def step(
        self, terms: Any, t0: Any, t1: Any, y0: Any, args: Any, solver_state: Any, made_jump: Any
    ) -> tuple[Any, Any, dict[str, Any], Any, Any]:
        """One step from ``t0`` to ``t1``: solution, error estimate, dense info, FSAL state."""
        tab = self.tableau
        if tab.fsal:
            f0 = jax.lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: solver_state)
        else:
            f0 = terms.vf(t0, y0, args)
        h = t1 - t0
        # Increments k_i = h f(t0 + c_i h, y0 + sum_j a_ij k_j), as diffrax stores them.
        fs = [f0]
        ks = [jtu.tree_map(lambda f: h * f, f0)]
        for c, a in zip(tab.c, tab.a_lower, strict=True):
            y_stage = jtu.tree_map(jnp.add, y0, _combine(a, ks))
            fs.append(terms.vf(t0 + float(c) * h, y_stage, args))
            ks.append(jtu.tree_map(lambda f: h * f, fs[-1]))
        y1 = jtu.tree_map(jnp.add, y0, _combine(tab.b_sol, ks))
        y_error = _combine(tab.b_error, ks)
        # First same as last: the last stage is evaluated at (t1, y1) (the tableau is SSAL).
        new_state = fs[-1] if tab.fsal else None
        k = jtu.tree_map(lambda *xs: jnp.stack(xs), *ks)
        dense_info = dict(y0=y0, y1=y1, k=k)
        return y1, y_error, dense_info, new_state, diffrax.RESULTS.successful


class UnrolledTsit5(UnrolledERK):
    """Tsitouras' 5(4) method (diffrax's `diffrax.Tsit5` tableau and interpolation), unrolled."""

    tableau: ClassVar = diffrax.Tsit5.tableau
    interpolation_cls: ClassVar = diffrax.Tsit5.interpolation_cls
    method_order: ClassVar[int] = 5


class UnrolledDopri5(UnrolledERK):
    """Dormand-Prince 5(4) (diffrax's `diffrax.Dopri5` tableau and interpolation), unrolled."""

    tableau: ClassVar = diffrax.Dopri5.tableau
    interpolation_cls: ClassVar = diffrax.Dopri5.interpolation_cls
    method_order: ClassVar[int] = 5


class UnrolledDopri8(UnrolledERK):
    """Dormand-Prince 8(7) (diffrax's `diffrax.Dopri8` tableau and interpolation), unrolled."""

    tableau: ClassVar = diffrax.Dopri8.tableau
    interpolation_cls: ClassVar = diffrax.Dopri8.interpolation_cls
    method_order: ClassVar[int] = 8
