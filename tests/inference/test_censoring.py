"""Censoring below the LLOQ: the M3 likelihood recovers the truth, dropping the BLQ rows does not.

Design (fixed before the first run): 100 subjects, one 100 mg IV bolus, 9 samples from 1 to 36 h,
one-compartment model with proportional residual error (30%, an assay used near its limit),
CL = 6 L/h, V = 60 L, IIV 30% / 20%, LLOQ 0.2 mg/L, which puts about 30% of the samples below
it. The random effects are moment-matched (`simulate_study(balanced_eta=True)`), so the simulated
subjects' geometric means are exactly the true typical values and the comparison measures the
likelihoods, not the luck of the cohort.

Why dropping biases CL downwards: the samples kept near the LLOQ are those whose residual error
happened to be positive (selection on the outcome), and subjects with a high clearance lose more
late samples; both flatten the apparent terminal decline. M3 keeps the information that those
samples were below the limit.
"""

from pathlib import Path

import numpy as np
import pytest

import pkpd
from pkpd.inference import fit
from pkpd.inference.synthetic import dosing_design, simulate_study

MODELS = Path(__file__).parent / "models"

TRUTH = {"CL": 6.0, "V": 60.0, "sigma_prop": 0.3}
OMEGA = {"CL": 0.3, "V": 0.2}
LLOQ = 0.2
SEED = 0  # data seed, chosen before the first run


@pytest.fixture(scope="module")
def fits():
    spec = pkpd.load_model(MODELS / "pk_1cmt_iv_prop.toml")
    design = dosing_design(100, 100.0, [1, 2, 4, 8, 12, 18, 24, 30, 36])
    cohort, truth = simulate_study(
        spec, design, TRUTH, omega=OMEGA, lloq=LLOQ, seed=SEED, balanced_eta=True
    )
    out = {"blq_fraction": truth["blq_fraction"]}
    for mode in ("m3", "drop"):
        out[mode] = fit(spec, cohort, censoring=mode, seed=1, progressbar=False)
    return out


@pytest.mark.slow
def test_m3_recovers_truth_and_dropping_blq_biases_clearance(fits, capsys):
    blq = fits["blq_fraction"]
    tables = {mode: fits[mode].summary(mass=0.90) for mode in ("m3", "drop")}
    with capsys.disabled():
        print(f"\n{100 * blq:.0f}% of samples below the LLOQ; truth CL 6, V 60, sigma_prop 0.3")
        for mode, table in tables.items():
            print(f"--- {mode} ({fits[mode].verdict})")
            print(table[["median", "lower", "upper"]].round(3).to_string())
    assert 0.25 <= blq <= 0.35

    m3, drop = tables["m3"], tables["drop"]
    for name in ("CL", "V"):
        assert m3.loc[name, "lower"] <= TRUTH[name] <= m3.loc[name, "upper"], name
    # Dropping BLQ rows: CL biased low, so low that its 90% CrI misses the truth.
    assert drop.loc["CL", "upper"] < TRUTH["CL"]
    assert abs(np.log(drop.loc["CL", "median"] / TRUTH["CL"])) > abs(
        np.log(m3.loc["CL", "median"] / TRUTH["CL"])
    )
    # Both fits are converged, so the difference is the likelihood, not the sampler.
    assert fits["m3"].ok and fits["drop"].ok, (fits["m3"].verdict, fits["drop"].verdict)
