"""Centred, non-centred and mixed random effects (`build_model(iiv_parameterization=...)`).

The three write the same posterior: on the scale of ``eta`` their log-densities differ only by
the Jacobian of ``eta = omega * z`` (``N log omega`` per non-centred column).
"""

import numpy as np
import pytest

from pkpd.inference import build_model, fit
from pkpd.inference.builder import resolve_parameterization


def _logp_at(pm_model, values: dict) -> float:
    point = pm_model.initial_point()
    for key, v in values.items():
        assert key in point, key
        point[key] = np.asarray(v, dtype=float)
    return float(pm_model.compile_logp()(point))


@pytest.fixture(scope="module")
def models():
    nc, info = build_model("pk_1cmt_oral", "theophylline")
    c, _ = build_model("pk_1cmt_oral", "theophylline", iiv_parameterization="centered")
    mixed, _ = build_model("pk_1cmt_oral", "theophylline", iiv_parameterization={"CL": "centered"})
    return nc, c, mixed, info


def test_names_and_dims(models):
    nc, c, mixed, info = models
    assert info.iiv == ("ka", "CL", "V")
    assert "z" in {rv.name for rv in nc.free_RVs}
    free_c = {rv.name for rv in c.free_RVs}
    assert "phi" in free_c and "z" not in free_c and "eta" not in free_c
    assert c.named_vars_to_dims["phi"] == c.named_vars_to_dims["eta"] == ("subject", "iiv")
    free_m = {rv.name for rv in mixed.free_RVs}
    assert {"z", "phi"} <= free_m
    assert mixed.named_vars_to_dims["phi"] == ("subject", "iiv_centered")
    assert mixed.named_vars_to_dims["z"] == ("subject", "iiv_noncentered")
    assert list(mixed.coords["iiv_noncentered"]) == ["ka", "V"]
    assert list(mixed.coords["iiv_centered"]) == ["CL"]
    assert mixed.named_vars_to_dims["eta"] == ("subject", "iiv")


def test_same_posterior_up_to_the_jacobian(models):
    nc, c, mixed, _ = models
    rng = np.random.default_rng(11)
    n_sub = len(nc.coords["subject"])
    log_omega = np.log([0.6, 0.3, 0.15])
    z = rng.normal(size=(n_sub, 3))
    eta = z * np.exp(log_omega)
    common = {f"omega_{n}_log__": log_omega[k] for k, n in enumerate(("ka", "CL", "V"))}
    common.update(
        {
            "log_ka": np.log(1.4),
            "log_CL": np.log(2.9),
            "log_V": np.log(31.0),
            "sigma_add_log__": np.log(0.7),
        }
    )
    lp_nc = _logp_at(nc, {**common, "z": z})
    # Centred: the subject's log parameter, phi = log(typical) + eta (a shift: Jacobian 1).
    typical = np.array([common["log_ka"], common["log_CL"], common["log_V"]])
    lp_c = _logp_at(c, {**common, "phi": eta + typical})
    lp_m = _logp_at(mixed, {**common, "z": z[:, [0, 2]], "phi": eta[:, [1]] + typical[1]})
    # p(eta) = p(z) / |d eta / d z| = p(z) / prod omega, per subject and column.
    np.testing.assert_allclose(lp_c, lp_nc - n_sub * log_omega.sum(), rtol=1e-12)
    np.testing.assert_allclose(lp_m, lp_nc - n_sub * log_omega[1], rtol=1e-12)


