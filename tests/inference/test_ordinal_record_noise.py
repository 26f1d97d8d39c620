"""Ordinal grades with one logistic offset per subject plus noise per record (``record_scale``):
the quadrature likelihood against dense-grid integration, its gradients, its limit, the model
file and the simulators."""

import dataclasses
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import special

from pkpd.errors import ModelError
from pkpd.inference.likelihood import _subject_noise_logp, _subject_offset_logp

CUT = np.array([3.15, 5.0, 7.43, 8.08])


def _reference(f, g, s):
    """log P(grades) by the trapezoid rule on 400,001 points over the offset in [-60, 60]."""
    e = np.linspace(-60.0, 60.0, 400_001)
    c = np.concatenate([[-np.inf], CUT, [np.inf]])
    total = special.log_expit(e) + special.log_expit(-e)
    for lo, hi in zip(c[g] - f, c[g + 1] - f, strict=True):
        a, b = (hi - e) / s, (lo - e) / s
        if np.isfinite(lo) and np.isfinite(hi):  # F(a) - F(b) = F(a) F(-b) (1 - e^(b - a))
            total += special.log_expit(a) + special.log_expit(-b) + np.log(-np.expm1(b - a))
        else:
            total += special.log_expit(a) if np.isfinite(hi) else special.log_expit(-b)
    w = np.full(e.size, e[1] - e[0])
    w[[0, -1]] /= 2
    return special.logsumexp(total + np.log(w))


def _courses(s, n=40, seed=1):
    """Random latent courses and grades; some only the per-record noise can order."""
    rng = np.random.default_rng(seed)
    subject, category, latent = [], [], []
    for i in range(n):
        t = np.arange(rng.integers(1, 30))
        f = rng.normal(5, 3) * np.exp(-0.5 * ((t - rng.uniform(0, 10)) / 2.5) ** 2)
        f = f + rng.normal(0, 1)
        spread = 1.0 if i % 3 == 0 else rng.uniform(1, 4)
        e = rng.logistic() * rng.uniform(0, 3) + s * spread * rng.logistic(size=t.size)
        subject += [i] * t.size
        category += list(np.sum(f[:, None] + e[:, None] > CUT[None], axis=1))
        latent += list(f)
    return SimpleNamespace(subject=np.array(subject), category=np.array(category)), np.array(latent)


def _fn(obs, n, gradient=False):
    import pytensor
    import pytensor.tensor as pt

    pred, scale = pt.dvector("pred"), pt.dscalar("s")
    lp = _subject_noise_logp(pred, pt.constant(CUT), scale, CUT.size, obs, np.arange(n))
    out = [lp, *pt.grad(lp.sum(), [pred, scale])] if gradient else lp
    return pytensor.function([pred, scale], out), (pred, scale), lp


@pytest.mark.parametrize("s", [0.1, 0.25, 0.5])
def test_quadrature_matches_dense_integration(s):
    obs, latent = _courses(s)
    fn, _, _ = _fn(obs, latent.size)
    lp = fn(latent, s)
    subjects, first = np.unique(obs.subject, return_index=True)
    crossed = 0
    for k, i in enumerate(subjects):
        rows = obs.subject == i
        f, g = latent[rows], obs.category[rows]
        c = np.concatenate([[-np.inf], CUT, [np.inf]])
        crossed += (c[g] - f).max() > (c[g + 1] - f).min()
        # 40 Gauss-Legendre nodes on each of five panels: measured <= 5e-8 on these courses.
        assert lp[first[k]] == pytest.approx(_reference(f, g, s), abs=1e-6)
        assert np.all(lp[rows][1:] == 0.0)  # the course sits on its first record
    assert crossed >= 5  # courses one offset cannot order are covered (the fifth panel)


