"""Ordinal endpoints with one logistic offset per subject (``offset = "subject"``): the
likelihood against brute-force integration over the offset, its gradient, and the model file."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import special

from pkpd.errors import ModelError
from pkpd.inference.likelihood import observation_logp
from pkpd.strategies.simulate import grades

CUT = np.array([-0.4, 0.7, 1.9])


def _data(impossible=True):
    """Two endpoints interleaved: grades (per-subject offset) and a continuous marker."""
    rng = np.random.default_rng(3)
    subject, endpoint, latent, category = [], [], [], []
    offsets = rng.logistic(size=5)
    for s in range(5):
        t = np.linspace(0.0, 6.0, 4 + s)
        f = 1.5 * np.exp(-((t - 2.5) ** 2) / 3.0) - 0.5 + 0.3 * s
        g = grades(f[None, :], CUT[None, :], np.arange(4.0), special.expit(offsets[s : s + 1]))
        for k in range(t.size):
            subject += [s, s]
            endpoint += [0, 1]
            latent += [f[k], 2.0]
            category += [int(g[0, k]), -1]
    if impossible:
        # Subject 5 cannot be ordered by its latent: grade 2 at the lower latent, 0 at the higher.
        subject += [5, 5]
        endpoint += [0, 0]
        latent += [0.1, 0.9]
        category += [2, 0]
    obs = SimpleNamespace(
        subject=np.array(subject),
        endpoint=np.array(endpoint),
        category=np.array(category),
        cens=np.zeros(len(subject), int),
    )
    return obs, np.array(latent)


def _spec(offset="subject"):
    grade = SimpleNamespace(error="ordinal", cutpoints=["c1", "c2", "c3"], offset=offset)
    marker = SimpleNamespace(error="additive", sigma={"sigma": "s"})
    return SimpleNamespace(observations={"grade": grade, "marker": marker})


def _logp_fn(offset="subject", impossible=True):
    import pytensor
    import pytensor.tensor as pt

    obs, latent = _data(impossible)
    pred = pt.dvector("pred")
    cut = [pt.dscalar(f"c{k}") for k in (1, 2, 3)]
    params = {"c1": cut[0], "c2": cut[1], "c3": cut[2], "s": pt.constant(0.5)}
    model = SimpleNamespace(endpoints=["grade", "marker"])
    lp = observation_logp(pt.constant(latent + 0.1), pred, params, obs, _spec(offset), model)
    grad = pt.grad(lp.sum(), [pred, *cut])
    return pytensor.function([pred, *cut], [lp, *grad]), obs, latent


def _brute_force(f, cat, cut, n=2_000_001):
    """P(all grades) by integrating over the offset's quantile on a fine grid."""
    u = (np.arange(n) + 0.5) / n
    e = special.logit(u)
    ok = np.ones(n, dtype=bool)
    for fk, gk in zip(f, cat, strict=True):
        ok &= np.sum(fk + e[:, None] > cut[None, :], axis=1) == gk
    return ok.mean()


def test_subject_likelihood_is_the_probability_of_the_whole_grade_course():
    fn, obs, latent = _logp_fn()
    lp = fn(latent, *CUT)[0]
    grade = obs.endpoint == 0
    for s in range(5):
        rows = np.flatnonzero(grade & (obs.subject == s))
        want = _brute_force(latent[rows], obs.category[rows], CUT)
        # The grid's error is at most the number of interval ends over the grid size (2e-6).
        assert np.exp(lp[rows[0]]) == pytest.approx(want, abs=2e-6)
        assert np.all(lp[rows[1:]] == 0.0)  # the first record carries the subject's course
    # Grades the latent cannot order have probability 0.
    assert lp[obs.subject == 5][0] == -np.inf
    # The marker's records keep their own (independent) likelihood.
    marker = obs.endpoint == 1
    np.testing.assert_allclose(
        lp[marker], -0.5 * (0.1 / 0.5) ** 2 - np.log(0.5 * np.sqrt(2 * np.pi))
    )


def test_record_offset_is_the_independent_ordered_logistic():
    fn, obs, latent = _logp_fn("record")
    lp = fn(latent, *CUT)[0]
    c = np.concatenate([[-np.inf], CUT, [np.inf]])
    rows = np.flatnonzero(obs.endpoint == 0)
    k = obs.category[rows]
    want = np.log(special.expit(c[k + 1] - latent[rows]) - special.expit(c[k] - latent[rows]))
    np.testing.assert_allclose(lp[rows], want, rtol=1e-10)
    # A course that one offset explains is more likely under the shared offset than as
    # independent days (whose offsets would all have to fall in the same interval by chance).
    sub, _, _ = _logp_fn("subject")
    joint = sub(latent, *CUT)[0]
    for s in range(5):
        here = rows[obs.subject[rows] == s]
        assert joint[here].sum() >= lp[here].sum() - 1e-12


