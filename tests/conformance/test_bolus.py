"""IV bolus and bolus into the depot: exact jumps, superposition."""

import numpy as np
from harness import MODELS, assert_close, check, dose, obs, params, run


def test_single_iv_bolus(model, solver):
    rows = [dose(0.0, 100.0), obs(0.0, 0.5, 1, 2, 4, 8, 12, 24)]
    ode, _ = check(model, rows, solver)
    c = model.state_index("central")
    assert ode[0, c] == 100.0 or abs(ode[0, c] - 100.0) < 1e-12  # jump, not a short infusion


def test_one_cmt_iv_bolus_formula(solver):
    model = MODELS["1cmt"]
    rows = [dose(0.0, 100.0), obs(0.5, 2, 7, 24)]
    ode, ref = run(model, rows, solver)
    p = params(model)[0]
    k = p[0] / p[1]
    t = np.array([0.5, 2, 7, 24])
    assert_close(ode[:, 1], 100.0 * np.exp(-k * t))
    assert_close(ref[:, 1], 100.0 * np.exp(-k * t), rtol=1e-12)


def test_repeated_boluses_central_and_depot(model, solver):
    rows = [
        obs(0.0),
        dose(0.0, 100.0),
        dose(3.0, 50.0, "depot"),
        obs(1, 3, 3.2, 5),
        dose(6.0, 80.0),
        obs(6, 6.5, 10, 30),
    ]
    check(model, rows, solver, tlag=0.0, F=1.0)


def test_zero_amount_bolus_is_a_no_op(model, solver):
    base = [dose(0.0, 100.0), obs(1, 2, 4)]
    with_zero = [dose(0.0, 100.0), dose(2.0, 0.0), obs(1, 2, 4)]
    a, _ = check(model, base, solver)
    b, _ = check(model, with_zero, solver)
    # only the interval boundary differs: agreement at the solver's tolerance
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-12)
