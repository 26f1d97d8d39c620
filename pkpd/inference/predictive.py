"""Predictive simulation from a fit: posterior predictive checks and visual predictive checks.

Two kinds of replicated data, from posterior draws of the typical values, the IIV and the
residual error:

- **posterior predictive** (``new_subjects=False``): the fitted subjects, with their own
  posterior random effects: does the model reproduce *these* data?
- **visual predictive check** (``new_subjects=True``): new subjects with the same design
  (doses, times, covariates), random effects drawn from ``N(0, Omega)``: does the model
  reproduce the spread of a *population*?

Simulated values below an observation's lower limit (or above an upper one) count as censored,
as the assay would report them, so the BLQ fraction can be compared with the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr


def _batched(info: Any, grid: np.ndarray | None = None) -> Any:
    import jax

    from pkpd.inference.predict import make_grid_predictor

    fn = (
        info.predict
        if grid is None
        else make_grid_predictor(info.model, info.bound, info.solver, grid)
    )
    return jax.jit(jax.vmap(fn))


def predictions(
    info: Any, theta: np.ndarray, eta: np.ndarray, grid: np.ndarray | None = None, chunk: int = 256
) -> np.ndarray:
    """Predictions for a batch of parameter draws.

    Parameters
    ----------
    info : ModelInfo
        The prepared model.
    theta : numpy.ndarray
        ``(D, P)`` typical values.
    eta : numpy.ndarray
        ``(D, N, K)`` random effects.
    grid : numpy.ndarray, optional
        A common time grid: predictions of every endpoint on it, ``(D, N, G, E)``. Without
        it, predictions at the fitted observations, ``(D, n_obs)``.
    chunk : int, optional
        Draws per vectorised batch.

    Returns
    -------
    numpy.ndarray
        NaN where a solve failed.
    """
    import jax.numpy as jnp

    fn = _batched(info, grid)
    out = []
    for start in range(0, theta.shape[0], chunk):
        out.append(
            np.asarray(
                fn(
                    jnp.asarray(theta[start : start + chunk]),
                    jnp.asarray(eta[start : start + chunk]),
                )
            )
        )
    return np.concatenate(out, axis=0)


def _draw_values(fit: Any, names: list[str], index: np.ndarray) -> dict[str, np.ndarray]:
    post = fit.posterior
    out = {}
    for name in names:
        if name in post:
            out[name] = np.asarray(post[name].values).reshape(-1, *post[name].shape[2:])[index]
        else:
            out[name] = np.full(index.size, fit.info.fixed[name])
    return out


def new_subject_eta(fit: Any, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random effects of new subjects, ``N(0, Omega)`` for each posterior draw in ``index``.

    Parameters
    ----------
    fit : Fit
        The fit.
    index : numpy.ndarray
        ``(D,)`` flat draw indices.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        ``(D, N, K)``.
    """
    info = fit.info
    k = len(info.iiv)
    n = info.n_subjects
    z = rng.standard_normal((index.size, n, k))
    if k == 0:
        return z
    omega = np.stack(
        [_draw_values(fit, [f"omega_{p}"], index)[f"omega_{p}"] for p in info.iiv], axis=-1
    )  # (D, K)
    if info.correlated_iiv:
        corr = _draw_values(fit, ["corr_iiv"], index)["corr_iiv"]  # (D, K, K)
        cov = omega[:, :, None] * corr * omega[:, None, :]
        chol = np.linalg.cholesky(cov + 1e-12 * np.eye(k))
        return np.einsum("dnk,djk->dnj", z, chol)
    return z * omega[:, None, :]


