"""Decision metrics on hand-built outcomes whose answers are known."""

import numpy as np
import pytest
import xarray as xr

from pkpd.strategies import (
    Metric,
    compare,
    decision_table,
    default_metrics,
    expected_auc,
    subgroup_masks,
)


def outcomes():
    # 3 strategies x 4 draws x 5 patients; grades chosen so that risks are exact fractions.
    g = np.zeros((3, 4, 5))
    g[0] = [[3, 3, 2, 0, 0], [3, 2, 2, 0, 0], [3, 3, 3, 0, 0], [2, 2, 0, 0, 0]]  # reference
    g[1] = [[3, 2, 0, 0, 0], [2, 2, 0, 0, 0], [3, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    g[2] = g[0]
    auc = np.ones((3, 4, 5)) * np.array([10.0, 8.0, 10.0])[:, None, None]
    return xr.Dataset(
        {
            "max_crs_grade": (("strategy", "draw", "patient"), g),
            "auc_cart": (("strategy", "draw", "patient"), auc),
            "cov_TB": ("patient", np.array([5.0, 4.0, 3.0, 2.0, 1.0])),
        },
        coords={"strategy": ["ref", "better", "same"], "draw": range(4), "patient": range(5)},
        attrs={"reference": "ref", "parameters_from": "test"},
    )


def test_risks_differences_and_ratios():
    ds = outcomes()
    m = Metric("P(CRS >= 3)", "max_crs_grade", "risk", 3.0)
    s = compare(ds, [m]).sel(subgroup="all", metric="P(CRS >= 3)")
    # Reference risks per draw: 2/5, 1/5, 3/5, 0 -> mean 0.3; "better": 1/5, 0, 1/5, 0 -> 0.1.
    assert float(s["mean"].sel(strategy="ref")) == pytest.approx(0.3)
    assert float(s["mean"].sel(strategy="better")) == pytest.approx(0.1)
    assert float(s["diff_mean"].sel(strategy="better")) == pytest.approx(-0.2)
    assert float(s["diff_mean"].sel(strategy="same")) == 0.0
    # Ratios only where the reference risk is positive (3 draws): (1/2 + 0 + 1/3) / 3.
    assert float(s["ratio_mean"].sel(strategy="better")) == pytest.approx((0.5 + 0 + 1 / 3) / 3)


def test_probability_best_shares_ties():
    ds = outcomes()
    m = Metric("P(CRS >= 3)", "max_crs_grade", "risk", 3.0)
    p = compare(ds, [m])["p_best"].sel(subgroup="all", metric="P(CRS >= 3)")
    # Draws 0-2: "better" alone is best; draw 3: all three tie at 0 -> 1/3 each.
    assert float(p.sel(strategy="better")) == pytest.approx((3 + 1 / 3) / 4)
    assert float(p.sel(strategy="ref")) == pytest.approx((1 / 3) / 4)
    assert float(p.sum()) == pytest.approx(1.0)


def test_utility_weighs_toxicity_against_efficacy():
    ds = outcomes()
    tox = Metric("P(CRS >= 3)", "max_crs_grade", "risk", 3.0, weight=10.0)
    eff = Metric("cart AUC", "auc_cart", "mean", lower_is_better=False, weight=1.0)
    s = compare(ds, [tox, eff]).sel(subgroup="all")
    # utility = -10 * risk + AUC: ref -3 + 10 = 7; better -1 + 8 = 7.
    assert float(s["utility_mean"].sel(strategy="ref")) == pytest.approx(7.0)
    assert float(s["utility_mean"].sel(strategy="better")) == pytest.approx(7.0)


def test_subgroups_select_patients():
    ds = outcomes()
    groups = subgroup_masks(ds, {"high TB": ("TB", ">=", 3.0), "low TB": ("TB", "<q", 0.5)})
    np.testing.assert_array_equal(groups["high TB"], [True, True, True, False, False])
    np.testing.assert_array_equal(groups["low TB"], [False, False, False, True, True])
    m = Metric("P(CRS >= 2)", "max_crs_grade", "risk", 2.0)
    s = compare(ds, [m], subgroups=groups)["mean"].sel(metric="P(CRS >= 2)", strategy="ref")
    assert float(s.sel(subgroup="low TB")) == 0.0
    assert float(s.sel(subgroup="high TB")) == pytest.approx((1 + 1 + 1 + 2 / 3) / 4)


def test_default_metrics_and_table():
    ds = outcomes()
    names = [m.name for m in default_metrics(ds)]
    assert names[:2] == ["P(CRS >= 2)", "P(CRS >= 3)"]
    assert "cart AUC" in names
    table = decision_table(compare(ds))
    assert list(table.index) == ["ref", "better", "same"]
    assert table.loc["ref", "P(CRS >= 3) vs ref"] == "reference"
    assert table.loc["better", "P(CRS >= 3)"].startswith("10.0%")


def test_expected_auc_with_certain_outcomes_is_the_mann_whitney_auc():
    x = np.array([0.1, 0.4, 0.4, 0.9, 1.5, 2.0])
    y = np.array([0, 1, 0, 0, 1, 1])
    # Case-control pairs (case first): (0.4,0.1)=1, (0.4,0.4)=1/2, (0.4,0.9)=0, then 1.5 and 2.0
    # above all three controls: (1 + 0.5 + 0 + 3 + 3) / 9.
    assert expected_auc(y.astype(float), x) == pytest.approx(7.5 / 9)
    assert expected_auc(1.0 - y, x) == pytest.approx(1.5 / 9)  # roles swapped


def test_expected_auc_is_the_average_over_outcome_draws():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=40), 1)  # with ties
    p = rng.uniform(0.1, 0.9, size=40)
    # Exact: the ratio of expected concordant pairs to expected case-control pairs (brute force).
    gt = (x[:, None] > x[None, :]) + 0.5 * (x[:, None] == x[None, :])
    w = p[:, None] * (1 - p)[None, :]
    np.fill_diagonal(w, 0.0)
    assert expected_auc(p, x) == pytest.approx((w * gt).sum() / w.sum(), rel=1e-12)
    # A marker equal to the outcome probability discriminates.
    assert expected_auc(p, p) > 0.6


def test_expected_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        expected_auc(np.ones(3) / 2, np.ones(4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_auc(np.array([0.5, 1.5]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="both cases and controls"):
        expected_auc(np.ones(3), np.arange(3.0))