def test_subject_likelihood_gradient_matches_central_differences():
    fn, obs, latent = _logp_fn(impossible=False)
    # Away from ties (where a subject's bound is a kink): the generated latents have some.
    latent = latent + 1e-4 * np.random.default_rng(1).standard_normal(latent.size)
    lp, d_pred, *d_cut = fn(latent, *CUT)
    assert np.all(np.isfinite(lp))
    h = 1e-6

    def total(v, c):
        return fn(v, *c)[0].sum()

    for k in np.flatnonzero(obs.endpoint == 0):
        up, down = latent.copy(), latent.copy()
        up[k] += h
        down[k] -= h
        num = (total(up, CUT) - total(down, CUT)) / (2 * h)
        assert d_pred[k] == pytest.approx(num, abs=1e-6)
    assert np.any(d_pred[obs.endpoint == 0] != 0.0)
    for j in range(3):
        up, down = CUT.copy(), CUT.copy()
        up[j] += h
        down[j] -= h
        num = (total(latent, up) - total(latent, down)) / (2 * h)
        assert d_cut[j] == pytest.approx(num, abs=1e-6)


def test_tied_latents_pass_the_gradient_once():
    # Regression: with PyTensor's max, two records of a subject with the same latent (e.g.
    # before any dose) both received the bound's full gradient, so moving both together gave
    # twice the true derivative.
    fn, obs, latent = _logp_fn(impossible=False)
    grade = obs.endpoint == 0
    ties = [
        (a, b)
        for a in np.flatnonzero(grade)
        for b in np.flatnonzero(grade)
        if a < b and obs.subject[a] == obs.subject[b] and latent[a] == latent[b]
    ]
    assert ties  # the generated courses have tied latents (t = 2 and t = 3 around 2.5)
    _, d_pred, *_ = fn(latent, *CUT)
    h = 1e-6
    for a, b in ties:
        up, down = latent.copy(), latent.copy()
        up[[a, b]] += h
        down[[a, b]] -= h
        num = (fn(up, *CUT)[0].sum() - fn(down, *CUT)[0].sum()) / (2 * h)
        assert d_pred[a] + d_pred[b] == pytest.approx(num, abs=1e-6)


def test_model_file_offset(multi_spec, tmp_path):
    from pkpd.model import load_model

    text = multi_spec.text
    assert "levels = [0, 1, 2]" in text
    path = tmp_path / "m.toml"
    path.write_text(text.replace("levels = [0, 1, 2]", 'levels = [0, 1, 2]\noffset = "subject"'))
    assert load_model(path).observations["grade"].offset == "subject"
    assert multi_spec.observations["grade"].offset == "record"  # the default
    path.write_text(text.replace("levels = [0, 1, 2]", 'levels = [0, 1, 2]\noffset = "day"'))
    with pytest.raises(ModelError, match="unknown offset 'day'"):
        load_model(path)
    path.write_text(text.replace('sigma = "sigma_log"', 'sigma = "sigma_log"\noffset = "subject"'))
    with pytest.raises(ModelError, match="ordinal endpoints only"):
        load_model(path)


def test_library_grades_share_one_offset_per_patient():
    # The simulators, the virtual cohorts and the aggregate likelihood draw the CAR-T model's
    # grades with one offset per patient; the fit's likelihood must be the same model.
    from pkpd.model import library_path, load_model

    spec = load_model(library_path() / "cart_crs.toml")
    assert {spec.observations[n].offset for n in ("crs_grade", "icans_grade")} == {"subject"}


