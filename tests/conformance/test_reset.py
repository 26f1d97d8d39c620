"""EVID 3 (reset) and EVID 4 (reset and dose), including a reset during an infusion."""

import numpy as np
from harness import check, dose, obs, reset


def test_evid3_resets_to_initial(model, solver):
    rows = [dose(0.0, 100.0), obs(1, 5), reset(6.0), obs(6, 7, 10)]
    ode, ref = check(model, rows, solver)
    np.testing.assert_allclose(ode[2:], 0.0, atol=1e-14)
    np.testing.assert_allclose(ref[2:], 0.0, atol=1e-14)


def test_evid4_reset_then_dose(model, solver):
    rows = [
        dose(0.0, 100.0, "depot"),
        obs(1, 5),
        dose(6.0, 50.0, evid=4),
        obs(6, 7, 10),
    ]
    ode, ref = check(model, rows, solver)
    c = model.state_index("central")
    assert abs(ode[2, c] - 50.0) < 1e-9  # only the new dose remains
    fresh, _ = check(model, [dose(6.0, 50.0), obs(6, 7, 10)], solver)
    np.testing.assert_allclose(ode[2:], fresh, rtol=1e-8)


def test_reset_during_infusion_stops_it(model, solver):
    rows = [dose(0.0, 100.0, rate=10.0), obs(2, 5), reset(5.0), obs(5, 8, 12, 20)]
    ode, _ = check(model, rows, solver)
    # after the reset nothing is given: the infusion (planned to 10 h) was stopped
    np.testing.assert_allclose(ode[2:], 0.0, atol=1e-14)


def test_evid4_infusion_during_infusion(model, solver):
    rows = [
        dose(0.0, 100.0, rate=10.0),
        obs(2, 4),
        dose(4.0, 30.0, dur=2.0, evid=4),
        obs(4, 5, 6, 7, 15),
    ]
    check(model, rows, solver)


def test_addl_doses_after_a_reset_still_count(model, solver):
    rows = [dose(0.0, 100.0, ii=12.0, addl=3), reset(18.0), obs(17, 18, 20, 24, 30, 40)]
    ode, _ = check(model, rows, solver)
    # 18 and 20 follow the reset; 24 is a pre-dose sample of the implied dose at 24
    np.testing.assert_allclose(ode[1:4], 0.0, atol=1e-14)
    assert np.all(ode[4:, model.state_index("central")] > 0)
