"""The model library: every model loads, compiles, is documented, has correct gradients, and its
closed form (where declared) equals the ODE solution.

Every test is parametrized over `pkpd.model.list_models()`, so a model file added to ``models/``
is covered without touching this file.

Gradient check (issue 2: "the solver's gradient matches central finite differences, relative
error <= 1e-5, for every library model"). For each model a small synthetic study is built from
its own dose routes and endpoints (`study`): one subject with a bolus into every route at time 0,
one with a zero-order infusion into every route later on, repeated once (ADDL/II), and
observations of every endpoint at eight times over a horizon of 24 h (models timed in hours) or
28 days (models timed in days). The scalar is ``f(theta) = sum_i w_i * pred_i(theta) / s_e(i)``:
fixed random weights ``w`` in [0.5, 1.5] so that no component cancels by symmetry, and each
endpoint scaled by its largest prediction ``s_e`` at the evaluation point so that endpoints of
very different magnitudes (cells/uL and mg/L) count alike. ``jax.grad(f)`` (the solver's
default reverse-mode adjoint) is compared with central differences ``(f(p + h) - f(p - h)) / 2h``,
``h = 1e-4 |p|`` (``1e-4`` for a parameter at 0), both through the same solver at rtol 1e-10,
atol 1e-12. With sensitivities ``S_i = |p_i| g_i`` (the change of f per relative change of p_i),
the error of each component must be at most 1e-5 of ``max(|S_i|, 1e-3 max_j |S_j|)``: a
relative error of 1e-5 for every parameter that matters, and for parameters with a thousand times
less influence than the largest an error below 1e-8 of the largest (central differences of a
solution computed to rtol 1e-10 with a relative step of 1e-4 cannot resolve more). The point is
the model's typical values (a lag of 0 is moved to 15 min: at 0 a dose ties with other
events at the same time and the derivative is one-sided, see
tests/solve/test_zero_lag_gradient.py)
and the derivative is taken with respect to the individual parameter vector (covariates fixed).
Models with more than 12 parameters or 4 states are marked slow (20 s to 2.5 min each on 2
cores); `KNOWN_GRADIENT_FAILURES` lists the models that fail, with the reason.
"""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from pkpd import units as U
from pkpd.data import from_dataframe
from pkpd.events import DoseRecords, build_event_table
from pkpd.model import library_path, list_models, load_model
from pkpd.solve import Solver, bind, simulate, solve

MODELS = [name for name, _ in list_models()]

#: Gradient check tolerance (issue 2) and the solver it runs through. diffrax's own Tsit5, not
#: the default unrolled one (`pkpd.solve.erk`): the two take the same steps and give the same
#: gradients to 1e-10 (tests/solve/test_erk.py), and diffrax's stage loop compiles the
#: reverse-mode gradient about twice as fast (il6: 10.6 s against 23 s), which is most of the
#: cost of these tests. What is checked here is each model's derivatives.
GRAD_RTOL = 1e-5
GRAD_SOLVER = Solver(diffrax.Tsit5(), rtol=1e-10, atol=1e-12)
#: Components with less than this fraction of the largest sensitivity are checked against it.
GRAD_FLOOR = 1e-3

#: Models whose gradient check is known to fail, and why (strict: a pass is reported as a failure,
#: so the entry is removed when the cause is fixed).
_KINK = (
    "il1.toml's myeloid activation pos(S1 - S1_0) is a kink that the anakinra blockade (L1) "
    "moves the solution across; there the sensitivities are only as good as the solver's "
    "handling of the kink (K_ana: relative error 1.6e-4, no better at rtol 1e-12), and they "
    "agree to 1e-7 when pos() is replaced by a smooth ramp of width 1e-3: a model issue, reported"
)
KNOWN_GRADIENT_FAILURES: dict[str, str] = {}  # il1.toml now uses a smooth ramp (was: _KINK)

#: Reference doses by dimension: the first with the dimension of a route's unit is used.
REFERENCE_DOSES = (("100", "mg"), ("1e8", "cells"), ("1e5", "IU"))


@functools.cache
def compiled(name):
    """(spec, compiled model), once per library model: the tests share its compilations."""
    spec = load_model(name)
    return spec, spec.compile()


def _slow(name):
    """Models with many parameters take more than ~20 s (compile of the reverse pass, 2P solves)."""
    spec, _ = compiled(name)
    return len(spec.parameters) > 12 or len(spec.states) > 4


def _param(name, marks=()):
    marks = list(marks)
    if _slow(name):
        marks.append(pytest.mark.slow)
    return pytest.param(name, marks=marks, id=name)