def test_gradients_match_central_differences_and_jax():
    import jax
    import jax.numpy as jnp
    from pymc.sampling.jax import get_jaxified_graph

    obs, latent = _courses(0.25, n=8, seed=4)
    fn, (pred, scale), lp = _fn(obs, latent.size, gradient=True)
    value, d_pred, d_scale = fn(latent, 0.25)
    assert np.all(np.isfinite(value))
    h = 1e-6
    for k in range(latent.size):
        step = h * np.eye(latent.size)[k]
        num = (fn(latent + step, 0.25)[0].sum() - fn(latent - step, 0.25)[0].sum()) / (2 * h)
        assert d_pred[k] == pytest.approx(num, abs=1e-6)
    num = (fn(latent, 0.25 + h)[0].sum() - fn(latent, 0.25 - h)[0].sum()) / (2 * h)
    assert d_scale == pytest.approx(num, rel=1e-5)
    # JAX (MAP, numpyro) differentiates the panel placement too, which PyTensor's zero_grad
    # hides: the same finite gradient, since the integral does not depend on where it is split.
    # Regression: crossed bounds closer than 2 L gave NaN (a switch's untaken branch).
    obs, latent = _courses(0.25, n=40, seed=1)
    fn, (pred, scale), lp = _fn(obs, latent.size, gradient=True)
    jaxed = get_jaxified_graph([pred, scale], [lp.sum()])
    d_jax = jax.grad(lambda x: jaxed(x, jnp.asarray(0.25))[0])(jnp.asarray(latent))
    np.testing.assert_allclose(np.asarray(d_jax), fn(latent, 0.25)[1], rtol=1e-6, atol=1e-8)


def test_small_noise_approaches_one_offset_per_subject():
    import pytensor
    import pytensor.tensor as pt

    obs, latent = _courses(0.0, n=30, seed=2)  # one offset per subject: every course orderable
    fn, _, _ = _fn(obs, latent.size)
    pred = pt.dvector()
    exact = pytensor.function(
        [pred],
        _subject_offset_logp(pred, pt.constant(CUT), CUT.size, obs, np.arange(latent.size)),
    )(latent)
    assert np.all(np.isfinite(exact))
    gaps = []
    for s in (0.1, 0.01, 0.001):
        gaps.append(np.abs(fn(latent, s) - exact).max())
    assert gaps[2] < gaps[1] < gaps[0] and gaps[2] < 0.05


def _library_like(tmp_path, extra):
    from pkpd.model import load_model

    text = (
        "[model]\nname = 't'\ntime_unit = 'day'\n[states]\nA = { unit = '1' }\n"
        "[parameters]\nk = { unit = '1/day', value = 0.5 }\n"
        "c1 = { unit = '1', prior = 'Normal(0, 1)' }\nc2 = { unit = '1', prior = 'Normal(1, 1)' }\n"
        "s_rec = { unit = '1', value = 0.3 }\nbig = { unit = '1', value = 0.9 }\n"
        "k_unit = { unit = '1/day', value = 0.3 }\n"
        "[equations]\nA = '-k * A'\n[doses.iv]\ncompartment = 'A'\nunit = '1'\n"
        "[observations.grade]\nexpression = 'A'\nunit = '1'\nerror = 'ordinal'\n"
        "cutpoints = ['c1', 'c2']\nlevels = [0, 1, 2]\n" + extra
    )
    path = tmp_path / "m.toml"
    path.write_text(text)
    return load_model(path)


def test_model_file_record_scale(tmp_path):
    from pkpd.model.render import describe

    spec = _library_like(tmp_path, "offset = 'subject'\nrecord_scale = 's_rec'\n")
    assert spec.observations["grade"].record_scale == "s_rec"
    assert "per-record noise of scale s_rec" in describe(spec)
    assert (
        _library_like(tmp_path, "offset = 'subject'\n").observations["grade"].record_scale is None
    )
    for extra, message in [
        ("record_scale = 's_rec'\n", 'offset = "subject"'),
        ("offset = 'subject'\nrecord_scale = 'nope'\n", "'nope' is not a parameter"),
        ("offset = 'subject'\nrecord_scale = 'big'\n", r"must lie in \(0, 0.5\]"),
        ("offset = 'subject'\nrecord_scale = 'k_unit'\n", "must be dimensionless"),
        ("offset = 'subject'\nrecord_scale = 'c1'\n", "must be fixed"),
    ]:
        with pytest.raises(ModelError, match=message):
            _library_like(tmp_path, extra)


def _noisy(multi_spec, scale=0.4):
    grade = dataclasses.replace(
        multi_spec.observations["grade"], offset="subject", record_scale="s_rec"
    )
    s_rec = dataclasses.replace(multi_spec.parameters["C50"], name="s_rec", value=scale, unit="1")
    return dataclasses.replace(
        multi_spec,
        parameters={**multi_spec.parameters, "s_rec": s_rec},
        observations={**multi_spec.observations, "grade": grade},
    )


