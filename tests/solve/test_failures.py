"""Failures are never silent: failed subjects are named, or NaN with a warning on request."""

import numpy as np
import pandas as pd
import pytest
from handmodels import individual_vector, make_cohort

from pkpd.errors import SolverError
from pkpd.events import DoseRecords, build_event_table
from pkpd.solve import NONFINITE, OK, SOLVER_FAILURE, STEP_LIMIT, Solver, simulate, solve

BLOWUP_SOLVER = Solver(max_steps=4096)


@pytest.fixture(scope="module")
def blowup_cohort():
    # y' = a y^2, y(0) = 1 blows up at t = 1/a: subjects 101 (a=1) and 103 (a=0.4) fail by t=3
    rows = []
    for sid in (101, 102, 103):
        rows += [dict(ID=sid, TIME=t, EVID=0, DV=1.0) for t in (0.0, 0.5, 3.0)]
    return make_cohort(pd.DataFrame(rows))


A_VALUES = np.array([[1.0], [0.1], [0.4]])


def test_blowup_raises_naming_subjects(blowup_model, blowup_cohort):
    with pytest.raises(SolverError) as info:
        simulate(blowup_model, blowup_cohort, A_VALUES, solver=BLOWUP_SOLVER)
    assert info.value.subjects == [101, 103]
    assert "subject 101" in str(info.value) and "subject 103" in str(info.value)
    assert all(r != "ok" for r in info.value.reasons)


def test_blowup_nan_on_request(blowup_model, blowup_cohort):
    with pytest.warns(UserWarning, match="101"):
        sim = simulate(
            blowup_model, blowup_cohort, A_VALUES, solver=BLOWUP_SOLVER, on_failure="nan"
        )
    assert list(sim["ok"].values) == [False, True, False]
    assert np.isnan(sim["pred"].sel(subject=101)).all()
    # the healthy subject is unaffected: y = 1 / (1 - a t)
    np.testing.assert_allclose(
        sim["pred"].sel(subject=102), 1 / (1 - 0.1 * np.array([0.0, 0.5, 3.0])), rtol=1e-7
    )
    assert set(sim["status"].values[[0, 2]]) <= {STEP_LIMIT, NONFINITE, SOLVER_FAILURE}


def test_step_limit_is_reported(model1):
    rec = DoseRecords(
        *(np.array([v]) for v in (0.0, 100.0, 1, 0.0, 0.0, 0.0)),
        addl=np.array([0]),
        evid=np.array([1]),
        seq=np.array([2.0]),
    )
    ev = build_event_table([rec, rec])
    t = np.array([[1.0, 200.0], [1.0, 2.0]])
    res = solve(
        model1,
        ev,
        t,
        np.full(t.shape, 9.0),
        np.stack([individual_vector(model1)] * 2),
        Solver(max_steps=8),
    )
    assert int(res.status[0]) == STEP_LIMIT
    assert not bool(res.ok[0])
    assert np.isnan(np.asarray(res.y[0])).all()
    assert int(res.status[1]) in (OK, STEP_LIMIT)


def test_bad_on_failure_value(blowup_model, blowup_cohort):
    with pytest.raises(ValueError, match="on_failure"):
        simulate(blowup_model, blowup_cohort, on_failure="ignore")