def test_list_models_is_the_library_folder():
    files = sorted(p.stem for p in library_path().glob("*.toml"))
    assert MODELS == files
    assert {"pk_1cmt_iv", "pk_1cmt_oral", "pk_2cmt_iv", "pk_2cmt_oral"} <= set(MODELS)
    assert {"pd_turnover", "pd_emax"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_library_model_loads_compiles_and_is_documented(name):
    spec = load_model(name)
    assert spec.name == name  # the file's stem is its name
    assert spec.description
    description = dict(list_models())[name]
    assert description == spec.description.splitlines()[0]
    model = spec.compile()
    assert model.n_states == len(spec.states) > 0
    for p in spec.parameters.values():
        assert p.unit, p.name
        assert p.source, f"{name}: parameter {p.name} has no source"
        assert np.isfinite(p.typical), p.name
        assert p.fixed or p.prior is not None
    for o in spec.observations.values():
        assert o.unit and o.error


# -- gradients -------------------------------------------------------------------------------


def _covariate_value(spec, name, default):
    if np.isfinite(default):
        return float(default)
    refs = [e.ref for p in spec.parameters.values() for e in p.covariates if e.covariate == name]
    return next((r for r in refs if r > 0), 1.0)


def _dose_amount(route):
    for value, unit in REFERENCE_DOSES:
        if route.per is None and U.same_dimension(unit, route.amount_unit):
            return float(value) * U.factor(unit, route.amount_unit)
    return 1.0


def study(spec, model):
    """A small synthetic study over the model's own routes and endpoints (model time unit).

    Returns ``(cohort, times)``; ``cohort`` is None for a component with neither dose routes
    nor endpoints (then the states are observed at ``times``).
    """
    horizon = {"h": 24.0, "day": 28.0}.get(spec.time_unit, 24.0 * U.factor("h", spec.time_unit))
    covariates = {
        c: _covariate_value(spec, c, d)
        for c, d in zip(model.covariates, model.covariate_defaults, strict=True)
    }
    times = horizon * np.array([0.03, 0.07, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0])
    rows = []
    for route_name, route in spec.doses.items():
        amount = _dose_amount(route)
        rows.append(dict(ID=1, TIME=0.0, EVID=1, AMT=amount, CMT=route_name, RATE=0.0))
        rows.append(
            dict(
                ID=2,
                TIME=0.04 * horizon,
                EVID=1,
                AMT=amount,
                CMT=route_name,
                RATE=amount / (0.05 * horizon),
                II=0.5 * horizon,
                ADDL=1,
            )
        )
    for sid in (1, 2):
        for t in times:
            for dvid in model.endpoint_dvid:
                rows.append(dict(ID=sid, TIME=t, EVID=0, DV=1.0, DVID=dvid))
    if not rows:
        return None, times
    df = pd.DataFrame(rows)
    for c, v in covariates.items():
        df[c] = v
    df = df.sort_values(["ID", "TIME"], kind="stable")
    return from_dataframe(df, time_unit=spec.time_unit, covariates=list(covariates)), times


def evaluation_point(spec, model):
    """Typical values; a lag at 0 is moved to 15 min (see tests/solve/test_zero_lag_gradient.py)."""
    theta = np.array(model.typical_values, dtype=float)
    for route in spec.doses.values():
        for s in route.lag.free_symbols:
            if s.name in model.parameters and theta[model.parameter_index(s.name)] == 0:
                theta[model.parameter_index(s.name)] = 0.25 * U.factor("h", spec.time_unit)
    return theta


def _arrays(spec, model):
    """Events, requested times and their keys, mask, endpoint index and covariates (2 subjects)."""
    cohort, times = study(spec, model)
    if model.endpoints:
        b = bind(model, cohort)
        return b.events, b.obs_time, b.obs_seq, b.obs_mask, b.obs_endpoint, b.covariates
    # no endpoints: the states at the study's times, after every event at the same time
    if cohort is not None:
        b = bind(model, cohort)
        events, cov = b.events, b.covariates
    else:
        empty = DoseRecords(*(np.zeros(0) for _ in range(9)))
        events = build_event_table([empty, empty])
        cov = np.tile(
            [
                _covariate_value(spec, c, d)
                for c, d in zip(model.covariates, model.covariate_defaults, strict=True)
            ],
            (2, 1),
        )
    shape = (2, times.size)
    obs_time = np.broadcast_to(times, shape)
    return events, obs_time, np.full(shape, np.inf), np.ones(shape, bool), None, cov


def gradient_check(name, theta=None):
    """Return (names, ad, fd, scale) for the scalar f of the module docstring."""
    spec, model = compiled(name)
    events, obs_time, obs_seq, obs_mask, endpoint, covariates = _arrays(spec, model)
    cov = jnp.asarray(covariates, dtype=jnp.float64).reshape(2, len(model.covariates))
    n_p = model.n_parameters
    theta = evaluation_point(spec, model) if theta is None else theta

    def predictions(th):
        p = jnp.concatenate([jnp.broadcast_to(th, (cov.shape[0], n_p)), cov], axis=1)
        res = solve(model, events, obs_time, obs_seq, p, GRAD_SOLVER)
        if endpoint is None:
            return res.y  # (N, T, S): every state is a "prediction"
        observe = jax.vmap(jax.vmap(model.observe, in_axes=(0, 0, None)))
        pred = observe(jnp.asarray(obs_time), res.y, p)
        return jnp.take_along_axis(pred, jnp.asarray(endpoint)[:, :, None], axis=2)[:, :, 0]

    # no outer jax.jit: solve() is compiled once per model and shapes, the rest is cheap
    pred0 = np.asarray(predictions(jnp.asarray(theta)))
    group = (
        np.broadcast_to(np.arange(pred0.shape[-1]), pred0.shape)  # by state
        if endpoint is None
        else np.asarray(endpoint)  # by endpoint
    )
    full_mask = np.broadcast_to(
        np.asarray(obs_mask)[..., None] if endpoint is None else np.asarray(obs_mask), pred0.shape
    )
    assert np.all(np.isfinite(pred0[full_mask]))
    scale = np.ones_like(pred0)
    for g in np.unique(group[full_mask]):
        rows = group == g
        largest = np.max(np.abs(pred0[rows & full_mask]))
        scale[rows] = largest if largest > 0 else 1.0
    weights = np.random.default_rng(0).uniform(0.5, 1.5, pred0.shape) / scale
    weights = np.where(full_mask, weights, 0.0)

    def f(th):
        return jnp.sum(weights * jnp.where(full_mask, predictions(th), 0.0))

    ad = np.asarray(jax.grad(f)(jnp.asarray(theta)))
    fd = np.zeros(n_p)
    steps = np.where(theta != 0, 1e-4 * np.abs(theta), 1e-4)
    for i in range(n_p):
        e = np.zeros(n_p)
        e[i] = steps[i]
        fd[i] = (float(f(theta + e)) - float(f(theta - e))) / (2 * steps[i])
    return model.parameters, ad, fd, np.where(theta != 0, np.abs(theta), 1.0)


def assert_gradients_agree(names, ad, fd, scale):
    s_ad, s_fd = scale * ad, scale * fd
    largest = np.max(np.abs(s_fd))
    assert largest > 0, "the predictions do not depend on any parameter"
    error = np.abs(s_ad - s_fd) / np.maximum(np.abs(s_fd), GRAD_FLOOR * largest)
    bad = {n: (a, f, r) for n, a, f, r in zip(names, ad, fd, error, strict=True) if r > GRAD_RTOL}
    assert not bad, f"jax.grad vs central differences (ad, fd, relative error): {bad}"


@pytest.mark.parametrize(
    "name",
    [
        _param(n, [pytest.mark.xfail(strict=True, reason=KNOWN_GRADIENT_FAILURES[n])])
        if n in KNOWN_GRADIENT_FAILURES
        else _param(n)
        for n in MODELS
    ],
)
def test_gradient_matches_finite_differences(name):
    assert_gradients_agree(*gradient_check(name))


# -- closed form against the ODE -------------------------------------------------------------

ANALYTIC = [n for n in MODELS if compiled(n)[0].analytic is not None]


def test_pk_library_declares_closed_forms():
    assert {"pk_1cmt_iv", "pk_1cmt_oral", "pk_2cmt_iv", "pk_2cmt_oral"} <= set(ANALYTIC)


@pytest.mark.parametrize("name", ANALYTIC)
def test_analytic_equals_ode(name):
    """Closed form vs Tsit5 (rtol 1e-10, atol 1e-12) over boluses, infusions, ADDL and lag:
    relative error <= 1e-6 (issue 2's conformance tolerance) wherever the amount is not 0."""
    spec, model = compiled(name)
    cohort, _ = study(spec, model)
    theta = evaluation_point(spec, model)
    params = {n: v for n, v in zip(model.parameters, theta, strict=True)}
    # a bioavailability below 1 where the model estimates one, so F is exercised too
    for route in spec.doses.values():
        for s in route.bioavailability.free_symbols:
            if s.name in params:
                params[s.name] = 0.7
    times = np.linspace(0.0, 24.0 * U.factor("h", spec.time_unit), 97)
    ode = simulate(model, cohort, params, solver=GRAD_SOLVER, times=times)
    closed = simulate(model, cohort, params, solver=Solver("analytic"), times=times)
    for var in ("pred", "state_grid"):
        a, b = ode[var].values, closed[var].values
        finite = np.isfinite(b)
        np.testing.assert_array_equal(np.isfinite(a), finite)
        np.testing.assert_allclose(a[finite], b[finite], rtol=1e-6, atol=0)
    assert np.nanmax(closed["state_grid"].values) > 0
