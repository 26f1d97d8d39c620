"""Fitting profiles and the staged workflow (pkpd.inference.profiles)."""

from __future__ import annotations

import numpy as np
import pytest

import pkpd
from pkpd.inference import build_model, load_fit
from pkpd.inference.profiles import (
    PROFILES,
    Profile,
    Stage,
    fit_staged,
    get_profile,
    select_endpoints,
)
from pkpd.model import load_model


@pytest.fixture(scope="module")
def crs():
    return load_model("cart_crs")


@pytest.fixture(scope="module")
def kin():
    return load_model("cart_kinetics")


@pytest.fixture(scope="module")
def tiny():
    """Four patients of the bundled virtual cohort (made by pkpd.data.virtual)."""
    cohort = pkpd.load_dataset("virtual_cart")
    return cohort.subset(cohort.subjects[:4])


def test_unknown_profile():
    with pytest.raises(KeyError, match="cart_kinetics"):
        get_profile("cart_everything")
    assert get_profile(PROFILES["cart_kinetics"]) is PROFILES["cart_kinetics"]


@pytest.mark.parametrize("name", list(PROFILES))
def test_library_profiles_name_real_parameters(name, crs):
    """Every stage's parameters exist, have priors (and iiv priors), and have a reason."""
    for stage in PROFILES[name].stages:
        spec = crs if stage.model is None else load_model(stage.model)
        profiled = spec.estimate_only(stage.typical, stage.iiv)  # raises on a bad name
        assert profiled.estimated() == [n for n in spec.parameters if n in stage.typical]
        assert set(stage.reasons) == set(stage.typical), stage.name
        assert set(stage.endpoints) <= set(spec.observations)


def test_select_endpoints_keeps_endpoints_routes_and_drops_predose_zero(tiny, crs, kin):
    out = select_endpoints(tiny, ["cart_blood"], crs, kin, predose_zero=["cart_blood"])
    df, src = out.to_dataframe(), tiny.to_dataframe()
    obs = df[df["EVID"] == 0]
    assert set(obs["DVID"]) == {kin.observations["cart_blood"].dvid}
    assert set(df.loc[df["EVID"] == 1, "CMT"]) == {"cart_iv"}  # no rescue-drug doses
    # one record per patient left out: the pre-infusion count on day 0 (below the LLOQ)
    n_src = int(((src["EVID"] == 0) & (src["DVID"] == 1)).sum())
    assert len(obs) == n_src - len(tiny.subjects)
    kept_all = select_endpoints(tiny, ["cart_blood"], crs, kin)
    assert kept_all.n_observations == n_src
    with pytest.raises(KeyError, match="il6"):
        select_endpoints(tiny, ["il6"], crs, kin)


def test_fixed_parameters_are_not_free_in_the_pymc_model(tiny, crs, kin):
    stage = PROFILES["cart_kinetics"].final
    spec = kin.estimate_only(stage.typical, stage.iiv)
    data = select_endpoints(tiny, stage.endpoints, crs, kin, ["cart_blood"])
    pm_model, info = build_model(spec, data)
    # one free variable per typical value and omega (on its sampling scale), plus z
    assert len(pm_model.free_RVs) == len(stage.typical) + len(stage.iiv) + 1
    for name in [*stage.typical, *(f"omega_{n}" for n in stage.iiv), "z"]:
        assert name in pm_model.named_vars, name
    for name in ("beta", "K_B", "gamma_B", "omega_beta", "omega_V_car"):
        assert name not in pm_model.named_vars, name
    assert info.iiv == stage.iiv
    full_model, _ = build_model(kin, data)
    assert len(full_model.free_RVs) > len(pm_model.free_RVs)


