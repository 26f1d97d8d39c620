"""The per-observation log-likelihood against scipy: every error model, M3 censoring (below and
above a limit), ordinal grades, missing observations, several endpoints at once."""

import dataclasses

import numpy as np
import pytest
import xarray as xr
from scipy import special, stats

from pkpd.errors import DatasetError
from pkpd.inference import build_model
from pkpd.inference.likelihood import collect_observations, log_ndtr
from pkpd.inference.sample import log_likelihood
from pkpd.solve import Solver, bind, simulate

# Tight tolerances so that solver error (1e-10 relative) is far below the 1e-8 we compare at.
TIGHT = Solver("tsit5", rtol=1e-10, atol=1e-12)

POINT = {
    "CL": 2.5,
    "V": 18.0,
    "sigma_add": 0.3,
    "sigma_prop": 0.15,
    "sigma_log": 0.25,
    "c1": 0.2,
    "c2": 1.1,
    "omega_CL": 0.3,
    "omega_V": 0.2,
}


def _posterior(pm_model, values):
    """A one-draw posterior holding the constrained value of every free variable."""
    data = {}
    for rv in pm_model.free_RVs:
        data[rv.name] = (
            ("chain", "draw", *[f"{rv.name}_dim{i}" for i in range(rv.ndim)]),
            np.asarray(values[rv.name], dtype=float)[None, None],
        )
    return xr.Dataset(data, coords={"chain": [0], "draw": [0]})


def _expected(spec, cohort, info, z):
    """Log-likelihood of each observation, by hand with scipy, from an independent simulation."""
    eta = z * np.array([POINT["omega_CL"], POINT["omega_V"]])
    sim = simulate(info.model, cohort, {"CL": POINT["CL"], "V": POINT["V"]}, eta=eta, solver=TIGHT)
    pred = sim["pred"].values
    obs = info.observations
    out = []
    for k in range(len(obs)):
        f = pred[obs.subject[k], obs.column[k]]
        name = info.model.endpoints[obs.endpoint[k]]
        y, cens, lim = obs.dv[k], obs.cens[k], obs.limit[k]
        if name == "conc":
            sd = np.hypot(POINT["sigma_add"], POINT["sigma_prop"] * f)
            dist = stats.norm(f, sd)
            if cens == 0:
                out.append(dist.logpdf(y))
            elif cens == 1:
                out.append(dist.logcdf(lim))
            else:
                out.append(dist.logsf(lim))
        elif name == "marker":
            dist = stats.norm(np.log(f), POINT["sigma_log"])
            out.append(
                dist.logpdf(np.log(y)) - np.log(y) if cens == 0 else dist.logcdf(np.log(lim))
            )
        else:
            c = np.array([-np.inf, POINT["c1"], POINT["c2"], np.inf])
            k_ = int(obs.category[k])
            out.append(np.log(special.expit(c[k_ + 1] - f) - special.expit(c[k_] - f)))
    return np.array(out)


def test_observations_selected(multi_spec, multi_cohort):
    model = multi_spec.compile()
    bound = bind(model, multi_cohort)
    obs = collect_observations(multi_spec, model, multi_cohort, bound)
    # 22 observation records, one with MDV=1 (subject 1 at 12 h) is left out.
    assert len(obs) == 22
    assert obs.n_missing == 1
    assert 12.0 not in obs.time[obs.subject == 0]
    assert sorted(obs.cens.tolist()).count(1) == 4 and obs.cens.tolist().count(-1) == 1
    # The likelihood reads the limit, not a DV, for censored records.
    assert np.all(obs.value[obs.cens != 0] == obs.limit[obs.cens != 0])
    dropped = collect_observations(multi_spec, model, multi_cohort, bound, censoring="drop")
    assert len(dropped) == 22 - 5 and dropped.n_dropped == 5 and not dropped.cens.any()


def point_values(z):
    """`POINT` as the free variables of the multi-endpoint model, with random effects ``z``."""
    return {
        "log_CL": np.log(POINT["CL"]),
        "log_V": np.log(POINT["V"]),
        "sigma_add": POINT["sigma_add"],
        "sigma_prop": POINT["sigma_prop"],
        "sigma_log": POINT["sigma_log"],
        "cutpoints_grade": [POINT["c1"], POINT["c2"]],
        "omega_CL": POINT["omega_CL"],
        "omega_V": POINT["omega_V"],
        "z": z,
    }


