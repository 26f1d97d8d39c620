"""Calibration to aggregate data (`pkpd.inference.calibration`).

Recovery of known values, NUTS against Laplace, the MAP's continuation and saddle restart, the
progress lines, the Laplace Hessian, its truncated Gaussian and the check of that Gaussian against
the posterior (Pareto k).
"""

import dataclasses

import numpy as np
import pytest
from aggregate_toy import BASE, design, toy_model, two_trials

from pkpd.data.trials import parse_trials
from pkpd.inference.aggregate import AggregateLikelihood, AggregateWarning
from pkpd.inference.calibration import (
    MAP_GRADIENT_TOLERANCE,
    MOVE_SD,
    MOVE_SD_RATIO,
    UnconstrainedPosterior,
    calibrate,
    posterior_predictive,
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_model(tmp_path_factory.mktemp("agg"))


@pytest.fixture(scope="module")
def trials():
    return two_trials()


@pytest.fixture(scope="module")
def wall_fit(toy, trials):
    """c1 pulled up by the data (to ~1.8 alone) against c2 held at 1.1 by its prior."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AggregateWarning)
        return calibrate(
            toy,
            trials[:1],
            ["c1", "c2", "c3"],
            design=design(64),
            draws=2000,
            seed=1,
            priors={"c2": "Normal(1.1, 0.1)"},
            importance_draws=1000,
        )


def assert_reweighted_near_nuts(fit, nuts, gaussian, names, within=0.15):
    """The reweighted median and interval ends (``*_is``) of ``fit`` are NUTS's within
    ``within`` of the Gaussian's 95% interval width (``gaussian``: a Laplace summary)."""
    for name in names:
        width = gaussian.loc[name, "upper"] - gaussian.loc[name, "lower"]
        for col in ("median", "lower", "upper"):
            assert abs(nuts.summary.loc[name, col] - fit.summary.loc[name, col + "_is"]) < (
                within * width
            ), (name, col)


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
@pytest.mark.filterwarnings("ignore::pkpd.inference.aggregate.AggregateWarning")
def test_nuts_and_laplace_agree_on_cutpoints(toy, trials):
    """All four cutpoints (NUTS: one ordered vector, no hard walls): NUTS and Laplace agree."""
    one, cuts = trials[:1], ["c1", "c2", "c3", "c4"]
    nuts = calibrate(
        toy, one, cuts, design=design(64), method="nuts", draws=300, tune=300, chains=2, seed=1
    )
    laplace = calibrate(
        toy, one, cuts, design=design(64), draws=2000, seed=1, importance_draws=1000
    )
    assert nuts.settings["nuts_diagnostics"]["divergences"] == 0
    # where Laplace and NUTS agree, the check of the Gaussian passes (k 0.48 on 2026-12-07)
    check = laplace.settings["laplace_check"]
    assert check["pareto_k"] < check["k_threshold"] and nuts.settings["laplace_check"] is None
    assert nuts.settings["nuts_diagnostics"]["rhat_max"] < 1.02
    for name in cuts:
        width = laplace.summary.loc[name, "upper"] - laplace.summary.loc[name, "lower"]
        assert abs(nuts.summary.loc[name, "median"] - laplace.summary.loc[name, "median"]) < (
            0.15 * width
        ), name
    # The check passed, so its weights correct the Gaussian: the reweighted median and interval
    # ends agree with NUTS's too (at most 6% of the width apart on 2026-12-07: c4's upper end).
    assert laplace.importance_weights is not None and laplace.importance_weights.size == 1000
    assert_reweighted_near_nuts(laplace, nuts, laplace.summary, cuts)
    reweighted = posterior_predictive(laplace, one, n_draws=20, seed=3, importance=True)
    plain = posterior_predictive(laplace, one, n_draws=20, seed=3)
    assert list(reweighted.columns) == list(plain.columns) and len(reweighted) == len(plain)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pkpd.inference.aggregate.AggregateWarning")
def test_laplace_in_ordered_coordinates_agrees_with_nuts_near_the_constraint(toy, trials, wall_fit):
    """The posterior whose own-scale mode is on the c1/c2 ordering constraint (see
    test_a_mode_on_the_cutpoint_ordering_is_found_again_in_ordered_coordinates): the Laplace
    approximation in ordered coordinates against NUTS (the same coordinates, exact up to Monte
    Carlo). Medians within 15% of the 95% interval's width, as for the unconstrained case above;
    the Laplace Gaussian in the log gap gives c2 a longer upper tail than NUTS's, so its interval
    ends are not compared; those of a Student-t proposal reweighted to the posterior are."""
    cuts, priors = ["c1", "c2", "c3"], {"c2": "Normal(1.1, 0.1)"}
    one = trials[:1]
    laplace = wall_fit
    assert laplace.settings["coordinates"] == ["cutpoints_crs_grade_ordered__", "c3"]
    nuts = calibrate(
        toy,
        one,
        cuts,
        design=design(64),
        method="nuts",
        draws=300,
        tune=300,
        chains=2,
        seed=1,
        priors=priors,
    )
    assert nuts.settings["nuts_diagnostics"]["rhat_max"] < 1.02
    for name in cuts:
        width = laplace.summary.loc[name, "upper"] - laplace.summary.loc[name, "lower"]
        assert abs(nuts.summary.loc[name, "median"] - laplace.summary.loc[name, "median"]) < (
            0.15 * width
        ), name
    # The Gaussian's check flags c2's long upper tail (its upper end 1.71 against NUTS's 1.56,
    # 32% of the width, on 2026-12-07); a Student-t proposal (4 degrees of freedom, same mode
    # and scale) covers the posterior: its check passes (k 0.48, ESS 528 of 1000) and the
    # reweighted ends agree with NUTS's (within 2% of the width on 2026-12-07; the margin, 15% as
    # above, is ~3.5 combined Monte Carlo SEs of a 97.5% quantile at these ESS).
    t_fit = calibrate(
        toy,
        one,
        cuts,
        design=design(64),
        draws=2000,
        seed=1,
        priors=priors,
        importance_draws=1000,
        importance_df=4.0,
    )
    check = t_fit.settings["laplace_check"]
    assert check["proposal"] == "Student-t (df 4)" and check["pareto_k"] < check["k_threshold"]
    assert t_fit.importance_samples.shape == (1000, 3)
    assert not any("Pareto k" in n for n in t_fit.settings["notes"])
    np.testing.assert_array_equal(t_fit.draws, laplace.draws)  # the Gaussian's, unchanged
    width = laplace.summary.loc["c2", "upper"] - laplace.summary.loc["c2", "lower"]
    assert laplace.summary.loc["c2", "upper"] - nuts.summary.loc["c2", "upper"] > 0.15 * width
    assert_reweighted_near_nuts(t_fit, nuts, laplace.summary, cuts)
    # Monte Carlo errors of the reweighted quantiles: positive, and small against the width
    errors = t_fit.summary[["mcse_median_is", "mcse_lower_is", "mcse_upper_is"]]
    assert (errors.to_numpy() > 0).all()
    assert (errors.max(axis=1) < 0.1 * (laplace.summary["upper"] - laplace.summary["lower"])).all()
    reweighted = posterior_predictive(t_fit, one, n_draws=20, seed=3, importance=True)
    assert reweighted["rate"].between(0, 1).all()


def test_the_map_restarts_from_a_saddle(toy, trials, monkeypatch):
    """Wiring of the saddle restart (`descend_negative_curvature` tested on a real saddle in
    test_optimize.py): a lower point along negative curvature restarts L-BFGS from there, and
    says so; no lower point leaves the mode alone."""
    import pkpd.inference.calibration as cal

    one, cuts = trials[:1], ["c1", "c3"]
    plain = calibrate(toy, one, cuts, design=design(64), draws=200, seed=1)
    assert "from_saddle" not in plain.settings["map_rounds"][-1]
    assert not any("saddle" in n for n in plain.settings["notes"])
    calls = []

    def away(fun, x, hess):  # pretend the mode were a saddle, once (cutpoints kept ordered)
        calls.append(x)
        y = x + np.array([-0.3, 0.3])
        return (y, fun(y)) if len(calls) == 1 else None

    monkeypatch.setattr(cal, "descend_negative_curvature", away)
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
    from pkpd.inference.calibration import _fd_hessian, _laplace_hessian

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
    from pkpd.inference.calibration import LAPLACE_STEP, _laplace_hessian

    grad = _jumpy_gradient(np.diag([20.0, 8.0]), beta=0.4, width=3e-4)
    hess, note = _laplace_hessian(grad, np.array([0.31245, -0.17985]))
    assert f"between difference steps {LAPLACE_STEP:g} and {2 * LAPLACE_STEP:g}" in note


def test_fd_hessian_shortens_a_step_that_leaves_the_support():
    """Ordered cutpoints 0.015 apart: the default step would swap them (an infinite objective,
    NaN gradient); the step is quartered for that coordinate instead."""
    from pkpd.inference.calibration import _fd_hessian

    a = np.array([[3.0, -1.0], [-1.0, 2.0]])

    def grad(x):
        return a @ x if x[0] < x[1] else np.full(2, np.nan)

    hess = _fd_hessian(grad, np.array([0.0, 0.015]))
    np.testing.assert_allclose(hess, a, rtol=1e-9)


def test_truncated_draws_until_enough_are_kept():
    """Regression: with 75% of the Laplace draws unordered, one batch of 4 x draws gave 999 of
    1000 (the with-neuro calibration, 2026-12-07)."""
    from pkpd.inference.calibration import _truncated_draws

    def ordered(s):  # P = 0.2 under N(0, I) in 2-d: a 72-degree wedge
        return np.arctan2(s[:, 1], s[:, 0]) % (2 * np.pi) < 0.4 * np.pi

    mean, cov = np.zeros(2), np.eye(2)
    rng = np.random.default_rng(1)
    xs, draws, kept = _truncated_draws(rng, mean, cov, 1000, lambda x: 2.0 * x, ordered)
    assert draws.shape == (1000, 2) and ordered(draws).all()
    np.testing.assert_array_equal(draws, 2.0 * xs)  # the kept x with their transforms
    assert kept == pytest.approx(0.2, abs=0.02)
    # the first batch is what one batch gave before: same seed, same first draws
    first = np.random.default_rng(1).multivariate_normal(mean, cov, size=4000)
    np.testing.assert_array_equal(xs[:50], first[ordered(first)][:50])
    _, few, _ = _truncated_draws(
        np.random.default_rng(1), mean, cov, 1000, lambda x: x, ordered, max_batches=1
    )
    assert 700 < few.shape[0] < 1000  # one batch of 4000 keeps ~800


def test_truncated_student_t_draws_have_the_t_s_spread():
    """``df``: a multivariate t at the mean with ``cov`` as its scale matrix (covariance
    df / (df - 2) cov: 2x at 4; 40000 draws, SE of a variance ratio ~0.03 with these tails)
    and its marginals' quantiles (Kolmogorov-Smirnov against scipy's t)."""
    from scipy import stats

    from pkpd.inference.calibration import _truncated_draws

    mean, cov = np.array([1.0, -1.0]), np.array([[1.0, 0.5], [0.5, 2.0]])
    xs, same, kept = _truncated_draws(
        np.random.default_rng(2),
        mean,
        cov,
        40000,
        lambda x: x,
        lambda s: np.ones(len(s), bool),
        df=4.0,
    )
    assert kept == 1.0 and xs.shape == (40000, 2)
    np.testing.assert_allclose(np.cov(xs.T), 2.0 * cov, rtol=0.15)
    z = (xs[:, 1] - mean[1]) / np.sqrt(cov[1, 1])
    assert stats.kstest(z, stats.t(4).cdf).pvalue > 0.01
    assert stats.kstest(z, stats.norm(0, np.sqrt(2)).cdf).pvalue < 1e-6  # not a wider Gaussian


def test_laplace_check_passes_a_matching_gaussian_and_flags_heavier_tails():
    """`laplace_check` on known densities (2-d, 1000 draws of q = N(m, C)): p = q up to a
    constant gives equal weights (k -inf: no tail; ESS = S; PSIS's own fit returns inf there); p
    5% wider passes; a Student-t p with 2 degrees of freedom and q's scale has tails q cannot
    represent (flagged); draws outside p's support get weight 0 and are counted."""
    from scipy import stats

    from pkpd.inference.calibration import laplace_check

    m, c = np.array([1.0, -2.0]), np.array([[1.0, 0.3], [0.3, 0.5]])
    xs = np.random.default_rng(4).multivariate_normal(m, c, size=1000)
    same = laplace_check(lambda x: stats.multivariate_normal(m, c).logpdf(x) + 7.0, xs, m, c)
    assert same["draws"] == 1000 and same["outside_support"] == 0
    assert same["k_threshold"] == pytest.approx(1 - 1 / 3)
    assert same["pareto_k"] == -np.inf and same["ess"] == 1000
    wider = laplace_check(stats.multivariate_normal(m, 1.05**2 * c).logpdf, xs, m, c)
    assert -np.inf < wider["pareto_k"] < wider["k_threshold"] and wider["ess"] > 950
    student = stats.multivariate_t(m, c, df=2)
    heavy = laplace_check(student.logpdf, xs, m, c)
    assert heavy["pareto_k"] > heavy["k_threshold"] and heavy["ess"] < 700
    half = laplace_check(
        lambda x: stats.multivariate_normal(m, c).logpdf(x) if x[0] > m[0] else -np.inf, xs, m, c
    )
    assert half["outside_support"] == int(np.sum(xs[:, 0] <= m[0]))
    # the kept half carries equal weights: ESS is the number inside
    assert half["ess"] == pytest.approx(1000 - half["outside_support"], rel=1e-6)


def test_a_student_t_proposal_covers_a_posterior_wider_than_the_gaussian():
    """A posterior 2x wider than the Laplace Gaussian in every direction (2-d): the Gaussian's
    weights exp(r^2 (1 - 1/4) / 2) have a Pareto tail with k = 1 - 1/4 = 0.75, above the
    threshold (0.67 at 1000 draws; its estimate is noisy, 0.34-0.81 over four seeds, so not
    asserted here). A Student-t with 4 degrees of freedom at the same scale has polynomial tails:
    bounded weights (k < 0), and its 1000 weighted draws give the posterior's quantiles. Margins
    3.5 Monte Carlo SEs at ESS 450 (0.85 at the 2.5% and 97.5% ends, 0.4 at the median, for a
    posterior SD 2); the t's own unweighted ends (+-2.78) are 1.1 off. p = the t itself gives
    equal weights."""
    from scipy import stats

    from pkpd.inference.calibration import _truncated_draws, laplace_check, weighted_quantile

    m, c = np.zeros(2), np.eye(2)
    p = stats.multivariate_normal(m, 2.0**2 * c)
    t_xs, _, _ = _truncated_draws(
        np.random.default_rng(6), m, c, 1000, lambda x: x, lambda s: np.ones(len(s), bool), df=4.0
    )
    covered = laplace_check(p.logpdf, t_xs, m, c, df=4.0)
    assert covered["pareto_k"] < 0 and covered["ess"] > 450
    ends = 1.96 * 2.0
    lo, med, hi = weighted_quantile(t_xs[:, 0], covered["weights"], [0.025, 0.5, 0.975])
    assert med == pytest.approx(0.0, abs=0.4)
    assert lo == pytest.approx(-ends, abs=0.85) and hi == pytest.approx(ends, abs=0.85)
    raw_lo, raw_hi = np.quantile(t_xs[:, 0], [0.025, 0.975])
    assert raw_lo > -ends + 0.85 and raw_hi < ends - 0.85
    itself = laplace_check(stats.multivariate_t(m, c, df=4.0).logpdf, t_xs, m, c, df=4.0)
    assert itself["pareto_k"] == -np.inf and itself["ess"] == pytest.approx(1000)


def test_importance_weights_correct_the_gaussian_towards_the_posterior():
    """The check's weights, on known densities (4000 draws of q = N(0, 1)): p = N(0.3, 1.2^2)
    passes the check (k 0.43, ESS 3237), and the weighted median and 95% interval of q's draws
    are p's (measured: within 0.04). Margins: 3.5 Monte Carlo SEs of a quantile at that ESS
    (SE 0.056 at the 2.5% and 97.5% ends, 0.026 at the median), against q's own median and
    upper end 0.25 and 0.7 from p's."""
    from scipy import stats

    from pkpd.inference.calibration import laplace_check, weighted_moves, weighted_quantile

    xs = np.random.default_rng(5).normal(size=(4000, 1))
    p = stats.norm(0.3, 1.2)
    check = laplace_check(lambda x: p.logpdf(x[0]), xs, np.zeros(1), np.eye(1))
    assert check["pareto_k"] < check["k_threshold"] and check["ess"] > 2500
    w = check["weights"]
    assert w.shape == (4000,) and np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    lo, med, hi = weighted_quantile(xs[:, 0], w, [0.025, 0.5, 0.975])
    assert lo == pytest.approx(p.ppf(0.025), abs=0.2)
    assert med == pytest.approx(0.3, abs=0.1)
    assert hi == pytest.approx(p.ppf(0.975), abs=0.2)
    raw = np.quantile(xs[:, 0], [0.025, 0.5, 0.975])
    assert np.all(np.abs(raw - p.ppf([0.025, 0.5, 0.975]))[1:] > 0.2)
    # The same weights move the mean by +0.3 of q's SD and widen it 1.2x (SEs ~0.02 and 0.02).
    (shift, ratio) = weighted_moves(xs, w, ["x"])["x"]
    assert shift == pytest.approx(0.3, abs=0.07) and ratio == pytest.approx(1.2, abs=0.07)
    # Against reference draws (the Gaussian's, when the weighted draws are a t's): the same
    # weighted moments measured in the reference's mean and SD.
    (shift, ratio) = weighted_moves(xs, w, ["x"], reference=2.0 * xs)["x"]
    assert shift == pytest.approx(0.15, abs=0.04) and ratio == pytest.approx(0.6, abs=0.04)
    # Equal weights are numpy's "hazen" quantiles; weight-0 draws are ignored.
    np.testing.assert_allclose(
        weighted_quantile(xs[:101, 0], np.ones(101), [0.1, 0.5, 0.9]),
        np.quantile(xs[:101, 0], [0.1, 0.5, 0.9], method="hazen"),
    )
    assert weighted_quantile([1.0, 5.0, 2.0], [0.5, 0.0, 0.5], 0.5) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="every weight is 0"):
        weighted_quantile([1.0, 2.0], [0.0, 0.0], 0.5)


