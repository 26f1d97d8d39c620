"""d/d(lag) at a lag of exactly 0 (regression).

At lag 0 an oral dose at the first record ties with the start of integration. ``jnp.minimum`` and
``jnp.clip`` split the derivative at such ties, so ``jax.grad`` returned -52.0 where the true
(right-sided: a lag cannot be negative) derivative is -82.2. Central differences are not the
reference here: a negative lag moves the dose before the pre-dose sample at t = 0, a jump, so the
function has a kink at 0 and only the one-sided difference is meaningful.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pkpd
from pkpd.events import DoseRecords, build_event_table
from pkpd.solve import Solver, solve


def test_zero_lag_derivative_is_the_right_sided_one():
    model = pkpd.load_model("pk_1cmt_oral").compile()
    rec = DoseRecords(
        time=np.array([0.0]),
        amount=np.array([100.0]),
        cmt=np.array([model.dose_targets["oral"]]),
        rate=np.zeros(1),
        duration=np.zeros(1),
        ii=np.zeros(1),
        addl=np.zeros(1, int),
        evid=np.array([1]),
        seq=np.array([2.0]),
    )
    events = build_event_table([rec])
    obs = np.array([[0.0, 0.5, 1.0, 4.0]])
    seq = np.array([[1.0, 3.0, 3.0, 3.0]])  # a pre-dose sample at 0, then after the dose
    p0 = np.concatenate([model.typical_values, model.covariate_defaults])
    central = model.state_index("central")
    solver = Solver(rtol=1e-11, atol=1e-13)

    def f(p):
        return jnp.sum(solve(model, events, obs, seq, p[None], solver).y[0, :, central])

    grad = np.asarray(jax.grad(f)(jnp.asarray(p0)))
    for name in ("tlag", "F", "ka", "CL", "V"):
        i = model.parameter_index(name)
        h = 1e-6 * max(1.0, abs(p0[i]))
        up = p0.copy()
        up[i] += h
        right = (float(f(jnp.asarray(up))) - float(f(jnp.asarray(p0)))) / h
        # forward differences have O(h) error: 1e-4 relative is far below the old -52 vs -82
        assert grad[i] == pytest.approx(right, rel=1e-4), name
    assert p0[model.parameter_index("tlag")] == 0.0
