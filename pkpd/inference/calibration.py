"""Calibration to published summaries alone (model-based meta-analysis), and its predictions.

`calibrate` fits the parameters of an `AggregateLikelihood` (`pkpd.inference.aggregate`) to
trial summaries with no patient-level data: the posterior mode by L-BFGS on PyMC's
unconstrained scale, then either a Laplace (Gaussian) approximation from a finite-difference
Hessian of the JAX gradient or NUTS (nutpie). `posterior_predictive` gives the posterior
predictive rates of any cohort, observed next to predicted with 95% intervals.

>>> from pkpd.data.trials import published_trials
>>> fit = calibrate("cart_crs", published_trials("zuma1", "juliet"), ["rho_cd28", "c_crs1"])
>>> fit.summary
>>> posterior_predictive(fit, published_trials("hay2017"))

See ``docs/aggregate.md``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from pkpd.data.trials import Outcome, TrialSummary
from pkpd.inference.aggregate import (
    AggregateLikelihood,
    AggregateWarning,
    VirtualDesign,
)
from pkpd.inference.optimize import descend_negative_curvature, lbfgs

#: Largest |gradient| component (unconstrained scale) at which scipy's L-BFGS-B stop is taken as
#: the mode. Its line search gives up at the cutpoints' ordering wall (an infinite objective) and
#: reports convergence: the with-neuro calibration of 2026-12-07 08:42 stopped after 5 iterations
#: with a gradient of 11. Past it, `lbfgs` (which steps back from such walls) goes on.
MAP_GRADIENT_TOLERANCE = 0.01

#: `lbfgs` rounds of the MAP (continuation, saddle restart) stop when an iteration lowers the
#: negative log-posterior by at most this. The objective's gradient jumps (see `LAPLACE_STEP`), so
#: it never falls under `MAP_GRADIENT_TOLERANCE` near the mode and the line search creeps on: the
#: with-neuro calibration with its definition shift went from 80.148779 to 80.148483 in three
#: iterations of 8-10 evaluations each (15 s per evaluation). A move of 0.1 posterior SD changes
#: the log-density by 0.005, fifty times this.
MAP_DECREASE_TOLERANCE = 1e-4

#: Restarts of the MAP optimisation from a saddle point (`calibrate`, Laplace): each costs an
#: optimisation and a finite-difference Hessian.
SADDLE_RESTARTS = 2

#: Central-difference step of the Laplace Hessian (unconstrained scale, times max(1, |x|)). The
#: objective is a mean over virtual patients of functions of each one's worst grade, a maximum
#: over grading days: its gradient jumps wherever a patient's worst day changes, and its local
#: curvature between jumps is not the posterior's. A step of 1e-4 found -25 on the with-neuro
#: calibration where the curvature over +-0.01 to +-0.1 is +18 (benchmarks/RESULTS.md, "Laplace
#: step, 2026-12-07 04:14"); 0.02 averages over many jumps and stays well inside a posterior SD.
LAPLACE_STEP = 0.02

#: The Hessian is recomputed with twice the step; a larger relative change (Frobenius norm) is
#: reported: the log-posterior is not quadratic at that scale, or the jumps still dominate.
LAPLACE_STEP_TOLERANCE = 0.1

#: Smallest gap between neighbouring cutpoints when a MAP on the ordering constraint is started
#: again in ordered coordinates (their log gap is -inf on it); 1% of the cutpoints' unit
#: (logit of a grade probability), far below their posterior SDs.
ORDERED_START_GAP = 0.01

#: Laplace draws at which the log-posterior is evaluated to check the Gaussian against it
#: (`laplace_check`): each costs one log-density (~2 s on the with-neuro calibration). Pareto k
#: is noisy at this size: a posterior 1.2x as wide as its Gaussian (k 0.31) is flagged 8% of the
#: time, one 2x as wide (k 0.75) 63% (`python benchmarks/pareto_k_noise.py`, RESULTS.md), so a
#: flag is a prompt for more draws or NUTS, and a pass is no proof.
IMPORTANCE_DRAWS = 200

#: Log importance weights spread less than this are equal (`laplace_check`): the Gaussian is the
#: posterior up to a constant, and there is no tail for PSIS to fit.
EQUAL_LOG_WEIGHTS = 1e-9

#: Degrees of freedom of the Student-t importance proposal that `calibrate`'s ``importance_df``
#: suggests when the check of the Gaussian is flagged: tails heavy enough to cover a posterior
#: wider than the Gaussian in some direction (variance 2x the Gaussian's at the same scale), not
#: so heavy that most draws land where the posterior is negligible (Geweke 1989, Econometrica
#: 57(6), on t proposals at the mode for importance sampling).
IMPORTANCE_DF = 4.0

#: Batches of 4 x draws from the Laplace Gaussian, at most, to find draws with ordered cutpoints
#: (uninformed cutpoints between informed ones discard most: 75% on the with-neuro calibration).
TRUNCATED_BATCHES = 25


@dataclass
class AggregateFit:
    """A calibration of model parameters to aggregate data (`calibrate`).

    Attributes
    ----------
    likelihood : AggregateLikelihood
    method : str
        ``"laplace"`` (MAP + Gaussian approximation on the unconstrained scale) or ``"nuts"``.
    parameters : tuple of str
    map : numpy.ndarray
        Posterior mode (natural scale).
    draws : numpy.ndarray
        ``(S, P)`` posterior draws (natural scale).
    summary : pandas.DataFrame
        Prior, posterior median and 95% interval per parameter; ``median_is``, ``lower_is``,
        ``upper_is``: the same from the importance draws reweighted to the posterior
        (importance sampling, see `importance_weights`), with their Monte Carlo standard errors
        (``mcse_median_is``, ``mcse_lower_is``, ``mcse_upper_is``; `weighted_quantile_mcse`),
        NaN where there are no valid weights.
    rates : pandas.DataFrame
        Observed vs predicted rates at the posterior median, with Monte-Carlo errors.
    settings : dict
        Design, solver, method options, wall times (s), the MAP's rounds (``map_rounds``),
        the unconstrained coordinates of the last stage (``coordinates``), the check of the
        Laplace Gaussian against the posterior (``laplace_check``: Pareto k of the importance
        weights, see `laplace_check`; ``proposal``, ``df``, ``samples``: the proposal its draws
        came from and those draws on the natural scale; ``moved``: where the weights move each
        parameter, see `weighted_moves`), notes.
    idata : arviz.InferenceData or None
        NUTS draws (``method="nuts"``).
    """

    likelihood: AggregateLikelihood
    method: str
    parameters: tuple[str, ...]
    map: np.ndarray
    draws: np.ndarray
    summary: pd.DataFrame
    rates: pd.DataFrame
    settings: dict[str, Any]
    idata: Any = None

    @property
    def median(self) -> np.ndarray:
        """Posterior median of each parameter."""
        return np.median(self.draws, axis=0)

    @property
    def importance_weights(self) -> np.ndarray | None:
        """Weights that make `importance_samples` a sample of the posterior, or None.

        The Pareto-smoothed importance weights (posterior over the proposal: the Laplace
        Gaussian, or the Student-t of ``importance_df``) of the check's ``S`` draws
        (`laplace_check`), normalised; None for NUTS, without the check, or when its Pareto k
        is above the threshold (then the weights are not reliable). Their ESS
        (``settings["laplace_check"]["ess"]``) says how many independent posterior draws they
        are worth.
        """
        return _reliable_weights(self.settings.get("laplace_check"))

    @property
    def importance_samples(self) -> np.ndarray | None:
        """``(S, P)`` draws (natural scale) that `importance_weights` weigh, or None without them.

        ``draws[:S]`` for the Gaussian proposal; the Student-t's own draws with ``importance_df``.
        """
        if self.importance_weights is None:
            return None
        return self.settings["laplace_check"]["samples"]


def _reliable_weights(check: Mapping[str, Any] | None) -> np.ndarray | None:
    """Return the check's importance weights where its Pareto k is at most the threshold."""
    if check is None or not check["pareto_k"] <= check["k_threshold"]:
        return None
    return check["weights"]