def test_the_mc_error_of_a_weighted_quantile_is_the_spread_of_repeated_estimates():
    """`weighted_quantile_mcse` against the SD of 300 repeated importance-sampling estimates
    (1000 draws of q = N(0, 1) weighted to p = N(0.3, 1.2^2)), per quantile: measured ratios
    1.08, 0.93, 0.89 at 2.5%, 50%, 97.5% (2026-12-07). Margin 0.75-1.33: the SD of 300 estimates
    is itself uncertain by ~4%, the delta method is approximate; an error from the weights'
    overall ESS instead is 0.39x at the 97.5% end and fails it. Equal weights: the textbook
    sqrt(q (1 - q) / S) / density within 15%."""
    from scipy import stats

    from pkpd.inference.calibration import weighted_quantile, weighted_quantile_mcse

    rng = np.random.default_rng(7)
    p, qs = stats.norm(0.3, 1.2), [0.025, 0.5, 0.975]
    est, err = [], []
    for _ in range(300):
        x = rng.normal(size=1000)
        lw = p.logpdf(x) - stats.norm.logpdf(x)
        w = np.exp(lw - lw.max())
        w /= w.sum()
        est.append(weighted_quantile(x, w, qs))
        err.append(weighted_quantile_mcse(x, w, qs))
    ratio = np.mean(err, axis=0) / np.std(est, axis=0)
    assert np.all((0.75 < ratio) & (ratio < 1.33)), ratio
    x = rng.normal(size=4000)
    textbook = np.sqrt(np.multiply(qs, 1 - np.array(qs)) / 4000) / stats.norm.pdf(
        stats.norm.ppf(qs)
    )
    np.testing.assert_allclose(weighted_quantile_mcse(x, np.ones(4000), qs), textbook, rtol=0.15)
    assert weighted_quantile_mcse(x, np.ones(4000), 0.5).shape == ()


