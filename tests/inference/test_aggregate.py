"""Aggregate-data likelihood: smooth rates vs drawn grades, gradients, MC error, calibration."""

import dataclasses
import warnings

import numpy as np
import pytest

import pkpd
from pkpd.data.trials import parse_trials
from pkpd.inference.aggregate import (
    MAP_GRADIENT_TOLERANCE,
    AggregateLikelihood,
    AggregateWarning,
    VirtualDesign,
    calibrate,
    posterior_predictive,
)
from pkpd.strategies import simulate_strategies, strategy_from_dict
from pkpd.strategies.population import Population

# A toy CRS model (tests only): a cytokine pulse scaled by tumour burden TB, its signalling
# blocked by an antibody; the CRS grade is ordinal on log(1 + signalling).
TOY = """
[model]
name = "agg_toy"
description = "Toy cytokine pulse with antibody blockade (aggregate-likelihood tests)"
time_unit = "day"

[states]
toc = { unit = "mg", description = "antibody" }
IL6 = { unit = "1", description = "cytokine" }

[covariates]
WT = { unit = "kg", default = 70, description = "body weight" }
TB = { unit = "1", default = 1, description = "tumour burden (relative)" }

[parameters]
tpk = { unit = "day", value = 3.0, source = "assumption: test" }
kout = { unit = "1/day", value = 2.0, source = "assumption: test" }
k_toc = { unit = "1/day", value = 0.1, source = "assumption: test" }
V_toc = { unit = "L", value = 5.0, source = "assumption: test" }
KD = { unit = "mg/L", value = 1.0, source = "assumption: test" }
c1 = { unit = "1", prior = "Normal(1.0, 0.5)", source = "assumption: test" }
c2 = { unit = "1", prior = "Normal(2.0, 0.5)", source = "assumption: test" }
c3 = { unit = "1", prior = "Normal(3.0, 0.5)", source = "assumption: test" }
c4 = { unit = "1", prior = "Normal(4.0, 0.5)", source = "assumption: test" }
sigma_il6 = { unit = "1", prior = "HalfNormal(0.5)", source = "assumption: test" }

[parameters.kin]
unit = "1/day"
prior = "LogNormal(median=40, cv=0.3)"
iiv = "HalfNormal(0.5)"
covariates = { TB = "power(1, ref=1)" }
source = "assumption: test"

[derived]
occ = { expression = "(toc / V_toc) / (toc / V_toc + KD)", description = "occupancy" }

[equations]
toc = "-k_toc * toc"
IL6 = "kin * (pos(t) / tpk) * exp(1 - pos(t) / tpk) - kout * IL6"

[doses.tocilizumab_iv]
compartment = "toc"
unit = "mg"

[observations.il6]
expression = "IL6"
unit = "1"
dvid = 1
error = "lognormal"
sigma = "sigma_il6"

[observations.crs_grade]
expression = "log(1 + IL6 * (1 - occ))"
unit = "1"
dvid = 2
error = "ordinal"
cutpoints = ["c1", "c2", "c3", "c4"]
levels = [0, 1, 2, 3, 4]
offset = "subject"
"""

SOC = {
    "name": "soc",
    "reactive": [
        {
            "drug": "tocilizumab",
            "route": "iv",
            "dose": 400,
            "trigger": "crs_grade >= 2",
            "assess_every": "12 h",
            "max_doses": 2,
            "min_interval": "24 h",
        }
    ],
}
BASE = {"study": "S", "product": "x", "disease": "d", "scale": "Lee", "source": "synthetic"}


def toy_covariates(trial, normals, model):
    scale = 1.0 if trial.costimulation == "CD28" else 0.4
    return {"TB": 0.5 * scale * np.exp(0.5 * normals[:, 0]), "WT": 70 * np.exp(0.2 * normals[:, 1])}


def no_base(trial, covariates, model):
    return []


def design(n=128, seed=0):
    return VirtualDesign(n_patients=n, seed=seed, covariates=toy_covariates, base=no_base)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("agg") / "agg_toy.toml"
    path.write_text(TOY)
    return pkpd.load_model(path).compile()


