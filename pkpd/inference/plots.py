"""Figures of a fit: VPC, individual fits, posterior predictive check, traces (matplotlib, Agg).

Every figure's title starts with the fit's verdict when the fit is flagged (R-hat, ESS,
divergences; `pkpd.inference.diagnostics`), in red: a figure from an untrustworthy fit cannot
be mistaken for a good one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_title(fit: Any, text: str) -> tuple[str, str]:
    """Title of a figure of ``fit`` and its colour: the verdict first when flagged.

    Parameters
    ----------
    fit : Fit
        The fit.
    text : str
        What the figure shows.

    Returns
    -------
    title : str
    color : str
    """
    if fit.ok:
        return text, "black"
    problems = "; ".join(fit.diagnostics()["problems"])
    return f"FLAGGED fit ({problems})\n{text}", "red"


def _finish(fig: Any, fit: Any, text: str, path: str | Path | None) -> Any:
    import textwrap

    title, color = figure_title(fit, text)
    width = max(40, int(fig.get_figwidth() * 11))  # characters that fit at fontsize 10
    title = "\n".join(textwrap.fill(line, width) for line in title.splitlines())
    fig.suptitle(title, color=color, fontsize=10)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def plot_vpc(
    fit: Any,
    path: str | Path | None = None,
    *,
    n_sim: int = 200,
    n_bins: int = 8,
    seed: int = 0,
    log_y: bool = False,
    table: Any = None,
) -> Any:
    """Visual predictive check: binned observed percentiles against simulated intervals.

    Per continuous endpoint, the observed 5th, 50th and 95th percentiles in each time bin
    (points and lines) over the 95% intervals of the same percentiles in ``n_sim`` simulated
    studies with new subjects (shaded). With censored data, a second panel compares the observed
    fraction below the LLOQ with its simulated interval; percentiles below the LLOQ are not
    drawn. Per ordinal endpoint (grades), the observed fraction of records with grade >= k in
    each time bin, for every grade k above the lowest, over its simulated 95% interval.

    Parameters
    ----------
    fit : Fit
        The fit.
    path : str or Path, optional
        Where to save (PNG, PDF, SVG by suffix).
    n_sim, n_bins, seed
        See `pkpd.inference.predictive.vpc_table`.
    log_y : bool, optional
        Logarithmic concentration axis.
    table : pandas.DataFrame, optional
        A precomputed `vpc_table`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from pkpd.inference.predictive import vpc_table

    plt = _plt()
    if table is None:
        table = vpc_table(fit, n_sim=n_sim, n_bins=n_bins, seed=seed)
    endpoints = list(dict.fromkeys(table["endpoint"])) if len(table) else []
    censored = bool(table.attrs.get("has_censoring", False))
    nrow = 2 if censored else 1
    ncol = max(1, len(endpoints))
    fig, axes = plt.subplots(
        nrow,
        ncol,
        figsize=(5.5 * ncol, 4.0 + 2.2 * (nrow - 1)),
        squeeze=False,
        gridspec_kw={"height_ratios": [2, 1][:nrow]},
    )
    colors = {0.05: "tab:blue", 0.5: "tab:red", 0.95: "tab:blue"}
    info = fit.info
    obs = info.observations
    for j, name in enumerate(endpoints):
        ax = axes[0, j]
        sub = table[table["endpoint"] == name]
        e = info.model.endpoints.index(name)
        if sub["level"].notna().all():  # ordinal: fractions at or above each grade
            _ordinal_panel(ax, sub, name, info.model.time_unit)
            if censored:
                axes[1, j].set_visible(False)
            continue
        here = (obs.endpoint == e) & (obs.cens == 0)
        ax.plot(obs.time[here], obs.dv[here], "o", color="0.6", ms=3, alpha=0.6, label="observed")
        lloq = table.attrs.get("lloq", {}).get(name)
        for q, part in sub.groupby("q"):
            color = colors.get(q, "tab:purple")
            # An interval reaching below the LLOQ is drawn down to the LLOQ.
            low = part["sim_lo"] if lloq is None else part["sim_lo"].fillna(lloq)
            ax.fill_between(part["t_mid"], low, part["sim_hi"], color=color, alpha=0.2, lw=0)
            ax.plot(
                part["t_mid"],
                part["observed"],
                "-",
                color=color,
                lw=1.5,
                label=f"observed {100 * q:g}th pct",
            )
            ax.plot(part["t_mid"], part["sim_median"], "--", color=color, lw=1)
        if lloq is not None:
            ax.axhline(lloq, color="0.3", ls=":", lw=1, label=f"LLOQ {lloq:g}")
            bottom = lloq / 2 if log_y else None
            if bottom is not None:
                ax.set_ylim(bottom=bottom)
        unit = info.model.endpoint_units[e]
        ax.set_xlabel(f"time ({info.model.time_unit})")
        ax.set_ylabel(f"{name} ({unit})")
        if log_y:
            ax.set_yscale("log")
        ax.set_title(f"{name}: shaded = 95% PI of simulated percentiles", fontsize=8)
        ax.legend(fontsize=7)
        if censored:
            bx = axes[1, j]
            mid = sub.drop_duplicates("bin")
            bx.fill_between(
                mid["t_mid"],
                mid["blq_sim_lo"],
                mid["blq_sim_hi"],
                color="tab:green",
                alpha=0.25,
                lw=0,
                label="simulated 95% PI",
            )
            bx.plot(mid["t_mid"], mid["blq_observed"], "o-", color="tab:green", label="observed")
            bx.set_ylim(-0.02, 1.02)
            bx.set_ylabel("fraction < LLOQ")
            bx.set_xlabel(f"time ({info.model.time_unit})")
            bx.legend(fontsize=7)
    text = (
        f"VPC: {fit.spec.name} on {fit.cohort.source} "
        f"({table.attrs.get('n_sim', n_sim)} simulated studies)"
    )
    return _finish(fig, fit, text, path)


