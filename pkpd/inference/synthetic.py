"""Simulated studies from known parameters: the ground truth for recovery and censoring checks.

>>> design = dosing_design(n_subjects=40, amount=100.0, times=[0.5, 1, 2, 4, 8, 12, 24])
>>> cohort, truth = simulate_study(spec, design, {"CL": 6.0, "V": 60.0, "sigma_prop": 0.2},
...                                omega={"CL": 0.3, "V": 0.2}, lloq=0.3, seed=1)

Individual parameters are drawn as the model says (``model.individual``: ``theta * exp(eta)``
with ``eta ~ N(0, diag(omega^2))``, covariate effects included), the design is integrated with the
engine, and residual errors are added by each endpoint's error model. Observations below ``lloq``
are reported as an assay would: ``CENS = 1``, ``LIMIT = lloq`` and no DV.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pkpd.solve import Solver, simulate


def dosing_design(
    n_subjects: int,
    amount: float,
    times: Sequence[float],
    *,
    cmt: int = 1,
    dose_time: float = 0.0,
    covariates: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Return a single-dose design: one dose and the same sampling times for every subject.

    Parameters
    ----------
    n_subjects : int
        Subjects (IDs 1..n).
    amount : float
        Dose amount (dataset units).
    times : sequence of float
        Sampling times (dataset time unit).
    cmt : int, optional
        Dose compartment (1-based state index or route, NONMEM style).
    dose_time : float, optional
        Time of the dose.
    covariates : dict, optional
        Covariate columns: a scalar, or one value per subject.

    Returns
    -------
    pandas.DataFrame
        ``ID, TIME, AMT, DV, EVID, MDV, CMT`` (+ covariates); DV is 0 on observation rows (to be
        replaced by `simulate_study`).
    """
    rows = []
    for i in range(1, n_subjects + 1):
        rows.append(
            {
                "ID": i,
                "TIME": dose_time,
                "AMT": amount,
                "DV": np.nan,
                "EVID": 1,
                "MDV": 1,
                "CMT": cmt,
            }
        )
        for t in times:
            rows.append(
                {
                    "ID": i,
                    "TIME": float(t),
                    "AMT": np.nan,
                    "DV": 0.0,
                    "EVID": 0,
                    "MDV": 0,
                    "CMT": cmt,
                }
            )
    df = pd.DataFrame(rows)
    for name, value in (covariates or {}).items():
        values = np.broadcast_to(np.asarray(value, dtype=float), (n_subjects,))
        df[name] = values[df["ID"].to_numpy() - 1]
    return df


