"""The seed experiments, simulated in a virtual cohort at typical values with IIV.

- Norelli 2018: in high-tumour-burden patients prophylactic tocilizumab lowers severe CRS but not
  severe neurotoxicity; prophylactic anakinra lowers both.
- Giavridis 2018: without myeloid cytokine sources there is no severe CRS although CAR-T cells
  expand as before (CAR-T-derived cytokines alone do not cause it); IL-1 blockade abates CRS.
- Flora 2024: baseline NET propensity predicts CRS; NET blockade (disulfiram) lowers CRS risk
  most in high-NET patients.

Norelli is also checked over prior draws (each draw a population).

Two batched simulations (strategies x parameter sets x patients) serve all. Rates are exact
expectations over each patient's grading offset given its noise per grading day:
P(worst grade >= k) = sigmoid(max_t (latent(t) + s d_day(t)) - c_k) per patient (the ordinal
model of models/outcomes.toml, ``s`` its ``s_grade_day``, ``d`` the simulators' day noise of
the patient, the same in every strategy), so the numbers do not move with the random offsets.
"""

import runpy
from pathlib import Path

import numpy as np
import pytest
from helpers import expected_auc
from scipy.special import expit

from pkpd.data import virtual as V
from pkpd.solve import Solver
from pkpd.strategies import simulate_strategies, strategy_from_dict

# The calibration's peaks (latent plus each patient's noise per grading day), so the tests read
# the rates the way the cutpoints were calibrated.
PP = runpy.run_path(
    str(Path(__file__).resolve().parents[2] / "scripts" / "prior_predictive.py"),
    run_name="prior_predictive",
)

GRID = np.arange(-0.25, 28.0001, 0.25)

TOCILIZUMAB = {
    "name": "tocilizumab",
    "regimen": [
        {
            "drug": "tocilizumab",
            "route": "iv",
            "dose": 8,
            "dose_unit": "mg/kg",
            "cap": 800,
            "duration": "1 h",
            "start": "-1 h",
        }
    ],
}  # Caimi 2021: 1 h before infusion
ANAKINRA = {
    "name": "anakinra",
    "regimen": [
        {
            "drug": "anakinra",
            "route": "sc",
            "dose": 100,
            "start": "0 d",
            "interval": "12 h",
            "until": "10 d",
        }
    ],
}  # Park 2023 window (its dose was not found: 100 mg q12h assumed)
DISULFIRAM = {
    "name": "disulfiram",
    "regimen": [
        {
            "drug": "disulfiram",
            "route": "po",
            "dose": 500,
            "start": "-3 d",
            "interval": "1 d",
            "until": "10 d",
        }
    ],
}  # label loading dose, pre-loaded (science.md strategy list)


def run(model, n, seed, strategies, sets):
    """Simulate strategies x parameter sets (name -> overrides of typical values) x patients."""
    patients = V.draw_patients(n, seed)
    pop = V.make_population(model, patients, seed, n_draws=len(sets), typical=True)
    theta = pop.theta.copy()
    for d, overrides in enumerate(sets.values()):
        for name, value in overrides.items():
            theta[d, model.parameter_index(name)] = value
    pop = pop.with_theta(theta, ", ".join(sets))
    strategies = [strategy_from_dict(s) for s in strategies]
    sim = simulate_strategies(model, pop, strategies, grid=GRID, keep_trajectories=len(sets) * n)
    assert bool(sim["ok"].all())
    cut = {
        k: theta[0, model.parameter_index(f"c_{k}")]
        for k in ("crs1", "crs2", "crs3", "icans1", "icans3")
    }
    peaks = PP["noisy_peaks"](model, pop, sim)
    return patients, sim, cut, [s.name for s in strategies], list(sets), peaks


@pytest.fixture(scope="module")
def cohort(cart_crs):
    # Norelli and Giavridis: 3 strategies x (typical, myeloid sources removed) x 200 patients.
    sets = {"typical": {}, "no myeloid": {"myeloid": 0.0}}
    return run(cart_crs, 200, 2018, [{"name": "none"}, TOCILIZUMAB, ANAKINRA], sets)


