"""Identifiability aids: prior predictive checks, contraction, correlated pairs, the report, and
flagged fits that name their offending parameters."""

import math
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import pkpd
from pkpd.cli import app
from pkpd.inference import FitSettings, fit
from pkpd.inference.diagnostics import convergence, verdict
from pkpd.inference.fitresult import Fit
from pkpd.inference.identifiability import (
    VERDICT_THRESHOLDS,
    classify,
    contraction,
    correlated_pairs,
    identifiability_report,
    ordered_prior_draws,
    plot_contraction,
    plot_pairs,
    plot_prior_predictive,
    prior_moments,
    prior_predictive,
    prior_predictive_coverage,
    to_sampling_scale,
    unidentified_message,
)
from pkpd.inference.synthetic import dosing_design, simulate_study
from pkpd.model.priors import parse_prior

MODELS = Path(__file__).parent / "models"
TRUTH = {"ka": 1.5, "CL": 2.8, "V": 32.0, "sigma_add": 0.5}
OMEGA = {"ka": 0.5, "CL": 0.3, "V": 0.2}
runner = CliRunner()


@pytest.fixture(scope="module")
def unused_spec():
    """pk_1cmt_oral plus an estimated parameter Q that enters no observation."""
    return pkpd.load_model(MODELS / "pk_1cmt_oral_unused.toml")


@pytest.fixture(scope="module")
def small_cohort(unused_spec):
    design = dosing_design(6, 320.0, [0.25, 0.5, 1, 2, 4, 6, 8, 12, 24])
    cohort, _ = simulate_study(unused_spec, design, TRUTH, omega=OMEGA, seed=1)
    return cohort


@pytest.fixture(scope="module")
def unused_fit(unused_spec, small_cohort):
    """A short real fit (2 chains x 500 draws; about 20 s here)."""
    return fit(unused_spec, small_cohort, chains=2, draws=500, tune=500, seed=1, progressbar=False)


# -- prior moments and verdicts -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "LogNormal(median=3, cv=0.5)",
        "Normal(mu=1, sigma=2)",
        "HalfNormal(0.5)",
        "HalfCauchy(0.3)",
        "Exponential(2.0)",
        "Gamma(alpha=3, beta=2)",
        "Beta(alpha=2, beta=5)",
        "Uniform(lower=1, upper=4)",
        "LogitNormal(mu=-1, sigma=0.7)",
    ],
)
def test_analytic_prior_moments_match_prior_draws(text):
    prior = parse_prior(text)
    mean, sd = prior_moments(prior)
    x = to_sampling_scale(prior, prior.sample(np.random.default_rng(0), 400_000))
    # Monte Carlo error of the mean: sd / sqrt(n) = 0.0016 sd.
    assert np.mean(x) == pytest.approx(mean, abs=0.01 * sd)
    assert np.std(x) == pytest.approx(sd, rel=0.01)


def test_verdict_thresholds():
    t = VERDICT_THRESHOLDS
    assert classify(0.95, 0.2) == "informed"
    assert classify(t["informed"], 2.0) == "informed"
    assert classify(0.3, 0.0) == "weakly informed"
    assert classify(0.02, 0.1) == "prior-dominated"
    assert classify(-0.3, -0.5) == "prior-dominated"
    assert classify(0.02, 1.5) == "weakly informed"  # moved without narrowing
    assert classify(float("nan"), 0.0) == "n/a"


# -- non-convergence names its parameters (no long fit: constructed draws) --------------------


def _posterior(spec, n_subjects, chains=4, draws=1000, stuck=None, shift=1.5, seed=0):
    """Well-mixed draws near the truth for every parameter; ``stuck`` (name -> prior) draws
    from its prior with chain 0 shifted by ``shift`` prior SDs (a chain that did not mix)."""
    rng = np.random.default_rng(seed)
    post = {}
    values = {**TRUTH, "Q": 5.0}
    for name in ("ka", "CL", "V", "sigma_add", "Q"):
        post[name] = values[name] * np.exp(0.05 * rng.standard_normal((chains, draws)))
    for name, sd in OMEGA.items():
        post[f"omega_{name}"] = sd * np.exp(0.1 * rng.standard_normal((chains, draws)))
    post["eta"] = 0.2 * rng.standard_normal((chains, draws, n_subjects, 3))
    for name, s in (stuck or {}).items():
        prior = spec.parameters[name].prior
        mu, sd = prior_moments(prior)
        log_x = mu + sd * rng.standard_normal((chains, draws))
        log_x[0] += s * sd
        post[name] = np.exp(log_x)
    return post


def _fake_fit(spec, cohort, posterior):
    n = cohort.n_subjects
    idata = az.from_dict(
        posterior=posterior,
        sample_stats={"diverging": np.zeros(posterior["CL"].shape, dtype=bool)},
        coords={"subject": np.arange(1, n + 1), "iiv": ["ka", "CL", "V"]},
        dims={"eta": ["subject", "iiv"]},
    )
    settings = FitSettings(
        sampler="nutpie",
        chains=posterior["CL"].shape[0],
        draws=posterior["CL"].shape[1],
        tune=1000,
        seed=0,
        init="prior",
        target_accept=0.8,
        solver="",
    )
    return Fit(idata=idata, spec=spec, cohort=cohort, settings=settings)