def simulate_study(
    spec: Any,
    design: pd.DataFrame,
    truth: dict[str, float],
    *,
    omega: dict[str, float] | None = None,
    lloq: float | None = None,
    seed: int = 0,
    solver: Solver | None = None,
    time_unit: str | None = None,
    balanced_eta: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Simulate observations of a design from known parameters.

    Parameters
    ----------
    spec : ModelSpec
        The model (its typical values fill parameters missing from ``truth``).
    design : pandas.DataFrame
        Dose and observation records (`dosing_design` or your own; observation rows need
        ``EVID = 0``, ``MDV = 0``).
    truth : dict of str to float
        True typical values (including residual error parameters).
    omega : dict of str to float, optional
        True IIV standard deviations by parameter (0 when absent).
    lloq : float, optional
        Lower limit of quantification: observations below it are censored.
    seed : int, optional
        Seed of the random effects and residual errors.
    solver : Solver, optional
        Integration (default: closed form when available, else Tsit5 at rtol 1e-10).
    time_unit : str, optional
        Time unit of the design (default: the model's).
    balanced_eta : bool, optional
        Standardise the drawn random effects to mean exactly 0 and SD exactly ``omega`` in each
        dimension (moment matching), so the simulated subjects' geometric-mean parameters equal
        the true typical values. This removes the sampling noise of the cohort from a
        single-dataset comparison (e.g. of two likelihoods on the same data); coverage studies
        should leave it off.

    Returns
    -------
    cohort : Cohort
        The simulated study.
    truth : dict
        ``theta`` (all typical values), ``omega``, ``eta (N, K)``, ``pred (N, O)`` and the
        fraction of observations below the LLOQ (``blq_fraction``).
    """
    from pkpd.data.reader import from_dataframe

    rng = np.random.default_rng(seed)
    model = spec.compile()
    solver = Solver("auto", rtol=1e-10, atol=1e-12) if solver is None else solver
    design = design.reset_index(drop=True)
    base = from_dataframe(design, source="design", time_unit=time_unit)
    omega = dict(omega or {})
    unknown = sorted(set(omega) - set(model.iiv))
    if unknown:
        raise ValueError(f"omega given for parameter(s) without IIV: {unknown}")
    sd = np.array([omega.get(n, 0.0) for n in model.iiv])
    z = rng.standard_normal((base.n_subjects, len(model.iiv)))
    if balanced_eta and base.n_subjects > 1:
        z = (z - z.mean(axis=0)) / z.std(axis=0)
    eta = z * sd
    params = {n: v for n, v in truth.items() if n in model.parameters}
    sim = simulate(model, base, params, eta=eta, solver=solver)
    pred = np.asarray(sim["pred"].values)
    mask = np.asarray(sim["obs_mask"].values, dtype=bool)
    theta = {**spec.typical_values(), **params}
    dv = np.full(pred.shape, np.nan)
    endpoints = np.asarray(sim["obs_endpoint"].values)
    for name, ospec in spec.observations.items():
        here = mask & (endpoints == name)
        f = pred[here]
        eps = rng.standard_normal(f.shape)
        if ospec.error == "additive":
            y = f + theta[ospec.sigma["sigma"]] * eps
        elif ospec.error == "proportional":
            y = f + theta[ospec.sigma["sigma_prop"]] * np.abs(f) * eps
        elif ospec.error == "combined":
            a, b = theta[ospec.sigma["sigma"]], theta[ospec.sigma["sigma_prop"]]
            y = f + np.sqrt(a**2 + (b * f) ** 2) * eps
        elif ospec.error == "lognormal":
            y = f * np.exp(theta[ospec.sigma["sigma"]] * eps)
        elif ospec.error == "ordinal":
            cut = np.array([theta[c] for c in ospec.cutpoints])
            if ospec.offset == "subject":  # one logistic offset per subject, all its records
                u = rng.uniform(size=pred.shape[0])[np.nonzero(here)[0]]
            else:
                u = rng.uniform(size=f.shape)
            e = np.log(u) - np.log1p(-u)
            if ospec.offset == "subject" and ospec.record_scale:  # plus noise per record
                e = e + theta[ospec.record_scale] * rng.logistic(size=f.shape)
            category = np.sum(f[:, None] + e[:, None] > cut[None, :], axis=1)
            y = np.asarray(ospec.levels, dtype=float)[category]
        else:
            y = f
        dv[here] = y

    # Write the simulated values back to the design rows (line = row + 2).
    df = design.copy()
    lines = np.asarray(base.ds["obs_line"].values)
    row = lines[mask] - 2
    df.loc[row, "DV"] = dv[mask]
    blq_fraction = 0.0
    if lloq is not None:
        below = np.zeros(len(df), dtype=bool)
        below[row] = dv[mask] < lloq
        df["CENS"] = np.where(below, 1, 0)
        df["LIMIT"] = np.where(below, lloq, np.nan)
        df.loc[below, "DV"] = np.nan
        blq_fraction = float(below[row].mean())
    cohort = from_dataframe(df, source=f"simulated:{spec.name}:seed={seed}", time_unit=time_unit)
    return cohort, {
        "theta": theta,
        "omega": {n: omega.get(n, 0.0) for n in model.iiv},
        "eta": eta,
        "pred": pred,
        "blq_fraction": blq_fraction,
    }