@pytest.fixture(scope="module")
def flora(cart_crs):
    # Flora: a larger cohort, because NET propensity is a weak predictor next to tumour burden
    # (at 200 patients chance covariate imbalance moves the AUC by +-0.05).
    sets = {
        "typical": {},
        "no NET effects": {"wN": 0.0, "wVN": 0.0},
        "NET blockade only": {"f1G": 0.0},
    }  # disulfiram acting on NET formation only
    return run(cart_crs, 500, 2024, [{"name": "none"}, DISULFIRAM], sets)


def prob(result, strategy, draw, key):
    """Per-patient probability that the worst grade reaches the cutpoint `key`."""
    _, _, cut, strategies, sets, peaks = result
    what = "crs" if key.startswith("crs") else "icans"
    peak = peaks[what][strategies.index(strategy), sets.index(draw)]
    return expit(peak - cut[key])


def test_norelli_tocilizumab_spares_icans_anakinra_prevents_both(cohort):
    patients = cohort[0]
    high = patients["TUMOR"].to_numpy() > np.quantile(patients["TUMOR"], 2 / 3)
    rate = {
        (s, k): prob(cohort, s, "typical", k)[high].mean()
        for s in ("none", "tocilizumab", "anakinra")
        for k in ("crs3", "icans3")
    }
    # Untreated high-burden patients: severe CRS and severe ICANS both common.
    assert rate["none", "crs3"] > 0.10 and rate["none", "icans3"] > 0.10
    # Tocilizumab: severe CRS at least halved; severe ICANS lowered by less than 20%.
    assert rate["tocilizumab", "crs3"] < 0.5 * rate["none", "crs3"]
    assert rate["tocilizumab", "icans3"] > 0.8 * rate["none", "icans3"]
    # Anakinra: both lowered by at least a third.
    assert rate["anakinra", "crs3"] < (2 / 3) * rate["none", "crs3"]
    assert rate["anakinra", "icans3"] < (2 / 3) * rate["none", "icans3"]


def test_giavridis_myeloid_sources_are_needed_for_severe_crs(cohort, cart_crs):
    sim = cohort[1]
    assert prob(cohort, "none", "typical", "crs3").mean() > 0.08
    assert prob(cohort, "none", "no myeloid", "crs3").mean() < 0.005  # abolished
    assert prob(cohort, "none", "no myeloid", "crs2").mean() < 0.05
    # ... although CAR-T cells expand exactly as before and still make their own IL-6.
    np.testing.assert_allclose(
        sim["cmax_cart_blood"].values[0, 1], sim["cmax_cart_blood"].values[0, 0], rtol=1e-6
    )
    il6_cart_only = sim["cmax_il6"].values[0, 1]
    baseline = cart_crs.typical_values[cart_crs.parameter_index("I6_0")]
    # CAR-T-derived IL-6 is there (median peak ~7.5 pg/mL over a 5 pg/mL baseline)...
    assert np.median(il6_cart_only) > 1.2 * baseline
    # ... but small next to the myeloid source (median peak ~1200 pg/mL).
    assert np.median(il6_cart_only) < 0.1 * np.median(sim["cmax_il6"].values[0, 0])


def test_giavridis_il1_blockade_abates_crs(cohort):
    for key in ("crs2", "crs3"):
        none = prob(cohort, "none", "typical", key).mean()
        ana = prob(cohort, "anakinra", "typical", key).mean()
        assert ana < 0.7 * none, key


def test_flora_net_propensity_predicts_crs(flora):
    # Issue 4: AUC > 0.65. wVN (models/vascular.toml) was calibrated to an expected AUC of 0.70
    # on another population (3000 patients, seed 8: scripts/calibrate_nets.py); this cohort is
    # independent of it (500 patients, seed 2024; SE of the AUC ~0.025).
    netp = flora[0]["NETP"].to_numpy()
    p_any = prob(flora, "none", "typical", "crs1")
    assert expected_auc(p_any, netp) > 0.65
    # Tumour burden still predicts CRS (Hay 2017): NETs add to it, they do not replace it.
    assert expected_auc(p_any, flora[0]["TUMOR"].to_numpy()) > 0.75
    # The mechanism carries the signal: without NET effects NETP predicts nothing.
    assert abs(expected_auc(prob(flora, "none", "no NET effects", "crs1"), netp) - 0.5) < 0.05