def test_options_are_checked():
    assert resolve_parameterization("centered", ["a", "b"]) == {"a": "centered", "b": "centered"}
    assert resolve_parameterization({"b": "centered"}, ["a", "b"]) == {
        "a": "noncentered",
        "b": "centered",
    }
    with pytest.raises(ValueError, match="unknown IIV parameterization 'centred'"):
        resolve_parameterization("centred", ["a"])
    with pytest.raises(ValueError, match="unknown IIV parameterization 'partly'"):
        resolve_parameterization({"a": "partly"}, ["a"])
    with pytest.raises(ValueError, match="without IIV: tlag"):
        resolve_parameterization({"tlag": "centered"}, ["ka", "CL"])
    with pytest.raises(ValueError, match="one parameterization for all"):
        build_model(
            "pk_1cmt_oral",
            "theophylline",
            correlated_iiv=True,
            iiv_parameterization={"CL": "centered"},
        )
    with pytest.raises(ValueError, match="non-centred random effects"):
        fit("pk_1cmt_oral", "theophylline", sampler="map", iiv_parameterization="centered")


@pytest.mark.parametrize("which", ["centered", {"CL": "centered"}])
def test_a_non_centred_point_in_centred_coordinates(models, which):
    """``init="map"`` of a centred model starts at the non-centred mode (`centred_point`): the
    same typical values and random effects, and a log-density that differs by exactly the
    Jacobian of eta = omega * z."""
    from pkpd.inference.sample import centred_point, map_estimate

    nc = models[0]
    c = models[1] if which == "centered" else models[2]
    nc_point, _ = map_estimate(nc)
    point = centred_point(c, nc_point)
    eta = c.compile_fn(
        c.replace_rvs_by_values([c["eta"]])[0],
        inputs=c.value_vars,
        on_unused_input="ignore",
        point_fn=False,
    )(*[point[v.name] for v in c.value_vars])
    np.testing.assert_allclose(eta, nc_point["eta"], rtol=1e-10, atol=1e-12)
    for name in ("log_CL", "omega_CL", "sigma_add"):
        np.testing.assert_allclose(point[name], nc_point[name], rtol=1e-12)
    centred = ["ka", "CL", "V"] if which == "centered" else ["CL"]
    log_omega = sum(np.log(nc_point[f"omega_{n}"]) for n in centred)
    n_sub = len(nc.coords["subject"])
    lp_c = c.compile_logp()({v.name: point[v.name] for v in c.value_vars})
    lp_nc = nc.compile_logp()({v.name: nc_point[v.name] for v in nc.value_vars})
    np.testing.assert_allclose(lp_c, lp_nc - n_sub * log_omega, rtol=1e-10)


def test_correlated_and_centred_is_a_multivariate_normal():
    import pymc as pm

    pm_model, _ = build_model(
        "pk_1cmt_oral", "theophylline", correlated_iiv=True, iiv_parameterization="centered"
    )
    phi = pm_model["phi"]
    assert isinstance(phi.owner.op, type(pm.MvNormal.dist(np.zeros(2), np.eye(2)).owner.op))
    assert np.isfinite(pm_model.compile_logp()(pm_model.initial_point()))


@pytest.mark.slow
def test_centred_fit_records_its_parameterization():
    f = fit(
        "pk_1cmt_oral",
        "theophylline",
        seed=5,
        chains=2,
        draws=100,
        tune=150,
        progressbar=False,
        iiv_parameterization={"CL": "centered"},
    )
    assert f.settings.iiv_parameterization == {
        "ka": "noncentered",
        "CL": "centered",
        "V": "noncentered",
    }
    post = f.idata.posterior
    assert post["eta"].dims == ("chain", "draw", "subject", "iiv")
    np.testing.assert_allclose(
        post["eta"].sel(iiv="CL").values,
        post["phi"].sel(iiv_centered="CL").values - np.log(post["CL"].values)[..., None],
        atol=1e-12,
    )
    # phi repeats eta: diagnostics report eta only (200 draws: ESS < 400 flags eta).
    import arviz as az

    from pkpd.inference.diagnostics import flagged_parameters

    rows = flagged_parameters(
        post, az.rhat(post), az.ess(post, method="bulk"), az.ess(post, method="tail")
    )
    names = {row["name"].split("[")[0] for row in rows}
    assert "eta" in names and "phi" not in names and "z" not in names