def test_predose_records_change_nothing_and_gradients_are_finite(tiny, crs, kin):
    """The pre-infusion CAR-T counts (prediction 0, below the LLOQ) contribute log 1 = 0 with a
    zero gradient: the same log-density and gradient with or without them (their gradient was
    NaN before the likelihood handled a zero prediction)."""
    import jax
    import jax.numpy as jnp

    from pkpd.inference.sample import _flat_fn

    stage = PROFILES["cart_kinetics"].final
    spec = kin.estimate_only(stage.typical, stage.iiv)
    out = {}
    for drop in (True, False):
        data = select_endpoints(
            tiny.subset(tiny.subjects[:2]),
            stage.endpoints,
            crs,
            kin,
            ["cart_blood"] if drop else [],
        )
        pm_model, _ = build_model(spec, data)
        logp, names, _ = _flat_fn(pm_model)
        point = pm_model.initial_point()
        args = [jnp.asarray(point[n]) for n in names]
        out[drop] = jax.value_and_grad(
            lambda *a, f=logp: f(*a)[0], argnums=tuple(range(len(args)))
        )(*args)
        out[drop] = (out[drop], data.n_observations)
    (v_drop, g_drop), n_drop = out[True]
    (v_keep, g_keep), n_keep = out[False]
    assert n_keep > n_drop  # the records were there, and left out
    np.testing.assert_allclose(float(v_keep), float(v_drop), rtol=1e-12)
    for a, b in zip(g_keep, g_drop, strict=True):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


def test_an_earlier_stage_must_be_a_point_estimate(tiny):
    bad = Profile(
        "bad",
        "",
        (
            Stage(
                "a",
                "cart_kinetics",
                ("rho",),
                (),
                ("cart_blood",),
                sampler="nutpie",
                reasons={"rho": "x"},
            ),
            Stage("b", "cart_kinetics", ("rho",), (), ("cart_blood",), reasons={"rho": "x"}),
        ),
    )
    with pytest.raises(ValueError, match="earlier stage"):
        fit_staged("cart_kinetics", tiny, bad)


class _Recorder:
    """Stands in for `pkpd.inference.fit`: records each stage's keyword arguments and returns
    a one-draw result at the prior medians of the stage's typical values."""

    def __init__(self):
        self.calls = []

    def __call__(self, spec, cohort, **kwargs):
        from types import SimpleNamespace

        from pkpd.inference.sample import FitSettings

        self.calls.append(kwargs)
        post = {
            n: SimpleNamespace(values=np.array([[p.typical]]))
            for n, p in spec.parameters.items()
            if not p.fixed
        }
        settings = FitSettings(
            sampler=kwargs["sampler"],
            chains=1,
            draws=1,
            tune=0,
            seed=kwargs["seed"],
            init=str(kwargs["init"]),
            target_accept=0.8,
            solver="",
        )
        return SimpleNamespace(idata=SimpleNamespace(posterior=post), settings=settings, extra={})


@pytest.mark.parametrize(
    ("profile", "sampler", "init", "param"),
    [
        # measured choices for the core profile's NUTS (RESULTS.md 2026-12-05 08:53)
        ("cart_crs_core", "auto", "map", "centered"),
        ("cart_crs_core", "numpyro", "map", "centered"),
        # a MAP or an approximation of the last stage keeps non-centred effects and the usual start
        ("cart_crs_core", "map", "values", "noncentered"),
        ("cart_crs_core", "pathfinder", "values", "noncentered"),
        ("cart_kinetics", "auto", "values", "noncentered"),
    ],
)
def test_the_last_stage_starts_and_is_written_as_the_profile_says(
    tiny, monkeypatch, profile, sampler, init, param
):
    recorder = _Recorder()
    monkeypatch.setattr("pkpd.inference.sample.fit", recorder)
    fit_staged("cart_crs", tiny, profile, sampler=sampler)
    *earlier, last = recorder.calls
    assert all(c["init"] == "prior" for c in earlier[:1])  # the first stage: prior medians
    # "values": the earlier stages' estimates (a mapping), as before profiles had a start
    assert isinstance(last["init"], dict) if init == "values" else last["init"] == init
    # a joint mode is searched for from the earlier stages' estimates, as "values" starts there
    stages = PROFILES[profile].stages
    again = set(stages[0].typical) & set(stages[-1].typical)
    assert {"rho", "alpha", "FB"} <= again
    if init == "map":
        assert set(last["map_start"]) == again
    else:
        assert "map_start" not in last
    assert last["iiv_parameterization"] == param
    assert last["sampler"] == sampler
    # the same posterior in other coordinates: the profile's ratios whatever the sampler
    ratios = {"p6": ("K_kill", "k6")} if profile == "cart_crs_core" else {}
    assert last["ratio_parameterization"] == ratios


