"""Pathfinder: a fast approximate posterior, and starting points for NUTS (pymc-extras).

>>> f = fit(spec, cohort, sampler="pathfinder", draws=1000, seed=1)   # approximate: flagged
>>> f = fit(spec, cohort, init="pathfinder", seed=1)                  # NUTS, started there

Pathfinder (Zhang, Carpenter, Gelman & Vehtari 2022, JMLR 23(306)) follows L-BFGS optimisation
paths from dispersed starts, fits a normal approximation with a low-rank covariance along each
path, keeps the one with the best ELBO, and importance-resamples the draws of several paths
together (Pareto-smoothed, PSIS). It costs a few hundred gradient evaluations: seconds to
minutes where NUTS takes minutes to hours, and it sees the curvature that MAP ignores. It is an
approximation: the draws are not checked by R-hat or ESS, so a Pathfinder fit is always flagged
(`pkpd.inference.diagnostics.APPROXIMATE`); a Pareto k above 0.7 says the importance weights,
hence the draws, are unreliable.

The implementation is pymc-extras' ``fit_pathfinder`` on the PyMC model of `build_model`, with
its PyTensor backend (the ODE op runs through its JAX function) and the paths run one after
the other in this process (``concurrent=None``): worker processes would each recompile the JAX
op, and a fork does not survive JAX.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

#: Default settings of ``fit_pathfinder`` (override with ``sampler_kwargs``).
PATHFINDER_DEFAULTS: dict[str, Any] = {
    "num_paths": 4,
    "num_draws_per_path": 1000,
    "importance_sampling": "psis",
    "concurrent": None,
}

#: Pareto k above which the importance-resampled draws are unreliable (Vehtari et al. 2024).
PARETO_K_MAX = 0.7

#: Scalar statistics of pymc-extras' pathfinder group kept in ``Fit.extra["pathfinder"]``.
_STATS = (
    "pareto_k",
    "lbfgs_niter_mean",
    "elbo_argmax_mean",
    "logP_mean",
    "logQ_mean",
    "compile_time",
    "compute_time",
    "total_time",
)


def _import() -> Any:
    try:
        from pymc_extras.inference import fit_pathfinder
    except ImportError as exc:  # pragma: no cover - a dependency
        raise ImportError(
            "sampler='pathfinder' and init='pathfinder' need pymc-extras (pip install pymc-extras)"
        ) from exc
    return fit_pathfinder


def _scalar(value: Any) -> Any:
    arr = np.asarray(value)
    if arr.size != 1:
        return None
    item = arr.reshape(()).item()
    if isinstance(item, bool | np.bool_):
        return bool(item)
    if isinstance(item, int | float | np.integer | np.floating):
        return float(item)
    return str(item)


def run_pathfinder(
    pm_model: Any,
    draws: int,
    seed: int,
    progressbar: bool = False,
    start: dict[str, Any] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Pathfinder draws of a model built by `build_model`.

    Parameters
    ----------
    pm_model : pymc.Model
        The model.
    draws : int
        Draws kept (after importance resampling).
    seed : int
        Random seed: the same seed gives the same draws.
    progressbar : bool, optional
        Show pymc-extras' progress bar.
    start : dict, optional
        Initial values (constrained scale, by variable name) around which the paths start
        (pymc-extras jitters them); default the model's initial point (prior medians).
    kwargs : dict, optional
        Further arguments of ``pymc_extras.inference.fit_pathfinder``, over
        `PATHFINDER_DEFAULTS` (e.g. ``num_paths``, ``maxiter``, ``jitter``).

    Returns
    -------
    idata : arviz.InferenceData
        ``posterior`` with one chain of ``draws`` draws (attribute
        ``pkpd_variational = "pathfinder"``); no ``sample_stats``.
    report : dict
        ``{"pathfinder": {...}}``: Pareto k, mean L-BFGS iterations, times, ...
    """
    fit_pathfinder = _import()
    options = {**PATHFINDER_DEFAULTS, **dict(kwargs or {})}
    options["num_draws_per_path"] = max(int(options["num_draws_per_path"]), int(draws))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BLAS notices, PSIS's own Pareto-k warning
        idata = fit_pathfinder(
            model=pm_model,
            num_draws=int(draws),
            random_seed=int(seed),
            progressbar=progressbar,
            display_summary=False,
            initvals=start,
            add_pathfinder_groups=True,
            **options,
        )
    stats = {}
    for group in ("sample_stats", "pathfinder"):
        if group in idata.groups():
            ds = getattr(idata, group)
            for key in _STATS:
                if key in ds and key not in stats:
                    stats[key] = _scalar(ds[key].values)
    stats = {k: v for k, v in stats.items() if v is not None}
    stats["num_paths"] = float(options["num_paths"])
    k = stats.get("pareto_k")
    if isinstance(k, float) and np.isfinite(k) and k > PARETO_K_MAX:
        warnings.warn(
            f"Pathfinder's importance weights are unreliable (Pareto k = {k:.2f} > "
            f"{PARETO_K_MAX}): the draws may misrepresent the posterior; use NUTS",
            stacklevel=3,
        )
    import arviz as az

    posterior = idata.posterior
    posterior.attrs["pkpd_variational"] = "pathfinder"
    return az.InferenceData(posterior=posterior), {"pathfinder": stats}


def pathfinder_start(
    pm_model: Any, seed: int, draws: int = 500, kwargs: dict[str, Any] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Return a starting point for NUTS: the median of Pathfinder's draws of every free variable.

    Parameters
    ----------
    pm_model : pymc.Model
        The model.
    seed : int
        Random seed.
    draws : int, optional
        Pathfinder draws the median is taken over.
    kwargs : dict, optional
        Further arguments of ``fit_pathfinder``.

    Returns
    -------
    start : dict of str to numpy.ndarray
        Constrained values of the free variables (what ``initvals`` take). Element-wise
        medians keep positive values positive and ordered vectors ordered.
    report : dict
        As in `run_pathfinder`.
    """
    idata, report = run_pathfinder(pm_model, draws, seed, kwargs=kwargs)
    post = idata.posterior
    start = {}
    for rv in pm_model.free_RVs:
        values = np.asarray(post[rv.name].values)
        start[rv.name] = np.median(values.reshape(-1, *values.shape[2:]), axis=0)
    return start, report
