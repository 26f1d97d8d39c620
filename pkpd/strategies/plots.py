"""Figures of a strategy comparison: risk forest plot, trajectory ribbons, trade-off."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def forest(
    summary: xr.Dataset,
    metrics: Sequence[str] | None = None,
    *,
    subgroup: str = "all",
    path: str | Path | None = None,
    title: str | None = None,
) -> Any:
    """Forest plot: each metric's mean and 95% interval per strategy.

    Parameters
    ----------
    summary : xarray.Dataset
        Output of `pkpd.strategies.compare`.
    metrics : sequence of str, optional
        Metric names (default: the risks, ``P(...)``).
    subgroup : str
    path : str or Path, optional
        Where to save.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    s = summary.sel(subgroup=subgroup)
    names = list(metrics or [m for m in s["metric"].values if str(m).startswith("P(")])
    strategies = [str(x) for x in s["strategy"].values]
    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(3.6 * len(names) + 1.5, 0.45 * len(strategies) + 1.2),
        sharey=True,
        squeeze=False,
    )
    y = np.arange(len(strategies))[::-1]
    for ax, name in zip(axes[0], names, strict=True):
        v = s.sel(metric=name)
        scale = 100.0 if str(name).startswith("P(") else 1.0
        mean, lo, hi = (v[k].values * scale for k in ("mean", "lo", "hi"))
        ax.errorbar(mean, y, xerr=[mean - lo, hi - mean], fmt="o", color="C0", capsize=3)
        ref = summary.attrs.get("reference")
        if ref in strategies:
            ax.axvline(mean[strategies.index(ref)], color="0.6", lw=0.8, ls="--")
        ax.set_xlabel(f"{name}{' (%)' if scale == 100 else ''}")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, strategies)
    fig.suptitle(
        title
        or f"Strategy comparison ({summary.attrs.get('parameters_from', '')}; "
        f"mean and 95% interval over {summary.attrs.get('n_draws', '?')} draws)",
        fontsize=9,
    )
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def ribbons(
    sim: xr.Dataset,
    endpoints: Sequence[str] | None = None,
    *,
    path: str | Path | None = None,
    log_y: Sequence[str] = (),
) -> Any:
    """Median and 50%/90% bands of each endpoint over the kept (draw, patient) pairs.

    Parameters
    ----------
    sim : xarray.Dataset
        Output of `pkpd.strategies.simulate_strategies`.
    endpoints : sequence of str, optional
        Default: all endpoints.
    path : str or Path, optional
    log_y : sequence of str
        Endpoints drawn on a log axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    names = list(endpoints or [str(e) for e in sim["endpoint"].values])
    strategies = [str(x) for x in sim["strategy"].values]
    ncol = min(3, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    t = sim["time"].values
    for ax, name in zip(axes.flat, names, strict=False):
        unit = str(sim["endpoint_unit"].sel(endpoint=name).values)
        for k, s in enumerate(strategies):
            x = sim["traj"].sel(strategy=s, endpoint=name).values
            q = np.nanquantile(x, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
            ax.fill_between(t, q[0], q[4], color=f"C{k}", alpha=0.12, lw=0)
            ax.fill_between(t, q[1], q[3], color=f"C{k}", alpha=0.25, lw=0)
            ax.plot(t, q[2], color=f"C{k}", lw=1.4, label=s)
        ax.set_title(f"{name} ({unit})", fontsize=9)
        ax.set_xlabel("day")
        if name in log_y:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def tradeoff(
    summary: xr.Dataset,
    toxicity: str,
    efficacy: str,
    *,
    subgroup: str = "all",
    path: str | Path | None = None,
) -> Any:
    """Toxicity against efficacy per strategy, with 95% intervals on both axes.

    Parameters
    ----------
    summary : xarray.Dataset
        Output of `pkpd.strategies.compare`.
    toxicity, efficacy : str
        Metric names (e.g. ``"P(CRS >= 3)"`` and ``"cart AUC"``).
    subgroup : str
    path : str or Path, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    s = summary.sel(subgroup=subgroup)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for k, strategy in enumerate(s["strategy"].values):
        tx = s.sel(metric=toxicity, strategy=strategy)
        ef = s.sel(metric=efficacy, strategy=strategy)
        ax.errorbar(
            float(ef["mean"]),
            100 * float(tx["mean"]),
            xerr=[[float(ef["mean"] - ef["lo"])], [float(ef["hi"] - ef["mean"])]],
            yerr=[[100 * float(tx["mean"] - tx["lo"])], [100 * float(tx["hi"] - tx["mean"])]],
            fmt="o",
            color=f"C{k}",
            capsize=3,
            label=str(strategy),
        )
    ax.set_xlabel(efficacy)
    ax.set_ylabel(f"{toxicity} (%)")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