@pytest.fixture(scope="module")
def trials():
    return list(
        parse_trials(
            {
                "trial": [
                    dict(
                        BASE,
                        id="a",
                        costimulation="CD28",
                        n=100,
                        outcomes=[
                            {"endpoint": "crs", "min_grade": k, "count": c}
                            for k, c in ((1, 80), (2, 55), (3, 30), (4, 10))
                        ],
                        timing=[{"endpoint": "crs", "what": "onset", "median_days": 1.5}],
                    ),
                    dict(
                        BASE,
                        id="b",
                        costimulation="4-1BB",
                        n=133,
                        scale="not stated",
                        outcomes=[
                            {"endpoint": "crs", "grade": k, "rate": r}
                            for k, r in ((1, 0.26), (2, 0.32), (3, 0.045), (4, 0.038), (5, 0.038))
                        ],
                    ),
                ]
            }
        ).values()
    )


@pytest.fixture(scope="module")
def untreated(toy, trials):
    """One likelihood (compiled once) shared by the tests that only evaluate it."""
    return AggregateLikelihood(toy, trials, ["kin", "c1", "c3", "omega_kin"], design=design(64))


def drawn_grades(model, lik, strategy, replicates, seed):
    """Brute force: the simulator's drawn grades for the likelihood's virtual patients."""
    n = lik.design.n_patients
    rng = np.random.default_rng(seed)
    theta, omega, _ = lik._assemble_np(lik.initial)
    out = {}
    for trial in lik.trials:
        arm = lik.arms[lik._trial_arm[trial.id]]
        pop = Population(
            theta[None],
            omega[None],
            np.tile(lik._z, (replicates, 1)),
            rng.uniform(size=(n * replicates, 1)),
            np.tile(arm["cov"], (replicates, 1)),
            (),
            "brute force",
            np.arange(n * replicates),
            ("WT", "TB"),
        )
        sim = simulate_strategies(
            model, pop, [strategy], grid=lik.design.grid, solver=lik.solver, keep_trajectories=0
        )
        out[trial.id] = (sim["max_crs_grade"].values[0, 0], sim["onset_crs_grade"].values[0, 0])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("treated", [False, True], ids=["untreated", "reactive_toc"])
def test_predicted_rates_match_drawn_grades(toy, trials, treated):
    strategy = strategy_from_dict(SOC if treated else {"name": "none"})
    lik = AggregateLikelihood(
        toy,
        trials,
        ["kin", "c2"],
        design=design(256 if treated else 128),
        treatment=strategy if treated else None,
    )
    pred = lik.rates()
    replicates = 40
    brute = drawn_grades(toy, lik, strategy, replicates, seed=3)
    # SE of the brute-force mean given the patients: the offsets are the only randomness.
    num, den = (np.asarray(x) for x in lik._per_patient(np.asarray(lik.initial), lik.data))
    m = lik.design.n_patients * replicates
    for r, row in enumerate(lik.rows):
        grade, onset = brute[row.trial]
        if row.kind == "onset":
            with np.errstate(invalid="ignore"):
                hit = (onset <= row.median + 1e-9)[grade >= 1]
            estimate = hit.mean()
            se = np.sqrt(estimate * (1 - estimate) / hit.size)
        else:
            hit = (grade >= row.j_lo) & (grade < row.j_hi)
            estimate = hit.mean()
            g = num[r]
            within = np.mean(g * (1 - g))  # offset variance left after conditioning
            se2 = within / m
            if treated:
                # The estimate conditions on one drawn offset interval per patient: its own
                # variance over the offsets is at most p(1 - p) - E[g(1 - g)] per patient.
                se2 += max(estimate * (1 - estimate) - within, 0.0) / lik.design.n_patients
            se = np.sqrt(se2) + 1e-4
        assert abs(pred["predicted"][r] - estimate) < 4 * se, (row.label, row.trial)


