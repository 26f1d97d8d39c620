"""Events and observations at equal times: the record order decides (see pkpd.events).

An observation record placed before a dose at the same time is a pre-dose sample; one placed
after it sees the dose. Doses implied by ADDL/II come after every record at their time.
"""

import numpy as np
from harness import check, dose, obs


def test_observation_before_dose_is_predose(model, solver):
    rows = [dose(0.0, 100.0), obs(24.0), dose(24.0, 100.0), obs(25.0)]
    before, _ = check(model, rows, solver)
    rows_after = [dose(0.0, 100.0), dose(24.0, 100.0), obs(24.0), obs(25.0)]
    after, _ = check(model, rows_after, solver)
    c = model.state_index("central")
    assert abs((after[0, c] - before[0, c]) - 100.0) < 1e-8  # the jump, exactly
    np.testing.assert_allclose(before[1], after[1], rtol=1e-12)


def test_first_record_observation_and_dose(model, solver):
    pre, _ = check(model, [obs(0.0), dose(0.0, 100.0), obs(1.0)], solver)
    post, _ = check(model, [dose(0.0, 100.0), obs(0.0), obs(1.0)], solver)
    c = model.state_index("central")
    assert pre[0, c] == 0.0
    assert abs(post[0, c] - 100.0) < 1e-12


def test_implied_dose_comes_after_sample(model, solver):
    # the record at t=12 comes after the ADDL parent, yet precedes the implied dose at 12
    rows = [dose(0.0, 100.0, ii=12.0, addl=2), obs(12.0, 24.0, 24.5)]
    ode, _ = check(model, rows, solver)
    single, _ = check(model, [dose(0.0, 100.0), obs(12.0)], solver)
    np.testing.assert_allclose(ode[0], single[0], rtol=1e-10)


def test_lagged_dose_at_observation_time(model, solver):
    # dose at 0 with lag 0.5 lands at 0.5: a sample at 0.5 on a later line sees it
    rows = [dose(0.0, 100.0, "depot"), obs(0.5, 1.0)]
    ode, _ = check(model, rows, solver, tlag=0.5, F=1.0)
    assert abs(ode[0, model.state_index("depot")] - 100.0) < 1e-12


def test_simultaneous_doses_add(model, solver):
    rows = [dose(2.0, 40.0), dose(2.0, 60.0), obs(2.0, 3.0)]
    both, _ = check(model, rows, solver)
    one, _ = check(model, [dose(2.0, 100.0), obs(2.0, 3.0)], solver)
    np.testing.assert_allclose(both, one, rtol=1e-12, atol=1e-14)


def test_reset_and_dose_same_time_order(model, solver):
    # EVID 3 on a later line than a dose at the same time wipes that dose
    rows = [dose(0.0, 100.0), dose(5.0, 50.0), {**obs(5.0)[0]}, dose(5.0, 0.0, evid=3), obs(6.0)]
    ode, _ = check(model, rows, solver)
    c = model.state_index("central")
    assert ode[0, c] > 50.0
    np.testing.assert_allclose(ode[1], 0.0, atol=1e-14)
