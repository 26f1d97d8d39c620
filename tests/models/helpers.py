"""Small helpers for the model-library tests: one-off cohorts and summaries of curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

import pkpd
from pkpd.data import from_dataframe
from pkpd.solve import Solver
from pkpd.strategies import expected_auc  # noqa: F401  (used by the seed-experiment tests)

SOLVER = Solver(rtol=1e-8, atol=1e-10)


def cohort(doses, covariates: Mapping[str, Sequence[float]] | None = None, n: int = 1):
    """A cohort of subjects given doses (route, day, amount, duration in days).

    ``doses`` is one list of doses for all ``n`` subjects, or a list of such lists (one per
    subject, then ``n`` is their number).
    """
    per_subject = (
        bool(doses) and isinstance(doses[0], list | tuple) and isinstance(doses[0][0], list | tuple)
    )
    if per_subject:
        n = len(doses)
    else:
        doses = [doses] * n
    covariates = dict(covariates or {})
    rows = []
    for i in range(n):
        cov = {k: float(np.broadcast_to(v, (n,))[i]) for k, v in covariates.items()}
        rows.append(dict(ID=i + 1, TIME=0.0, EVID=2, MDV=1, AMT=np.nan, CMT=None, RATE=0.0, **cov))
        for route, day, amount, duration in doses[i]:
            rate = amount / duration if duration > 0 else 0.0
            rows.append(
                dict(ID=i + 1, TIME=day, EVID=1, MDV=1, AMT=amount, CMT=route, RATE=rate, **cov)
            )
    df = pd.DataFrame(rows)
    df = df.sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)
    return from_dataframe(df, covariates=list(covariates), source="test cohort")


def simulate(model, doses, times, covariates=None, params=None, n=1, solver=SOLVER):
    """Simulate on a grid; returns the xarray Dataset of `pkpd.simulate`."""
    return pkpd.simulate(model, cohort(doses, covariates, n), params, times=times, solver=solver)


def log_slope_half_life(t: np.ndarray, c: np.ndarray, t1: float, t2: float) -> float:
    """Half-life from the log-linear slope of c between t1 and t2 (least squares)."""
    sel = (t >= t1) & (t <= t2)
    slope = np.polyfit(t[sel], np.log(c[sel]), 1)[0]
    return float(np.log(2) / -slope)


def auc(y: np.ndarray, x: np.ndarray) -> float:
    """ROC AUC of marker x for binary outcomes y (Mann-Whitney)."""
    y = np.asarray(y, bool)
    x = np.asarray(x, float)
    pos, neg = x[y], x[~y]
    gt = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return float(gt.mean())