@pytest.mark.slow
def test_gradient_matches_finite_differences(untreated):
    lik = untreated
    v0 = lik.initial
    value, grad = lik.value_and_grad(v0)
    assert value == pytest.approx(lik.loglik(v0))
    for i in range(v0.size):
        h = 1e-5 * max(1.0, abs(v0[i]))
        step = np.zeros_like(v0)
        step[i] = h
        fd = (lik.loglik(v0 + step) - lik.loglik(v0 - step)) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-6), lik.parameters[i]


@pytest.mark.slow
def test_gradient_with_reactive_treatment_held_fixed(toy, trials):
    lik = AggregateLikelihood(
        toy, trials, ["kin", "c1", "c3"], design=design(64), treatment=strategy_from_dict(SOC)
    )
    v0 = lik.initial
    _, grad = lik.value_and_grad(v0)
    for i in range(v0.size):
        h = 1e-5 * max(1.0, abs(v0[i]))
        step = np.zeros_like(v0)
        step[i] = h
        fd = (lik.loglik(v0 + step) - lik.loglik(v0 - step)) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-6), lik.parameters[i]


def test_grade_distribution_is_one_multinomial_term(untreated):
    lik = untreated
    cats = [r for r in lik.rows if r.trial == "b" and r.kind == "category"]
    assert [r.label for r in cats] == ["crs=0", "crs=1", "crs=2", "crs=3", "crs=4+"]
    assert len({r.term for r in cats}) == 1
    # grades 4 and 5 share the model's top category; the counts add up to N
    assert sum(r.count for r in cats) == pytest.approx(133)
    assert cats[-1].count == pytest.approx((0.038 + 0.038) * 133)
    p = lik.probabilities()
    assert sum(p[i] for i, r in enumerate(lik.rows) if r in cats) == pytest.approx(1.0)


def test_mc_error_report_and_warning(toy, trials, untreated):
    lik = untreated
    with warnings.catch_warnings():
        warnings.simplefilter("error", AggregateWarning)
        table = lik.mc_error(replicates=3, fraction=10.0)  # generous: no warning
    num, _ = (np.asarray(x) for x in lik._per_patient(np.asarray(lik.initial), lik.data))
    binom = table["kind"] == "binomial"
    iid = num.std(axis=1, ddof=1) / np.sqrt(64)
    assert np.allclose(table["mc_se"][binom], iid[binom.to_numpy()])
    assert (table["rqmc_se"] > 0).all() and not table["flag"].any()
    obs, n = table["observed"], table["n"]
    expected = np.sqrt(
        np.maximum(obs * (1 - obs), table["predicted"] * (1 - table["predicted"])) / n
    )
    assert np.allclose(table["data_se"], expected)
    # A huge study makes 64 virtual patients far too few: say so.
    big = [
        dataclasses.replace(
            t,
            outcomes=tuple(
                dataclasses.replace(o, n=10**6, count=o.rate * 10**6) for o in t.outcomes
            ),
            timing=(),
        )
        for t in trials
    ]
    lik_big = AggregateLikelihood(toy, big, ["c1"], design=design(64))
    with pytest.warns(AggregateWarning, match="virtual patients"):
        flagged = lik_big.mc_error()
    assert flagged["flag"].all()


def test_invalid_parameters_and_design(toy, trials):
    with pytest.raises(ValueError, match="unknown parameter"):
        AggregateLikelihood(toy, trials, ["nope"], design=design(64))
    with pytest.raises(ValueError, match="does not change the predicted grades"):
        AggregateLikelihood(toy, trials, ["sigma_il6"], design=design(64))
    with pytest.raises(ValueError, match="power of 2"):
        VirtualDesign(n_patients=100)