@pytest.mark.filterwarnings("ignore::pkpd.inference.aggregate.AggregateWarning")
def test_the_laplace_check_flags_the_log_gap_tail_that_nuts_does_not_have(wall_fit):
    """The Laplace Gaussian in ordered coordinates gives c2 a longer upper tail than NUTS's
    (test_laplace_in_ordered_coordinates_agrees_with_nuts_near_the_constraint): the check of
    1000 of its draws against the posterior says so (k 0.88 against the threshold 0.67 for
    that many, ESS ~200 of 1000; at 100 draws it passed with k 0.45, 2026-12-07), with a note."""
    check = wall_fit.settings["laplace_check"]
    assert check["draws"] == 1000 and check["outside_support"] == 0
    assert check["pareto_k"] > check["k_threshold"] and check["ess"] < 500
    assert any("Pareto k" in n and "doubtful" in n for n in wall_fit.settings["notes"])
    assert "laplace_check" in wall_fit.settings["wall_time"]
    # Reweighted, c2 moves down and narrows: the Gaussian's long upper tail in the log gap
    # (-0.40 SD, SD x0.73 on 2026-12-07); c1 and c3 stay (within 0.05 SD and 5%).
    shift, ratio = check["moved"]["c2"]
    assert shift < -MOVE_SD and ratio < 1 / MOVE_SD_RATIO
    assert all(abs(check["moved"][c][0]) < MOVE_SD for c in ("c1", "c3"))
    notes = wall_fit.settings["notes"]
    assert any("; reweighted, c2 moves -0.4 SD (its SD x0.7" in n for n in notes)
    # Weights above the threshold are not used: no corrected summary, no corrected predictive.
    assert wall_fit.importance_weights is None
    reweighted = ["median_is", "lower_is", "upper_is", "mcse_median_is", "mcse_upper_is"]
    assert wall_fit.summary[reweighted].isna().all().all()
    with pytest.raises(ValueError, match=r"no reliable importance weights \(Pareto k 0\.\d+"):
        posterior_predictive(wall_fit, [], importance=True)


