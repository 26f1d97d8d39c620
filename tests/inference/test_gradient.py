"""The log-density gradient (through the JAX op and the solver) against central differences.

Tolerance: every component within 1e-5 relative (plus 1e-7 absolute for components near zero).
Central differences with step h = 1e-5 (scaled) have truncation error ~h^2 |f'''| ~ 1e-10 and
round-off ~eps |f| / h ~ 1e-8 for |f| ~ 400; the ODE runs at rtol 1e-12 so that solver error
(~1e-12 |f| / h ~ 4e-5 at worst) stays below the tolerance. Measured: 9e-9 relative at worst.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pkpd
from pkpd.inference import build_model
from pkpd.inference.predict import dynamic_parameters, solve_parameters
from pkpd.solve import Solver

TIGHT = Solver("tsit5", rtol=1e-12, atol=1e-12)


def _logp_function(pm_model):
    from pymc.sampling.jax import get_jaxified_graph

    fn = get_jaxified_graph(inputs=pm_model.value_vars, outputs=[pm_model.logp()])
    point = pm_model.initial_point()
    names = [v.name for v in pm_model.value_vars]
    shapes = [np.shape(point[n]) for n in names]
    splits = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]

    def f(x):
        parts = jnp.split(x, splits)
        return fn(*[p.reshape(s) for p, s in zip(parts, shapes, strict=True)])[0]

    x0 = np.concatenate([np.ravel(point[n]) for n in names])
    return f, x0


def _check(pm_model, seed):
    f, x0 = _logp_function(pm_model)
    # A random point near the prior medians (z != 0, so every omega has a gradient).
    x = x0 + np.random.default_rng(seed).normal(0.0, 0.3, x0.size)
    value = jax.jit(f)
    grad = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x)))
    fd = np.empty_like(x)
    for i in range(x.size):
        h = 1e-5 * max(1.0, abs(x[i]))
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        fd[i] = (float(value(jnp.asarray(up))) - float(value(jnp.asarray(down)))) / (2 * h)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_gradient_closed_form_reverse_mode():
    pm_model, _ = build_model(
        "pk_1cmt_oral", "theophylline", solver=Solver("analytic"), gradient="reverse"
    )
    _check(pm_model, seed=11)


@pytest.mark.parametrize("integrator", ["engine", "lanes"])
def test_gradient_ode_forward_sensitivities(integrator):
    pm_model, info = build_model(
        "pk_1cmt_oral", "theophylline", solver=TIGHT, gradient="forward", integrator=integrator
    )
    assert info.integrator == integrator
    _check(pm_model, seed=12)


def test_gradient_lanes_adjoint(multi_spec, multi_cohort):
    """The discrete adjoint of the subjects-last loop (`pkpd.solve.lanes.solve_lanes_adjoint`):
    censoring, an ordinal endpoint and several endpoints, against central differences."""
    pm_model, info = build_model(multi_spec, multi_cohort, solver=TIGHT, gradient="adjoint")
    assert info.integrator == "lanes"
    _check(pm_model, seed=15)


def test_adjoint_needs_lanes(multi_spec, multi_cohort):
    with pytest.raises(ValueError, match="adjoint"):
        build_model(multi_spec, multi_cohort, solver=TIGHT, gradient="adjoint", integrator="engine")
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        build_model(
            multi_spec, multi_cohort, solver=Solver("kvaerno5", rtol=1e-8), gradient="adjoint"
        )


def test_gradient_censoring_ordinal_several_endpoints(multi_spec, multi_cohort):
    pm_model, _ = build_model(multi_spec, multi_cohort, solver=TIGHT)
    _check(pm_model, seed=13)


@pytest.fixture(scope="module")
def observe_only_spec(multi_spec, tmp_path_factory):
    """The multi-endpoint model with C50 estimated: a parameter that only the grade's
    observation expression uses (no state equation), like V_car in cart_crs."""
    text = Path(multi_spec.main_file).read_text()
    fixed = 'C50 = { unit = "mg/L", value = 2.0, source = "assumption: test" }'
    assert fixed in text
    path = tmp_path_factory.mktemp("obs_only") / "multi_endpoint_c50.toml"
    path.write_text(
        text.replace(
            fixed,
            'C50 = { unit = "mg/L", prior = "LogNormal(median=2.0, '
            'cv=0.5)", source = "assumption: test" }',
        )
    )
    return pkpd.load_model(path)


def test_solve_parameters_leave_out_observation_only_ones(observe_only_spec):
    assert solve_parameters(observe_only_spec) == {"CL", "V"}
    assert "C50" in dynamic_parameters(observe_only_spec)
    assert {"V_car", "s_crs"} <= dynamic_parameters(pkpd.load_model("cart_crs")) - solve_parameters(
        pkpd.load_model("cart_crs")
    )


@pytest.mark.parametrize("integrator", ["engine", "lanes"])
def test_gradient_of_an_observation_only_parameter(observe_only_spec, multi_cohort, integrator):
    """C50 gets its sensitivity from the observation function alone (no tangent through the
    solve); the gradient must still match central differences."""
    pm_model, info = build_model(
        observe_only_spec, multi_cohort, solver=TIGHT, integrator=integrator
    )
    assert "C50" in info.estimated
    _check(pm_model, seed=14)


def test_failed_solve_rejects_the_proposal():
    """A solve that fails (here: a step budget of 2 per interval) gives a non-finite
    log-density and gradient, never a plausible number; with a normal budget the same point is
    finite."""
    pm_model, _ = build_model(
        "pk_1cmt_oral", "theophylline", solver=Solver("tsit5", rtol=1e-6, atol=1e-9, max_steps=2)
    )
    f, x0 = _logp_function(pm_model)
    value, grad = jax.jit(jax.value_and_grad(f))(jnp.asarray(x0))
    assert not np.isfinite(float(value))
    assert not np.all(np.isfinite(np.asarray(grad)))
    ok_model, _ = build_model(
        "pk_1cmt_oral", "theophylline", solver=Solver("tsit5", rtol=1e-6, atol=1e-9, max_steps=4096)
    )
    g, _ = _logp_function(ok_model)
    assert np.isfinite(float(jax.jit(g)(jnp.asarray(x0))))


@pytest.mark.slow
def test_pytensor_gradient_matches_the_jax_gradient(multi_spec, multi_cohort):
    """PyMC's own NUTS evaluates the log-density and gradient through PyTensor (the op's
    ``perform`` and its gradient graph), not through the jaxified graph that nutpie and
    numpyro use: both paths must give the same numbers (ODE, several endpoints, censoring,
    grades; the default forward sensitivities)."""
    pm_model, _ = build_model(multi_spec, multi_cohort)
    f, x0 = _logp_function(pm_model)
    x = x0 + np.random.default_rng(21).normal(0.0, 0.3, x0.size)
    init = pm_model.initial_point()
    point, start = {}, 0
    for v in pm_model.value_vars:
        shape = np.shape(init[v.name])
        size = int(np.prod(shape))
        point[v.name] = x[start : start + size].reshape(shape)
        start += size
    logp_pt = pm_model.compile_logp()(point)
    dlogp_pt = pm_model.compile_dlogp()(point)  # flat, in value_vars order
    value, grad = jax.jit(jax.value_and_grad(f))(jnp.asarray(x))
    assert np.isfinite(float(value))
    assert float(logp_pt) == pytest.approx(float(value), rel=1e-12)
    np.testing.assert_allclose(np.asarray(dlogp_pt), np.asarray(grad), rtol=1e-9, atol=1e-10)


def test_fit_counts_the_adjoint_s_reverse_passes(multi_spec, multi_cohort, monkeypatch):
    """A fit with the adjoint reports its reverse passes and warns when some of them outgrew
    the record and took forward mode (they were silent before)."""
    import pkpd.inference.predict as predict
    from pkpd.inference import fit

    result = fit(
        multi_spec, multi_cohort, sampler="map", gradient="adjoint", solver=TIGHT, progressbar=False
    )
    counts = result.extra["adjoint"]
    assert counts["gradients"] > 0 and counts["fallbacks"] == 0
    assert counts["capacity"] > predict.ADJOINT_SLACK
    monkeypatch.setattr(predict, "ADJOINT_MARGIN", 0.0)
    monkeypatch.setattr(predict, "ADJOINT_SLACK", 1)
    with pytest.warns(UserWarning, match="took forward mode"):
        small = fit(
            multi_spec,
            multi_cohort,
            sampler="map",
            gradient="adjoint",
            solver=TIGHT,
            progressbar=False,
        )
    counts = small.extra["adjoint"]
    assert counts["capacity"] == 1 and counts["fallbacks"] == counts["gradients"] > 0
    # (That the fallback's gradient is the adjoint's: tests/solve/test_lanes.py.)