def test_potential_in_a_pymc_model_equals_the_likelihood(untreated):
    import pymc as pm

    lik = untreated
    with pm.Model() as m:
        kin = pm.LogNormal("kin", np.log(35.0), 0.3)
        lik.add_to_model({"kin": kin})
    # the parameters not given are created from their priors (omega_kin: the iiv prior)
    assert {v.name for v in m.free_RVs} == {"kin", "c1", "c3", "omega_kin"}
    point = m.initial_point()
    potential = m.replace_rvs_by_values([m["aggregate"]])[0]
    value = m.compile_fn(potential, inputs=m.value_vars, on_unused_input="ignore")(point)
    values = np.array(
        [np.exp(point["kin_log__"]), point["c1"], point["c3"], np.exp(point["omega_kin_log__"])]
    )
    assert float(value) == pytest.approx(lik.loglik(values), rel=1e-10)


def test_grading_shift_applies_from_grade_two(toy):
    t = list(
        parse_trials(
            {
                "trial": [
                    dict(
                        BASE,
                        id="p",
                        costimulation="CD28",
                        n=100,
                        scale="Penn",
                        outcomes=[
                            {"endpoint": "crs", "min_grade": 1, "count": 80},
                            {"endpoint": "crs", "min_grade": 3, "count": 30},
                        ],
                    )
                ]
            }
        ).values()
    )
    lik = AggregateLikelihood(
        toy, t, ["shift_penn"], design=design(64), grading_shifts={"Penn": "Normal(0, 1)"}
    )
    p0 = lik.probabilities([0.0])
    p1 = lik.probabilities([0.5])
    assert p1[0] == pytest.approx(p0[0])  # grade >= 1 unchanged
    assert p1[1] > p0[1] + 0.02  # grade >= 3: cutpoint lowered by 0.5


def _definition_trial(scale="Lee"):
    return list(
        parse_trials(
            {
                "trial": [
                    dict(
                        BASE,
                        id="w",
                        costimulation="CD28",
                        n=100,
                        scale=scale,
                        outcomes=[
                            {"endpoint": "crs", "min_grade": 1, "count": 90, "definition": "wide"},
                            {"endpoint": "crs", "min_grade": 3, "count": 30},
                        ],
                        timing=[
                            {
                                "endpoint": "crs",
                                "what": "onset",
                                "median_days": 2,
                                "definition": "wide",
                            }
                        ],
                    )
                ]
            }
        ).values()
    )


def test_definition_shift_lowers_every_cutpoint_of_its_outcomes_only(toy):
    """An outcome counted under another definition (e.g. a label's 'neurologic toxicities')
    gets its own shift: the same probabilities as the model's cutpoints lowered by it, for that
    outcome and its onset median, and nothing else moves."""
    t = _definition_trial()
    lik = AggregateLikelihood(
        toy, t, ["shift_wide"], design=design(64), definition_shifts={"wide": "Normal(0, 1)"}
    )
    assert lik.priors["shift_wide"].family == "Normal"
    assert [(r.label, r.shift) for r in lik.rows] == [
        ("crs>=1 (wide)", 0),
        ("crs>=3", -1),
        ("crs onset <= 2 d (wide)", 0),
    ]
    d = 0.7
    p0, p1 = lik.probabilities([0.0]), lik.probabilities([d])
    assert p1[1] == pytest.approx(p0[1], rel=1e-12)  # the usual definition: unchanged
    # Lowering c1 by d is what the shift does to grade >= 1 (c2..c4 do not enter it).
    by_c1 = AggregateLikelihood(toy, t, ["c1"], design=design(64))
    c1 = by_c1.initial[0]
    assert p1[0] == pytest.approx(by_c1.probabilities([c1 - d])[0], rel=1e-10)
    assert p1[0] > p0[0] + 0.02
    # The onset median is over the patients with the event under the same definition.
    assert p1[2] == pytest.approx(by_c1.probabilities([c1 - d])[2], rel=1e-10)
    assert p1[2] != pytest.approx(p0[2], rel=1e-6)