@pytest.mark.filterwarnings("ignore::pkpd.inference.aggregate.AggregateWarning")
def test_a_mode_on_the_cutpoint_ordering_is_found_again_in_ordered_coordinates(wall_fit):
    """c1 is pulled up by the data (to ~1.8 alone), c2's tight prior holds it at 1.1: on their own
    scale the mode is on the ordering constraint (scipy stopped after 2 iterations, ours at the
    edge) and has no curvature for a Laplace approximation. Regression (with-neuro calibration,
    2026-12-07 11:28: c_icans1 = c_icans2, unit covariance, INVALID): the MAP is found again with
    c1 and c2 as ordered coordinates (c1, log(c2 - c1); c3 on its own scale, c4 fixed), where
    the log gap's Jacobian keeps it off the constraint, and the Laplace Gaussian is taken there;
    the notes name the two cutpoints."""
    fit = wall_fit
    rounds = fit.settings["map_rounds"]
    own = [r for r in rounds if not r.get("ordered")]
    assert own[-1]["continued"] and not own[-1]["success"] and "edge" in own[-1]["message"]
    assert rounds[-1]["ordered"] and rounds[-1]["success"]
    assert rounds[-1]["grad_max"] < MAP_GRADIENT_TOLERANCE
    notes = fit.settings["notes"]
    assert any("(c1 and c2 are" in n and "ordered coordinates" in n for n in notes)
    assert fit.settings["coordinates"] == ["cutpoints_crs_grade_ordered__", "c3"]
    gap = fit.map[1] - fit.map[0]
    assert 0.01 < gap < 0.5  # off the constraint, not far from it
    assert fit.draws.shape == (2000, 3)
    assert np.all(np.diff(fit.draws, axis=1) > 0) and np.all(fit.draws[:, 2] < 4.0)  # c4 fixed
    assert 0.1 < fit.summary.loc["c2", "sd_ratio"] < 2  # a Gaussian with curvature, not unit


