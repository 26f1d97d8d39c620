"""The unrolled explicit Runge-Kutta methods (`pkpd.solve.erk`) against diffrax's own.

Same tableau, error estimate, first-same-as-last handling and dense interpolation: the same
steps are taken and solutions, dense output and gradients agree to rounding.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkpd.solve import Solver
from pkpd.solve.erk import UnrolledDopri5, UnrolledDopri8, UnrolledTsit5

jax.config.update("jax_enable_x64", True)


def rhs(t, y, p):
    """T/B/I-like: growth on a saturating stimulus, killing, release and elimination."""
    g = y[1] / (y[1] + p[3])
    return jnp.stack(
        [
            p[0] * y[0] * g - p[2] * y[0],
            -p[1] * y[0] * y[1],
            p[4] * y[0] * g - p[5] * y[2] + jnp.sin(t),
        ]
    )


P = jnp.array([1.2, 0.01, 0.3, 0.2, 5.0, 1.0])
Y0 = jnp.array([1.0, 1.0, 5.0])
TS = jnp.linspace(0.3, 28.0, 41)


def _solve(method, p, saveat):
    return diffrax.diffeqsolve(
        diffrax.ODETerm(rhs),
        method,
        0.0,
        28.0,
        None,
        Y0,
        args=p,
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9),
        max_steps=4096,
    )


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (UnrolledTsit5(), diffrax.Tsit5()),
        (UnrolledDopri5(), diffrax.Dopri5()),
        (UnrolledDopri8(), diffrax.Dopri8()),
    ],
)
def test_same_steps_solution_dense_output_and_gradient(ours, theirs):
    a = _solve(ours, P, diffrax.SaveAt(ts=TS))
    b = _solve(theirs, P, diffrax.SaveAt(ts=TS))
    assert int(a.stats["num_steps"]) == int(b.stats["num_steps"])
    assert int(a.stats["num_rejected_steps"]) == int(b.stats["num_rejected_steps"])
    np.testing.assert_allclose(a.ys, b.ys, rtol=1e-12)  # dense interpolation between steps

    def loss(method):
        return lambda p: jnp.sum(jnp.log(_solve(method, p, diffrax.SaveAt(ts=TS)).ys))

    np.testing.assert_allclose(jax.grad(loss(ours))(P), jax.grad(loss(theirs))(P), rtol=1e-10)
    fwd = jax.jacfwd(
        lambda p: diffrax.diffeqsolve(
            diffrax.ODETerm(rhs),
            ours,
            0.0,
            28.0,
            None,
            Y0,
            args=p,
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9),
            max_steps=4096,
            adjoint=diffrax.ForwardMode(),
        ).ys[-1]
    )(P)
    rev = jax.jacrev(lambda p: _solve(theirs, p, diffrax.SaveAt(t1=True)).ys[-1])(P)
    np.testing.assert_allclose(fwd, rev, rtol=1e-9, atol=1e-12)


def test_solver_names_use_the_unrolled_methods():
    assert isinstance(Solver("tsit5").diffrax_solver(), UnrolledTsit5)
    assert isinstance(Solver("auto").diffrax_solver(), UnrolledTsit5)
    assert isinstance(Solver.nonstiff("dopri5").diffrax_solver(), UnrolledDopri5)
    assert isinstance(Solver.nonstiff("dopri8").diffrax_solver(), UnrolledDopri8)
    assert isinstance(Solver.stiff().diffrax_solver(), diffrax.Kvaerno5)
    # A diffrax instance is still used as given.
    assert isinstance(Solver(diffrax.Tsit5()).diffrax_solver(), diffrax.Tsit5)
