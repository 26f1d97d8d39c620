"""High-level simulation: a model and a cohort in, an `xarray.Dataset` of predictions out.

>>> sim = simulate(model, cohort)                           # typical values for everyone
>>> sim = simulate(model, cohort, {"CL": 4.0}, times=np.linspace(0, 48, 97))
>>> sim["pred"]           # (subject, obs): each observation's endpoint prediction
>>> sim["pred_grid"]      # (subject, time, endpoint), with times=
>>> sim["state_grid"]     # (subject, time, state), with times=
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from pkpd.errors import SolverError
from pkpd.solve.bind import BoundCohort, bind
from pkpd.solve.config import Solver
from pkpd.solve.engine import STATUS_MESSAGES, event_arrays, solve_batch

jax.config.update("jax_enable_x64", True)

_TRACES = {"count": 0}


def trace_count() -> int:
    """Return how many times the compiled simulation has been traced (for cache tests).

    Returns
    -------
    int
        Number of traces since the process started.
    """
    return _TRACES["count"]


def _core(model, solver, use_individual, n_obs, ev, t, seq, theta, eta, cov, endpoint):
    """Individual parameters, solve, observe: one XLA program per (model, solver, shapes)."""
    _TRACES["count"] += 1
    if use_individual:
        p = jax.vmap(model.individual)(theta, eta, cov)
    else:
        p = jnp.concatenate([theta, cov], axis=1)
    res = solve_batch(model, solver, ev, t, seq, p)
    observe = jax.vmap(jax.vmap(model.observe, in_axes=(0, 0, None)), in_axes=(0, 0, 0))
    all_endpoints = observe(t, res.y, p)  # (N, O+G, E)
    obs_part = all_endpoints[:, :n_obs, :]
    pred = jnp.take_along_axis(obs_part, endpoint[:, :, None], axis=2)[:, :, 0]
    return pred, all_endpoints[:, n_obs:, :], res.y[:, n_obs:, :], res.ok, res.status, p


_core_jit = jax.jit(_core, static_argnums=(0, 1, 2, 3))


def _parameter_matrix(model: Any, params: Any, n: int) -> tuple[np.ndarray, bool]:
    """Return ``(theta (N, P), use_individual)`` from the ``params`` argument."""
    typical = np.asarray(model.typical_values, dtype=float)
    if params is None:
        return np.broadcast_to(typical, (n, typical.size)).copy(), True
    if isinstance(params, Mapping):
        theta = np.broadcast_to(typical, (n, typical.size)).copy()
        for name, value in params.items():
            if name not in model.parameters:
                raise ValueError(
                    f"unknown parameter {name!r} for model {model.name!r} "
                    f"(parameters: {', '.join(model.parameters)})"
                )
            value = np.asarray(value, dtype=float)
            if value.ndim > 1 or (value.ndim == 1 and value.size != n):
                raise ValueError(f"parameter {name!r}: expected a scalar or {n} values")
            theta[:, model.parameter_index(name)] = value
        return theta, True
    theta = np.asarray(params, dtype=float)
    if theta.shape != (n, model.n_parameters):
        raise ValueError(
            f"params array must have shape (n_subjects, n_parameters) = "
            f"({n}, {model.n_parameters}), got {theta.shape}"
        )
    return theta, False


def simulate(
    model: Any,
    cohort: Any,
    params: Any = None,
    *,
    eta: Any = None,
    times: Any = None,
    solver: Solver | None = None,
    on_failure: str = "raise",
) -> xr.Dataset:
    """Simulate a model over a cohort's dosing, at its observations and on an optional grid.

    Parameters
    ----------
    model : CompiledModel
        The model.
    cohort : Cohort or BoundCohort
        The dataset (doses, observation times, covariates), or a cohort already bound to this
        model with `bind` (saves the binding work in loops).
    params : None, dict or array_like, optional
        None: the model's typical values for everyone. A dict ``name -> value`` (scalar, or one
        value per subject) replaces typical values; covariate effects and ``eta`` are still
        applied through ``model.individual``. An ``(N, P)`` array gives individual parameter
        values used as they are (no covariate effects, no ``eta``).
    eta : array_like, optional
        ``(N, K)`` random effects (``model.iiv`` order); zero when omitted.
    times : array_like, optional
        ``(G,)`` common time grid (model time unit): adds every endpoint and state on it. At a
        dose time the grid shows the post-dose state.
    solver : Solver, optional
        Method and tolerances (default `Solver()`).
    on_failure : {"raise", "nan"}, optional
        What to do when the solve fails for some subjects: raise `SolverError` naming them, or
        return NaN for them with a warning.

    Returns
    -------
    xarray.Dataset
        ``pred (subject, obs)``, ``obs_time``, ``obs_endpoint``, ``obs_mask``, ``ok``,
        ``status``, ``reason``, ``params (subject, parameter)`` and, with ``times``,
        ``pred_grid (subject, time, endpoint)`` and ``state_grid (subject, time, state)``.
        Subject IDs are the ``subject`` coordinate; units are in attrs and in the
        ``endpoint_unit`` / ``state_unit`` coordinates.

    Raises
    ------
    SolverError
        If the solve failed for some subjects and ``on_failure="raise"``.
    DatasetError
        If the cohort does not fit the model (see `bind`).
    """
    if on_failure not in ("raise", "nan"):
        raise ValueError(f"on_failure must be 'raise' or 'nan', got {on_failure!r}")
    solver = Solver() if solver is None else solver
    bound = cohort if isinstance(cohort, BoundCohort) else bind(model, cohort)
    n = bound.n_subjects
    theta, use_individual = _parameter_matrix(model, params, n)
    n_iiv = len(model.iiv)
    if eta is not None:
        if not use_individual:
            raise ValueError("eta cannot be combined with an array of individual parameters")
        eta_arr = np.asarray(eta, dtype=float)
        if eta_arr.shape != (n, n_iiv):
            raise ValueError(f"eta must have shape ({n}, {n_iiv}), got {eta_arr.shape}")
    else:
        eta_arr = np.zeros((n, n_iiv))

    grid = np.zeros(0) if times is None else np.asarray(times, dtype=float).ravel()
    n_obs = bound.obs_time.shape[1]
    t_all = np.concatenate([bound.obs_time, np.broadcast_to(grid, (n, grid.size))], axis=1)
    seq_all = np.concatenate([bound.obs_seq, np.full((n, grid.size), np.inf)], axis=1)
    pred, pred_grid, state_grid, ok, status, p = _core_jit(
        model,
        solver,
        use_individual,
        n_obs,
        event_arrays(bound.events),
        jnp.asarray(t_all),
        jnp.asarray(seq_all),
        jnp.asarray(theta),
        jnp.asarray(eta_arr),
        jnp.asarray(bound.covariates, dtype=jnp.float64),
        jnp.asarray(bound.obs_endpoint, dtype=jnp.int32),
    )
    ok = np.asarray(ok)
    status = np.asarray(status)
    reasons = np.array([STATUS_MESSAGES[int(s)] for s in status], dtype=object)
    if not ok.all():
        failed = bound.subjects[~ok].tolist()
        message = f"ODE solve failed for {len(failed)} of {n} subject(s) of model {model.name!r}"
        if on_failure == "raise":
            raise SolverError(message, failed, reasons[~ok].tolist())
        warnings.warn(f"{message}; their predictions are NaN: {failed[:20]}", stacklevel=2)

    pred = np.where(bound.obs_mask & ok[:, None], np.asarray(pred), np.nan)
    endpoint_names = np.asarray(model.endpoints, dtype=object)[bound.obs_endpoint]
    names = list(model.parameters) + list(model.covariates)
    ds = xr.Dataset(
        data_vars={
            "pred": (("subject", "obs"), pred, {"long_name": "prediction at the observation"}),
            "obs_time": (
                ("subject", "obs"),
                np.where(bound.obs_mask, bound.obs_time, np.nan),
                {"units": model.time_unit},
            ),
            "obs_endpoint": (("subject", "obs"), np.where(bound.obs_mask, endpoint_names, "")),
            "obs_mask": (("subject", "obs"), bound.obs_mask),
            "ok": ("subject", ok),
            "status": ("subject", status),
            "reason": ("subject", reasons.astype(str)),
            "params": (("subject", "parameter"), np.asarray(p)),
        },
        coords={
            "subject": bound.subjects,
            "parameter": names,
            "endpoint": list(model.endpoints),
            "endpoint_unit": ("endpoint", list(model.endpoint_units)),
            "state": list(model.states),
            "state_unit": ("state", list(model.state_units)),
        },
        attrs={
            "model": model.name,
            "time_unit": model.time_unit,
            "solver": repr(solver),
            "source": bound.source,
        },
    )
    if len(set(model.endpoint_units)) == 1:
        ds["pred"].attrs["units"] = model.endpoint_units[0]
    if times is not None:
        bad = ~ok[:, None, None]
        ds = ds.assign_coords(time=("time", grid, {"units": model.time_unit}))
        ds["pred_grid"] = (
            ("subject", "time", "endpoint"),
            np.where(bad, np.nan, np.asarray(pred_grid)),
        )
        ds["state_grid"] = (
            ("subject", "time", "state"),
            np.where(bad, np.nan, np.asarray(state_grid)),
        )
    return ds