def _ordinal_panel(ax: Any, sub: Any, name: str, time_unit: str) -> None:
    """One ordinal endpoint of a VPC: observed and simulated fractions with grade >= k."""
    for k, (level, part) in enumerate(sub.groupby("level")):
        color = f"C{k}"
        ax.fill_between(part["t_mid"], part["sim_lo"], part["sim_hi"], color=color, alpha=0.2, lw=0)
        ax.plot(
            part["t_mid"],
            part["observed"],
            "o-",
            color=color,
            lw=1.5,
            ms=3,
            label=f"observed {name} >= {level:g}",
        )
        ax.plot(part["t_mid"], part["sim_median"], "--", color=color, lw=1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"time ({time_unit})")
    ax.set_ylabel(f"fraction of records with {name} >= k")
    ax.set_title(f"{name}: shaded = 95% PI of simulated fractions", fontsize=8)
    ax.legend(fontsize=7)


def plot_individual(
    fit: Any,
    path: str | Path | None = None,
    *,
    subjects: Any = None,
    n_draws: int = 200,
    grid: np.ndarray | None = None,
    log_y: bool = False,
    max_subjects: int = 16,
    seed: int = 0,
) -> Any:
    """Individual fits: each subject's data with its posterior prediction band.

    Per subject: observations (censored ones as open triangles at their limit), the posterior
    median individual prediction and its 90% interval, and the population prediction
    (typical values, ``eta = 0``, posterior median) dashed.

    Parameters
    ----------
    fit : Fit
        The fit.
    path : str or Path, optional
        Where to save.
    subjects : list, optional
        Subject IDs (default: the first ``max_subjects``).
    n_draws : int, optional
        Posterior draws used for the bands.
    grid : numpy.ndarray, optional
        Time grid (default: 200 points over the observed range).
    log_y : bool, optional
        Logarithmic y axis.
    max_subjects : int, optional
        Panels at most when ``subjects`` is not given.
    seed : int, optional
        Seed of the choice of draws.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from pkpd.inference.predictive import predictions

    plt = _plt()
    info = fit.info
    obs = info.observations
    ids = list(info.bound.subjects)
    chosen = ids[:max_subjects] if subjects is None else list(subjects)
    rows = [ids.index(s) for s in chosen]
    if grid is None:
        grid = np.linspace(min(0.0, float(obs.time.min())), float(obs.time.max()), 200)
    theta, eta = fit.draws(max_draws=n_draws, seed=seed)
    dense = predictions(info, theta, eta, grid=grid)  # (D, N, G, E)
    typical = predictions(info, np.median(theta, axis=0)[None], np.zeros_like(eta[:1]), grid=grid)[
        0
    ]  # (N, G, E)
    n = len(rows)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 2.7 * nrow), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, sid, i in zip(axes.flat, chosen, rows, strict=False):
        for e, name in enumerate(info.model.endpoints):
            here = (obs.subject == i) & (obs.endpoint == e)
            if not here.any():
                continue
            band = dense[:, i, :, e]
            lo, med, hi = np.nanquantile(band, [0.05, 0.5, 0.95], axis=0)
            ax.fill_between(grid, lo, hi, alpha=0.25, lw=0, color=f"C{e}")
            ax.plot(grid, med, color=f"C{e}", lw=1.2, label=f"{name} individual")
            ax.plot(grid, typical[i, :, e], "--", color=f"C{e}", lw=0.8, label="population")
            unc = here & (obs.cens == 0)
            cen = here & (obs.cens != 0)
            ax.plot(obs.time[unc], obs.dv[unc], "o", color="k", ms=3)
            ax.plot(obs.time[cen], obs.limit[cen], "v", mfc="none", color="k", ms=4)
        ax.set_title(f"subject {sid}", fontsize=8)
        if log_y:
            ax.set_yscale("log")
    axes.flat[0].legend(fontsize=6)
    text = (
        f"Individual fits: {fit.spec.name} on {fit.cohort.source} (median and 90% interval "
        "of the individual prediction; dashed: population)"
    )
    return _finish(fig, fit, text, path)


def plot_ppc(fit: Any, path: str | Path | None = None, *, n_draws: int = 200, seed: int = 0) -> Any:
    """Posterior predictive check and goodness of fit.

    Left: the empirical distribution of the observations against that of replicated datasets
    (the fitted subjects, posterior random effects, residual error). Right: observations against
    the posterior median individual prediction (IPRED) with the identity line.

    Parameters
    ----------
    fit : Fit
        The fit.
    path : str or Path, optional
        Where to save.
    n_draws : int, optional
        Replicated datasets.
    seed : int, optional
        Seed.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from pkpd.inference.predictive import posterior_predictive

    plt = _plt()
    rep = posterior_predictive(fit, n_draws=n_draws, seed=seed)
    info = fit.info
    endpoints = [n for n in info.model.endpoints if (rep["endpoint"].values == n).any()]
    fig, axes = plt.subplots(len(endpoints), 2, figsize=(10, 3.8 * len(endpoints)), squeeze=False)
    for r, name in enumerate(endpoints):
        sel = (rep["endpoint"].values == name) & (rep["cens"].values == 0)
        y = rep["y"].values[sel]
        ax = axes[r, 0]
        for k in range(min(50, rep.sizes["sample"])):
            yr = np.sort(rep["y_rep"].values[k, sel])
            ax.plot(yr, np.linspace(0, 1, yr.size), color="tab:blue", alpha=0.08, lw=0.8)
        ys = np.sort(y)
        ax.plot(ys, np.linspace(0, 1, ys.size), color="k", lw=1.5, label="observed")
        ax.set_xlabel(name)
        ax.set_ylabel("ECDF")
        ax.legend(fontsize=7)
        bx = axes[r, 1]
        ipred = np.nanmedian(rep["pred"].values[:, sel], axis=0)
        bx.plot(ipred, y, "o", ms=3, alpha=0.6)
        lim = [np.nanmin([ipred.min(), y.min()]), np.nanmax([ipred.max(), y.max()])]
        bx.plot(lim, lim, "k--", lw=0.8)
        bx.set_xlabel("IPRED (posterior median)")
        bx.set_ylabel("observed")
    text = f"Posterior predictive check: {fit.spec.name} on {fit.cohort.source}"
    return _finish(fig, fit, text, path)


def plot_trace(fit: Any, path: str | Path | None = None) -> Any:
    """Trace and density of typical values, omegas and residual parameters, per chain.

    Parameters
    ----------
    fit : Fit
        The fit.
    path : str or Path, optional
        Where to save.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import arviz as az

    _plt()
    names = [n for n in fit.info.estimated if n in fit.posterior]
    names += [f"omega_{n}" for n in fit.info.iiv if f"omega_{n}" in fit.posterior]
    axes = az.plot_trace(fit.idata, var_names=names, compact=False)
    fig = np.ravel(axes)[0].figure
    return _finish(fig, fit, f"Traces: {fit.spec.name} on {fit.cohort.source}", path)
