"""Fitting through the subjects-last integrator (`pkpd.solve.lanes`) in forward mode.

The predictions' forward sensitivities go through `solve_lanes` when no estimated parameter moves
an event time (`pkpd.inference.predict.lanes_gradient`). Checked here: the gradient against
central differences where dose amounts depend on an estimated parameter (oral bioavailability)
and an infusion is given by duration; the choice `"auto"` makes, and the refusals; that a fit
records the integrator and a saved fit rebuilds with it; and `cart_crs` (the case it exists
for) against the engine.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from test_gradient import TIGHT, _check, _logp_function

import pkpd
from pkpd.data import from_dataframe
from pkpd.inference import build_model, fit, load_fit
from pkpd.inference.builder import prepare_model
from pkpd.solve import Solver

MODEL = """
[model]
name = "test_lanes_oral_iv"
description = "1-cmt, oral route with estimated bioavailability and lag, IV route"
time_unit = "h"

[states]
depot = { unit = "mg" }
central = { unit = "mg" }

[parameters]
F = { unit = "1", prior = "LogitNormal(mu=0.5, sigma=0.5)", source = "assumption: test" }
tlag = { unit = "h", LAG }
sigma_prop = { unit = "1", prior = "HalfNormal(0.3)", source = "assumption: test" }
V = { unit = "L", prior = "LogNormal(median=30, cv=0.5)", source = "assumption: test" }

[parameters.ka]
unit = "1/h"
prior = "LogNormal(median=1.0, cv=0.5)"
iiv = "HalfNormal(0.3)"
source = "assumption: test"

[parameters.CL]
unit = "L/h"
prior = "LogNormal(median=3.0, cv=0.5)"
iiv = "HalfNormal(0.3)"
source = "assumption: test"

[equations]
depot = "-ka * depot"
central = "ka * depot - CL / V * central"

[doses.oral]
compartment = "depot"
unit = "mg"
lag = "tlag"
bioavailability = "F"

[doses.iv]
compartment = "central"
unit = "mg"
bioavailability = "F"