def test_fit_loglik_with_subject_offset(multi_spec, multi_cohort):
    from test_likelihood import POINT, TIGHT, _expected, _posterior, point_values

    from pkpd.inference import build_model
    from pkpd.inference.sample import log_likelihood

    grade = dataclasses.replace(multi_spec.observations["grade"], offset="subject")
    spec = dataclasses.replace(multi_spec, observations={**multi_spec.observations, "grade": grade})
    pm_model, info = build_model(spec, multi_cohort, solver=TIGHT)
    z = np.random.default_rng(7).standard_normal((3, 2))
    values = point_values(z)
    got = log_likelihood(pm_model, _posterior(pm_model, values))["y"][0, 0]
    independent = _expected(multi_spec, multi_cohort, info, z)
    obs = info.observations
    grade_rows = obs.endpoint == info.model.endpoints.index("grade")
    # Other endpoints are untouched.
    np.testing.assert_allclose(got[~grade_rows], independent[~grade_rows], rtol=1e-8)
    # Grades: per subject, the probability of its whole course under one shared offset.
    from pkpd.solve import simulate

    eta = z * np.array([POINT["omega_CL"], POINT["omega_V"]])
    sim = simulate(
        info.model, multi_cohort, {"CL": POINT["CL"], "V": POINT["V"]}, eta=eta, solver=TIGHT
    )
    pred = sim["pred"].values
    cut = np.array([POINT["c1"], POINT["c2"]])
    assert got[grade_rows].sum() != pytest.approx(independent[grade_rows].sum(), abs=0.1)
    assert np.bincount(obs.subject[grade_rows]).max() >= 3  # courses of several records
    for s in np.unique(obs.subject[grade_rows]):
        rows = np.flatnonzero(grade_rows & (obs.subject == s))
        f = pred[s, obs.column[rows]]
        want = _brute_force(f, obs.category[rows], cut)
        total = np.exp(got[rows].sum())
        assert total == pytest.approx(want, abs=2e-6)


def test_extended_likelihood_is_exact_inside_and_finite_outside():
    import pytensor
    import pytensor.tensor as pt

    from pkpd.inference.likelihood import _EXTEND_GAP, EXTENDED_SUBJECT

    obs, latent = _data()
    grade = SimpleNamespace(error="ordinal", cutpoints=["c1", "c2", "c3"], offset=EXTENDED_SUBJECT)
    spec = SimpleNamespace(observations={"grade": grade, "marker": _spec().observations["marker"]})
    pred = pt.dvector("pred")
    params = {"c1": CUT[0], "c2": CUT[1], "c3": CUT[2], "s": pt.constant(0.5)}
    model = SimpleNamespace(endpoints=["grade", "marker"])
    lp = observation_logp(pt.constant(latent + 0.1), pred, params, obs, spec, model)
    fn = pytensor.function([pred], [lp, pt.grad(lp.sum(), pred)])
    extended, grad = fn(latent)
    exact = _logp_fn()[0](latent, *CUT)[0]
    possible = obs.subject != 5
    # Where every course can be ordered with room (gap above 0.05), the two are the same ...
    np.testing.assert_allclose(extended[possible], exact[possible], rtol=1e-12)
    # ... where one cannot, the extension is finite and its gradient orders the course: the
    # day with grade 2 (latent 0.1) up, the one with grade 0 (latent 0.9) down.
    impossible = np.flatnonzero(obs.subject == 5)
    assert np.isfinite(extended[impossible]).all()
    assert grad[impossible[0]] > 0 > grad[impossible[1]]
    assert _EXTEND_GAP > 0


def test_predictive_and_synthetic_grades_share_one_offset_per_subject(multi_spec, multi_cohort):
    from pkpd.inference import build_model
    from pkpd.inference.predictive import simulate_dv

    grade = dataclasses.replace(multi_spec.observations["grade"], offset="subject")
    spec = dataclasses.replace(multi_spec, observations={**multi_spec.observations, "grade": grade})
    _, info = build_model(spec, multi_cohort)
    obs = info.observations
    rows = np.flatnonzero(obs.endpoint == info.model.endpoints.index("grade"))
    pred = np.zeros((4000, len(obs)))  # a constant latent: one offset gives one grade
    resid = {"sigma_add": 0.3, "sigma_prop": 0.1, "sigma_log": 0.2, "c1": 0.0, "c2": 1.0}
    resid = {k: np.full(4000, v) for k, v in resid.items()}
    y = simulate_dv(info, pred, resid, np.random.default_rng(0))[:, rows]
    for s in np.unique(obs.subject[rows]):
        here = obs.subject[rows] == s
        assert np.all(y[:, here] == y[:, here][:, :1])
    # Each grade still has the ordered-logistic distribution: P(grade 0) = logistic(c1) = 0.5.
    assert np.mean(y[:, 0] == 0) == pytest.approx(0.5, abs=0.03)