def test_definition_shift_with_a_grading_scale_shift_on_one_outcome_is_refused(toy):
    with pytest.raises(ValueError, match="two shifts"):
        AggregateLikelihood(
            toy,
            _definition_trial(scale="Penn"),
            design=design(64),
            grading_shifts={"Penn": "Normal(0, 1)"},
            definition_shifts={"wide": "Normal(0, 1)"},
        )
    with pytest.raises(ValueError, match="share a name"):
        AggregateLikelihood(
            toy,
            _definition_trial(),
            design=design(64),
            grading_shifts={"Penn": "Normal(0, 1)"},
            definition_shifts={"penn": "Normal(0, 1)"},
        )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pkpd.inference.aggregate.AggregateWarning")
def test_calibration_recovers_known_values_from_synthetic_summaries(toy):
    """Synthetic summaries (expected counts of 2000-patient studies) at known values."""
    template = list(
        parse_trials(
            {
                "trial": [
                    dict(
                        BASE,
                        id=i,
                        costimulation=c,
                        n=2000,
                        outcomes=[
                            {"endpoint": "crs", "min_grade": k, "count": 1} for k in (1, 2, 3)
                        ],
                    )
                    for i, c in (("a", "CD28"), ("b", "4-1BB"))
                ]
            }
        ).values()
    )
    params = ["kin", "c1", "c3"]
    truth = np.array([30.0, 1.3, 3.2])
    p = AggregateLikelihood(toy, template, params, design=design(256, seed=7)).probabilities(truth)
    rows = iter(p)
    synthetic = [
        dataclasses.replace(
            t,
            outcomes=tuple(
                dataclasses.replace(o, count=float(next(rows) * o.n)) for o in t.outcomes
            ),
        )
        for t in template
    ]
    # Calibrated with a different set of virtual patients than the one that made the data.
    fit = calibrate(toy, synthetic, params, design=design(128, seed=1), draws=2000, seed=2)
    summary = fit.summary
    for name, value in zip(params, truth, strict=True):
        assert summary.loc[name, "lower"] < value < summary.loc[name, "upper"], name
        assert summary.loc[name, "median"] == pytest.approx(value, rel=0.1), name
    assert fit.settings["map_rounds"][-1]["success"]
    # The posterior predictive of the calibration data covers it.
    table = posterior_predictive(fit, synthetic, n_draws=20, seed=3)
    assert table["inside"].all()


@pytest.mark.slow
def test_joint_model_adds_the_aggregate_potential(toy, untreated, tmp_path):
    """build_model(..., aggregate=) adds the term to the patient-level model, on its variables."""
    from pkpd.inference import build_model

    rows = ["ID,TIME,DV,MDV,EVID,AMT,CMT,DVID"]
    for i in range(1, 4):
        rows.append(f"{i},0,.,1,1,0.001,tocilizumab_iv,.")
        rows += [f"{i},{t},{5 + i + t},0,0,.,.,1" for t in (1, 2, 3, 5)]
    path = tmp_path / "toy.csv"
    path.write_text("\n".join(rows) + "\n")
    cohort = pkpd.read_dataset(path, time_unit="day")
    alone, _ = build_model(toy.spec, cohort)
    joint, _ = build_model(toy.spec, cohort, aggregate=untreated)
    assert [v.name for v in joint.potentials] == ["aggregate"]
    assert {v.name for v in joint.free_RVs} == {v.name for v in alone.free_RVs}
    point = joint.initial_point()
    outs = joint.replace_rvs_by_values(
        [joint["aggregate"], joint["kin"], joint["c1"], joint["c3"], joint["omega_kin"]]
    )
    value, *params = joint.compile_fn(outs, inputs=joint.value_vars, on_unused_input="ignore")(
        point
    )
    assert float(value) == pytest.approx(untreated.loglik(np.array(params, float)), rel=1e-10)
    total = joint.compile_logp()(point) - alone.compile_logp()(point)
    assert total == pytest.approx(float(value), rel=1e-8)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pkpd.inference.aggregate.AggregateWarning")