def _prior_model(
    lik: AggregateLikelihood, ordered_transform: bool | Collection[str] = True
) -> tuple[Any, Any, dict[str, list[str]]]:
    """PyMC model with the priors of the likelihood's parameters.

    Returns (model, vector of the calibrated parameters, the cutpoints of each ordered vector by
    its variable name).

    With ``ordered_transform``, the calibrated cutpoints of an ordinal endpoint (two or more, all
    with Normal priors; given a collection of cutpoint names, only those) are one vector
    ``cutpoints_<endpoint>`` with PyMC's ordered transform (as in `build_model`): the first and
    the logs of the gaps, ordered by construction, no hard wall for NUTS. Otherwise each cutpoint
    is its own variable: the scale on which a Gaussian approximation of cutpoints the data inform
    directly (e.g. grade >= 1 and >= 3 rates) is best. Either way a potential (-inf when
    unordered) keeps them ordered with the endpoint's other cutpoints (e.g. an uncalibrated
    highest one).
    """
    import pymc as pm
    import pytensor.tensor as pt

    from pkpd.inference.builder import ordered_cutpoints, prior_variable

    missing = [p for p in lik.parameters if lik.priors.get(p) is None]
    if missing:
        raise ValueError(
            f"parameters without a prior (fixed in the model file): {missing}; "
            f"give priors={{name: 'Normal(...)'}}"
        )
    with pm.Model() as pm_model:
        values: dict[str, Any] = {}
        joined: dict[str, list[str]] = {}  # endpoint: the cutpoints in its ordered vector
        for o in lik.ordinal:
            chosen = [c for c in o.cutpoints if c in lik.parameters]
            if not isinstance(ordered_transform, bool):
                chosen = [c for c in chosen if c in ordered_transform]
            priors = [lik.priors.get(c) for c in chosen]
            if (
                ordered_transform
                and len(chosen) > 1
                and all(p is not None and p.family == "Normal" for p in priors)
            ):
                mu = np.array([p.params["mu"] for p in priors])
                sigma = np.array([p.params["sigma"] for p in priors])
                cut = ordered_cutpoints(f"cutpoints_{o.name}", mu, sigma)
                joined[o.name] = chosen
                for k, c in enumerate(chosen):
                    values[c] = pm.Deterministic(c, cut[k])
        for p in lik.parameters:
            if p not in values:
                values[p] = prior_variable(p, lik.priors[p])
        vec = pt.stack(
            [pt.as_tensor(values[p], dtype="float64").reshape(()) for p in lik.parameters]
        )
        # Cutpoints of one endpoint stay ordered (a calibration must not swap grades).
        for o in lik.ordinal:
            chosen = [c for c in o.cutpoints if c in lik.parameters]
            if chosen and joined.get(o.name) != list(o.cutpoints):
                full = [
                    vec[lik.parameters.index(c)]
                    if c in lik.parameters
                    else pt.constant(lik.theta0[lik.model.parameter_index(c)])
                    for c in o.cutpoints
                ]
                cut = pt.stack(full)
                pm.Potential(
                    f"ordered_{o.name}", pt.switch(pt.all(pt.gt(cut[1:], cut[:-1])), 0.0, -np.inf)
                )
    return pm_model, vec, {f"cutpoints_{k}": v for k, v in joined.items()}


