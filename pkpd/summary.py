"""Numeric summaries of predictions against observations."""

from __future__ import annotations

import numpy as np
import pandas as pd


def residual_table(table: pd.DataFrame) -> pd.DataFrame:
    """Summarise residuals of predictions against observations, per subject and overall.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per observation with columns ``ID``, ``DV`` and ``PRED`` (rows with a missing DV
        are ignored).

    Returns
    -------
    pandas.DataFrame
        Indexed by subject plus an ``all`` row: number of observations, mean residual
        (DV - PRED), root mean squared error, median absolute relative error (%), observed and
        predicted maximum and the time of each maximum when a ``TIME`` column is present.
    """
    t = table[np.isfinite(table["DV"])].copy()
    t["RES"] = t["DV"] - t["PRED"]
    nonzero = t["DV"] != 0
    t["ARE"] = np.where(nonzero, np.abs(t["RES"]) / np.abs(t["DV"].where(nonzero, 1.0)), np.nan)

    def summarise(g: pd.DataFrame) -> pd.Series:
        out = {
            "n": len(g),
            "mean_res": g["RES"].mean(),
            "rmse": float(np.sqrt(np.mean(g["RES"] ** 2))),
            "median_abs_rel_err_pct": 100 * g["ARE"].median(),
            "obs_max": g["DV"].max(),
            "pred_max": g["PRED"].max(),
        }
        if "TIME" in g:
            out["obs_tmax"] = g["TIME"].iloc[int(np.argmax(g["DV"].to_numpy()))]
            out["pred_tmax"] = g["TIME"].iloc[int(np.argmax(g["PRED"].to_numpy()))]
        return pd.Series(out)

    per = t.groupby("ID", sort=False)[t.columns.tolist()].apply(summarise)
    overall = summarise(t).to_frame("all").T
    res = pd.concat([per, overall])
    res["n"] = res["n"].astype(int)
    return res