def test_nuts_and_laplace_agree_on_cutpoints(toy, trials):
    """All four cutpoints (NUTS: one ordered vector, no hard walls): NUTS and Laplace agree."""
    one, cuts = trials[:1], ["c1", "c2", "c3", "c4"]
    nuts = calibrate(
        toy, one, cuts, design=design(64), method="nuts", draws=300, tune=300, chains=2, seed=1
    )
    laplace = calibrate(toy, one, cuts, design=design(64), draws=2000, seed=1)
    assert nuts.settings["nuts_diagnostics"]["divergences"] == 0
    assert nuts.settings["nuts_diagnostics"]["rhat_max"] < 1.02
    for name in cuts:
        width = laplace.summary.loc[name, "upper"] - laplace.summary.loc[name, "lower"]
        assert abs(nuts.summary.loc[name, "median"] - laplace.summary.loc[name, "median"]) < (
            0.15 * width
        ), name


def test_grades_with_one_offset_per_record_are_refused(toy, trials):
    # The estimate (worst grade from the peak latent) holds for one offset per patient only.
    import dataclasses

    spec = toy.spec
    grade = dataclasses.replace(spec.observations["crs_grade"], offset="record")
    record = dataclasses.replace(spec, observations={**spec.observations, "crs_grade": grade})
    with pytest.raises(ValueError, match='offset = "subject"'):
        AggregateLikelihood(record.compile(), trials, ["kin"], design=design(64))


def noisy_toy(toy, scale=0.5):
    """The toy with noise per grading day of scale ``scale`` on top of the patient's offset."""
    return toy.spec.with_record_scale(scale, parameter="s_rec").compile()


@pytest.mark.slow
@pytest.mark.parametrize("treated", [False, True], ids=["untreated", "reactive_toc"])
def test_noise_per_grading_day_matches_drawn_grades(toy, trials, treated):
    # The simulator draws the offset and each day's noise; the likelihood integrates the offset
    # and averages over its virtual patients' days. Both must give the same rates, and the
    # noise must move them (s = 0.5 over 28 days raises the worst grade by about 2 latent units).
    noisy = noisy_toy(toy)
    strategy = strategy_from_dict(SOC if treated else {"name": "none"})
    kw = dict(design=design(256), treatment=strategy if treated else None)
    lik = AggregateLikelihood(noisy, trials, ["kin", "c2"], **kw)
    plain = AggregateLikelihood(toy, trials, ["kin", "c2"], **kw).rates()["predicted"]
    pred = lik.rates()["predicted"]
    replicates = 20
    brute = drawn_grades(noisy, lik, strategy, replicates, seed=4)
    num, _ = (np.asarray(x) for x in lik._per_patient(np.asarray(lik.initial), lik.data))
    n = lik.design.n_patients
    moved = 0
    for r, row in enumerate(lik.rows):
        if row.kind == "onset":
            continue
        grade = brute[row.trial][0]
        estimate = np.mean((grade >= row.j_lo) & (grade < row.j_hi))
        # Brute force: binomial over n x replicates draws; likelihood: Monte Carlo over its n
        # patients' days (the spread of its per-patient terms, which also holds the covariates'
        # and z's spread: conservative, since the brute force shares those).
        se = np.sqrt(estimate * (1 - estimate) / (n * replicates) + num[r].var() / n) + 1e-4
        assert abs(pred[r] - estimate) < 4 * se, (row.label, row.trial)
        moved += abs(pred[r] - plain[r]) > 8 * se
    assert moved >= 3


@pytest.mark.slow
def test_gradient_with_noise_per_grading_day_and_treatment(toy, trials):
    lik = AggregateLikelihood(
        noisy_toy(toy, 0.3),
        trials,
        ["kin", "c1", "c3", "s_rec"],
        design=design(64),
        treatment=strategy_from_dict(SOC),
    )
    v0 = lik.initial
    value, grad = lik.value_and_grad(v0)
    for i in range(v0.size):
        # One-sided differences: a virtual patient sits within 1e-6 of a kink in s_rec (its
        # conditional tail reaches the end of its offset interval), where a central difference
        # averages the two slopes. The gradient must be one of them (or between).
        h = 1e-7 * max(1.0, abs(v0[i]))
        step = np.zeros_like(v0)
        step[i] = h
        left = (value - lik.loglik(v0 - step)) / h
        right = (lik.loglik(v0 + step) - value) / h
        tol = 1e-4 * max(1.0, abs(grad[i]))
        assert min(left, right) - tol <= grad[i] <= max(left, right) + tol, lik.parameters[i]


