"""Pathfinder (pymc-extras): an approximate posterior, always flagged; NUTS started from it."""

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pkpd
from pkpd.inference import SAMPLERS, fit, load_fit
from pkpd.inference.synthetic import dosing_design, simulate_study

pytest.importorskip("pymc_extras")

MODELS = Path(__file__).parent / "models"
#: Fewer paths and draws per path than the defaults: the same algorithm, faster tests.
QUICK = {"num_paths": 2, "num_draws_per_path": 500}


@pytest.fixture(scope="module")
def conjugate():
    """A level A with a LogNormal prior seen 3 times with log-normal error of known SD."""
    from pkpd.data.reader import from_dataframe

    spec = pkpd.load_model(MODELS / "conjugate_level.toml")
    y = np.array([12.0, 7.5, 15.0])
    df = pd.DataFrame(
        {"ID": 1, "TIME": [1.0, 2.0, 3.0], "DV": y, "EVID": 0, "MDV": 0, "CMT": 1, "AMT": np.nan}
    )
    s0, mu0, s = math.sqrt(math.log(2.0)), math.log(10.0), 0.5
    post_var = 1.0 / (1.0 / s0**2 + y.size / s**2)
    post_mean = post_var * (mu0 / s0**2 + np.log(y).sum() / s**2)
    return spec, from_dataframe(df, source="conjugate"), post_mean, math.sqrt(post_var)


def test_pathfinder_is_a_sampler():
    assert "pathfinder" in SAMPLERS
    with pytest.raises(ValueError, match="init must be"):
        fit("pk_1cmt_oral", "theophylline", init="bogus")


def test_pathfinder_recovers_a_gaussian_posterior_and_is_flagged(conjugate, tmp_path):
    """log A | y is normal: Pathfinder's normal approximation is exact up to Monte Carlo error.

    Tolerances: posterior mean within 0.2 posterior SD, SD within 15% (1000 importance-resampled
    draws; Monte Carlo SE of the mean ~0.03 SD, of the SD ~2%).
    """
    spec, cohort, mean, sd = conjugate
    result = fit(
        spec,
        cohort,
        sampler="pathfinder",
        draws=1000,
        seed=1,
        progressbar=False,
        sampler_kwargs=QUICK,
    )
    log_a = np.log(result.posterior["A"].values.reshape(-1))
    assert result.posterior.sizes["chain"] == 1 and log_a.size == 1000
    assert abs(log_a.mean() - mean) < 0.2 * sd
    assert log_a.std() == pytest.approx(sd, rel=0.15)
    assert result.extra["pathfinder"]["pareto_k"] < 0.7
    assert not result.ok
    assert "approximate posterior (pathfinder)" in result.verdict
    assert "Parameters failing" not in result.verdict  # nothing to check, nothing named
    path = result.save(tmp_path / "pf.nc")
    again = load_fit(path)
    assert again.settings.sampler == "pathfinder" and not again.ok
    xr.testing.assert_equal(again.posterior["A"], result.posterior["A"])


@pytest.mark.slow
def test_pathfinder_same_seed_same_draws(conjugate):
    spec, cohort, _, _ = conjugate
    kw = {"sampler": "pathfinder", "draws": 200, "progressbar": False, "sampler_kwargs": QUICK}
    a = fit(spec, cohort, seed=4, **kw)
    b = fit(spec, cohort, seed=4, **kw)
    c = fit(spec, cohort, seed=5, **kw)
    xr.testing.assert_equal(a.posterior, b.posterior)
    assert not np.array_equal(a.posterior["A"].values, c.posterior["A"].values)


@pytest.mark.slow
def test_pathfinder_typical_values_near_nuts_on_a_hierarchical_model():
    """8 simulated subjects, pk_1cmt_oral. The medians of the typical values (ka, CL, V) are
    within one NUTS posterior SD of NUTS's. The IIV SDs are not compared: a normal
    approximation of a hierarchical funnel is poor (Pareto k > 0.7, with a warning), which is
    why Pathfinder fits are always flagged."""
    spec = pkpd.load_model("pk_1cmt_oral")
    design = dosing_design(8, 320.0, [0.25, 0.5, 1, 2, 4, 6, 8, 12, 24])
    truth = {"ka": 1.5, "CL": 2.8, "V": 32.0, "sigma_add": 0.5}
    cohort, _ = simulate_study(spec, design, truth, omega={"ka": 0.5, "CL": 0.3, "V": 0.2}, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Pareto-k warning
        approx = fit(spec, cohort, sampler="pathfinder", draws=500, seed=3, progressbar=False)
    nuts = fit(spec, cohort, chains=2, draws=500, tune=500, seed=1, progressbar=False)
    for name in ("ka", "CL", "V"):
        a = approx.posterior[name].values.reshape(-1)
        n = nuts.posterior[name].values.reshape(-1)
        assert abs(np.median(a) - np.median(n)) < np.std(n), name


@pytest.mark.slow
def test_nuts_started_from_pathfinder(conjugate):
    spec, cohort, mean, sd = conjugate
    result = fit(
        spec,
        cohort,
        init="pathfinder",
        chains=2,
        draws=1000,
        tune=500,
        seed=2,
        progressbar=False,
    )
    assert result.settings.init == "pathfinder"
    assert "pareto_k" in result.extra["map"]["init_pathfinder"]
    assert result.ok, result.verdict
    log_a = np.log(result.posterior["A"].values.reshape(-1))
    assert abs(log_a.mean() - mean) < 0.1 * sd