def simulate_dv(
    info: Any, pred: np.ndarray, resid: dict[str, np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Add residual error (or draw ordinal grades) to predictions at the fitted observations.

    Parameters
    ----------
    info : ModelInfo
        The prepared model.
    pred : numpy.ndarray
        ``(D, n_obs)`` predictions.
    resid : dict of str to numpy.ndarray
        ``(D,)`` draws of the residual error and cutpoint parameters by name.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        ``(D, n_obs)`` simulated observations (ordinal: the level values).
    """
    obs = info.observations
    y = np.full(pred.shape, np.nan)
    for e, name in enumerate(info.model.endpoints):
        ospec = info.spec.observations[name]
        cols = np.flatnonzero(obs.endpoint == e)
        if cols.size == 0:
            continue
        f = pred[:, cols]
        eps = rng.standard_normal(f.shape)

        def par(role: str, ospec: Any = ospec) -> np.ndarray:
            return np.asarray(resid[ospec.sigma[role]])[:, None]

        if ospec.error == "additive":
            y[:, cols] = f + par("sigma") * eps
        elif ospec.error == "proportional":
            y[:, cols] = f + par("sigma_prop") * np.abs(f) * eps
        elif ospec.error == "combined":
            y[:, cols] = f + np.sqrt(par("sigma") ** 2 + (par("sigma_prop") * f) ** 2) * eps
        elif ospec.error == "lognormal":
            y[:, cols] = f * np.exp(par("sigma") * eps)
        elif ospec.error == "ordinal":
            cut = np.stack([np.asarray(resid[c]) for c in ospec.cutpoints], axis=-1)  # (D, C)
            # One logistic offset per (draw, record) or per (draw, subject), as the likelihood.
            if ospec.offset == "subject":
                u = rng.uniform(size=(f.shape[0], int(obs.subject.max()) + 1))
                u = u[:, obs.subject[cols]]
            else:
                u = rng.uniform(size=f.shape)
            e = np.log(u) - np.log1p(-u)
            if ospec.offset == "subject" and ospec.record_scale:  # plus noise per record
                scale = np.asarray(resid[ospec.record_scale])[:, None]
                e = e + scale * rng.logistic(size=f.shape)
            category = np.sum(f[:, :, None] + e[:, :, None] > cut[:, None, :], axis=-1)
            y[:, cols] = np.asarray(ospec.levels, dtype=float)[category]
    return y


def lower_limits(info: Any) -> np.ndarray:
    """Return the assay's lower limit of every observation, as a simulation should apply it.

    Datasets often give a limit only on the censored records (``CENS = 1, LIMIT = ...``), but
    the assay's LLOQ applies to every sample: a record without a limit takes its endpoint's
    ``lloq`` from the model file, else the smallest lower limit recorded for that endpoint.

    Parameters
    ----------
    info : ModelInfo
        The prepared model.

    Returns
    -------
    numpy.ndarray
        ``(n_obs,)``, NaN where the endpoint has no known lower limit.
    """
    obs = info.observations
    lower = np.where(np.isfinite(obs.limit) & (obs.cens != -1), obs.limit, np.nan)
    out = lower.copy()
    for e, name in enumerate(info.model.endpoints):
        here = obs.endpoint == e
        known = lower[here & np.isfinite(lower)]
        default = info.spec.observations[name].lloq
        if default is None and known.size:
            default = float(known.min())
        if default is not None:
            out[here & ~np.isfinite(out)] = default
    return out


def censor_flags(info: Any, y: np.ndarray) -> np.ndarray:
    """Which simulated values the assay would report as censored (+1 below, -1 above).

    Lower limits as in `lower_limits`; an upper limit applies to the records recorded as
    above it (``obs_cens == -1``).

    Parameters
    ----------
    info : ModelInfo
        The prepared model.
    y : numpy.ndarray
        ``(D, n_obs)`` simulated observations.

    Returns
    -------
    numpy.ndarray
        int8 ``(D, n_obs)``.
    """
    obs = info.observations
    lower = lower_limits(info)
    upper = np.where(obs.cens == -1, obs.limit, np.nan)
    flags = np.zeros(y.shape, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        flags[y < lower[None, :]] = 1
        flags[y > upper[None, :]] = -1
    return flags


def posterior_predictive(
    fit: Any, n_draws: int = 500, seed: int = 0, new_subjects: bool = False
) -> xr.Dataset:
    """Replicated datasets at the fitted observations.

    Parameters
    ----------
    fit : Fit
        The fit.
    n_draws : int, optional
        Posterior draws used (at random, without replacement, when there are more).
    seed : int, optional
        Seed of the draw choice, the new subjects' effects and the residual errors.
    new_subjects : bool, optional
        False: the fitted subjects (their posterior ``eta``); True: new subjects
        (``eta ~ N(0, Omega)``), as in a VPC.

    Returns
    -------
    xarray.Dataset
        ``y_rep``, ``pred`` and ``cens_rep`` over ``(sample, obs_id)``, plus the observed
        ``y`` and ``cens`` and the observations' ``time``, ``subject`` and ``endpoint``.
    """
    from pkpd.inference.likelihood import residual_parameters

    rng = np.random.default_rng(seed)
    info = fit.info
    post = fit.posterior
    total = post.sizes["chain"] * post.sizes["draw"]
    index = np.arange(total)
    if total > n_draws:
        index = np.sort(rng.choice(total, n_draws, replace=False))
    values = _draw_values(fit, info.estimated, index)
    theta = info.theta_from(values)
    if new_subjects:
        eta = new_subject_eta(fit, index, rng)
    elif "eta" in post:
        eta = np.asarray(post["eta"].values).reshape(total, *post["eta"].shape[2:])[index]
    else:
        eta = np.zeros((index.size, info.n_subjects, 0))
    pred = predictions(info, theta, eta)
    resid = _draw_values(fit, residual_parameters(info.spec, info.model), index)
    y = simulate_dv(info, pred, resid, rng)
    flags = censor_flags(info, y)
    obs = info.observations
    dims = ("sample", "obs_id")
    return xr.Dataset(
        {
            "y_rep": (dims, y),
            "pred": (dims, pred),
            "cens_rep": (dims, flags),
            "y": ("obs_id", np.where(obs.cens != 0, np.nan, obs.dv)),
            "cens": ("obs_id", obs.cens),
            "time": ("obs_id", obs.time),
            "subject": ("obs_id", np.asarray(info.bound.subjects)[obs.subject]),
            "endpoint": ("obs_id", np.asarray(info.model.endpoints)[obs.endpoint]),
        },
        coords={"obs_id": np.arange(len(obs)), "sample": index},
        attrs={"new_subjects": int(new_subjects), "seed": seed},
    )


def time_bins(times: np.ndarray, n_bins: int = 8) -> np.ndarray:
    """Bin edges holding about equal numbers of observations (at most ``n_bins`` bins).

    Parameters
    ----------
    times : numpy.ndarray
        Observation times.
    n_bins : int, optional
        Number of bins wanted.

    Returns
    -------
    numpy.ndarray
        Increasing edges; the last bin includes its right edge.
    """
    times = np.asarray(times, dtype=float)
    unique = np.unique(times)
    if unique.size <= n_bins:
        mids = (unique[1:] + unique[:-1]) / 2
        return np.concatenate([[unique[0]], mids, [unique[-1]]])
    return np.unique(np.quantile(times, np.linspace(0, 1, n_bins + 1)))


def _censored_quantile(values: np.ndarray, censored: np.ndarray, q: float) -> np.ndarray:
    """Quantile along the last axis, NaN where it falls among the censored values."""
    low = np.where(censored, -np.inf, values)
    sorted_ = np.sort(low, axis=-1)
    n = sorted_.shape[-1]
    pos = q * (n - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    a, b = sorted_[..., lo], sorted_[..., hi]
    with np.errstate(invalid="ignore"):
        out = a + (b - a) * (pos - lo)
    return np.where(np.isfinite(a) & np.isfinite(b), out, np.nan)


def _finite_or_nan(x: Any) -> float:
    x = float(x)
    return x if np.isfinite(x) else float("nan")


def vpc_table(
    fit: Any,
    n_sim: int = 200,
    n_bins: int = 8,
    quantiles: tuple[float, ...] = (0.05, 0.5, 0.95),
    interval: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Visual predictive check statistics per endpoint and time bin.

    For each bin: the observed ``quantiles`` (NaN where they fall below the LLOQ), the median
    and ``interval`` of the same quantiles over ``n_sim`` simulated replicates of the study
    (new subjects, same design), and the observed and simulated fractions of censored values.

    Parameters
    ----------
    fit : Fit
        The fit.
    n_sim : int, optional
        Replicated studies (one posterior draw each).
    n_bins : int, optional
        Time bins per endpoint.
    quantiles : tuple of float, optional
        Quantiles of the observations compared.
    interval : float, optional
        Mass of the simulated intervals.
    seed : int, optional
        Seed of the simulation.

    Returns
    -------
    pandas.DataFrame
        One row per (endpoint, bin, quantile): ``endpoint``, ``bin``, ``t_lo``, ``t_hi``,
        ``t_mid`` (median time), ``n``, ``q``, ``observed``, ``sim_median``, ``sim_lo``,
        ``sim_hi``, ``blq_observed``, ``blq_sim_median``, ``blq_sim_lo``, ``blq_sim_hi``, and
        ``level`` (NaN). An ordinal endpoint (grades) has instead one row per (bin, level
        above the lowest): ``level`` is the grade k, ``observed`` the fraction of the bin's
        records with grade >= k, ``sim_*`` the median and interval of that fraction in the
        replicates, ``q`` and ``blq_*`` NaN.
    """
    rep = posterior_predictive(fit, n_draws=n_sim, seed=seed, new_subjects=True)
    info = fit.info
    lo_q, hi_q = (1 - interval) / 2, 1 - (1 - interval) / 2
    rows = []
    for name in info.model.endpoints:
        ospec = info.spec.observations[name]
        sel = np.flatnonzero(rep["endpoint"].values == name)
        if sel.size == 0:
            continue
        t = rep["time"].values[sel]
        edges = time_bins(t, n_bins)
        which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
        for b in range(len(edges) - 1):
            cols = sel[which == b]
            if cols.size == 0:
                continue
            if ospec.error == "ordinal":
                y_obs = rep["y"].values[cols]
                y_sim = rep["y_rep"].values[:, cols]
                for level in ospec.levels[1:]:
                    frac = (y_sim >= level).mean(axis=1)
                    rows.append(
                        {
                            "endpoint": name,
                            "bin": b,
                            "t_lo": edges[b],
                            "t_hi": edges[b + 1],
                            "t_mid": float(np.median(t[which == b])),
                            "n": int(cols.size),
                            "q": np.nan,
                            "level": float(level),
                            "observed": float(np.mean(y_obs >= level)),
                            "sim_median": float(np.median(frac)),
                            "sim_lo": float(np.quantile(frac, lo_q)),
                            "sim_hi": float(np.quantile(frac, hi_q)),
                            "blq_observed": np.nan,
                            "blq_sim_median": np.nan,
                            "blq_sim_lo": np.nan,
                            "blq_sim_hi": np.nan,
                        }
                    )
                continue
            y_obs = np.nan_to_num(rep["y"].values[cols], nan=-np.inf)
            cens_obs = rep["cens"].values[cols] == 1
            y_sim = rep["y_rep"].values[:, cols]
            cens_sim = rep["cens_rep"].values[:, cols] == 1
            blq_sim = cens_sim.mean(axis=1)
            for q in quantiles:
                observed = _censored_quantile(y_obs, cens_obs | ~np.isfinite(y_obs), q)
                # A replicate whose quantile is below the limit counts as -inf: the interval
                # then reaches below the LLOQ instead of ignoring those replicates.
                simulated = np.nan_to_num(_censored_quantile(y_sim, cens_sim, q), nan=-np.inf)
                rows.append(
                    {
                        "endpoint": name,
                        "bin": b,
                        "t_lo": edges[b],
                        "t_hi": edges[b + 1],
                        "t_mid": float(np.median(t[which == b])),
                        "n": int(cols.size),
                        "q": q,
                        "level": np.nan,
                        "observed": float(observed),
                        "sim_median": _finite_or_nan(np.quantile(simulated, 0.5, method="nearest")),
                        "sim_lo": _finite_or_nan(np.quantile(simulated, lo_q, method="nearest")),
                        "sim_hi": _finite_or_nan(np.quantile(simulated, hi_q, method="nearest")),
                        "blq_observed": float(cens_obs.mean()),
                        "blq_sim_median": float(np.median(blq_sim)),
                        "blq_sim_lo": float(np.quantile(blq_sim, lo_q)),
                        "blq_sim_hi": float(np.quantile(blq_sim, hi_q)),
                    }
                )
    table = pd.DataFrame(rows)
    table.attrs["n_sim"] = n_sim
    table.attrs["seed"] = seed
    table.attrs["has_censoring"] = bool(np.isfinite(lower_limits(info)).any())
    limits = lower_limits(info)
    table.attrs["lloq"] = {
        name: float(np.nanmin(limits[info.observations.endpoint == e]))
        for e, name in enumerate(info.model.endpoints)
        if np.isfinite(limits[info.observations.endpoint == e]).any()
    }
    return table
