"""Figures: individual predictions against observations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_individual(
    obs: xr.Dataset,
    grid: xr.Dataset,
    endpoint: str,
    path: str | Path | None = None,
    *,
    max_subjects: int = 12,
    title: str | None = None,
    log_y: bool = False,
) -> Figure:
    """Plot observed values and a simulated curve per subject, one panel each.

    Parameters
    ----------
    obs : xarray.Dataset
        Observations with ``time``, ``dv`` and ``mask`` over ``(subject, obs)``.
    grid : xarray.Dataset
        Simulation on a dense grid with variable ``endpoint`` over ``(subject, time)``.
    endpoint : str
        Name of the endpoint variable in ``grid`` (and its unit in ``grid[endpoint].attrs``).
    path : str or pathlib.Path, optional
        Where to save the figure (PNG, PDF or SVG by suffix); the figure is returned either way.
    max_subjects : int, optional
        Panels to draw at most (the first subjects in cohort order).
    title : str, optional
        Figure title.
    log_y : bool, optional
        Logarithmic y axis.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    subjects = obs["subject"].values[:max_subjects]
    n = len(subjects)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False, sharex=True
    )
    unit = grid[endpoint].attrs.get("unit", "")
    time_unit = grid["time"].attrs.get("unit", "")
    for ax, sid in zip(axes.flat, subjects, strict=False):
        o = obs.sel(subject=sid)
        m = o["mask"].values.astype(bool) & np.isfinite(o["dv"].values)
        ax.plot(o["time"].values[m], o["dv"].values[m], "o", ms=3.5, color="k", label="observed")
        g = grid.sel(subject=sid)
        ax.plot(g["time"].values, g[endpoint].values, "-", color="C0", lw=1.5, label="predicted")
        ax.set_title(f"ID {sid}", fontsize=9)
        if log_y:
            ax.set_yscale("log")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(f"time ({time_unit})" if time_unit else "time")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{endpoint} ({unit})" if unit else endpoint)
    axes.flat[0].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