def _marginal(f, cut, s, n=200_001):
    """P(grade >= k) of one record: P(e + s d > c_k - f) by integration over e."""
    e = np.linspace(-40, 40, n)
    dens = special.expit(e) * special.expit(-e)
    return [np.trapezoid(dens * special.expit((f + e - c) / s), e) for c in cut]


def test_predictive_grades_add_noise_per_record(multi_spec, multi_cohort):
    from pkpd.inference import build_model
    from pkpd.inference.predictive import simulate_dv

    spec = _noisy(multi_spec)
    _, info = build_model(spec, multi_cohort)
    obs = info.observations
    rows = np.flatnonzero(obs.endpoint == info.model.endpoints.index("grade"))
    draws = 20_000
    pred = np.zeros((draws, len(obs)))
    resid = {"sigma_add": 0.3, "sigma_prop": 0.1, "sigma_log": 0.2, "c1": 0.0, "c2": 1.0}
    resid = {k: np.full(draws, v) for k, v in {**resid, "s_rec": 0.4}.items()}
    y = simulate_dv(info, pred, resid, np.random.default_rng(0))[:, rows]
    # A constant latent no longer gives one grade per subject ...
    first = obs.subject[rows] == obs.subject[rows][0]
    assert np.mean(np.any(y[:, first] != y[:, first][:, :1], axis=1)) > 0.1
    # ... and each record's grade has the law of e + s d (20,000 draws: SE <= 0.0035).
    want = _marginal(0.0, [0.0, 1.0], 0.4)
    assert np.mean(y[:, 0] >= 1) == pytest.approx(want[0], abs=0.015)
    assert np.mean(y[:, 0] >= 2) == pytest.approx(want[1], abs=0.015)


def test_simulated_study_adds_noise_per_record(multi_spec):
    import pandas as pd

    from pkpd.inference.synthetic import simulate_study

    spec = _noisy(multi_spec)
    rows = []
    for i in range(1, 401):
        rows.append(dict(ID=i, TIME=0.0, AMT=100.0, DV=np.nan, EVID=1, MDV=1, CMT=1, DVID=np.nan))
        rows += [dict(ID=i, TIME=t, AMT=0.0, DV=0.0, EVID=0, MDV=0, CMT=1, DVID=3) for t in (1, 2)]
    truth = {"CL": 1e-9, "V": 20.0, "C50": 2.0, "c1": 2.5, "c2": 3.5, "s_rec": 0.4}
    cohort, _ = simulate_study(spec, pd.DataFrame(rows), truth, seed=5)
    g = cohort.ds["obs_dv"].values[:, :2]  # the latent is constant, 100 / (20 * 2) = 2.5
    assert np.mean(g[:, 0] != g[:, 1]) > 0.05  # one offset alone would give equal grades
    want = _marginal(2.5, [2.5, 3.5], 0.4)
    assert np.mean(g >= 1) == pytest.approx(want[0], abs=0.04)
    assert np.mean(g >= 2) == pytest.approx(want[1], abs=0.04)


def test_fit_with_record_noise_needs_no_special_start(multi_spec):
    from test_ordinal_subject_offset import _study

    from pkpd.inference import build_model, fit
    from pkpd.inference.sample import _subject_offsets

    spec = _noisy(multi_spec, scale=0.25)
    assert _subject_offsets(spec) == []  # positive everywhere: no detour through other models
    cohort, _ = _study(spec)
    pm_model, _ = build_model(spec, cohort)
    assert np.isfinite(pm_model.compile_logp()(pm_model.initial_point()))
    res = fit(spec, cohort, sampler="nutpie", init="map", chains=2, tune=30, draws=10, seed=1)
    assert np.isfinite(res.extra["map"]["logp"])
    assert int(res.idata.sample_stats["diverging"].values.sum()) == 0


def test_several_grades_a_day_are_flagged(multi_spec, multi_cohort):
    from pkpd.inference import build_model

    # The noise is one term per record in the likelihood, one per day in the simulators of new
    # patients: several grades of a subject on one day (hourly records here) are named.
    with pytest.warns(UserWarning, match="subject-days with several grades"):
        build_model(_noisy(multi_spec), multi_cohort)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model(multi_spec, multi_cohort)  # without a record_scale, nothing to say
        # The day's worst grade (how grades are recorded in the field): nothing to say either.
        daily = multi_cohort.worst_per_day([3], time_unit="h")
        assert daily.n_observations < multi_cohort.n_observations
        build_model(_noisy(multi_spec), daily)