def test_simulated_study_with_one_offset_per_subject(multi_spec):
    import pandas as pd

    from pkpd.inference.synthetic import simulate_study

    grade = dataclasses.replace(multi_spec.observations["grade"], offset="subject")
    spec = dataclasses.replace(multi_spec, observations={**multi_spec.observations, "grade": grade})
    times = [1.0, 2.0, 4.0, 8.0, 12.0, 24.0]
    rows = []
    for i in range(1, 41):
        rows.append(dict(ID=i, TIME=0.0, AMT=100.0, DV=np.nan, EVID=1, MDV=1, CMT=1, DVID=np.nan))
        rows += [dict(ID=i, TIME=t, AMT=0.0, DV=0.0, EVID=0, MDV=0, CMT=1, DVID=3) for t in times]
    truth = {"CL": 2.5, "V": 18.0, "c1": 0.2, "c2": 1.1}
    cohort, _ = simulate_study(spec, pd.DataFrame(rows), truth, seed=3)
    g = np.asarray(cohort.ds["obs_dv"].values, dtype=float)
    g = g[:, : len(times)]
    assert not np.isnan(g).any()
    # The latent (the concentration) falls after the bolus, so with one offset per subject the
    # grades never rise; independent records would (about 1 in 4 steps here).
    assert np.all(np.diff(g, axis=1) <= 0)
    assert np.unique(g).size == 3


def _subject_spec(multi_spec):
    grade = dataclasses.replace(multi_spec.observations["grade"], offset="subject")
    return dataclasses.replace(multi_spec, observations={**multi_spec.observations, "grade": grade})


def _study(spec, n=30, seed=3):
    """Grades only (a 1-cmt bolus, the concentration as latent), one offset per subject."""
    import pandas as pd

    from pkpd.inference.synthetic import simulate_study

    times = [1.0, 2.0, 4.0, 8.0, 12.0, 24.0]
    rows = []
    for i in range(1, n + 1):
        rows.append(dict(ID=i, TIME=0.0, AMT=100.0, DV=np.nan, EVID=1, MDV=1, CMT=1, DVID=np.nan))
        rows += [dict(ID=i, TIME=t, AMT=0.0, DV=0.0, EVID=0, MDV=0, CMT=1, DVID=3) for t in times]
    truth = {"CL": 2.5, "V": 18.0, "c1": 0.2, "c2": 1.1}
    return simulate_study(spec, pd.DataFrame(rows), truth, omega={"CL": 0.3}, seed=seed)


def test_map_fit_finds_the_support_of_the_subject_likelihood(multi_spec):
    from pkpd.inference import build_model, fit

    spec = _subject_spec(multi_spec)
    cohort, _ = _study(spec)
    # At prior medians some courses cannot be ordered (the likelihood is 0 there): the start
    # goes through the independent-records MAP and the extended likelihood's MAP.
    pm_model, _ = build_model(spec, cohort)
    assert pm_model.compile_logp()(pm_model.initial_point()) == -np.inf
    # NUTS by nutpie from there: its own jitter is off, the start drawn inside the support.
    res = fit(spec, cohort, sampler="nutpie", init="map", chains=2, tune=30, draws=10, seed=1)
    assert np.isfinite(res.extra["map"]["logp"])
    post = res.idata.posterior
    assert np.all(np.isfinite(post["c1"].values)) and np.all(post["c2"].values > post["c1"].values)


def test_grades_no_latent_course_can_order_are_named(multi_spec, tmp_path):
    import pkpd
    from pkpd.inference import fit

    # Subject 1's grades 2, 1, 0 at 3, 8 and 24 h become 2, 1, 2: its latent (the
    # concentration after a bolus) only falls, so no offset gives that course.
    data = Path(__file__).parent / "data" / "multi_endpoint.csv"
    lines = data.read_text().splitlines()
    assert lines[9] == "1,24,.,0,0,0,1,3,0,."
    lines[9] = "1,24,.,2,0,0,1,3,0,."
    path = tmp_path / "impossible.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"subject\(s\) \['1'\] have probability 0"):
        fit(_subject_spec(multi_spec), pkpd.read_dataset(path), sampler="map", seed=1)


def test_chains_start_inside_the_support(multi_spec):
    # PyMC's uniform(-1, 1) jitter of every coordinate leaves the per-subject likelihood's
    # support; the starts are drawn with the jitter halved until the log-density is finite.
    from pkpd.inference import build_model
    from pkpd.inference.sample import (
        _feasible_starts,
        _initvals,
        _map_from,
        _smooth_start,
    )

    spec = _subject_spec(multi_spec)
    cohort, _ = _study(spec, n=12)
    pm_model, info = build_model(spec, cohort)
    start = _smooth_start(spec, cohort, {}, pm_model, None, False)
    point, _ = _map_from(pm_model, start, False, info)
    starts = _feasible_starts(pm_model, _initvals(pm_model, point), 3, seed=4)
    logp = pm_model.compile_logp()
    from pymc.initial_point import make_initial_point_fn

    values = [
        logp(make_initial_point_fn(model=pm_model, overrides=s, jitter_rvs=set())(0))
        for s in starts
    ]
    assert np.all(np.isfinite(values))
    assert not np.allclose(starts[0]["z"], starts[1]["z"])  # dispersed, not one point