def test_flagged_parameters_worst_first():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 1000, 3))
    x[0, :, 1] += 3.0  # the worst
    x[0, :, 2] += 0.5
    idata = az.from_dict(
        posterior={"p": x, "log_p": x},
        coords={"k": ["a", "b", "c"]},
        dims={"p": ["k"], "log_p": ["k"]},
    )
    diag = convergence(idata)
    names = [row["name"] for row in diag["flagged_parameters"]]
    assert names == ["p[b]", "p[c]"]  # log_p repeats p; p[a] is fine
    text = verdict(diag)
    assert "worst first: p[b] (R-hat" in text and text.index("p[b]") < text.index("p[c]")


def test_a_good_fit_names_nothing(unused_spec, small_cohort):
    good = _fake_fit(unused_spec, small_cohort, _posterior(unused_spec, 6))
    assert good.ok, good.verdict
    assert good.diagnostics()["flagged_parameters"] == []
    assert "Parameters failing" not in good.verdict
    assert unidentified_message(good) is None


def test_non_mixing_unidentified_parameter_is_named(unused_spec, small_cohort, tmp_path):
    bad = _fake_fit(unused_spec, small_cohort, _posterior(unused_spec, 6, stuck={"Q": 1.5}))
    diag = bad.diagnostics()
    assert not bad.ok
    assert diag["flagged_parameters"][0]["name"] == "Q"
    assert "worst first: Q (R-hat" in bad.verdict
    table = contraction(bad)
    assert table.loc["Q", "verdict"] == "prior-dominated"
    assert (table.drop(index="Q")["verdict"] == "informed").all()
    message = unidentified_message(bad, table)
    assert message is not None and "look unidentified by the data: Q" in message
    report = identifiability_report(bad)
    assert report.unidentified == ["Q"]
    assert "look unidentified by the data: Q" in str(report)

    path = bad.save(tmp_path / "bad.nc")
    summary = runner.invoke(app, ["summary", str(path)])
    assert summary.exit_code == 1
    assert summary.output.startswith("FLAGGED")
    assert "worst first: Q (R-hat" in summary.output
    assert "look unidentified by the data: Q" in summary.stderr
    out = tmp_path / "contraction.png"
    identify = runner.invoke(
        app, ["identify", str(path), "--out", str(out), "--pairs", str(tmp_path / "pairs.png")]
    )
    assert identify.exit_code == 1, identify.output
    assert "Prior-dominated" in identify.output and "Q" in identify.output
    assert out.stat().st_size > 10_000 and (tmp_path / "pairs.png").is_file()


def test_a_well_mixed_prior_dominated_parameter_is_not_called_unidentified(
    unused_spec, small_cohort
):
    """Prior-dominated but converged (another parameter fails): no unidentified message."""
    post = _posterior(unused_spec, 6)
    prior = unused_spec.parameters["Q"].prior
    mu, sd = prior_moments(prior)
    post["Q"] = np.exp(mu + sd * np.random.default_rng(3).standard_normal(post["Q"].shape))
    post["CL"][0] *= 1.3  # CL's chains disagree
    bad = _fake_fit(unused_spec, small_cohort, post)
    assert not bad.ok and bad.diagnostics()["flagged_parameters"][0]["name"] == "CL"
    assert contraction(bad).loc["Q", "verdict"] == "prior-dominated"
    assert unidentified_message(bad) is None


# -- contraction on real fits -------------------------------------------------------------


def test_contraction_of_a_conjugate_model_matches_the_closed_form():
    """log A ~ N(mu0, s0^2), log y_j ~ N(log A, s^2), s known: posterior in closed form."""
    spec = pkpd.load_model(MODELS / "conjugate_level.toml")
    y = np.array([12.0, 7.5, 15.0])
    df = pd.DataFrame(
        {"ID": 1, "TIME": [1.0, 2.0, 3.0], "DV": y, "EVID": 0, "MDV": 0, "CMT": 1, "AMT": np.nan}
    )
    from pkpd.data.reader import from_dataframe

    cohort = from_dataframe(df, source="conjugate")
    result = fit(spec, cohort, chains=2, draws=2000, tune=500, seed=1, progressbar=False)
    assert result.ok, result.verdict
    s0, mu0, s = math.sqrt(math.log(2.0)), math.log(10.0), 0.5
    post_var = 1.0 / (1.0 / s0**2 + y.size / s**2)
    post_mean = post_var * (mu0 / s0**2 + np.log(y).sum() / s**2)
    row = contraction(result).loc["A"]
    assert row["prior_mean"] == pytest.approx(mu0) and row["prior_sd"] == pytest.approx(s0)
    # 4000 draws, ESS > 1500: SE of the variance ~ 4%, of the contraction ~ 0.005.
    assert row["contraction"] == pytest.approx(1.0 - post_var / s0**2, abs=0.02)
    assert row["z_score"] == pytest.approx((post_mean - mu0) / s0, abs=0.03)
    assert row["verdict"] == "informed"