[observations.conc]
expression = "central / V"
unit = "mg/L"
dvid = 1
error = "proportional"
sigma_prop = "sigma_prop"
"""

FIXED_LAG = 'value = 0.25, source = "assumption: test"'
ESTIMATED_LAG = 'prior = "LogNormal(median=0.25, cv=0.5)", source = "assumption: test"'


def _spec(tmp_path, lag=FIXED_LAG, name="oral_iv.toml"):
    path = tmp_path / name
    path.write_text(MODEL.replace("LAG", lag))
    return pkpd.load_model(path)


def _cohort(iv_by="DUR"):
    """Three subjects: an oral dose at 0 h and an IV infusion at 12 h (by DUR or by RATE)."""
    rows = []
    for sid, scale in ((1, 1.0), (2, 1.4), (3, 0.7)):
        rows.append(
            dict(
                ID=sid, TIME=0.0, AMT=100.0, DV=np.nan, EVID=1, MDV=1, CMT="oral", DUR=0.0, RATE=0.0
            )
        )
        infusion = dict(DUR=2.0, RATE=0.0) if iv_by == "DUR" else dict(DUR=0.0, RATE=25.0)
        rows.append(
            dict(ID=sid, TIME=12.0, AMT=50.0, DV=np.nan, EVID=1, MDV=1, CMT="iv", **infusion)
        )
        for t in (0.5, 1.0, 2.0, 4.0, 8.0, 12.5, 13.0, 14.0, 18.0, 24.0):
            conc = scale * 2.5 * np.exp(-0.1 * t) * (1 - np.exp(-1.5 * t)) + 0.3 * (t > 12)
            rows.append(
                dict(
                    ID=sid,
                    TIME=t,
                    AMT=np.nan,
                    DV=conc,
                    EVID=0,
                    MDV=0,
                    CMT="central",
                    DUR=0.0,
                    RATE=0.0,
                )
            )
    df = pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable")
    df["DVID"] = 1
    return from_dataframe(df, source=f"oral_iv_{iv_by}", time_unit="h")


def test_lanes_gradient_matches_central_differences(tmp_path):
    """Bolus amounts (oral F) and infusion rates (IV F, infusion by duration) carry tangents."""
    pm_model, info = build_model(_spec(tmp_path), _cohort("DUR"), solver=TIGHT, integrator="lanes")
    assert info.integrator == "lanes"
    _check(pm_model, seed=31)


def test_lanes_only_where_its_gradient_is_exact(tmp_path):
    spec, by_dur = _spec(tmp_path), _cohort("DUR")
    ode = Solver("tsit5", rtol=1e-6, atol=1e-9)

    def chosen(spec=spec, cohort=by_dur, solver=ode, **kw):
        return prepare_model(spec, cohort, solver=solver, **kw).integrator

    assert chosen(integrator="lanes") == "lanes"
    assert chosen(gradient="reverse") == "engine"
    assert chosen(solver=Solver.stiff(rtol=1e-6, atol=1e-9)) == "engine"
    assert chosen(integrator="engine") == "engine"
    assert prepare_model("pk_1cmt_oral", "theophylline").integrator == "engine"  # closed form
    # An estimated lag moves the oral dose; F moves the end of an infusion given by rate.
    lagged = _spec(tmp_path, ESTIMATED_LAG, "lagged.toml")
    with pytest.raises(ValueError, match=r"'oral'.*\['tlag'\]"):
        chosen(lagged, integrator="lanes")
    with pytest.raises(ValueError, match=r"'iv'.*\['F'\]"):
        chosen(cohort=_cohort("RATE"), integrator="lanes")
    with pytest.raises(ValueError, match="no plain reverse mode"):
        chosen(gradient="reverse", integrator="lanes")
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        chosen(solver=Solver.stiff(rtol=1e-6, atol=1e-9), integrator="lanes")
    with pytest.raises(ValueError, match="integrator must be one of"):
        chosen(integrator="diffrax")


def test_auto_takes_lanes_for_large_problems_only(tmp_path, monkeypatch):
    """``"auto"``: the engine below `LANES_MIN_SIZE` states x subjects (here 2 x 3), lanes above
    it when its gradient is exact; `cart_crs` (23 states) with 5 patients is above."""
    from pkpd.inference import predict

    spec, by_dur = _spec(tmp_path), _cohort("DUR")
    ode = Solver("tsit5", rtol=1e-6, atol=1e-9)
    assert prepare_model(spec, by_dur, solver=ode).integrator == "engine"
    monkeypatch.setattr(predict, "LANES_MIN_SIZE", 6)
    assert prepare_model(spec, by_dur, solver=ode).integrator == "lanes"
    lagged = _spec(tmp_path, ESTIMATED_LAG, "lagged.toml")
    assert prepare_model(lagged, by_dur, solver=ode).integrator == "engine"
    assert prepare_model(spec, _cohort("RATE"), solver=ode).integrator == "engine"
    monkeypatch.undo()
    cart = pkpd.load_dataset("virtual_cart")
    info = prepare_model("cart_crs", cart.subset(cart.subjects[:5]))
    # 64 parameters go through the solve: the default gradient is the adjoint
    assert (info.integrator, info.gradient) == ("lanes", "adjoint")


def test_auto_gradient_takes_the_adjoint_for_many_tangents(tmp_path, monkeypatch):
    """``gradient="auto"``: forward mode for few parameters through the solve, the adjoint
    from `ADJOINT_MIN_TANGENTS` where lanes applies; never where lanes' derivative would miss
    an event time (estimated lag), and ``"adjoint"`` there is an error naming it."""
    from pkpd.inference import predict

    spec, by_dur = _spec(tmp_path), _cohort("DUR")
    ode = Solver("tsit5", rtol=1e-6, atol=1e-9)
    monkeypatch.setattr(predict, "LANES_MIN_SIZE", 6)
    assert prepare_model(spec, by_dur, solver=ode).gradient == "forward"
    monkeypatch.setattr(predict, "ADJOINT_MIN_TANGENTS", 1)
    info = prepare_model(spec, by_dur, solver=ode)
    assert (info.integrator, info.gradient) == ("lanes", "adjoint")
    assert prepare_model(spec, by_dur, solver=ode, integrator="engine").gradient == "forward"
    lagged = _spec(tmp_path, ESTIMATED_LAG, "lagged.toml")
    info = prepare_model(lagged, by_dur, solver=ode)
    assert (info.integrator, info.gradient) == ("engine", "forward")
    with pytest.raises(ValueError, match=r"adjoint.*'oral'.*\['tlag'\]"):
        prepare_model(lagged, by_dur, solver=ode, gradient="adjoint")
    with pytest.raises(ValueError, match="gradient must be one of"):
        prepare_model(spec, by_dur, solver=ode, gradient="backward")


def test_engine_fallback_still_differentiates_the_lag(tmp_path, monkeypatch):
    """Where lanes would miss d/d(tlag), `"auto"` keeps the engine and the gradient is right
    (the size rule is switched off, so only the lag decides)."""
    from pkpd.inference import predict

    monkeypatch.setattr(predict, "LANES_MIN_SIZE", 1)
    pm_model, info = build_model(
        _spec(tmp_path, ESTIMATED_LAG, "lagged.toml"),
        _cohort("RATE"),
        solver=TIGHT,
        integrator="auto",
    )
    assert info.integrator == "engine"
    _check(pm_model, seed=32)


def test_fit_records_the_integrator_and_a_saved_fit_rebuilds_it(tmp_path):
    spec = _spec(tmp_path)
    result = fit(
        spec,
        _cohort("DUR"),
        sampler="map",
        seed=1,
        progressbar=False,
        solver=Solver("tsit5", rtol=1e-6, atol=1e-9),
        integrator="lanes",
    )
    assert result.settings.integrator == "lanes"
    assert result.settings.gradient == "forward"  # "auto" resolved: 2 parameters, few tangents
    path = tmp_path / "fit.nc"
    result.save(path)
    loaded = load_fit(path)
    assert loaded.settings.integrator == "lanes"
    assert loaded.info.integrator == "lanes"
    theta = jnp.asarray(
        result.info.theta_from(
            {n: float(result.posterior[n].mean()) for n in result.info.estimated}
        )
    )
    eta = jnp.zeros((3, len(result.info.iiv)))
    np.testing.assert_array_equal(
        np.asarray(result.info.predict(theta, eta)), np.asarray(loaded.info.predict(theta, eta))
    )


@pytest.mark.slow
def test_cart_crs_core_gradient_matches_the_engine():
    """The case lanes is used for: the `cart_crs_core` profile's last stage (7 tangents through
    the 23-state model), 2 patients of `virtual_cart`, at a random point near the prior.

    The two integrators take different steps (lanes carries the step size across stops, and
    stops integrating the states no later observation needs: `needed_until`), so they agree to
    the fitting tolerance (rtol 1e-6), not to rounding. Measured without that pruning: 2e-8 of
    the largest gradient component, 2.5e-6 relative on any component, log-density 1e-8
    relative or less; with it (2026-12-05): 2.5e-7, 1.2e-6 and 2.9e-8. Asserted: 1e-5, 1e-4
    and, for the log-density, the fitting rtol 1e-6."""
    from pkpd.inference.profiles import get_profile, select_endpoints

    base = pkpd.load_model("cart_crs")
    cohort = pkpd.load_dataset("virtual_cart")
    cohort = cohort.subset(cohort.subjects[:2])
    stage = get_profile("cart_crs_core").final
    spec = base.estimate_only(stage.typical, stage.iiv)
    cohort = select_endpoints(cohort, list(stage.endpoints), base, spec, ["cart_blood"])
    out = {}
    for integrator in ("engine", "lanes"):
        pm_model, info = build_model(spec, cohort, integrator=integrator)
        f, x0 = _logp_function(pm_model)
        x = x0 + np.random.default_rng(3).normal(0.0, 0.3, x0.size)
        out[integrator] = jax.jit(jax.value_and_grad(f))(jnp.asarray(x))
    (v_engine, g_engine), (v_lanes, g_lanes) = out["engine"], out["lanes"]
    g_engine, g_lanes = np.asarray(g_engine), np.asarray(g_lanes)
    assert np.all(np.isfinite(g_lanes))
    assert float(v_lanes) == pytest.approx(float(v_engine), rel=1e-6)
    assert np.max(np.abs(g_lanes - g_engine)) < 1e-5 * np.max(np.abs(g_engine))
    np.testing.assert_allclose(g_lanes, g_engine, rtol=1e-4, atol=1e-6 * np.abs(g_engine).max())