def test_the_map_restarts_from_a_saddle(toy, trials, monkeypatch):
    """Wiring of the saddle restart (`descend_negative_curvature` tested on a real saddle in
    test_optimize.py): a lower point along negative curvature restarts L-BFGS from there, and
    says so; no lower point leaves the mode alone."""
    import pkpd.inference.aggregate as agg

    one, cuts = trials[:1], ["c1", "c3"]
    plain = calibrate(toy, one, cuts, design=design(64), draws=200, seed=1)
    assert "from_saddle" not in plain.settings["map_rounds"][-1]
    assert not any("saddle" in n for n in plain.settings["notes"])
    calls = []

    def away(fun, x, hess):  # pretend the mode were a saddle, once (cutpoints kept ordered)
        calls.append(x)
        y = x + np.array([-0.3, 0.3])
        return (y, fun(y)) if len(calls) == 1 else None

    monkeypatch.setattr(agg, "descend_negative_curvature", away)
    moved = calibrate(toy, one, cuts, design=design(64), draws=200, seed=1)
    assert len(calls) == 2  # once at the first mode, once after the restart
    rounds = moved.settings["map_rounds"]
    assert rounds[-1]["from_saddle"] and rounds[-1]["success"]
    assert any("saddle point" in n for n in moved.settings["notes"])
    # back to the same (convex) mode from 0.3 away
    np.testing.assert_allclose(moved.map, plain.map, rtol=1e-3)


