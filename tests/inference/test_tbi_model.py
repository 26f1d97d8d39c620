"""The model of the speed benchmark (``benchmarks/fit.py``, ``benchmarks/models/tbi.toml``).

The benchmark fits one ODE model with three programs: pkpd reads the model file, PyMC's pm.ode
and Stan get the right-hand side written by hand (``tbi_rhs`` in ``benchmarks/fit.py`` and the
Stan program). These tests pin the model file to the hand-written form: pkpd's solution of the
file matches scipy's ``solve_ivp`` of ``tbi_rhs`` to 1e-6 relative, and the compiled right-hand
side equals ``tbi_rhs`` to rounding.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import pkpd
from pkpd.data.reader import from_dataframe
from pkpd.solve import Solver

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "benchmarks" / "models" / "tbi.toml"


@pytest.fixture(scope="module")
def bench():
    """``benchmarks/fit.py`` as a module (its top level imports only the standard library and
    numpy)."""
    spec = importlib.util.spec_from_file_location("benchmarks_fit", ROOT / "benchmarks" / "fit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def spec():
    return pkpd.load_model(MODEL)


def test_model_file_loads_and_compiles(spec, bench):
    model = spec.compile()
    assert model.states == ("T", "B", "I")
    assert set(bench.TYPICAL) | {"sigma_T", "sigma_I"} == set(spec.estimated())
    assert tuple(model.iiv) == ("rho", "kappa")
    # The priors the Stan and pm.ode versions read from the file.
    pri = bench.priors(spec)
    assert pri["log_rho"] == pytest.approx((0.0, np.sqrt(np.log(1.25))))
    assert pri["omega_kappa"] == 0.5 and pri["sigma_I"] == 0.5


# Parameter sets (rho, kappa, delta, K, s, kel, I0): the simulation truth, and two far from it
# (slow expansion with weak killing; fast expansion with strong killing and fast elimination).
PARAMETER_SETS = [
    (1.2, 0.01, 0.3, 0.2, 5.0, 1.0, 5.0),
    (0.6, 0.002, 0.1, 0.5, 1.0, 0.3, 20.0),
    (2.0, 0.05, 0.6, 0.05, 20.0, 4.0, 1.0),
]


@pytest.mark.parametrize("values", PARAMETER_SETS)
def test_pkpd_solution_matches_solve_ivp(spec, bench, values):
    model = spec.compile()
    cohort = from_dataframe(bench.design(1), source="tbi design", time_unit="day")
    params = dict(zip(bench.TYPICAL, values, strict=True))
    sim = pkpd.simulate(model, cohort, params, solver=Solver("tsit5", rtol=1e-11, atol=1e-13))
    pred = np.asarray(sim["pred"].values)[0]
    endpoint = np.asarray(sim["obs_endpoint"].values)[0]
    times = np.asarray(sim["obs_time"].values)[0]

    rho, kappa, delta, K, s, kel, I0 = values
    ref = solve_ivp(
        lambda t, y: bench.tbi_rhs(y, t, (rho, kappa, delta, K, s, kel)),
        (0.0, max(bench.TIMES)),
        [bench.DOSE, 1.0, I0],
        method="DOP853",
        t_eval=np.asarray(bench.TIMES),
        rtol=1e-12,
        atol=1e-14,
    )
    assert ref.success
    expected = {t: (ref.y[0, k], ref.y[2, k]) for k, t in enumerate(bench.TIMES)}
    for value, name, t in zip(pred, endpoint, times, strict=True):
        want = expected[float(t)][0 if name == "T_blood" else 1]
        assert value == pytest.approx(want, rel=1e-6), (name, t)


def test_compiled_rhs_is_the_hand_written_one(spec, bench):
    """The right-hand side pkpd compiles from the file equals ``tbi_rhs`` (given to pm.ode and
    transcribed in the Stan program) at random states and parameters."""
    model = spec.compile()
    rng = np.random.default_rng(3)
    order = list(model.parameters)
    for _ in range(20):
        y = rng.lognormal(0.0, 2.0, 3)
        values = dict(zip(bench.TYPICAL, rng.lognormal(0.0, 1.0, 7), strict=True))
        p = np.array([values.get(n, 0.3) for n in order])
        got = np.asarray(model.rhs(0.0, y, p))
        want = np.asarray(bench.tbi_rhs(y, 0.0, [values[n] for n in bench.TYPICAL[:6]]))
        np.testing.assert_allclose(got, want, rtol=1e-13)


def test_stan_program_states_the_same_equations(bench):
    """The Stan transcription of the right-hand side (read, not run: CI does not compile Stan)."""
    code = bench.STAN_FILE.read_text()
    for line in (
        "real g = y[2] / (y[2] + K);",
        "dydt[1] = rho * y[1] * g - delta * y[1];",
        "dydt[2] = -kappa * y[1] * y[2];",
        "dydt[3] = s * y[1] * g - kel * y[3];",
        "ode_rk45_tol(tbi_rhs, y0, 0.0, times, rtol, atol, max_num_steps,",
        "vector[3] y0 = [dose, 1.0, exp(log_I0)]';",
    ):
        assert line in code, line


def test_benchmark_model_has_51_free_parameters(bench):
    from pkpd.inference import build_model

    data = bench.simulate_data()
    assert data["log_T"].shape == data["log_I"].shape == (bench.N_SUBJECTS, len(bench.TIMES))
    assert np.all(np.isfinite(data["log_T"])) and np.all(np.isfinite(data["log_I"]))
    pm_model, _ = build_model(data["spec"], data["cohort"])
    point = pm_model.initial_point()
    sizes = {v.name: int(np.size(point[v.name])) for v in pm_model.value_vars}
    assert sum(sizes.values()) == 51, sizes
    # The free parameters the benchmark diagnoses, as pkpd names them (transformed values aside).
    names = {v.name.replace("_log__", "") for v in pm_model.value_vars}
    assert names == set(bench.FREE)
