"""Worst grades as exact probabilities over each patient's grading offset.

`simulate_strategies` draws one logistic offset ``e`` per patient for an ordinal endpoint with
``offset = "subject"`` (plus, with a ``record_scale`` ``s``, ``s`` times a logistic per grading
day), so a patient's worst grade is at least level ``k`` exactly when the peak over the grid of
``latent(t) + s d_day(t)`` plus ``e`` passes the cutpoint ``c_k``. Given the latent course and the
day noise, the probability over ``e`` is ``sigmoid(peak - c_k)``: averaging that over patients
gives a rate with no Monte Carlo error from the offsets (the day noise stays drawn: one course
of days per patient, the simulator's own). Calibrations (``scripts/prior_predictive.py``), ROC
analyses of markers (`pkpd.strategies.metrics.expected_auc`) and notebooks use it instead of the
drawn 0/1 grades. It holds where the course does not depend on ``e``: a strategy whose reactive
doses are triggered by the grade treats patients by their offset, and is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from scipy.special import expit

from pkpd.strategies.population import Population


def _latent_endpoint(model: Any, grade: str, latent: str | None) -> str:
    """Return the endpoint that carries ``grade``'s latent.

    ``latent``, or the one whose expression is the grade's (as the library's ``crs_severity``
    is ``crs_grade``'s).
    """
    obs = model.spec.observations
    if latent is not None:
        if latent not in obs or obs[latent].error == "ordinal":
            raise ValueError(f"latent {latent!r} is not a non-ordinal endpoint of {model.name!r}")
        return latent
    same = [n for n, o in obs.items() if o.error != "ordinal" and o.expr == obs[grade].expr]
    if not same:
        raise ValueError(
            f"no endpoint of {model.name!r} has the expression of {grade!r} "
            f"({obs[grade].raw}): add one (error = 'none') or pass latent="
        )
    return same[0]


def worst_latent(
    model: Any, population: Population, sim: xr.Dataset, grade: str, *, latent: str | None = None
) -> xr.DataArray:
    """Peak over the output grid of a grade's latent plus its noise per grading day.

    Parameters
    ----------
    model : CompiledModel
        The model `simulate_strategies` ran.
    population : Population
        The population it ran (its ``u`` keys each patient's day noise).
    sim : xarray.Dataset
        Its output; the peaks are for the pairs whose trajectories it kept.
    grade : str
        An ordinal endpoint with ``offset = "subject"``.
    latent : str, optional
        The endpoint that carries the grade's latent (default: the non-ordinal endpoint with the
        grade's expression, e.g. ``crs_severity`` for ``crs_grade`` in the library).

    Returns
    -------
    xarray.DataArray
        ``(strategy, pair)``, with the pairs' ``pair_draw`` and ``pair_patient``; dimensionless
        (latent units). Without a ``record_scale`` it is the peak of the latent itself.

    Raises
    ------
    ValueError
        For an endpoint that is not ordinal with one offset per patient, no latent endpoint, a
        noise scale with between-subject variability, or a simulation of another model.
    """
    from pkpd.strategies.simulate import day_noise, grading_days

    obs = model.spec.observations
    if grade not in obs or obs[grade].error != "ordinal" or obs[grade].offset != "subject":
        raise ValueError(f"{grade!r} is not an ordinal endpoint with offset = 'subject'")
    if sim.attrs.get("model_hash") and sim.attrs["model_hash"] != model.spec.hash:
        raise ValueError(f"the simulation is of another model than {model.name!r}")
    population.check(model)
    name = _latent_endpoint(model, grade, latent)
    draws, patients = sim["pair_draw"].values, sim["pair_patient"].values
    peak = sim["traj"].sel(endpoint=name).values  # (strategy, pair, time)
    scale_name = obs[grade].record_scale
    if scale_name:
        if scale_name in model.iiv:
            raise ValueError(f"record_scale {scale_name!r} varies between patients")
        ordinal = [n for n, o in obs.items() if o.error == "ordinal"]
        u = population.u[patients, ordinal.index(grade)]
        noise = np.asarray(day_noise(u, grading_days(sim["time"].values)))  # (pair, time)
        scale = population.theta[draws, model.parameter_index(scale_name)]
        peak = peak + scale[None, :, None] * noise[None]
    return xr.DataArray(
        peak.max(axis=-1),
        dims=("strategy", "pair"),
        coords={
            "strategy": sim["strategy"].values,
            "pair_draw": ("pair", draws),
            "pair_patient": ("pair", patients),
        },
        name=f"worst_{name}",
    )


def worst_grade_probability(
    model: Any,
    population: Population,
    sim: xr.Dataset,
    grade: str,
    level: float,
    *,
    latent: str | None = None,
) -> xr.DataArray:
    """Probability over the patient's offset that the worst grade reaches ``level``.

    ``sigmoid(worst_latent - c_k)`` with ``c_k`` the cutpoint below ``level`` under the pair's
    draw: the mean over pairs is the rate of worst grade >= ``level`` with the offsets integrated
    out exactly. Only where the course does not depend on the offset: a strategy whose reactive
    doses are triggered by this grade treats patients by their drawn offset (a high offset
    triggers earlier), so ``sigmoid`` of its peak is not the probability; such strategies are
    refused (select the others, ``sim.sel(strategy=[...])``; their drawn grades,
    ``max_<grade>``, remain the honest estimate).

    Parameters
    ----------
    model, population, sim, grade, latent
        As in `worst_latent`.
    level : float
        A grade level above the lowest (e.g. 3 for severe CRS).

    Returns
    -------
    xarray.DataArray
        ``(strategy, pair)`` probabilities.

    Raises
    ------
    ValueError
        For a level the grade does not have, a cutpoint with between-subject variability, or a
        strategy that reacts to this grade.
    """
    obs = model.spec.observations[grade]
    levels = [float(v) for v in obs.levels]
    if float(level) not in levels[1:]:
        raise ValueError(f"{grade!r} has levels {levels}; level must be one above the lowest")
    cut_name = obs.cutpoints[levels.index(float(level)) - 1]
    if cut_name in model.iiv:
        raise ValueError(f"cutpoint {cut_name!r} varies between patients")
    if "reactive_on" not in sim:
        raise ValueError("the simulation does not say what its strategies react to: rerun it")
    reacts = [
        str(name)
        for name, on in zip(sim["strategy"].values, sim["reactive_on"].values, strict=True)
        if grade in str(on).split(",")
    ]
    if reacts:
        raise ValueError(
            f"strategies {reacts} react to {grade!r}, so their courses depend on the patient's "
            "offset: the probability over the offset is not sigmoid of the peak (use their drawn "
            f"grades, max_{grade})"
        )
    peak = worst_latent(model, population, sim, grade, latent=latent)
    cut = population.theta[peak["pair_draw"].values, model.parameter_index(cut_name)]
    return xr.apply_ufunc(expit, peak - cut[None, :]).rename(f"p_{grade}_ge_{level:g}")