def test_flora_net_blockade_helps_high_net_patients_most(flora):
    netp = flora[0]["NETP"].to_numpy()
    tertile = np.digitize(netp, np.quantile(netp, [1 / 3, 2 / 3]))
    for key in ("crs1", "crs2", "crs3"):
        # Disulfiram as a whole (NET formation and IL-1 release): the absolute risk reduction
        # is larger in the highest than in the lowest NET-propensity tertile.
        gain = prob(flora, "none", "typical", key) - prob(flora, "disulfiram", "typical", key)
        by_tertile = [gain[tertile == t].mean() for t in range(3)]
        assert 0 < by_tertile[0] < by_tertile[2], (key, by_tertile)
    for key in ("crs2", "crs3"):
        # Its NET-blockade part alone (IL-1 release untouched): at least 1.5x the benefit in
        # high- than in low-propensity patients (2.2x and 2.6x at 1500 patients).
        gain = prob(flora, "none", "NET blockade only", key) - prob(
            flora, "disulfiram", "NET blockade only", key
        )
        assert gain[tertile == 2].mean() > 1.5 * gain[tertile == 0].mean(), key


def test_realised_grades_agree_with_expectations(cohort):
    # The drawn grades (one logistic offset per patient, noise per grading day) follow the same
    # law: the expectation's day noise is the simulator's.
    sim = cohort[1]
    drawn = sim["max_crs_grade"].values[0, 0] >= 1
    expected = prob(cohort, "none", "typical", "crs1")
    se = np.sqrt(expected.mean() * (1 - expected.mean()) / drawn.size)
    assert abs(drawn.mean() - expected.mean()) < 4 * se


@pytest.fixture(scope="module")
def prior_draws(cart_crs):
    # Norelli over the priors: 30 prior draws x 30 high-burden patients (median 300 mL).
    model = cart_crs
    patients = V.draw_patients(30, 99, V.PatientDistribution(tumour_median=300.0))
    pop = V.make_population(model, patients, 99, n_draws=30, typical=False)
    theta = pop.theta.copy()
    for obs in ("crs_grade", "icans_grade"):  # ordered-cutpoint prior: sort within each draw
        idx = [model.parameter_index(c) for c in model.spec.observations[obs].cutpoints]
        theta[:, idx] = np.sort(theta[:, idx], axis=1)
    pop = pop.with_theta(theta, "prior")
    strategies = [strategy_from_dict(s) for s in ({"name": "none"}, TOCILIZUMAB, ANAKINRA)]
    sim = simulate_strategies(
        model,
        pop,
        strategies,
        grid=GRID,
        keep_trajectories=30 * 30,
        solver=Solver("tsit5", rtol=1e-6, atol=1e-9, batch_size=64),
        chunk_size=300,
    )
    peaks = PP["noisy_peaks"](model, pop, sim)
    rates = {}
    for what, key in (("crs", "c_crs3"), ("icans", "c_icans3")):
        cut = theta[:, model.parameter_index(key)][:, None]
        for k, s in enumerate(strategies):
            rates[s.name, what] = expit(peaks[what][k] - cut).mean(axis=1)
    return rates


def test_norelli_holds_over_prior_draws(prior_draws):
    r = prior_draws
    # Per draw (population), severe-CRS and severe-ICANS rates of high-burden patients.
    # At 40 draws x 40 patients: tocilizumab halved severe CRS in 95% of draws and left severe
    # ICANS within 20% in 95%; anakinra lowered both in every draw.
    assert np.mean(r["tocilizumab", "crs"] < 0.5 * r["none", "crs"]) >= 0.8
    assert np.mean(r["tocilizumab", "icans"] > 0.8 * r["none", "icans"]) >= 0.8
    assert np.mean(r["anakinra", "crs"] < r["none", "crs"]) >= 0.9
    assert np.mean(r["anakinra", "icans"] < r["none", "icans"]) >= 0.9