@pytest.mark.slow
def test_unused_parameter_is_prior_dominated_and_observed_ones_informed(unused_fit):
    table = contraction(unused_fit)
    assert table.loc["Q", "verdict"] == "prior-dominated"
    assert abs(table.loc["Q", "contraction"]) < 0.1
    for name in ("ka", "CL", "V", "sigma_add"):
        assert table.loc[name, "verdict"] == "informed", table.loc[name]
    assert set(table["kind"]) == {"typical", "IIV", "residual"}
    report = identifiability_report(unused_fit)
    assert "Q" in report.prior_dominated
    assert {"ka", "CL", "V", "sigma_add"} <= set(report.informed)
    assert "Prior-dominated" in report.text and report.text.startswith(unused_fit.verdict)


@pytest.mark.slow
def test_correlated_pairs_and_pair_plot(unused_fit, tmp_path):
    every = correlated_pairs(unused_fit, threshold=0.0)
    k = len(contraction(unused_fit))
    assert len(every) == k * (k - 1) // 2
    assert (np.diff(every["abs_correlation"]) <= 0).all()
    top = every.iloc[0]
    post = unused_fit.posterior
    prior_a = (
        unused_fit.spec.parameters[top["a"].removeprefix("omega_")].iiv
        if top["a"].startswith("omega_")
        else unused_fit.spec.parameters[top["a"]].prior
    )
    prior_b = (
        unused_fit.spec.parameters[top["b"].removeprefix("omega_")].iiv
        if top["b"].startswith("omega_")
        else unused_fit.spec.parameters[top["b"]].prior
    )
    x = to_sampling_scale(prior_a, post[top["a"]].values.reshape(-1))  # log scale
    y = to_sampling_scale(prior_b, post[top["b"]].values.reshape(-1))
    assert top["correlation"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    strong = correlated_pairs(unused_fit, threshold=0.3)
    assert (strong["abs_correlation"] >= 0.3).all()
    fig = plot_pairs(unused_fit, tmp_path / "pairs.png", n_pairs=3)
    assert len([a for a in fig.axes if a.get_visible()]) == 3
    assert (tmp_path / "pairs.png").stat().st_size > 10_000
    fig = plot_contraction(unused_fit, tmp_path / "contraction.png")
    assert (tmp_path / "contraction.png").is_file()


# -- prior predictive ---------------------------------------------------------------------


def test_prior_predictive_draws_from_the_priors(unused_spec, small_cohort):
    a = prior_predictive(unused_spec, small_cohort, draws=400, seed=2)
    b = prior_predictive(unused_spec, small_cohort, draws=400, seed=2)
    assert a["y_rep"].shape == (400, 6 * 9)
    np.testing.assert_array_equal(a["y_rep"].values, b["y_rep"].values)
    theta = a["theta"].to_pandas()
    # Prior medians: CL 3, Q 5 (log-scale SE with 400 draws ~ 0.05).
    assert np.median(theta["CL"]) == pytest.approx(3.0, rel=0.15)
    assert np.median(theta["Q"]) == pytest.approx(5.0, rel=0.15)
    assert (theta["F"] == 1.0).all()  # fixed
    assert a.attrs["failed_fraction"] == 0.0
    np.testing.assert_allclose(a["y"].values, small_cohort_dv(small_cohort))
    cov = prior_predictive_coverage(a)
    assert cov.loc["conc", "n"] == 54 and 0.0 <= cov.loc["conc", "inside"] <= 1.0


def small_cohort_dv(cohort):
    df = cohort.to_dataframe()
    return df.loc[df["EVID"] == 0, "DV"].to_numpy(dtype=float)


def test_prior_predictive_plot_uses_log_axes_for_positive_endpoints(
    multi_spec, multi_cohort, tmp_path
):
    pp = prior_predictive(multi_spec, multi_cohort, draws=100, seed=1)
    assert pp.attrs["ordinal"] == ["grade"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = plot_prior_predictive(pp, tmp_path / "prior_pc.png")
    scales = [ax.get_yscale() for ax in fig.axes]
    assert scales[:2] == ["log", "log"] and scales[2] == "linear"  # conc, marker; grades
    assert (tmp_path / "prior_pc.png").stat().st_size > 10_000


def test_prior_predictive_with_correlated_iiv_and_ordered_cutpoints(
    unused_spec, small_cohort, multi_spec
):
    pp = prior_predictive(unused_spec, small_cohort, draws=200, seed=3, correlated_iiv=True)
    eta_sd = pp["omega"].values  # (draws, 3)
    assert eta_sd.shape == (200, 3) and (eta_sd > 0).all()
    assert np.isfinite(pp["y_rep"].values).all()
    grade = multi_spec.observations["grade"]
    draws = ordered_prior_draws(multi_spec, list(grade.cutpoints), 500, np.random.default_rng(0))
    stacked = np.stack([draws[c] for c in grade.cutpoints], axis=-1)
    assert stacked.shape == (500, len(grade.cutpoints))
    assert (np.diff(stacked, axis=-1) > 0).all()
