"""Decision metrics of a strategy comparison, with posterior uncertainty.

Every metric is computed per parameter draw (over the virtual patients), so its spread over draws
is the posterior (or prior) uncertainty of the population-level quantity. Differences against the
reference strategy are paired by draw and by patient (common random numbers): a strategy compared
with itself differs by exactly zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr


@dataclass(frozen=True)
class Metric:
    """A population-level outcome of a strategy.

    Attributes
    ----------
    name : str
        Label, e.g. ``"P(CRS >= 3)"``.
    variable : str
        Outcome variable of the simulation (e.g. ``"max_crs_grade"``, ``"auc_cart"``).
    kind : str
        ``"risk"``: fraction of patients with ``variable >= threshold``; ``"mean"``: mean over
        patients; ``"median"``: median over the patients where it is defined (onset times).
    threshold : float or None
        For risks.
    lower_is_better : bool
        Direction used for "probability best" and utilities.
    weight : float
        Weight in the expected utility (``utility = -sum(weight * metric)`` for
        lower-is-better metrics, ``+`` otherwise); 0 leaves it out.
    """

    name: str
    variable: str
    kind: str = "risk"
    threshold: float | None = None
    lower_is_better: bool = True
    weight: float = 0.0

    def per_draw(self, ds: xr.Dataset, patients: np.ndarray | None = None) -> xr.DataArray:
        """Value per (strategy, draw)."""
        x = ds[self.variable]
        if patients is not None:
            x = x.isel(patient=np.flatnonzero(patients))
        if self.kind == "risk":
            return (x >= self.threshold).mean("patient")
        if self.kind == "mean":
            return x.mean("patient")
        if self.kind == "median":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: nobody had the event
                return x.median("patient", skipna=True)
        raise ValueError(f"unknown metric kind {self.kind!r}")


def default_metrics(ds: xr.Dataset) -> list[Metric]:
    """Metrics for the outcomes a simulation has.

    Ordinal endpoints give P(grade >= 2), P(grade >= 3) and the median onset day; reactive drugs
    the mean number of doses; an endpoint named like CAR-T cells (``cart*``) its AUC and Cmax
    (higher is better: efficacy), a tumour endpoint (``tumo*``) its last value (lower is better).

    Parameters
    ----------
    ds : xarray.Dataset
        Output of `simulate_strategies`.

    Returns
    -------
    list of Metric
    """
    out = []
    for var in ds.data_vars:
        name = str(var)
        if name.startswith("max_"):
            ep = name[4:]
            label = ep.replace("_grade", "").upper()
            out.append(Metric(f"P({label} >= 2)", name, "risk", 2.0, weight=1.0))
            out.append(Metric(f"P({label} >= 3)", name, "risk", 3.0, weight=3.0))
    for var in ds.data_vars:
        name = str(var)
        if name.startswith("onset_"):
            out.append(
                Metric(f"median onset {name[6:]} (day)", name, "median", lower_is_better=False)
            )
        elif name.startswith("doses_"):
            out.append(Metric(f"{name[6:]} reactive doses", name, "mean"))
        elif name.startswith(("auc_cart", "auc_CAR")):
            out.append(Metric(f"{name[4:]} AUC", name, "mean", lower_is_better=False))
        elif name.startswith(("cmax_cart", "cmax_CAR")):
            out.append(Metric(f"{name[5:]} Cmax", name, "mean", lower_is_better=False))
        elif name.startswith(("last_tumo", "last_Tumo")):
            out.append(Metric(f"{name[5:]} at end", name, "mean"))
    return out


def expected_auc(p: np.ndarray, marker: np.ndarray) -> float:
    """Compute the expected ROC AUC of a marker for an outcome each patient has with probability p.

    Each patient is a case with probability ``p_i`` and a control with ``1 - p_i``, independently,
    so the AUC (Mann-Whitney, ties counted one half) is averaged over that outcome noise exactly
    instead of sampled once: the ratio of expected concordant to expected case-control pairs,
    ``sum_{i != j} p_i (1 - p_j) [x_i > x_j] / sum_{i != j} p_i (1 - p_j)``. With ``p`` of 0s
    and 1s it is the ordinary AUC. O(n log n).

    Parameters
    ----------
    p : array_like
        ``(n,)`` probability of the outcome per patient (e.g. ``sigmoid(latent - cutpoint)``).
    marker : array_like
        ``(n,)`` marker values (higher = predicted case).

    Returns
    -------
    float
        Expected AUC (0.5 = no discrimination).
    """
    p = np.asarray(p, dtype=float)
    x = np.asarray(marker, dtype=float)
    if p.shape != x.shape or p.ndim != 1:
        raise ValueError(f"p and marker must be 1-d of equal length, got {p.shape}, {x.shape}")
    if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(x)):
        raise ValueError("p must lie in [0, 1] and the marker must be finite")
    q = 1.0 - p
    values, inverse = np.unique(x, return_inverse=True)
    q_at = np.bincount(inverse, weights=q, minlength=values.size)  # control mass per value
    below = np.concatenate([[0.0], np.cumsum(q_at)[:-1]])  # control mass at lower values
    tied = q_at[inverse] - q  # control mass at the same value, the patient itself excluded
    concordant = float(np.sum(p * (below[inverse] + 0.5 * tied)))
    pairs = float(p.sum() * q.sum() - np.sum(p * q))
    if pairs <= 0:
        raise ValueError("the AUC needs some probability of both cases and controls")
    return concordant / pairs


def _ci(values: np.ndarray, mass: float = 0.95) -> tuple[float, float, float]:
    if not np.isfinite(values).any():  # e.g. an onset time when nobody has the event
        return np.nan, np.nan, np.nan
    lo, hi = np.nanquantile(values, [(1 - mass) / 2, (1 + mass) / 2])
    return float(np.nanmean(values)), float(lo), float(hi)


def compare(
    ds: xr.Dataset,
    metrics: Sequence[Metric] | None = None,
    *,
    reference: str | None = None,
    subgroups: Mapping[str, np.ndarray] | None = None,
) -> xr.Dataset:
    """Posterior summaries of every metric, strategy and subgroup.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of `simulate_strategies`.
    metrics : sequence of Metric, optional
        Default `default_metrics`.
    reference : str, optional
        Reference strategy (default: the one marked ``reference``, else the first).
    subgroups : mapping of str to bool array, optional
        Patient masks (over ``patient``); ``"all"`` is always included.

    Returns
    -------
    xarray.Dataset
        Over ``(subgroup, metric, strategy)``: ``mean``, ``lo``, ``hi`` (95% interval over
        draws), ``diff_mean/diff_lo/diff_hi`` (paired difference to the reference),
        ``ratio_mean/ratio_lo/ratio_hi``, ``p_best`` (share of draws where the strategy is
        best), and over ``(subgroup, strategy)`` the expected utility and its ``p_best``.
    """
    metrics = list(metrics or default_metrics(ds))
    strategies = [str(s) for s in ds["strategy"].values]
    reference = reference or ds.attrs.get("reference") or strategies[0]
    groups = {"all": np.ones(ds.sizes["patient"], bool)}
    groups.update({k: np.asarray(v, bool) for k, v in (subgroups or {}).items()})
    shape = (len(groups), len(metrics), len(strategies))
    arrays = {
        k: np.full(shape, np.nan)
        for k in (
            "mean",
            "lo",
            "hi",
            "diff_mean",
            "diff_lo",
            "diff_hi",
            "ratio_mean",
            "ratio_lo",
            "ratio_hi",
            "p_best",
        )
    }
    util = np.zeros((len(groups), len(strategies), ds.sizes["draw"]))
    for g, mask in enumerate(groups.values()):
        for k, metric in enumerate(metrics):
            per = metric.per_draw(ds, mask).transpose("strategy", "draw").values
            ref = per[strategies.index(reference)]
            sign = 1.0 if metric.lower_is_better else -1.0
            if np.all(np.isfinite(per)):
                # Ties (e.g. all zero risk) are shared, not given to the first strategy.
                score = sign * per
                is_best = score == score.min(axis=0, keepdims=True)
                arrays["p_best"][g, k] = (is_best / is_best.sum(axis=0)).mean(axis=1)
            for s in range(len(strategies)):
                arrays["mean"][g, k, s], arrays["lo"][g, k, s], arrays["hi"][g, k, s] = _ci(per[s])
                diff = per[s] - ref
                (
                    arrays["diff_mean"][g, k, s],
                    arrays["diff_lo"][g, k, s],
                    arrays["diff_hi"][g, k, s],
                ) = _ci(diff)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(ref > 0, per[s] / ref, np.nan)
                if np.isfinite(ratio).any():
                    (
                        arrays["ratio_mean"][g, k, s],
                        arrays["ratio_lo"][g, k, s],
                        arrays["ratio_hi"][g, k, s],
                    ) = _ci(ratio)
            if metric.weight:
                util[g] -= sign * metric.weight * np.nan_to_num(per)
    coords = {"subgroup": list(groups), "metric": [m.name for m in metrics], "strategy": strategies}
    out = xr.Dataset(
        {k: (("subgroup", "metric", "strategy"), v) for k, v in arrays.items()}, coords=coords
    )
    best_u = util == util.max(axis=1, keepdims=True)
    out["utility_mean"] = (("subgroup", "strategy"), util.mean(axis=2))
    out["utility_p_best"] = (
        ("subgroup", "strategy"),
        (best_u / best_u.sum(axis=1, keepdims=True)).mean(axis=2),
    )
    out["variable"] = ("metric", [m.variable for m in metrics])
    out["lower_is_better"] = ("metric", [m.lower_is_better for m in metrics])
    out.attrs.update(
        reference=reference,
        n_draws=int(ds.sizes["draw"]),
        n_patients=int(ds.sizes["patient"]),
        parameters_from=ds.attrs.get("parameters_from", ""),
    )
    return out


def _fmt(metric: str, mean: float, lo: float, hi: float, diff: bool = False) -> str:
    if not np.isfinite(mean):
        return "-"
    pct = metric.startswith("P(")
    sign = "+" if diff else ""
    if pct:
        return f"{100 * mean:{sign}.1f}% [{100 * lo:{sign}.1f}, {100 * hi:{sign}.1f}]"
    return f"{mean:{sign}.3g} [{lo:{sign}.3g}, {hi:{sign}.3g}]"


def decision_table(summary: xr.Dataset, subgroup: str = "all") -> pd.DataFrame:
    """Return the comparison as a table: one row per strategy, values and differences.

    Parameters
    ----------
    summary : xarray.Dataset
        Output of `compare`.
    subgroup : str
        Which subgroup.

    Returns
    -------
    pandas.DataFrame
        Cells are ``mean [95% interval]``; ``vs ref`` columns hold the paired difference to the
        reference strategy; ``P(best)`` columns the share of draws where the strategy is best.
    """
    s = summary.sel(subgroup=subgroup)
    rows = {}
    for strategy in s["strategy"].values:
        row = {}
        for metric in s["metric"].values:
            v = s.sel(metric=metric, strategy=strategy)
            row[metric] = _fmt(str(metric), float(v["mean"]), float(v["lo"]), float(v["hi"]))
            if strategy != summary.attrs["reference"]:
                row[f"{metric} vs ref"] = _fmt(
                    str(metric),
                    float(v["diff_mean"]),
                    float(v["diff_lo"]),
                    float(v["diff_hi"]),
                    True,
                )
            else:
                row[f"{metric} vs ref"] = "reference"
        for metric in s["metric"].values:
            if str(metric).startswith("P("):
                p_best = float(s["p_best"].sel(metric=metric, strategy=strategy))
                row[f"P(best) {metric}"] = f"{p_best:.2f}"
        row["utility"] = f"{float(s['utility_mean'].sel(strategy=strategy)):.3g}"
        row["P(best utility)"] = f"{float(s['utility_p_best'].sel(strategy=strategy)):.2f}"
        rows[str(strategy)] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def subgroup_masks(ds: xr.Dataset, spec: Mapping[str, tuple[str, str, float]]) -> dict:
    """Patient masks from covariate rules: ``{"high tumour": ("TB", ">=q", 0.67)}``.

    Rules: ``(covariate, ">=", value)``, ``(covariate, "<", value)``, or quantile forms
    ``">=q"`` / ``"<q"`` with the value a quantile of the covariate over the virtual patients.
    """
    out = {}
    for name, (cov, op, value) in spec.items():
        x = ds[f"cov_{cov}"].values
        threshold = np.quantile(x, value) if op.endswith("q") else value
        out[name] = x >= threshold if op.startswith(">=") else x < threshold
    return out
