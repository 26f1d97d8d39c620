"""Fits stop integrating states no later observation needs (`needed_until`, subjects-last loop)."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from pkpd.data import from_dataframe
from pkpd.inference.builder import prepare_model
from pkpd.inference.predict import make_predictor, needed_until
from pkpd.solve import Solver

CONC_TIMES = (1.0, 2.0, 4.0, 8.0, 12.0, 24.0)
RESPONSE_TIMES = (1.0, 2.0, 4.0, 8.0, 12.0)


def _cohort():
    """Two subjects, an oral dose; concentrations to 24 h, the response to 12 h only."""
    rows = []
    for sid in (1, 2):
        rows.append(
            dict(ID=sid, TIME=0.0, AMT=100.0 * sid, DV=np.nan, EVID=1, MDV=1, CMT="oral", DVID=1)
        )
        rows += [
            dict(ID=sid, TIME=t, AMT=np.nan, DV=2.0, EVID=0, MDV=0, CMT="central", DVID=1)
            for t in CONC_TIMES
        ]
        rows += [
            dict(ID=sid, TIME=t, AMT=np.nan, DV=90.0, EVID=0, MDV=0, CMT="R", DVID=2)
            for t in RESPONSE_TIMES
        ]
    df = pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable")
    return from_dataframe(df, source="turnover", time_unit="h")


@pytest.fixture(scope="module")
def info():
    return prepare_model(
        "pd_turnover", _cohort(), integrator="lanes", solver=Solver("tsit5", rtol=1e-6, atol=1e-9)
    )


def test_needed_until_follows_the_selected_observations(info):
    model, bound, obs = info.model, info.bound, info.observations
    until = needed_until(info.spec, model, bound, obs.subject, obs.column)
    col = {s: model.states.index(s) for s in model.states}
    np.testing.assert_array_equal(until[:, col["R"]], 12.0)
    # the concentration needs central and depot to 24 h (and R needs them too, to 12 h)
    np.testing.assert_array_equal(until[:, col["central"]], 24.0)
    np.testing.assert_array_equal(until[:, col["depot"]], 24.0)
    # Without the 24 h concentrations (observations not fitted need nothing)
    times = bound.obs_time[obs.subject, obs.column]
    keep = times < 24.0
    until = needed_until(info.spec, model, bound, obs.subject[keep], obs.column[keep])
    np.testing.assert_array_equal(until[:, col["central"]], 12.0)
    # Only the first subject's responses: the second's R is never needed
    first = obs.subject == 0
    until = needed_until(info.spec, model, bound, obs.subject[first], obs.column[first])
    assert until[1, col["R"]] == -np.inf and until[0, col["R"]] == 12.0


def test_pruned_predictions_and_gradient_match_the_full_solve(info):
    model, bound, obs = info.model, info.bound, info.observations
    theta = jnp.asarray(model.typical_values)
    eta = jnp.asarray(np.random.default_rng(4).normal(0, 0.3, (bound.n_subjects, len(model.iiv))))
    w = jnp.asarray(np.random.default_rng(5).normal(size=len(obs)))
    out = []
    for prune in (False, True):
        f = make_predictor(
            info.spec,
            model,
            bound,
            info.solver,
            obs.subject,
            obs.column,
            gradient="forward",
            integrator="lanes",
            prune_states=prune,
        )
        pred = jax.jit(f)(theta, eta)
        grad = jax.jit(jax.grad(lambda th, e, f=f: jnp.sum(w * f(th, e)), argnums=(0, 1)))(
            theta, eta
        )
        out.append((np.asarray(pred), [np.asarray(g) for g in grad]))
    (p0, g0), (p1, g1) = out
    # the same solution to the solver's tolerance (rtol 1e-6), not to rounding: the frozen
    # response leaves the error norm after 12 h, so later steps differ
    np.testing.assert_allclose(p1, p0, rtol=2e-5)
    assert not np.array_equal(p1, p0)
    for a, b in zip(g0, g1, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * np.abs(a).max())