def calibrate(
    model: Any,
    trials: Sequence[TrialSummary],
    parameters: Sequence[str],
    *,
    method: str = "laplace",
    design: VirtualDesign | None = None,
    priors: Mapping[str, Any] | None = None,
    draws: int = 1000,
    chains: int = 2,
    tune: int = 500,
    seed: int = 0,
    refresh_rounds: int = 3,
    mc_replicates: int = 0,
    importance_draws: int = IMPORTANCE_DRAWS,
    importance_df: float | None = None,
    progressbar: bool = False,
    **likelihood_options: Any,
) -> AggregateFit:
    """Calibrate model parameters to published summaries only (no patient-level data).

    Parameters
    ----------
    model : CompiledModel or ModelSpec or str
    trials : sequence of TrialSummary
    parameters : sequence of str
        What to calibrate (see `AggregateLikelihood`); the rest stays at its typical value.
    method : {"laplace", "nuts"}, optional
        ``"laplace"``: posterior mode (L-BFGS on the unconstrained scale, where the log-prior
        includes the Jacobian of the transforms), restarted from a lower point along negative
        curvature when it stopped at a saddle (`SADDLE_RESTARTS`), then a Gaussian
        approximation whose covariance is the inverse of the Hessian (central differences of
        the JAX gradient with step `LAPLACE_STEP`, checked against twice that step), ``draws``
        draws from it mapped back to the natural scale.
        ``"nuts"``: the mode first, then nutpie's NUTS (JAX backend) on the same log-density
        (``chains`` x ``draws`` after ``tune``; treatment dose times held at those found at the
        mode).
    design : VirtualDesign, optional
    priors : mapping, optional
        Replacement priors (text or `Prior`) by parameter name.
    draws, chains, tune : int, optional
    seed : int, optional
    refresh_rounds : int, optional
        With reactive treatment: at most this many rounds of (find dose times, optimise with
        them held fixed); stops early when no virtual patient's doses change.
    mc_replicates : int, optional
        Independent Sobol scramblings for the RQMC error report at the posterior median.
    importance_draws : int, optional
        Laplace: the log-posterior is evaluated at this many of the Gaussian's draws and the
        Pareto k of the importance weights (posterior over Gaussian, PSIS) says whether the
        Gaussian represents the posterior (`laplace_check`; a note when it does not). 0 skips
        the check.
    importance_df : float, optional
        Laplace: the check's ``importance_draws`` come from a multivariate Student-t with this
        many degrees of freedom (`IMPORTANCE_DF` = 4 is a good first choice) at the mode, with
        the Laplace covariance as its scale matrix, instead of from the Gaussian: heavier tails
        that cover a posterior wider than the Gaussian (where the Gaussian's check fails). When
        its check passes, the weighted Student-t draws are the posterior sample of the ``*_is``
        summary columns and of ``posterior_predictive(importance=True)``; ``draws`` stay the
        Gaussian's. None (default): the Gaussian's own first draws.
    progressbar : bool, optional
        Print a line on stderr per MAP iteration and per stage (and nutpie's progress bar).
    **likelihood_options
        Passed to `AggregateLikelihood` (``treatment``, ``values``, ``omega``,
        ``grading_shifts``, ``definition_shifts``, ``endpoints``, ``use``, ``onset``,
        ``solver``).

    Returns
    -------
    AggregateFit
    """
    if method not in ("laplace", "nuts"):
        raise ValueError(f"method must be 'laplace' or 'nuts', got {method!r}")
    if importance_df is not None and not importance_df > 0:
        raise ValueError(f"importance_df must be positive (or None), got {importance_df!r}")
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    lik = AggregateLikelihood(
        model, trials, parameters, design=design, priors=priors, **likelihood_options
    )
    # Laplace: a Gaussian on the cutpoints themselves (what summary rates inform); NUTS: the
    # ordered transform (no hard wall at the ordering constraint).
    target = UnconstrainedPosterior(lik, ordered_transform=method == "nuts")
    pm_model, vec_t, x0 = target.pm_model, target.vec_t, target.x0
    objective, to_natural, unflatten = target.objective, target.to_natural, target.unflatten
    timing["build"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = _Progress(progressbar)
    lik.refresh(np.asarray(to_natural(x0)))
    if not np.isfinite(objective(x0)[0]):
        low, high, gap = _narrowest_cutpoint_gap(lik, np.asarray(to_natural(x0)))
        where = (
            f"its cutpoints are not ordered ({low} is {-gap:.3g} above {high})"
            if gap <= 0
            else "the model or a prior cannot be evaluated there"
        )
        raise ValueError(
            f"the negative log-posterior is not finite at the start point (the priors' medians; "
            f"the model's values for the rest): {where}. Give priors (or values=) that make it "
            f"a valid point"
        )
    x, rounds, notes = _find_map(target, x0, report, refresh_rounds)
    vec_map = np.asarray(to_natural(x))
    if not rounds[-1]["success"]:
        notes.append(f"MAP optimisation: {rounds[-1]['message']}")
    joined: set[str] = set()  # cutpoints found again in ordered coordinates
    while not rounds[-1]["success"] and "edge" in rounds[-1]["message"]:
        low, high, gap = _narrowest_cutpoint_gap(lik, vec_map)
        ordered = None
        if method == "laplace" and not {low, high} <= joined:
            # Only those met on the constraint: an uninformed cutpoint's log gap bends the
            # Gaussian of its informed neighbours (docs/aggregate.md, "Calibration").
            ordered = UnconstrainedPosterior(lik, ordered_transform=joined | {low, high})
        members = next(
            (m for m in (ordered.vectors.values() if ordered else ()) if {low, high} <= set(m)),
            None,
        )
        if members is None:
            fixed = [c for c in (low, high) if c not in lik.parameters]
            notes.append(
                f"MAP: on the cutpoints' ordering constraint ({low} and {high} are {gap:.2g} "
                f"apart): the data and priors push them past each other, the mode is on the "
                f"constraint, and a Gaussian approximation there is rough"
                + (
                    f" ({', '.join(fixed)} is not calibrated but held at its value: calibrate "
                    f"it too, and the pair is found again in ordered coordinates)"
                    if fixed and method == "laplace"
                    else ""
                )
            )
            break
        assert ordered is not None
        joined |= {low, high}
        # On the constraint the own-scale Gaussian has no curvature to use; in the ordered
        # coordinates the log gap's Jacobian keeps the mode off it (same posterior).
        notes.append(
            f"MAP: on the cutpoints' ordering constraint ({low} and {high} are {gap:.2g} "
            f"apart): the data and priors push them together. Found again with "
            f"{', '.join(members)} as ordered coordinates ({members[0]} and the "
            f"{'log of the gap' if len(members) == 2 else 'logs of the gaps'}), where the mode "
            f"and the Laplace approximation are taken"
        )
        report(f"MAP: {low} and {high} on the ordering constraint; again in ordered coordinates")
        target = ordered
        objective, to_natural = target.objective, target.to_natural
        x, more, more_notes = _find_map(
            target, target.from_natural(vec_map, ORDERED_START_GAP), report, refresh_rounds
        )
        rounds.extend(dict(r, ordered=True) for r in more)
        notes.extend(more_notes)
        vec_map = np.asarray(to_natural(x))
        if not rounds[-1]["success"]:
            notes.append(f"MAP optimisation (ordered cutpoints): {rounds[-1]['message']}")
    timing["map"] = time.perf_counter() - t0

    idata = None
    t0 = time.perf_counter()
    if method == "laplace":
        hess, step_note = _laplace_hessian(target.gradient, x, report)
        for _ in range(SADDLE_RESTARTS):
            if not np.all(np.isfinite(hess)):  # on the ordering constraint: no curvature there
                break
            # L-BFGS stops wherever the gradient vanishes; at a saddle the Hessian says so.
            found = descend_negative_curvature(lambda xx: objective(xx)[0], x, hess)
            if found is None:
                break
            before = objective(x)[0]
            report("MAP: a saddle point (negative curvature); restarted along it")
            # Our L-BFGS: away from the mode, a step may cross the cutpoints' ordering (an
            # infinite objective), on which scipy's line search gives up and reports success.
            res, record = _lbfgs_round(objective, found[0], report, from_saddle=True)
            x = res.x
            rounds.append(record)
            report.round_done(record)
            notes.append(
                f"MAP: the optimiser had stopped at a saddle point (negative curvature in the "
                f"Hessian); restarted along it, the negative log-posterior fell from "
                f"{before:.6g} to {float(res.fun):.6g}"
            )
            if not res.success:
                notes.append(f"MAP optimisation (after the saddle): {res.message}")
            vec_map = np.asarray(to_natural(x))
            hess, step_note = _laplace_hessian(target.gradient, x, report)
        cov, note = _covariance(hess)
        notes.extend(n for n in (step_note, note) if n)
        # The prior excludes unordered cutpoints (potential -inf): the Laplace posterior is the
        # Gaussian truncated to ordered cutpoints.
        xs, samples, kept = _truncated_draws(
            np.random.default_rng(seed),
            x,
            cov,
            draws,
            lambda xs: np.asarray(jax.vmap(to_natural)(jnp.asarray(xs))),
            lik.ordered,
        )
        if kept < 1.0:
            notes.append(
                f"Laplace: {1 - kept:.1%} of the Gaussian draws had unordered "
                f"cutpoints and were discarded (truncated Gaussian)"
            )
        if samples.shape[0] < draws:
            notes.append(f"Laplace: only {samples.shape[0]} valid draws of {draws}")
        timing["laplace"] = time.perf_counter() - t0
        check = None
        n_check = min(importance_draws, draws if importance_df is not None else xs.shape[0])
        if n_check > 0:  # importance weights are valid for any Gaussian, INVALID ones too
            t0 = time.perf_counter()
            proposal = "Gaussian" if importance_df is None else f"Student-t (df {importance_df:g})"
            if importance_df is None:
                q_xs, q_samples, q_kept = xs[:n_check], samples[:n_check], kept
            else:
                # Its own stream: the Gaussian's draws are those of the same seed without it.
                q_xs, q_samples, q_kept = _truncated_draws(
                    np.random.default_rng((seed, 1)),
                    x,
                    cov,
                    n_check,
                    lambda xs: np.asarray(jax.vmap(to_natural)(jnp.asarray(xs))),
                    lik.ordered,
                    df=importance_df,
                )
                n_check = q_xs.shape[0]
            report(f"Laplace: the log-posterior at {n_check} {proposal} draws (Pareto k)")
            check = laplace_check(target.log_density, q_xs, x, cov, df=importance_df)
            timing["laplace_check"] = time.perf_counter() - t0
            check["proposal"] = proposal
            check["df"] = importance_df
            check["kept"] = q_kept
            check["samples"] = q_samples
            check["moved"] = weighted_moves(
                q_samples, check["weights"], lik.parameters, reference=samples
            )
            if check["pareto_k"] > check["k_threshold"]:
                settle = (
                    "importance_df=4 (a heavier-tailed proposal) or method='nuts'"
                    if importance_df is None
                    else "method='nuts'"
                )
                if n_check < 1000:
                    settle = "importance_draws=1000, " + settle
                notes.append(
                    f"Laplace: Pareto k {check['pareto_k']:.2f} of the importance weights "
                    f"(posterior over the {proposal} proposal) at {n_check} of its draws, above "
                    f"{check['k_threshold']:.2f} (the threshold for that many draws; k's own "
                    f"sampling error is large below ~1000): "
                    + (
                        "the Gaussian may misrepresent a skewed or heavier-tailed posterior, "
                        "and its intervals are doubtful"
                        if importance_df is None
                        else "the posterior has mass even the heavier tails miss, the Gaussian's "
                        "intervals are doubtful and the weights are not used"
                    )
                    + f" ({settle} may settle it)"
                    + _moves_text(check["moved"])
                )
    else:
        from pkpd.inference.sample import _sample_nutpie

        with pm_model:
            lik.add_to_model({p: vec_t[i] for i, p in enumerate(lik.parameters)})
        start = dict(zip(target.names, map(np.asarray, unflatten(jnp.asarray(x))), strict=True))
        start = _constrained_start(pm_model, start)
        idata = _sample_nutpie(pm_model, start, chains, draws, tune, seed, progressbar, 0.9, {})
        post = idata.posterior
        samples = np.stack(
            [
                np.asarray(post[p].values).reshape(-1)
                if p in post
                else np.full(post.sizes["chain"] * post.sizes["draw"], np.nan)
                for p in lik.parameters
            ],
            axis=1,
        )
        timing["nuts"] = time.perf_counter() - t0
        import arviz as az

        sampled = [p for p in lik.parameters if p in post]
        diag = az.summary(idata, var_names=sampled, kind="diagnostics")
        stats = getattr(idata, "sample_stats", None)
        divergent = stats.get("diverging") if stats is not None else None
        nuts_diagnostics = {
            "rhat_max": float(diag["r_hat"].max()),
            "ess_bulk_min": float(diag["ess_bulk"].min()),
            "ess_tail_min": float(diag["ess_tail"].min()),
            "divergences": int(divergent.values.sum()) if divergent is not None else -1,
        }
        if nuts_diagnostics["rhat_max"] > 1.01 or nuts_diagnostics["divergences"] > 0:
            notes.append(f"NUTS did not converge cleanly: {nuts_diagnostics}")
    t0 = time.perf_counter()
    report(f"Monte Carlo error at the posterior median ({mc_replicates} replicate designs)")
    median = np.median(samples, axis=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AggregateWarning)
        rates = lik.mc_error(median, replicates=mc_replicates)
    for w in caught:
        notes.append(str(w.message))
        warnings.warn(w.message, AggregateWarning, stacklevel=2)
    timing["mc_error"] = time.perf_counter() - t0
    weights = _reliable_weights(check) if method == "laplace" else None
    summary = _summary(
        lik,
        vec_map,
        samples,
        weights,
        check["samples"] if weights is not None else None,
    )
    settings = {
        "design": dataclasses.asdict(lik.design) | {"covariates": None, "base": None},
        "solver": repr(lik.solver),
        "method": method,
        "draws": draws,
        "chains": chains if method == "nuts" else 1,
        "tune": tune if method == "nuts" else 0,
        "seed": seed,
        "map_rounds": rounds,
        "coordinates": list(target.names),
        "laplace_check": check if method == "laplace" else None,
        "nuts_diagnostics": nuts_diagnostics if method == "nuts" else None,
        "wall_time": timing,
        "notes": notes,
        "treatment": "untreated course"
        if lik.treatment is None
        else (
            {k: v.name for k, v in lik.treatment.items()}
            if isinstance(lik.treatment, Mapping)
            else lik.treatment.name
        ),
        "skipped": lik.skipped,
    }
    return AggregateFit(
        lik, method, lik.parameters, vec_map, samples, summary, rates, settings, idata
    )


class UnconstrainedPosterior:
    """The calibration's negative log-posterior on PyMC's unconstrained scale (`calibrate`).

    Parameters
    ----------
    lik : AggregateLikelihood
    ordered_transform : bool or collection of str, optional
        Cutpoints through PyMC's ordered transform (NUTS; a collection: only those cutpoints)
        or on their own scale with an ordering potential (Laplace; see `_prior_model`).

    Attributes
    ----------
    pm_model : pymc.Model
        The priors.
    vec_t : TensorVariable
        The calibrated parameters (natural scale) as one vector.
    names : list of str
        Value variables, in the order of the flat vector.
    x0 : numpy.ndarray
        PyMC's initial point, flattened.
    vectors : dict of str to list of str
        The ordered cutpoint vectors (``cutpoints_<endpoint>``) and the cutpoints in each.
    neg : callable
        ``neg(x, data)``: negative log-prior (with the transforms' Jacobian) minus the aggregate
        log-likelihood; a JAX function.
    """

    def __init__(
        self, lik: AggregateLikelihood, ordered_transform: bool | Collection[str] = False
    ) -> None:
        from pymc.sampling.jax import get_jaxified_graph

        self.lik = lik
        self.pm_model, self.vec_t, self.vectors = _prior_model(
            lik, ordered_transform=ordered_transform
        )
        value_vars = self.pm_model.value_vars
        logprior = get_jaxified_graph(inputs=value_vars, outputs=[self.pm_model.logp()])
        natural = get_jaxified_graph(
            inputs=value_vars, outputs=self.pm_model.replace_rvs_by_values([self.vec_t])
        )
        point = self.pm_model.initial_point()
        self.names = [v.name for v in value_vars]
        self._shapes = [np.shape(point[n]) for n in self.names]
        self._splits = np.cumsum([int(np.prod(sh)) for sh in self._shapes])[:-1]
        self.x0 = np.concatenate([np.ravel(np.asarray(point[n], float)) for n in self.names])
        loglik = lik._loglik

        def neg(x: jax.Array, data: dict[str, Any]) -> jax.Array:
            args = self.unflatten(x)
            return -(logprior(*args)[0] + loglik(natural(*args)[0], data))

        self.neg = neg
        self._neg: Callable[..., jax.Array] | None = None
        self._neg_vg = jax.jit(jax.value_and_grad(neg))
        self._to_natural = jax.jit(lambda x: natural(*self.unflatten(x))[0])

    def unflatten(self, x: jax.Array) -> list[jax.Array]:
        """Split the flat vector into the value variables' values."""
        parts = jnp.split(x, self._splits)
        return [part.reshape(sh) for part, sh in zip(parts, self._shapes, strict=True)]

    def to_natural(self, x: Any) -> jax.Array:
        """Map ``x`` to the calibrated parameters (natural scale)."""
        return self._to_natural(jnp.asarray(x))

    def from_natural(self, vec: np.ndarray, min_gap: float = 0.0) -> np.ndarray:
        """Map calibrated parameters (natural scale, `lik.parameters` order) to ``x``.

        Parameters
        ----------
        vec : numpy.ndarray
        min_gap : float, optional
            Neighbours in an ordered cutpoint vector closer than this are spread to this gap
            (on the ordering constraint the log gap is -inf).

        Returns
        -------
        numpy.ndarray
            The flat vector on the unconstrained scale.
        """
        import pytensor.tensor as pt

        values = dict(zip(self.lik.parameters, np.asarray(vec, float), strict=True))
        parts = []
        for rv in self.pm_model.free_RVs:
            members = self.vectors.get(rv.name)
            if rv.name in values:
                val = np.asarray(values[rv.name], float)
            elif rv.name.startswith("log_"):  # `prior_variable`'s LogNormal
                val = np.log(values[rv.name.removeprefix("log_")])
            elif rv.name.startswith("logit_"):  # and LogitNormal
                q = values[rv.name.removeprefix("logit_")]
                val = np.log(q / (1.0 - q))
            else:
                assert members is not None, rv.name
                val = np.array([values[c] for c in members])
                for k in range(1, val.size):
                    val[k] = max(val[k], val[k - 1] + min_gap)
            transform = self.pm_model.rvs_to_transforms.get(rv)
            if transform is not None:
                val = transform.forward(pt.as_tensor(val), *rv.owner.inputs).eval()
            parts.append(np.ravel(np.asarray(val, float)))
        return np.concatenate(parts)

    def objective(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Evaluate value and gradient at ``x`` with the likelihood's current data.

        ``(inf, 0)`` where either is not finite (outside the support: the optimisers step back).
        """
        v, g = self._neg_vg(jnp.asarray(x), self.lik.data)
        v = float(v)
        g = np.asarray(g, float)
        if not np.isfinite(v) or not np.all(np.isfinite(g)):
            return np.inf, np.zeros_like(x)
        return v, g

    def log_density(self, x: np.ndarray) -> float:
        """Evaluate the log-posterior (up to a constant) at ``x`` with the current data.

        ``-inf`` outside the support. No gradient (compiled on first use).
        """
        if self._neg is None:
            self._neg = jax.jit(self.neg)
        v = float(self._neg(jnp.asarray(x), self.lik.data))
        return -v if np.isfinite(v) else -np.inf

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """Evaluate the gradient at ``x``; NaN outside the support (for `_fd_hessian`)."""
        v, g = self.objective(x)
        return g if np.isfinite(v) else np.full_like(g, np.nan)


def _constrained_start(pm_model: Any, start: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Free-variable values (constrained scale) from unconstrained value-variable values."""
    from pymc.sampling.jax import get_jaxified_graph

    fn = get_jaxified_graph(inputs=pm_model.value_vars, outputs=pm_model.unobserved_value_vars)
    values = fn(*[jnp.asarray(start[v.name]) for v in pm_model.value_vars])
    by_name = {
        v.name: np.asarray(val)
        for v, val in zip(pm_model.unobserved_value_vars, values, strict=True)
    }
    return {rv.name: by_name[rv.name] for rv in pm_model.free_RVs}


def _find_map(
    target: UnconstrainedPosterior, x: np.ndarray, report: _Progress, refresh_rounds: int
) -> tuple[np.ndarray, list[dict[str, Any]], list[str]]:
    """Optimise from ``x``: the mode, the rounds' records (`_map_round`) and notes.

    scipy's L-BFGS-B, continued with `lbfgs` where it stopped short of `MAP_GRADIENT_TOLERANCE`;
    with reactive treatment, repeated with the virtual patients' dose times found at the new mode
    until none changes (at most ``refresh_rounds`` times).
    """
    from scipy.optimize import minimize

    lik, objective = target.lik, target.objective
    rounds: list[dict[str, Any]] = []
    notes: list[str] = []
    treated = lik.treatment is not None
    for _ in range(max(1, refresh_rounds if treated else 1)):
        res = minimize(
            objective,
            x,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 500, "maxfun": 1000},
            callback=report.scipy_iteration,
        )
        x = res.x
        rounds.append(_map_round(res, res.jac))
        report.round_done(rounds[-1])
        if rounds[-1]["grad_max"] > MAP_GRADIENT_TOLERANCE:
            res, record = _lbfgs_round(objective, x, report, continued=True)
            x = res.x
            rounds.append(record)
            report.round_done(record)
            notes.append(
                f"MAP: scipy's L-BFGS-B stopped with largest |gradient| "
                f"{rounds[-2]['grad_max']:.3g} ({rounds[-2]['message']}); continued with "
                f"pkpd's L-BFGS to {rounds[-1]['grad_max']:.3g}"
            )
        if not treated:
            break
        changed = lik.refresh(np.asarray(target.to_natural(x)))
        rounds[-1]["doses_changed"] = changed
        if changed == 0:
            break
    return x, rounds, notes


def _lbfgs_round(
    objective: Any, x: np.ndarray, report: _Progress, **flag: bool
) -> tuple[Any, dict[str, Any]]:
    """Run pkpd's L-BFGS from ``x``; its result and its record (`_map_round`)."""
    res = lbfgs(
        objective,
        x,
        maxiter=500,
        maxfev=1000,
        fatol=MAP_DECREASE_TOLERANCE,
        callback=report.lbfgs_iteration,
    )
    return res, _map_round(res, res.grad, failed_evaluations=int(res.failed), **flag)


class _Progress:
    """`calibrate`'s ``progressbar``: a line on stderr per optimiser iteration and per stage.

    The MAP of a calibration with many virtual patients takes minutes and its Hessian as long;
    without these lines a slow run cannot be told from a stuck one.
    """

    def __init__(self, on: bool) -> None:
        self.on = on
        self.t0 = time.perf_counter()
        self.nit = 0

    def __call__(self, message: str) -> None:
        if self.on:
            elapsed = time.perf_counter() - self.t0
            print(f"calibrate [{elapsed:6.0f} s]: {message}", file=sys.stderr, flush=True)

    def scipy_iteration(self, intermediate_result: Any) -> None:
        self.nit += 1
        self(
            f"MAP (scipy L-BFGS-B) iteration {self.nit}: negative log-posterior "
            f"{float(intermediate_result.fun):.6f}"
        )

    def lbfgs_iteration(self, x: np.ndarray, value: float, nit: int, nfev: int) -> None:
        self(
            f"MAP (pkpd L-BFGS) iteration {nit}, {nfev} evaluations: negative log-posterior "
            f"{value:.6f}"
        )

    def round_done(self, record: Mapping[str, Any]) -> None:
        self.nit = 0
        self(
            f"MAP round: {record['nit']} iterations, {record['nfev']} evaluations, negative "
            f"log-posterior {record['neg_logp']:.6f}, largest |gradient| "
            f"{record['grad_max']:.3g} ({record['message']})"
        )


def _narrowest_cutpoint_gap(lik: AggregateLikelihood, vec: np.ndarray) -> tuple[str, str, float]:
    """Find the two neighbouring cutpoints (of any ordinal endpoint) closest together at ``vec``."""
    theta, _, _ = lik._assemble_np(vec)
    best: tuple[str, str, float] | None = None
    for o, index in zip(lik.ordinal, lik.cut_index, strict=True):
        gaps = np.diff(theta[index])
        k = int(np.argmin(gaps))
        if best is None or gaps[k] < best[2]:
            best = (o.cutpoints[k], o.cutpoints[k + 1], float(gaps[k]))
    assert best is not None  # AggregateLikelihood requires an ordinal endpoint
    return best


def _map_round(res: Any, grad: np.ndarray, **extra: Any) -> dict[str, Any]:
    """One MAP optimisation's record (scipy's result or `lbfgs`'s `Minimum`)."""
    return {
        "nit": int(res.nit),
        "nfev": int(res.nfev),
        "neg_logp": float(res.fun),
        "success": bool(res.success),
        "message": str(res.message),
        # scipy's success can hide a line search stopped by a wall (infinite objective)
        "grad_max": float(np.max(np.abs(grad))),
        **extra,
    }


def _truncated_draws(
    rng: np.random.Generator,
    mean: np.ndarray,
    cov: np.ndarray,
    n: int,
    transform: Callable[[np.ndarray], np.ndarray],
    keep: Callable[[np.ndarray], np.ndarray],
    max_batches: int = TRUNCATED_BATCHES,
    df: float | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``n`` draws of ``transform(x)``, ``x ~ N(mean, cov)``, kept where ``keep`` is true.

    The Laplace posterior truncated to the support (ordered cutpoints), or the check's proposal.

    With ``df``: ``x`` from the multivariate Student-t with ``df`` degrees of freedom, location
    ``mean`` and scale matrix ``cov`` (a Gaussian draw divided by ``sqrt(chi2_df / df)``).
    Batches of ``4 n`` are drawn until ``n`` are kept or ``max_batches`` were drawn (then fewer
    are returned); the first batch is the same whatever follows. Returns the kept ``x``, their
    transforms and the share of all draws that were kept.
    """
    xs, out, kept, drawn = [], [], 0, 0
    for _ in range(max_batches):
        x = rng.multivariate_normal(mean, cov, size=4 * n)
        if df is not None:
            x = mean + (x - mean) / np.sqrt(rng.chisquare(df, size=(4 * n, 1)) / df)
        samples = transform(x)
        ok = np.asarray(keep(samples), bool)
        xs.append(x[ok])
        out.append(samples[ok])
        kept += int(ok.sum())
        drawn += ok.size
        if kept >= n:
            break
    return np.concatenate(xs)[:n], np.concatenate(out)[:n], kept / drawn


def laplace_check(
    log_density: Callable[[np.ndarray], float],
    xs: np.ndarray,
    mean: np.ndarray,
    cov: np.ndarray,
    df: float | None = None,
) -> dict[str, Any]:
    """How well a Gaussian ``N(mean, cov)`` represents a posterior, from draws of the Gaussian.

    The importance weights ``p(x) / q(x)`` of the posterior ``p`` (known up to a constant) over
    the Gaussian ``q`` at its draws ``xs``, Pareto-smoothed (PSIS, ArviZ's `psislw`): their
    Pareto k estimates the tail of the weights. Below the sample-size threshold
    ``min(1 - 1 / log10(S), 0.7)`` (Vehtari et al. 2024, JMLR 25(72)) the weights are
    reliable and ``q`` covers ``p``; above it ``p`` has mass where ``q`` has little (a skewed or
    heavier-tailed posterior) and ``q``'s intervals misstate it. Draws ``q`` gives outside
    ``p``'s support (``log_density`` ``-inf``) get weight 0. With truncated draws (only those in
    ``p``'s support kept) the truncation constant cancels in the normalised weights.

    With ``df`` the proposal ``q`` is the multivariate Student-t with ``df`` degrees of freedom,
    location ``mean`` and scale matrix ``cov`` instead: its heavier tails cover a posterior that
    is wider than the Gaussian in some direction (where the Gaussian's check fails), and the
    weights then make ``xs`` a sample of ``p`` when the check passes.

    Parameters
    ----------
    log_density : callable
        ``x -> log p(x)`` up to a constant (``-inf`` outside the support).
    xs : numpy.ndarray
        ``(S, d)`` draws of the proposal (unconstrained scale).
    mean, cov : numpy.ndarray
        The Gaussian (or the Student-t's location and scale matrix).
    df : float, optional
        Degrees of freedom of a Student-t proposal; None: the Gaussian.

    Returns
    -------
    dict
        ``draws`` S, ``pareto_k`` (``-inf`` where the log weights agree to
        `EQUAL_LOG_WEIGHTS`: ``q`` is ``p``; ``inf`` where every draw is outside ``p``'s
        support), ``k_threshold``, ``ess`` (of the smoothed, normalised weights:
        ``1 / sum w^2``), ``outside_support`` (draws with ``p = 0``), ``weights`` (``(S,)``,
        the smoothed weights normalised to sum 1, 0 outside the support; all 0 when every
        draw is outside it). Below the threshold, weighted averages over ``xs`` estimate
        expectations under ``p`` (`weighted_quantile`, ``posterior_predictive(importance=
        True)``).
    """
    import arviz as az

    xs = np.atleast_2d(np.asarray(xs, float))
    lp = np.array([log_density(x) for x in xs], float)
    d = xs - mean
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, d.T)
    lq = (
        -0.5 * np.sum(z * z, axis=0)
        if df is None
        else -0.5 * (df + xs.shape[1]) * np.log1p(np.sum(z * z, axis=0) / df)
    )
    lw = np.where(np.isfinite(lp), lp - lq, -np.inf)
    n = xs.shape[0]
    inside = np.isfinite(lw)
    w = np.zeros(n)
    if not np.any(inside):
        k, ess = np.inf, 0.0
    elif np.ptp(lw[inside]) < EQUAL_LOG_WEIGHTS:
        # p is q up to a constant: no tail to fit (PSIS's fit returns inf on equal weights)
        k, ess = -np.inf, float(inside.sum())
        w[inside] = 1.0 / inside.sum()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PSIS's own Pareto-k warning: reported here
            smoothed, k = az.psislw(lw - lw[inside].max())
        w = np.exp(np.asarray(smoothed, float))
        w /= w.sum()  # normalised by psislw already; again against rounding
        ess = float(1.0 / np.sum(w**2))
        k = float(k)
    return {
        "draws": n,
        "pareto_k": k,
        "k_threshold": float(min(1.0 - 1.0 / np.log10(n), 0.7)) if n > 10 else 0.0,
        "ess": ess,
        "outside_support": int(np.sum(~np.isfinite(lp))),
        "weights": w,
    }


#: A parameter whose reweighted mean moves by more than this many of its Laplace SDs, or whose
#: SD changes by more than this factor either way, is named in the note of a flagged check (the
#: `MOVES_NAMED` largest).
MOVE_SD, MOVE_SD_RATIO, MOVES_NAMED = 0.2, 1.25, 4


def weighted_moves(
    samples: np.ndarray,
    weights: np.ndarray,
    names: Sequence[str],
    reference: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """Where the importance weights move each parameter: the posterior against the Gaussian.

    Parameters
    ----------
    samples : numpy.ndarray
        ``(S, P)`` draws of the Laplace Gaussian (natural scale).
    weights : numpy.ndarray
        ``(S,)`` their normalised importance weights (`laplace_check`).
    names : sequence of str
        The ``P`` parameters.
    reference : numpy.ndarray, optional
        ``(S', P)`` draws of the Laplace Gaussian to compare with when ``samples`` are another
        proposal's (a Student-t's, whose own spread is not the Gaussian's); default ``samples``.

    Returns
    -------
    dict of str to (float, float)
        Per parameter: the weighted mean minus the unweighted mean of ``reference``, in its SD,
        and the weighted SD over its SD. Under a flagged check (Pareto k above the
        threshold) these are not estimates of the posterior, only where the heaviest weights
        sit: the direction in which the Gaussian misses it.
    """
    x = np.asarray(samples, float)
    w = np.asarray(weights, float)
    total = w.sum()
    if total <= 0:
        return {}
    ref = x if reference is None else np.asarray(reference, float)
    mean, sd = np.nanmean(ref, axis=0), np.nanstd(ref, axis=0)
    m_w = w @ x / total
    sd_w = np.sqrt(w @ (x - m_w) ** 2 / total)
    return {
        str(name): (float((m_w[j] - mean[j]) / sd[j]), float(sd_w[j] / sd[j]))
        for j, name in enumerate(names)
        if np.isfinite(sd[j]) and sd[j] > 0
    }


def _moves_text(moved: Mapping[str, tuple[float, float]]) -> str:
    """Name the parameters the weights move most (`MOVE_SD`, `MOVE_SD_RATIO`), for a note."""
    big = {
        n: (d, r)
        for n, (d, r) in moved.items()
        if abs(d) > MOVE_SD or not 1 / MOVE_SD_RATIO < r < MOVE_SD_RATIO
    }
    if not big:
        return ""
    order = sorted(big, key=lambda n: -max(abs(big[n][0]), abs(np.log(big[n][1]))))
    order = order[:MOVES_NAMED]
    return (
        "; reweighted, "
        + ", ".join(f"{n} moves {big[n][0]:+.1f} SD (its SD x{big[n][1]:.2f})" for n in order)
        + " (where the heaviest weights sit: a direction, not an estimate, at this k)"
    )


def weighted_quantile(x: np.ndarray, weights: np.ndarray, q: Any) -> np.ndarray:
    """Quantiles of ``x`` under normalised weights (importance-weighted draws).

    The weighted empirical distribution with each draw's mass centred on it (the weighted form
    of the "hazen" rule), interpolated linearly between draws: with equal weights it is
    ``numpy.quantile(x, q, method="hazen")``.

    Parameters
    ----------
    x : numpy.ndarray
        ``(S,)`` draws.
    weights : numpy.ndarray
        ``(S,)`` non-negative weights; draws of weight 0 are ignored.
    q : float or array_like
        Probabilities in [0, 1].

    Returns
    -------
    numpy.ndarray
    """
    x, w = np.asarray(x, float), np.asarray(weights, float)
    keep = w > 0
    if not np.any(keep):
        raise ValueError("weighted_quantile: every weight is 0")
    order = np.argsort(x[keep])
    xs, ws = x[keep][order], w[keep][order]
    ws = ws / ws.sum()
    cdf = np.cumsum(ws) - ws / 2
    return np.interp(q, cdf, xs)


def weighted_quantile_mcse(x: np.ndarray, weights: np.ndarray, q: Any) -> np.ndarray:
    """Monte Carlo standard error of `weighted_quantile` at ``q`` (self-normalised weights).

    The weighted CDF at the quantile, ``F = sum w_i 1{x_i <= x_q}``, has the delta-method
    variance of a self-normalised importance-sampling estimate, ``sum w_i^2 (1{x_i <= x_q} -
    q)^2`` (Owen 2013, Monte Carlo theory, methods and examples, 9.2); the quantile's error is
    half the distance between the quantiles one such SD either side of ``q`` (the inversion of
    the posterior package's quantile MCSE, Vehtari et al. 2021, Bayesian Analysis 16(2)). Per
    quantile, so a tail where the heaviest weights sit gets the larger error a single ESS would
    hide (at the 97.5% end of a posterior 1.2x as wide as its proposal: 0.27 against the SD
    0.30 of repeated estimates, where the weights' overall ESS says 0.12).

    Parameters
    ----------
    x, weights : numpy.ndarray
        ``(S,)`` draws and their normalised weights (`weighted_quantile`).
    q : float or array_like
        Probabilities in [0, 1].

    Returns
    -------
    numpy.ndarray
    """
    x, w = np.asarray(x, float), np.asarray(weights, float)
    w = w / w.sum()
    qs = np.atleast_1d(np.asarray(q, float))
    below = x[:, None] <= weighted_quantile(x, w, qs)[None, :]
    sd = np.sqrt(w**2 @ (below - qs) ** 2)
    lo = weighted_quantile(x, w, np.clip(qs - sd, 0.0, 1.0))
    hi = weighted_quantile(x, w, np.clip(qs + sd, 0.0, 1.0))
    return ((hi - lo) / 2).reshape(np.shape(q))


def _fd_hessian(
    grad: Callable[[np.ndarray], np.ndarray], x: np.ndarray, step: float = LAPLACE_STEP
) -> np.ndarray:
    """Hessian by central differences of the gradient (symmetrised), steps ``step max(1, |x|)``.

    Where ``x +- d`` leaves the support (a non-finite gradient, e.g. unordered cutpoints), that
    coordinate's step is quartered, at most five times; then the column is NaN.
    """
    p = x.size
    h = np.empty((p, p))
    for i in range(p):
        d = np.zeros(p)
        d[i] = step * max(1.0, abs(x[i]))
        for _ in range(6):
            col = (grad(x + d) - grad(x - d)) / (2 * d[i])
            if np.all(np.isfinite(col)):
                break
            d[i] /= 4.0
        h[:, i] = col
    return (h + h.T) / 2


def _laplace_hessian(
    grad: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    report: Callable[[str], None] | None = None,
    step: float = LAPLACE_STEP,
) -> tuple[np.ndarray, str]:
    """`_fd_hessian` at ``step``, checked against twice the step (a note if they differ)."""
    if report is not None:
        report(f"Laplace: Hessian by central differences ({4 * x.size} gradients)")
    hess = _fd_hessian(grad, x, step)
    check = _fd_hessian(grad, x, 2 * step)
    if not (np.all(np.isfinite(hess)) and np.all(np.isfinite(check))):
        return hess, ""
    change = float(np.linalg.norm(check - hess) / max(np.linalg.norm(hess), 1e-300))
    if change <= LAPLACE_STEP_TOLERANCE:
        return hess, ""
    return hess, (
        f"Laplace: the Hessian changes by {change:.0%} (Frobenius norm) between difference "
        f"steps {step:g} and {2 * step:g}: the log-posterior is not quadratic on that scale, "
        f"and the Gaussian approximation is rough"
    )


def _covariance(hess: np.ndarray) -> tuple[np.ndarray, str]:
    """Inverse Hessian; curvatures below 1 (unconstrained scale) are raised to 1, and said so."""
    if not np.all(np.isfinite(hess)):
        return np.eye(hess.shape[0]), "Laplace: Hessian not finite; unit covariance used (INVALID)"
    w, v = np.linalg.eigh(hess)
    note = ""
    if np.any(w <= 1e-8):
        note = (
            f"Laplace: Hessian not positive definite at the mode (smallest eigenvalue "
            f"{w.min():.3g}): the mode is not a maximum in every direction and the Gaussian "
            f"approximation is INVALID there; those directions were given variance 1 on the "
            f"unconstrained scale"
        )
        w = np.where(w > 1e-8, w, 1.0)
    return (v / w) @ v.T, note


def _summary(
    lik: AggregateLikelihood,
    vec_map: np.ndarray,
    samples: np.ndarray,
    weights: np.ndarray | None = None,
    weighted: np.ndarray | None = None,
) -> pd.DataFrame:
    """Prior, MAP, posterior median and interval, and ``sd_ratio`` (posterior / prior SD).

    ``sd_ratio`` is on the sampling scale (log for LogNormal priors); near 1: the data did not
    inform the parameter. NaN for prior families without a closed-form SD here. With importance
    ``weights`` of the draws ``weighted`` (default: the first of ``samples``): their weighted
    median and interval (``*_is``) and their Monte Carlo errors (``mcse_*_is``), else NaN.
    """
    if weights is not None and weighted is None:
        weighted = samples[: weights.size]
    rows = []
    for i, p in enumerate(lik.parameters):
        lo, med, hi = np.nanquantile(samples[:, i], [0.025, 0.5, 0.975])
        lo_is = med_is = hi_is = np.nan
        se_is = np.full(3, np.nan)
        if weights is not None:
            qs = [0.025, 0.5, 0.975]
            lo_is, med_is, hi_is = weighted_quantile(weighted[:, i], weights, qs)
            se_is = weighted_quantile_mcse(weighted[:, i], weights, qs)
        prior = lik.priors.get(p)
        ratio = np.nan
        if prior is not None and prior.family in ("Normal", "LogNormal"):
            x = samples[:, i] if prior.family == "Normal" else np.log(samples[:, i])
            ratio = float(np.nanstd(x) / prior.params["sigma"])
        rows.append(
            {
                "parameter": p,
                "prior": str(prior) if prior is not None else "",
                "start": lik.initial[i],
                "map": vec_map[i],
                "median": med,
                "lower": lo,
                "upper": hi,
                "sd_ratio": ratio,
                "median_is": med_is,
                "lower_is": lo_is,
                "upper_is": hi_is,
                "mcse_median_is": se_is[1],
                "mcse_lower_is": se_is[0],
                "mcse_upper_is": se_is[2],
            }
        )
    return pd.DataFrame(rows).set_index("parameter")


# --------------------------------------------------------------------------------------------
# Posterior predictive rates of other cohorts


def posterior_predictive(
    fit: AggregateFit,
    trials: Sequence[TrialSummary],
    *,
    n_draws: int = 100,
    replicates: int = 200,
    seed: int = 0,
    extra: Mapping[str, Sequence[Outcome]] | None = None,
    mass: float = 0.95,
    importance: bool = False,
    **likelihood_options: Any,
) -> pd.DataFrame:
    """Predicted rates of other cohorts over a calibration's posterior, next to the observed.

    Parameters
    ----------
    fit : AggregateFit
    trials : sequence of TrialSummary
        Cohorts to predict (not used in the calibration).
    n_draws : int, optional
        Posterior draws used (every draw: virtual patients simulated, reactive doses re-found).
    replicates : int, optional
        Binomial replicates per draw (the study's sampling variation at its N).
    seed : int, optional
    extra : mapping of str to sequence of Outcome, optional
        Additional outcome rows by trial id (e.g. cumulative rates derived from a grade
        distribution), marked as derived.
    mass : float, optional
        Interval mass.
    importance : bool, optional
        Draw the ``n_draws`` (with replacement) from the check's draws in proportion to their
        importance weights (`AggregateFit.importance_samples`, `importance_weights`): the
        proposal corrected towards the posterior. Only as many distinct draws as the weights'
        ESS, about; a ValueError when the fit has no reliable weights.
    **likelihood_options
        Overrides of the calibration's likelihood options (e.g. ``treatment`` by trial id).

    Returns
    -------
    pandas.DataFrame
        Per outcome: ``trial``, ``outcome``, ``n``, ``observed``, ``rate`` (posterior median of
        the predicted rate) with ``rate_lower`` / ``rate_upper``, ``pred_lower`` /
        ``pred_upper`` (posterior predictive interval of the observed fraction at the study's n,
        binomial sampling included), ``p_value`` (two-sided posterior predictive p-value of the
        observed count), ``inside`` (observed within the predictive interval), ``derived``,
        ``cutpoints`` (the cutpoint parameters the row depends on).
    """
    weights = fit.importance_weights
    if importance and weights is None:
        check = fit.settings.get("laplace_check")
        if fit.method != "laplace":
            why = f"method {fit.method!r}: its draws are the posterior's already"
        elif check is None:
            why = "no Laplace check: importance_draws=0"
        else:
            why = f"Pareto k {check['pareto_k']:.2f} above {check['k_threshold']:.2f}"
        raise ValueError(
            f"posterior_predictive(importance=True): the fit has no reliable importance "
            f"weights ({why})"
        )
    src = fit.likelihood
    trials = list(trials)
    if extra:
        trials = [
            dataclasses.replace(t, outcomes=t.outcomes + tuple(extra.get(t.id, ()))) for t in trials
        ]
    opts = dict(
        design=src.design,
        values=dict(zip(src.model.parameters, src.theta0, strict=True)),
        omega=dict(zip(src.model.iiv, src.omega0, strict=True)),
        treatment=src.treatment,
        endpoints=src.endpoints,
        use=src.use,
        onset=src.onset,
        grading_shifts=src.grading_shifts,
        definition_shifts=src.definition_shifts,
        solver=src.solver,
    )
    opts.update(likelihood_options)
    lik = AggregateLikelihood(src.model, trials, src.parameters, **opts)
    rng = np.random.default_rng(seed)
    if importance:
        pick = rng.choice(weights.size, size=n_draws, replace=True, p=weights)
        chosen = fit.importance_samples[pick]
    else:
        pick = rng.choice(fit.draws.shape[0], size=min(n_draws, fit.draws.shape[0]), replace=False)
        chosen = fit.draws[pick]
    probs = lik.probabilities_many(chosen)  # (S, R)
    alpha = (1 - mass) / 2
    out = []
    for r, row in enumerate(lik.rows):
        n = int(round(row.n))
        p = np.clip(probs[:, r], 0.0, 1.0)
        y = rng.binomial(n, np.repeat(p, replicates))
        obs_count = row.count
        frac = y / n
        lo, hi = np.quantile(frac, [alpha, 1 - alpha])
        p_hi = np.mean(y >= obs_count - 1e-9)
        p_lo = np.mean(y <= obs_count + 1e-9)
        rl, rm, rh = np.quantile(p, [alpha, 0.5, 1 - alpha])
        obs = obs_count / row.n
        k_cut = lik.n_cut
        cuts = [
            lik.ordinal[row.q].cutpoints[j - 1] for j in (row.j_lo, row.j_hi) if 1 <= j <= k_cut
        ]
        out.append(
            {
                "trial": row.trial,
                "outcome": row.label,
                "kind": row.kind,
                "cutpoints": ",".join(cuts),
                "n": row.n,
                "observed": obs,
                "rate": rm,
                "rate_lower": rl,
                "rate_upper": rh,
                "pred_lower": lo,
                "pred_upper": hi,
                "p_value": min(1.0, 2 * min(p_hi, p_lo)),
                "inside": bool(lo - 1e-12 <= obs <= hi + 1e-12),
                "derived": row.derived,
            }
        )
    return pd.DataFrame(out)
