"""Zero-order infusions: RATE and DUR forms, F with RATE changes the duration, lag shifts it."""

import numpy as np
from harness import MODELS, assert_close, check, dose, obs, params, run


def test_infusion_by_rate(model, solver):
    rows = [dose(0.0, 100.0, rate=50.0), obs(0.5, 1, 2, 2.5, 4, 8, 24)]
    check(model, rows, solver)


def test_infusion_by_duration(model, solver):
    rows = [dose(1.0, 120.0, dur=3.0), obs(0, 1, 2, 4, 4.5, 12)]
    check(model, rows, solver)


def test_overlapping_infusions_and_bolus(model, solver):
    rows = [
        dose(0.0, 100.0, rate=20.0),
        dose(2.0, 60.0, dur=4.0),
        dose(3.0, 30.0),
        obs(1, 2, 3, 4, 5, 6, 7, 12),
    ]
    check(model, rows, solver)


def _depot_infusion(t, start, stop, rate, ka):
    """Depot amount of an infusion into a first-order depot (independent of the solver code)."""
    t = np.asarray(t, float)
    during = rate / ka * (1 - np.exp(-ka * (np.clip(t, start, stop) - start)))
    return np.where(t <= stop, during, during * np.exp(-ka * (t - stop)))


def test_rate_form_with_f_changes_duration(solver):
    # RATE given: the infusion lasts F * AMT / RATE, starting after the lag.
    model = MODELS["1cmt"]
    F, tlag, ka, amt, rate = 0.6, 0.5, 1.2, 100.0, 25.0
    times = [0.25, 1.0, 2.0, 2.9, 3.0, 3.5, 4.5, 6.0]
    rows = [dose(0.0, amt, "depot", rate=rate), obs(*times)]
    ode, ref = check(model, rows, solver, F=F, tlag=tlag, ka=ka)
    expected = _depot_infusion(times, tlag, tlag + F * amt / rate, rate, ka)
    assert_close(ref[:, 0], expected, rtol=1e-10)
    assert_close(ode[:, 0], expected)


def test_duration_form_with_f_changes_rate(solver):
    # DUR given: F * AMT over DUR, starting after the lag.
    model = MODELS["1cmt"]
    F, tlag, ka, amt, dur = 0.6, 0.5, 1.2, 100.0, 4.0
    times = [0.25, 1.0, 2.0, 4.0, 4.5, 6.0]
    rows = [dose(0.0, amt, "depot", dur=dur), obs(*times)]
    ode, ref = check(model, rows, solver, F=F, tlag=tlag, ka=ka)
    expected = _depot_infusion(times, tlag, tlag + dur, F * amt / dur, ka)
    assert_close(ref[:, 0], expected, rtol=1e-10)
    assert_close(ode[:, 0], expected)


def test_one_cmt_iv_infusion_formula(solver):
    model = MODELS["1cmt"]
    p = params(model)[0]
    k = p[0] / p[1]
    times = np.array([1.0, 2.0, 5.0, 9.0])
    ode, _ = run(model, [dose(0.0, 60.0, dur=2.0), obs(*times)], solver)
    r = 30.0
    during = r / k * (1 - np.exp(-k * np.minimum(times, 2.0)))
    expected = np.where(times <= 2.0, during, during * np.exp(-k * (times - 2.0)))
    assert_close(ode[:, 1], expected)
