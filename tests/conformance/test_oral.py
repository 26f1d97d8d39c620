"""First-order absorption with lag time and bioavailability."""

import numpy as np
from harness import MODELS, assert_close, check, dose, obs, params


def test_oral_with_lag_and_f(model, solver):
    rows = [dose(0.0, 200.0, "depot"), obs(0.0, 0.2, 0.5, 0.6, 1, 2, 4, 8, 24)]
    check(model, rows, solver, tlag=0.5, F=0.7)


def test_oral_default_route_alias(model, solver):
    # the "oral" dose route is the depot
    rows = [dose(0.0, 200.0, "depot"), dose(12.0, 100.0, "depot"), obs(6, 12, 12.25, 13, 24)]
    check(model, rows, solver)


def test_bateman_formula(solver):
    model = MODELS["1cmt"]
    p = params(model, tlag=0.75, F=0.6)[0]
    CL, V, ka = p[0], p[1], p[2]
    k = CL / V
    times = np.array([0.5, 0.75, 1.0, 2.0, 6.0, 20.0])
    ode, ref = check(model, [dose(0.0, 100.0, "depot"), obs(*times)], solver, tlag=0.75, F=0.6)
    tt = np.maximum(times - 0.75, 0.0)
    central = 0.6 * 100.0 * ka / (ka - k) * (np.exp(-k * tt) - np.exp(-ka * tt))
    assert_close(ref[:, 1], central, rtol=1e-10)
    assert_close(ode[:, 1], central)


def test_confluent_ka_equals_k(solver):
    # ka == CL/V: the closed form takes its limit ka t e^{-k t}
    model = MODELS["1cmt"]
    k = 3.0 / 30.0
    times = np.array([1.0, 5.0, 20.0])
    ode, ref = check(model, [dose(0.0, 100.0, "depot"), obs(*times)], solver, ka=k, tlag=0.0, F=1.0)
    assert_close(ref[:, 1], 100.0 * k * times * np.exp(-k * times), rtol=1e-7)