@pytest.mark.filterwarnings("ignore::pkpd.inference.aggregate.AggregateWarning")
def test_a_second_constraint_met_in_ordered_coordinates_joins_its_cutpoint(toy, trials):
    """Tight priors hold c2 at 1.1 and c3 at 1.2 while the data pull c1 up: the MAP meets c1/c2
    on the constraint, then (with c1, c2 ordered) c2/c3. Regression (with-neuro calibration,
    2026-12-07 14:11: c_icans1/c_icans2 found again, then c_icans2 = c_icans3 at 2.61, 76% of
    the Laplace draws discarded): each pair met joins the ordered coordinates, until the mode is
    off every constraint."""
    fit = calibrate(
        toy,
        trials[:1],
        ["c1", "c2", "c3"],
        design=design(64),
        draws=50,
        seed=1,
        priors={"c2": "Normal(1.1, 0.1)", "c3": "Normal(1.2, 0.05)"},
    )
    notes = fit.settings["notes"]
    assert any("(c1 and c2 are" in n and "with c1, c2 as ordered" in n for n in notes)
    assert any("(c2 and c3 are" in n and "with c1, c2, c3 as ordered" in n for n in notes)
    assert fit.settings["coordinates"] == ["cutpoints_crs_grade_ordered__"]
    last = fit.settings["map_rounds"][-1]
    assert last["ordered"] and last["success"] and last["grad_max"] < MAP_GRADIENT_TOLERANCE
    assert np.all(np.diff(fit.map) > 0.01)


