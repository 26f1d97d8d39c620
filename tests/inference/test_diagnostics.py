"""Convergence checks and the pharmacometric summary: thresholds, verdicts, flags everywhere."""

import warnings

import arviz as az
import numpy as np
import pytest

from pkpd.inference import FitWarning, fit
from pkpd.inference.diagnostics import convergence, cv_percent, shrinkage, verdict


def _idata(chains=4, draws=1000, shift=0.0, divergences=0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((chains, draws))
    x[0] += shift
    diverging = np.zeros((chains, draws), dtype=bool)
    diverging.flat[:divergences] = True
    energy = rng.standard_normal((chains, draws))
    return az.from_dict(
        posterior={"CL": x},
        sample_stats={
            "diverging": diverging,
            "energy": energy,
            "tree_depth": np.full((chains, draws), 3),
        },
    )


def test_independent_chains_pass():
    diag = convergence(_idata())
    assert diag["ok"], diag["problems"]
    assert diag["rhat_max"] <= 1.01 and diag["ess_bulk_min"] >= 400
    assert verdict(diag).startswith("OK")


def test_disagreeing_chains_are_flagged():
    diag = convergence(_idata(shift=1.0))
    assert not diag["ok"]
    assert any("R-hat" in p for p in diag["problems"])
    assert verdict(diag).startswith("FLAGGED")


def test_divergences_are_flagged():
    diag = convergence(_idata(divergences=3))
    assert not diag["ok"]
    assert "3 divergent transitions" in diag["problems"]


def test_short_single_chain_is_flagged():
    diag = convergence(_idata(chains=1, draws=100))
    assert not diag["ok"]
    text = " ".join(diag["problems"])
    assert "at least 2 chains" in text and "bulk ESS" in text


def test_point_estimates_and_variational_fits_are_flagged():
    for method in ("map", "advi"):
        assert not convergence(_idata(), method=method)["ok"]


def test_tree_depth_hits_and_ebfmi_are_reported():
    idata = _idata()
    idata.sample_stats["tree_depth"][:] = 10
    diag = convergence(idata)
    assert diag["treedepth_hits"] == 4000
    assert "maximum tree depth" in verdict(diag)
    # White-noise energy: E-BFMI = E[dE^2] / Var(E) = 2.
    assert diag["ebfmi_min"] == pytest.approx(2.0, rel=0.1)


def test_cv_and_shrinkage_formulas():
    assert cv_percent(0.5) == pytest.approx(100 * np.sqrt(np.exp(0.25) - 1))
    assert cv_percent(0.1) == pytest.approx(10.025, rel=1e-3)
    means = np.array([-1.0, 1.0, -1.0, 1.0])  # SD (ddof=1) = 1.1547
    eta = np.broadcast_to(means, (2, 50, 4))
    assert shrinkage(eta, omega=2 * 1.1547005) == pytest.approx(0.5, rel=1e-6)


@pytest.mark.slow
def test_a_deliberately_bad_fit_is_flagged_everywhere(tmp_path):
    """One chain of 30 draws after 30 warm-up iterations cannot pass the checks."""
    from pkpd.inference.plots import plot_vpc

    bad = fit(
        "pk_1cmt_oral", "theophylline", chains=1, draws=30, tune=30, seed=3, progressbar=False
    )
    diag = bad.diagnostics()
    assert not diag["ok"] and not bad.ok
    assert bad.verdict.startswith("FLAGGED")
    with pytest.warns(FitWarning, match="FLAGGED"):
        table = bad.summary()
    assert table.attrs["ok"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert bad.summary_text().startswith("FLAGGED")
    fig = plot_vpc(bad, tmp_path / "vpc.png", n_sim=20)
    assert fig._suptitle.get_text().startswith("FLAGGED")
    assert "FLAGGED" in repr(bad)


def test_summary_lists_iiv_correlations():
    """A correlated-IIV fit's summary has one row per pair, with the correlation's interval."""
    import pkpd
    from pkpd.inference.diagnostics import format_table, parameter_table

    rng = np.random.default_rng(5)
    chains, draws = 4, 500
    r = np.tanh(0.6 + 0.05 * rng.standard_normal((chains, draws)))  # corr(CL, V) near 0.54
    corr = np.zeros((chains, draws, 3, 3))
    corr[..., 0, 0] = corr[..., 1, 1] = corr[..., 2, 2] = 1.0
    corr[..., 1, 2] = corr[..., 2, 1] = r
    idata = az.from_dict(
        posterior={
            "CL": 2.7 + 0.1 * rng.standard_normal((chains, draws)),
            "omega_ka": 0.6 + 0.05 * rng.standard_normal((chains, draws)),
            "omega_CL": 0.3 + 0.02 * rng.standard_normal((chains, draws)),
            "omega_V": 0.15 + 0.01 * rng.standard_normal((chains, draws)),
            "corr_iiv": corr,
        }
    )
    spec = pkpd.load_model("pk_1cmt_oral")
    table = parameter_table(idata, spec, {"CL": "structural"}, ("ka", "CL", "V"))
    pairs = table[table["kind"] == "IIV correlation"]
    assert list(pairs.index) == ["corr(ka,CL)", "corr(ka,V)", "corr(CL,V)"]
    assert pairs.loc["corr(CL,V)", "median"] == pytest.approx(np.median(r))
    assert pairs.loc["corr(CL,V)", "lower"] == pytest.approx(np.quantile(r, 0.025))
    assert pairs.loc["corr(ka,V)", "median"] == 0.0
    assert list(table["kind"]) == [
        "typical",
        "IIV",
        "IIV",
        "IIV",
        "IIV correlation",
        "IIV correlation",
        "IIV correlation",
    ]
    assert "corr(CL,V)" in format_table(table, "OK")
    # no correlation rows without correlated IIV
    plain = parameter_table(
        idata.posterior.drop_vars("corr_iiv").pipe(lambda p: az.InferenceData(posterior=p)),
        spec,
        {"CL": "structural"},
        ("ka", "CL", "V"),
    )
    assert "IIV correlation" not in set(plain["kind"])
