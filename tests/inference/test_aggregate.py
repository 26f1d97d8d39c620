"""Aggregate-data likelihood: smooth rates vs drawn grades, gradients, MC error, shifts.

Calibration (`pkpd.inference.calibration`) is tested in test_calibration.py.
"""

import dataclasses
import warnings

import numpy as np
import pytest
from aggregate_toy import BASE, design, toy_model, two_trials

import pkpd
from pkpd.data.trials import parse_trials
from pkpd.inference.aggregate import AggregateLikelihood, AggregateWarning, VirtualDesign
from pkpd.strategies import simulate_strategies, strategy_from_dict
from pkpd.strategies.population import Population

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


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_model(tmp_path_factory.mktemp("agg"))


@pytest.fixture(scope="module")
def trials():
    return two_trials()


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