@pytest.mark.filterwarnings("ignore::pkpd.inference.aggregate.AggregateWarning")
def test_a_mode_on_a_fixed_cutpoint_names_the_one_to_calibrate(toy, trials):
    """c1 is pulled up by the data (to ~1.8 alone) against c2 held at 1.1 (not calibrated): no
    ordered coordinates can hold a fixed cutpoint, so the mode stays on the constraint and the
    note says which cutpoint to calibrate too."""
    fit = calibrate(
        toy, trials[:1], ["c1", "c3"], design=design(64), draws=50, seed=1, values={"c2": 1.1}
    )
    assert not fit.settings["map_rounds"][-1]["success"]
    assert not any(r.get("ordered") for r in fit.settings["map_rounds"])
    assert any(
        "(c1 and c2 are" in n and "c2 is not calibrated but held at its value" in n
        for n in fit.settings["notes"]
    )


def test_ordered_coordinates_cover_a_subset_of_cutpoints(toy, trials):
    """With c1..c3 calibrated and c4 fixed, the ordered transform takes the three (it took an
    endpoint only when all its cutpoints were calibrated), or the ones named; from_natural
    inverts to_natural, and spreads cutpoints on the constraint to the given gap."""
    lik = AggregateLikelihood(toy, trials[:1], ["kin", "c1", "c2", "c3"], design=design(16))
    ordered = UnconstrainedPosterior(lik, ordered_transform=True)
    assert ordered.vectors == {"cutpoints_crs_grade": ["c1", "c2", "c3"]}
    pair = UnconstrainedPosterior(lik, ordered_transform={"c1", "c2"})
    assert pair.vectors == {"cutpoints_crs_grade": ["c1", "c2"]}
    assert pair.names == ["cutpoints_crs_grade_ordered__", "log_kin", "c3"]
    own = UnconstrainedPosterior(lik, ordered_transform=False)
    assert own.vectors == {} and own.names == ["log_kin", "c1", "c2", "c3"]
    vec = np.array([35.0, 0.8, 1.9, 3.1])
    for target in (ordered, pair, own):
        np.testing.assert_allclose(target.to_natural(target.from_natural(vec)), vec, rtol=1e-12)
    on_wall = np.asarray(ordered.to_natural(ordered.from_natural([35.0, 1.2, 1.2, 3.1], 0.01)))
    np.testing.assert_allclose(on_wall, [35.0, 1.2, 1.21, 3.1], rtol=1e-12)
    # the ordering with the fixed c4 is still a wall (the likelihood of the tests above)
    lik = AggregateLikelihood(toy, trials[:1], ["c1", "c2", "c3"], design=design(64))
    ordered = UnconstrainedPosterior(lik, ordered_transform=True)
    lik.refresh(np.array([0.8, 1.9, 3.1]))
    assert np.isfinite(ordered.objective(ordered.from_natural([0.8, 1.9, 3.1]))[0])
    assert np.isinf(ordered.objective(ordered.from_natural([0.8, 1.9, 4.5]))[0])


def test_an_unordered_start_is_refused_with_the_cutpoints_named(toy, trials):
    """Regression: a start (prior medians) with c2 below c1 has an infinite objective, and
    scipy reported convergence after 0 iterations; the fit went on from there."""
    with pytest.raises(ValueError, match=r"not ordered \(c1 is 4 above c2\)"):
        calibrate(
            toy,
            trials[:1],
            ["c1", "c2", "c3"],
            design=design(64),
            draws=50,
            priors={"c2": "Normal(-3.0, 0.5)"},
        )


@pytest.mark.parametrize("df", [0.0, -4.0, float("nan")])
def test_a_proposal_without_positive_degrees_of_freedom_is_refused(toy, trials, df):
    with pytest.raises(ValueError, match="importance_df must be positive"):
        calibrate(toy, trials[:1], ["c1"], design=design(64), draws=50, importance_df=df)