def test_the_map_goes_on_where_scipy_stops_early(toy, trials, monkeypatch):
    """Regression: scipy's L-BFGS-B reported convergence after 5 iterations with a gradient of 11
    (its line search gave up at the cutpoints' ordering wall): a stop with a large gradient is
    continued by pkpd's L-BFGS, recorded and noted."""
    import scipy.optimize

    one, cuts = trials[:1], ["c1", "c3"]
    plain = calibrate(toy, one, cuts, design=design(64), draws=200, seed=1)
    assert not any(r.get("continued") for r in plain.settings["map_rounds"])
    real = scipy.optimize.minimize

    def early(fun, x, **kwargs):  # one iteration, as if the line search had given up
        kwargs["options"] = {**kwargs.get("options", {}), "maxiter": 1}
        return real(fun, x, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", early)
    fit = calibrate(toy, one, cuts, design=design(64), draws=200, seed=1)
    first, last = fit.settings["map_rounds"][:2]
    assert first["grad_max"] > MAP_GRADIENT_TOLERANCE and last["continued"]
    assert last["grad_max"] < MAP_GRADIENT_TOLERANCE
    assert any("continued with pkpd's L-BFGS" in n for n in fit.settings["notes"])
    np.testing.assert_allclose(fit.map, plain.map, rtol=1e-3)


def test_progress_lines_report_each_map_iteration_and_stage(toy, trials, capsys):
    """A calibration's MAP and Hessian take minutes: ``progressbar`` says where it is."""
    one, cuts = trials[:1], ["c1", "c3"]
    fit = calibrate(toy, one, cuts, design=design(64), draws=50, seed=1, progressbar=True)
    lines = capsys.readouterr().err.splitlines()
    iterations = [ln for ln in lines if "MAP (scipy L-BFGS-B) iteration" in ln]
    assert len(iterations) == fit.settings["map_rounds"][0]["nit"] > 0
    assert any("MAP round:" in ln and "largest |gradient|" in ln for ln in lines)
    assert any("Laplace: Hessian by central differences (8 gradients)" in ln for ln in lines)
    quiet = calibrate(toy, one, cuts, design=design(64), draws=50, seed=1)
    assert "calibrate [" not in capsys.readouterr().err
    np.testing.assert_array_equal(quiet.map, fit.map)


def _jumpy_gradient(a: np.ndarray, beta: float, width: float):
    """Gradient of 0.5 x'Ax plus a sawtooth: it jumps up by ``beta`` every ``width`` and falls
    with slope ``beta / width`` in between (as a mean over patients of functions of their worst
    grading day does), so the local curvature is ``A - beta / width`` and the curvature over
    many jumps is ``A``."""

    def grad(x):
        return a @ x - beta * (np.mod(x / width, 1.0) - 0.5)

    return grad


def test_laplace_hessian_averages_over_the_jumps_of_the_gradient():
    """Regression: the with-neuro calibration's Hessian had a negative eigenvalue (-25) from
    differences of 1e-4 inside one smooth piece, where the curvature over +-0.01..0.1 is +18."""
    from pkpd.inference.aggregate import _fd_hessian, _laplace_hessian

    a = np.array([[20.0, 2.0], [2.0, 8.0]])
    grad = _jumpy_gradient(a, beta=0.015, width=3e-4)  # local diagonal: 20 - 50, 8 - 50
    x = np.array([0.31245, -0.17985])  # mid-piece: +-1e-4 crosses no jump
    np.testing.assert_allclose(_fd_hessian(grad, x, step=1e-4), a - np.diag([50.0, 50.0]))
    hess, note = _laplace_hessian(grad, x)
    assert note == ""
    # each difference spans ~67 jumps: error at most beta / (2 step) = 0.375
    assert np.abs(hess - a).max() <= 0.375
    assert np.abs(hess - a).max() > 0  # not a whole number of jumps (that would hide nothing)


def test_laplace_hessian_says_when_the_step_matters():
    from pkpd.inference.aggregate import LAPLACE_STEP, _laplace_hessian

    grad = _jumpy_gradient(np.diag([20.0, 8.0]), beta=0.4, width=3e-4)
    hess, note = _laplace_hessian(grad, np.array([0.31245, -0.17985]))
    assert f"between difference steps {LAPLACE_STEP:g} and {2 * LAPLACE_STEP:g}" in note


def test_fd_hessian_shortens_a_step_that_leaves_the_support():
    """Ordered cutpoints 0.015 apart: the default step would swap them (an infinite objective,
    NaN gradient); the step is quartered for that coordinate instead."""
    from pkpd.inference.aggregate import _fd_hessian

    a = np.array([[3.0, -1.0], [-1.0, 2.0]])

    def grad(x):
        return a @ x if x[0] < x[1] else np.full(2, np.nan)

    hess = _fd_hessian(grad, np.array([0.0, 0.015]))
    np.testing.assert_allclose(hess, a, rtol=1e-9)


def test_truncated_gaussian_draws_until_enough_are_kept():
    """Regression: with 75% of the Laplace draws unordered, one batch of 4 x draws gave 999 of
    1000 (the with-neuro calibration, 2026-12-07)."""
    from pkpd.inference.aggregate import _truncated_gaussian

    def ordered(s):  # P = 0.2 under N(0, I) in 2-d: a 72-degree wedge
        return np.arctan2(s[:, 1], s[:, 0]) % (2 * np.pi) < 0.4 * np.pi

    mean, cov = np.zeros(2), np.eye(2)
    rng = np.random.default_rng(1)
    draws, kept = _truncated_gaussian(rng, mean, cov, 1000, lambda x: x, ordered)
    assert draws.shape == (1000, 2) and ordered(draws).all()
    assert kept == pytest.approx(0.2, abs=0.02)
    # the first batch is what one batch gave before: same seed, same first draws
    first = np.random.default_rng(1).multivariate_normal(mean, cov, size=4000)
    np.testing.assert_array_equal(draws[:50], first[ordered(first)][:50])
    few, _ = _truncated_gaussian(
        np.random.default_rng(1), mean, cov, 1000, lambda x: x, ordered, max_batches=1
    )
    assert 700 < few.shape[0] < 1000  # one batch of 4000 keeps ~800