def test_given_start_and_parameterization_override_the_profile(tiny, monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr("pkpd.inference.sample.fit", recorder)
    fit_staged(
        "cart_crs",
        tiny,
        "cart_crs_core",
        init="prior",
        iiv_parameterization="noncentered",
        ratio_parameterization={},
    )
    last = recorder.calls[-1]
    assert isinstance(last["init"], dict) and "rho" in last["init"]
    assert last["iiv_parameterization"] == "noncentered"
    assert last["ratio_parameterization"] == {}
    assert PROFILES["cart_crs_core"].final.init == "map"
    assert PROFILES["cart_kinetics"].final.init == "prior"


@pytest.mark.slow
def test_staged_fit_records_its_stages_and_is_reproducible(tiny, tmp_path):
    kw = dict(profile="cart_kinetics", seed=3, chains=2, draws=30, tune=30, target_accept=0.9)
    first = fit_staged("cart_crs", tiny, **kw)
    staged = first.extra["staged"]
    assert staged["profile"] == "cart_kinetics"
    assert [s["stage"] for s in staged["stages"]] == ["pooled", "kinetics"]
    pooled, final = staged["stages"]
    assert pooled["settings"]["sampler"] == "map" and final["settings"]["sampler"] == "nutpie"
    assert final["settings"]["draws"] == 30 and final["settings"]["seed"] == 3
    assert final["settings"]["target_accept"] == 0.9
    # every parameter of the pooled stage is estimated again: none fixed, all started there
    assert final["fixed_from"] == {}
    assert final["started_from"] == {
        n: {"value": v, "stage": "pooled"} for n, v in pooled["estimates"].items()
    }
    assert final["settings"]["init"] == "values"
    assert final["settings"]["init_values"] == pooled["estimates"]
    assert pooled["started_from"] == {} and pooled["settings"]["init"] == "prior"
    assert not first.spec.parameters["V_car"].fixed
    assert first.spec.estimated() == ["rho", "alpha", "FB", "V_car", "sigma_cart"]
    assert first.idata.posterior.sizes["draw"] == 30
    # the fit saves and reloads as the profile it is
    path = first.save(tmp_path / "staged.nc")
    back = load_fit(path)
    assert back.spec.hash == first.spec.hash
    assert back.spec.estimated() == first.spec.estimated()
    assert back.extra["staged"]["stages"][0]["estimates"] == pooled["estimates"]
    # same seed, same result
    second = fit_staged("cart_crs", tiny, **kw)
    assert second.extra["staged"]["stages"][0]["estimates"] == pooled["estimates"]
    np.testing.assert_array_equal(
        second.idata.posterior["rho"].values, first.idata.posterior["rho"].values
    )


@pytest.mark.slow
def test_later_stages_start_from_or_fix_earlier_estimates(tiny):
    """A parameter estimated again starts at the earlier estimate; one not estimated again is
    fixed there; the later MAP moves from its start only where the data say so."""
    prof = Profile(
        "two_maps",
        "",
        (
            Stage(
                "first",
                "cart_kinetics",
                ("rho", "V_car"),
                (),
                ("cart_blood",),
                reasons={"rho": "x", "V_car": "x"},
            ),
            Stage(
                "second",
                "cart_kinetics",
                ("rho", "alpha"),
                (),
                ("cart_blood",),
                reasons={"rho": "x", "alpha": "x"},
            ),
        ),
    )
    result = fit_staged("cart_crs", tiny, prof, seed=2, sampler="map")
    first, second = result.extra["staged"]["stages"]
    v_car, rho = first["estimates"]["V_car"], first["estimates"]["rho"]
    assert second["fixed_from"] == {"V_car": {"value": v_car, "stage": "first"}}
    assert second["started_from"] == {"rho": {"value": rho, "stage": "first"}}
    assert second["settings"]["init_values"] == {"rho": rho}
    assert result.spec.parameters["V_car"].fixed
    assert result.spec.parameters["V_car"].value == v_car
    assert np.isfinite(second["estimates"]["alpha"])


def test_the_core_profiles_ratio_fits_its_last_stage():
    """p6 over K_kill * k6: all three estimated in the last stage, log-normal, p6's random
    effect on the log scale (`pkpd.inference.ratios.resolve_ratios`)."""
    from pkpd.inference.ratios import resolve_ratios

    stage = PROFILES["cart_crs_core"].final
    spec = pkpd.load_model("cart_crs").estimate_only(stage.typical, stage.iiv)
    estimated = [n for n, p in spec.parameters.items() if p.estimated]
    assert resolve_ratios(stage.ratios, spec, estimated) == {"p6": ("K_kill", "k6")}