def test_loglik_matches_scipy(multi_spec, multi_cohort):
    pm_model, info = build_model(multi_spec, multi_cohort, solver=TIGHT)
    z = np.random.default_rng(7).standard_normal((3, 2))
    values = point_values(z)
    got = log_likelihood(pm_model, _posterior(pm_model, values))["y"][0, 0]
    want = _expected(multi_spec, multi_cohort, info, z)
    assert got.shape == want.shape == (22,)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_lognormal_needs_positive_dv(multi_spec, multi_cohort):
    ds = multi_cohort.ds.copy()
    dvid = ds["obs_dvid"].values
    dv = ds["obs_dv"].values.copy()
    first = np.argwhere((dvid == 2) & (ds["obs_cens"].values == 0))[0]
    dv[tuple(first)] = 0.0
    ds["obs_dv"] = (ds["obs_dv"].dims, dv)
    cohort = type(multi_cohort)(ds)
    model = multi_spec.compile()
    with pytest.raises(DatasetError, match="log-normal"):
        collect_observations(multi_spec, model, cohort, bind(model, cohort))


def test_ordinal_value_must_be_a_level(multi_spec, multi_cohort):
    ds = multi_cohort.ds.copy()
    dv = ds["obs_dv"].values.copy()
    first = np.argwhere(ds["obs_dvid"].values == 3)[0]
    dv[tuple(first)] = 7.0
    ds["obs_dv"] = (ds["obs_dv"].dims, dv)
    cohort = type(multi_cohort)(ds)
    model = multi_spec.compile()
    with pytest.raises(DatasetError, match="not one of its levels"):
        collect_observations(multi_spec, model, cohort, bind(model, cohort))


def test_endpoint_default_lloq(multi_spec, multi_cohort):
    """An endpoint's ``lloq`` censors records below it for which the dataset gives no limit."""
    conc = dataclasses.replace(multi_spec.observations["conc"], lloq=3.2)
    spec = dataclasses.replace(multi_spec, observations={**multi_spec.observations, "conc": conc})
    model = spec.compile()
    obs = collect_observations(spec, model, multi_cohort, bind(model, multi_cohort))
    conc_rows = obs.endpoint == 0
    newly = conc_rows & (obs.cens == 1) & (obs.limit == 3.2)
    # conc values below 3.2 without a dataset limit: 3.1 (subject 1), 1.9 and 0.9 (subject 3).
    assert sorted(obs.dv[newly].tolist()) == [0.9, 1.9, 3.1]
    # Records the dataset already censors keep their own limit.
    assert set(obs.limit[conc_rows & (obs.cens != 0) & ~newly].tolist()) == {0.5, 6.0}


def test_log_ndtr_matches_scipy():
    import pytensor
    import pytensor.tensor as pt

    z = pt.dvector("z")
    fn = pytensor.function([z], log_ndtr(z))
    x = np.concatenate([-np.logspace(-3, 3, 200), [0.0], np.logspace(-3, 1.5, 200)])
    ref = special.log_ndtr(x)
    # 1e-12 relative: the series below z = -30 is accurate to 1.6e-12 relative in Phi.
    np.testing.assert_allclose(fn(x), ref, rtol=1e-12, atol=1e-300)


def test_censored_lognormal_with_zero_prediction_has_a_finite_gradient():
    # Regression: a record below the LLOQ whose prediction is exactly 0 (CAR-T cells sampled
    # before the infusion in virtual_cart) has log-likelihood 0, but log(0) made its gradient
    # 0 * inf = NaN, so every cart_crs fit on virtual_cart had a NaN gradient everywhere.
    from types import SimpleNamespace

    import pytensor
    import pytensor.tensor as pt

    from pkpd.inference.likelihood import observation_logp

    obs = SimpleNamespace(
        endpoint=np.zeros(3, int), cens=np.array([1, 1, 0]), category=np.zeros(3, int)
    )
    spec = SimpleNamespace(
        observations={"cells": SimpleNamespace(error="lognormal", sigma={"sigma": "s"})}
    )
    model = SimpleNamespace(endpoints=["cells"])
    pred, sd = pt.dvector("pred"), pt.dscalar("s")
    value = np.array([0.1, 0.1, 2.0])  # LLOQ, LLOQ, an observed value
    lp = observation_logp(pt.constant(value), pred, {"s": sd}, obs, spec, model)
    fn = pytensor.function([pred, sd], [lp, *pt.grad(lp.sum(), [pred, sd])])
    values, d_pred, d_sd = fn(np.array([0.0, 0.05, 1.5]), 0.5)
    assert values[0] == 0.0 and d_pred[0] == 0.0
    np.testing.assert_allclose(values[1], stats.norm(np.log(0.05), 0.5).logcdf(np.log(0.1)))
    np.testing.assert_allclose(
        values[2], stats.norm(np.log(1.5), 0.5).logpdf(np.log(2.0)) - np.log(2.0)
    )
    assert np.all(np.isfinite(d_pred)) and np.isfinite(d_sd)
