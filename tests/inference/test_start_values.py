"""Chains and MAP started from given typical values (``fit(init={...})``, `start_point`)."""

import numpy as np
import pytest

import pkpd
from pkpd.inference import build_model, fit, load_fit, start_point
from pkpd.inference import sample as S


@pytest.fixture(scope="module")
def theo_model():
    return build_model("pk_1cmt_oral", "theophylline")


def test_start_point_sets_the_free_variables_on_their_scales(theo_model):
    pm_model, _ = theo_model
    base = pm_model.initial_point()
    point = start_point(pm_model, {"ka": 2.0, "CL": 3.0, "omega_V": 0.3})
    np.testing.assert_allclose(point["log_ka"], np.log(2.0))
    np.testing.assert_allclose(point["log_CL"], np.log(3.0))
    # the others stay where they were
    np.testing.assert_array_equal(point["log_V"], base["log_V"])
    np.testing.assert_array_equal(point["z"], base["z"])
    constrained = S._constrained(pm_model, point)
    assert set(constrained) == {rv.name for rv in pm_model.free_RVs}
    np.testing.assert_allclose(constrained["log_ka"], np.log(2.0))
    # omega_V (half-normal prior): a free variable on a log transform, constrained value 0.3
    np.testing.assert_allclose(constrained["omega_V"], 0.3, rtol=1e-12)
    np.testing.assert_allclose(point["omega_V_log__"], np.log(0.3), rtol=1e-12)


def test_start_point_rejects_unknown_names_and_values_outside_the_support(theo_model):
    pm_model, _ = theo_model
    with pytest.raises(KeyError, match="no free parameter 'Vmax'.*ka"):
        start_point(pm_model, {"Vmax": 1.0})
    with pytest.raises(ValueError, match="outside its support"):
        start_point(pm_model, {"CL": -1.0})
    with pytest.raises(KeyError, match="not a scalar"):
        start_point(pm_model, {"z": 0.0})


def test_fit_rejects_a_bad_start_before_sampling():
    with pytest.raises(KeyError, match="no free parameter"):
        fit("pk_1cmt_oral", "theophylline", init={"CLx": 1.0}, progressbar=False)


def test_map_from_a_start_and_settings_saved(tmp_path):
    """MAP from two starts reaches the same mode; the start values are recorded and saved."""
    a = fit("pk_1cmt_oral", "theophylline", sampler="map", progressbar=False)
    b = fit(
        "pk_1cmt_oral",
        "theophylline",
        sampler="map",
        progressbar=False,
        init={"ka": 0.5, "CL": 5.0, "V": 20.0},
    )
    assert a.settings.init == "prior" and a.settings.init_values == {}
    assert b.settings.init == "values"
    assert b.settings.init_values == {"ka": 0.5, "CL": 5.0, "V": 20.0}
    for name in ("ka", "CL", "V"):
        np.testing.assert_allclose(
            float(b.idata.posterior[name].values.ravel()[0]),
            float(a.idata.posterior[name].values.ravel()[0]),
            rtol=1e-3,
        )
    back = load_fit(b.save(tmp_path / "map.nc"))
    assert back.settings.init_values == b.settings.init_values


def test_samplers_receive_the_start(monkeypatch):
    """The sampler gets the start values on the constrained scale of each free variable."""
    seen = {}

    def fake(pm_model, start, *args):
        seen["start"] = start
        raise RuntimeError("stop here")

    monkeypatch.setitem(S._SAMPLE, "nutpie", fake)
    with pytest.raises(RuntimeError, match="stop here"):
        fit("pk_1cmt_oral", "theophylline", init={"ka": 2.5}, progressbar=False)
    start = seen["start"]
    np.testing.assert_allclose(start["log_ka"], np.log(2.5))
    spec = pkpd.load_model("pk_1cmt_oral")
    np.testing.assert_allclose(start["log_CL"], spec.parameters["CL"].prior.params["mu"])


def test_centred_subjects_follow_the_typical_values_they_are_centred_on():
    # Regression (2026-12-05): phi = log(typical) + eta; a start that moved the typical value
    # without phi would start every subject off typical.
    pm_model, _ = build_model(
        "pk_1cmt_oral", "theophylline", iiv_parameterization={"CL": "centered"}
    )
    point = start_point(pm_model, {"CL": 2.2, "ka": 2.0})  # prior median of CL: 3
    np.testing.assert_allclose(point["phi"], np.log(2.2))  # every subject at the typical CL
    eta = pm_model.compile_fn(
        pm_model.replace_rvs_by_values([pm_model["eta"]])[0],
        inputs=pm_model.value_vars,
        on_unused_input="ignore",
        point_fn=False,
    )(*[point[v.name] for v in pm_model.value_vars])
    np.testing.assert_allclose(eta, 0.0, atol=1e-12)


@pytest.mark.parametrize("param", ["noncentered", "centered"])
def test_init_map_searches_for_the_mode_from_map_start(monkeypatch, param):
    """``map_start`` is where the optimisation of ``init="map"`` begins (for centred effects:
    the non-centred model's optimisation), and is recorded as the fit's ``init_values``."""
    seen = {}
    real_map = S.map_estimate

    def recording_map(pm_model, start=None, **kw):
        seen["map_start"] = start
        return real_map(pm_model, start=start, **kw)

    def fake(pm_model, start, *args):
        seen["chain_start"] = start
        raise RuntimeError("stop here")

    monkeypatch.setattr(S, "map_estimate", recording_map)
    monkeypatch.setitem(S._SAMPLE, "nutpie", fake)
    with pytest.raises(RuntimeError, match="stop here"):
        fit(
            "pk_1cmt_oral",
            "theophylline",
            init="map",
            progressbar=False,
            map_start={"ka": 0.5, "CL": 5.0},
            iiv_parameterization=param,
        )
    np.testing.assert_allclose(seen["map_start"]["log_ka"], np.log(0.5))
    np.testing.assert_allclose(seen["map_start"]["log_CL"], np.log(5.0))
    # the chains start at the mode the optimiser found, not at map_start
    assert abs(float(seen["chain_start"]["log_CL"]) - np.log(5.0)) > 0.1


def test_map_start_is_recorded_and_needs_init_map():
    f = fit(
        "pk_1cmt_oral",
        "theophylline",
        sampler="map",
        init="map",
        progressbar=False,
        map_start={"ka": 0.5},
    )
    assert f.settings.init == "map" and f.settings.init_values == {"ka": 0.5}
    with pytest.raises(ValueError, match="map_start.*init='map'"):
        fit("pk_1cmt_oral", "theophylline", init="prior", map_start={"ka": 0.5})
