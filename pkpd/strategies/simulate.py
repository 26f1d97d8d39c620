"""Counterfactual simulation of strategies over parameter draws x virtual patients.

Every strategy is resolved to dose events of the model's own dose routes and integrated with the
events, ordering rule and numerical method that fit the model (explicit methods through the
subjects-last loop of `pkpd.solve.lanes`, others through `pkpd.solve.solve_batch`), so what is
compared is exactly the fitted model. Every (draw, patient) pair is one simulation; all pairs of a
chunk are one batched solve.

Reactive policies are resolved by *time-ordered fixed-point iteration*: simulate with the doses
decided so far; for each simulation find the earliest assessment (after the last decision time)
at which some policy fires; add the doses of that time; simulate again. A dose only changes the
future, so everything before the newly added dose stays exact, and each pass settles one more
decision time per simulation. Passes needed = the largest number of distinct reactive dose times
of any simulation (bounded by the policies' ``max_doses``); every pass is a full batched solve.

Ordinal endpoints (CRS and ICANS grades) are drawn as ``grade = #{k: latent + e > c_k}`` with a
logistic ``e`` fixed per patient (from the population's ``u``; ``offset = "subject"`` in the model
file, as in the library's outcomes): the grade follows the latent severity through time, and the
same patient has the same ``e`` in every strategy (common random numbers), so a strategy compared
with itself differs by exactly zero. Endpoints with ``offset = "record"`` get an independent
``e`` per *grading day* instead, and endpoints with ``offset = "subject"`` and a ``record_scale``
``s`` get both: the patient's ``e`` plus ``s`` times an independent logistic per grading day. The
numbers of a day (`day_uniforms`) are keyed by the patient's ``u`` and the day number
(``floor(t)`` in days since time 0), so they are common to all strategies and shared by every
output time and assessment of that day. Grades are recorded once a day in the field (the
likelihoods take one noise term per record, so data hold the day's grade), and a day's noise does
not depend on the output grid, the assessments of a strategy or the horizon: a finer grid does
not raise the worst grade by adding noise draws.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from pkpd import units as U
from pkpd.errors import SolverError
from pkpd.events import BOLUS, INFUSION_END, INFUSION_START, PAD
from pkpd.solve import Solver
from pkpd.solve.engine import STATUS_MESSAGES, event_arrays, solve_batch
from pkpd.solve.lanes import solve_lanes
from pkpd.solve.lanes import supports as lanes_supports
from pkpd.strategies.population import Population
from pkpd.strategies.regimen import Dose, Strategy, validate

#: Default simulations per batched solve on a CPU and on an accelerator (`simulate_strategies`).
#: On a CPU a batch runs until its slowest simulation is done: 1024 was the fastest of 512-4096
#: with the subjects-last integrator (benchmarks/strategies.py, 16,384 simulations: 131k/min
#: vs 83k/min at 4096).
CPU_CHUNK, ACCELERATOR_CHUNK = 1024, 131072

jax.config.update("jax_enable_x64", True)

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": np.greater_equal,
    ">": np.greater,
    "<=": np.less_equal,
    "<": np.less,
}


@dataclass(frozen=True)
class _Column:
    """One dose column (bolus) or column pair (infusion) of the event table, for all sims."""

    time: np.ndarray  # (M,) model time
    amount: np.ndarray  # (M,) AMT in the route's unit
    cmt: int
    duration: float  # model time; 0 = bolus
    active: np.ndarray  # (M,) bool


#: Integrators `simulate_strategies` accepts.
INTEGRATORS = ("auto", "lanes", "engine")


@partial(jax.jit, static_argnums=(0, 1, 2))
def _run(
    model: Any, solver: Solver, lanes: bool, ev: dict, t: Any, seq: Any, p: Any, u: Any, days: Any
):
    """Solve, evaluate the endpoints and draw ordinal grades, all on the device.

    ``days``: ``(T,)`` grading day of each time column (`grading_days`).
    """
    solve_fn = solve_lanes if lanes else solve_batch
    res = solve_fn(model, solver, ev, t, seq, p)
    obs = jax.vmap(jax.vmap(model.observe, in_axes=(0, 0, None)), in_axes=(0, 0, 0))(t, res.y, p)
    for q, (e, cut, levels, per_record, scale) in enumerate(_ordinal_info(model, offsets=True)):
        uq = day_uniforms(u[:, q], days) if per_record else u[:, q]
        latent = obs[:, :, e]
        if scale is not None:  # the subject's offset plus noise per grading day
            latent = latent + p[:, scale][:, None] * day_noise(u[:, q], days)
        obs = obs.at[:, :, e].set(grades(latent, p[:, cut], levels, uq, xp=jnp))
    return obs, res.y, res.status


@partial(jax.jit, static_argnums=(2, 3))
def _outcomes(values: Any, grid_days: Any, ordinal: tuple[int, ...], continuous: tuple[int, ...]):
    """Per-simulation outcomes on the output grid (on the device: only scalars come back)."""
    out = {}
    for e in ordinal:
        g = values[:, :, e]
        hit = g >= 1
        first = jnp.argmax(hit, axis=1)
        out[f"max_{e}"] = g.max(axis=1)
        out[f"onset_{e}"] = jnp.where(hit.any(axis=1), grid_days[first], jnp.nan)
    for e in continuous:
        g = values[:, :, e]
        out[f"auc_{e}"] = jnp.sum((g[:, 1:] + g[:, :-1]) * jnp.diff(grid_days) / 2.0, axis=1)
        out[f"cmax_{e}"] = g.max(axis=1)
        out[f"last_{e}"] = g[:, -1]
    return out


@partial(jax.jit, static_argnums=(0,))
def _individual(model: Any, theta: Any, eta: Any, cov: Any):
    return jax.vmap(model.individual)(theta, eta, cov)


def _event_table(columns: list[_Column], width: int, m: int) -> dict[str, np.ndarray]:
    """Assemble dose columns into a padded engine event table ``(m, width)``."""
    out = {
        "time": np.zeros((m, width)),
        "kind": np.full((m, width), PAD, np.int32),
        "amount": np.zeros((m, width)),
        "cmt": np.full((m, width), -1, np.int32),
        "rate": np.zeros((m, width)),
        "duration": np.zeros((m, width)),
        "link": np.full((m, width), -1, np.int32),
        "seq": np.full((m, width), np.inf),
        "mask": np.zeros((m, width), bool),
    }
    j = 0
    for k, col in enumerate(columns):
        on = col.active
        seq = 1.0 + k  # after observations (key 0.5) at the same time: assessments are pre-dose
        if col.duration > 0:
            for jj, kind in ((j, INFUSION_START), (j + 1, INFUSION_END)):
                out["time"][:, jj] = np.where(on, col.time, 0.0)
                out["kind"][:, jj] = np.where(on, kind, PAD)
                out["amount"][:, jj] = col.amount
                out["cmt"][:, jj] = col.cmt
                out["duration"][:, jj] = col.duration
                out["seq"][:, jj] = np.where(on, seq, np.inf)
                out["mask"][:, jj] = on
            out["link"][:, j] = np.where(on, j + 1, -1)
            out["link"][:, j + 1] = np.where(on, j, -1)
            j += 2
        else:
            out["time"][:, j] = np.where(on, col.time, 0.0)
            out["kind"][:, j] = np.where(on, BOLUS, PAD)
            out["amount"][:, j] = col.amount
            out["cmt"][:, j] = col.cmt
            out["seq"][:, j] = np.where(on, seq, np.inf)
            out["mask"][:, j] = on
            j += 1
    # Padding at the last real time so it never opens a new interval.
    last = np.max(np.where(out["mask"], out["time"], -np.inf), axis=1, initial=-np.inf)
    last = np.where(np.isfinite(last), last, 0.0)
    out["time"] = np.where(out["mask"], out["time"], last[:, None])
    return out


def _width(columns: list[_Column]) -> int:
    return sum(2 if c.duration > 0 else 1 for c in columns)


class _Resolver:
    """Turns doses into per-simulation AMT in the route's unit (mg/kg x weight, caps)."""

    def __init__(self, model: Any, covariates: np.ndarray, index: np.ndarray):
        self.model = model
        self.spec = model.spec
        self.cov = covariates[index]  # (M, C)
        self.wt = self.cov[:, model.covariates.index("WT")] if "WT" in model.covariates else None
        self.tf = U.factor("day", model.time_unit)

    def amount(self, dose: Dose) -> np.ndarray:
        route = self.spec.doses[dose.route_name]
        m = self.cov.shape[0]
        if dose.per_kg:
            mg = dose.amount * U.factor(dose.unit, "mg/kg") * self.wt
        else:
            mg = np.full(m, dose.amount * U.factor(dose.unit, "mg"))
        if dose.cap is not None:
            mg = np.minimum(mg, dose.cap)
        if route.per is not None:
            per = self.cov[:, self.model.covariates.index(route.per)]
            per_unit = f"({route.amount_unit}) * ({self.spec.covariates[route.per].unit})"
            return mg * U.factor("mg", per_unit) / per
        return mg * U.factor("mg", route.amount_unit)

    def column(self, dose: Dose, day: np.ndarray | float, active: np.ndarray) -> _Column:
        m = self.cov.shape[0]
        amount = self.amount(dose)
        return _Column(
            time=np.broadcast_to(np.asarray(day, float) * self.tf, (m,)).copy(),
            amount=amount,
            cmt=int(self.model.dose_targets[dose.route_name]),
            duration=dose.duration * self.tf,
            # A dose of nothing is no event: it must not even split the integration.
            active=np.broadcast_to(active, (m,)) & (amount > 0),
        )


def _ordinal_info(model: Any, offsets: bool = False) -> list[tuple]:
    """(endpoint index, cutpoint parameter indices, levels) of each ordinal endpoint.

    With ``offsets``, a fourth and fifth item: whether the endpoint's noise is independent per
    record (``offset = "record"`` in the model file) rather than one offset per patient, and the
    parameter index of its per-record noise scale on top of that offset (``record_scale``), or
    None.
    """
    out: list[tuple] = []
    for e, obs in enumerate(model.spec.observations.values()):
        if obs.error == "ordinal":
            cut = [model.parameter_index(c) for c in obs.cutpoints]
            item = (e, cut, np.asarray(obs.levels, float))
            scale = model.parameter_index(obs.record_scale) if obs.record_scale else None
            out.append((*item, obs.offset == "record", scale) if offsets else item)
    return out


#: Added to the day number before it keys the generator (`day_uniforms`), so that days before
#: time 0 (pre-infusion doses) have keys too.
_DAY_KEY_OFFSET = 1 << 16


def grading_days(times_days: Any) -> np.ndarray:
    """Grading day of each time: ``floor(t)`` for ``t`` in days since time 0.

    Parameters
    ----------
    times_days : array_like
        Times in days.

    Returns
    -------
    numpy.ndarray
        Integer day numbers (a time a hair below a whole day counts as that day).
    """
    return np.floor(np.asarray(times_days, float) + 1e-9).astype(np.int64)


def day_uniforms(u: Any, days: Any) -> Any:
    """One uniform number per simulation and grading day, derived from the simulation's ``u``.

    For ordinal endpoints with noise per record (``offset = "record"``, or a ``record_scale`` on
    top of the patient's offset): the number of day ``d`` is a function of ``u`` and ``d`` alone
    (a counter-based generator keyed by ``u``, folded with ``d``), so times of the same day share
    it, the same patient meets the same noise in every strategy (common random numbers), and the
    numbers do not depend on the grid, the assessments or the horizon.

    Parameters
    ----------
    u : jax.Array
        ``(M,)`` uniform numbers in (0, 1).
    days : array_like
        ``(T,)`` integer day numbers (`grading_days`), >= ``-65536``.

    Returns
    -------
    jax.Array
        ``(M, T)`` uniform numbers in (0, 1).
    """
    seed = jnp.floor(u * 4294967295.0).astype(jnp.uint32)
    keys = (jnp.asarray(days) + _DAY_KEY_OFFSET).astype(jnp.uint32)

    def one(s: Any) -> Any:
        key = jax.random.PRNGKey(s)

        def day(d: Any) -> Any:
            return jax.random.uniform(
                jax.random.fold_in(key, d), (), minval=1e-12, maxval=1.0 - 1e-12
            )

        return jax.vmap(day)(keys)

    return jax.vmap(one)(seed)


def day_noise(u: Any, days: Any) -> Any:
    """Draw standard logistic noise per simulation and grading day (`day_uniforms`), ``(M, T)``."""
    r = day_uniforms(u, days)
    return jnp.log(r) - jnp.log1p(-r)


def grades(latent: Any, cutpoints: Any, levels: Any, u: Any, xp: Any = np) -> Any:
    """Ordered-logistic grades with a logistic offset per simulation or per record.

    Parameters
    ----------
    latent : numpy.ndarray
        ``(M, T)`` latent severity.
    cutpoints : numpy.ndarray
        ``(M, K)`` increasing cutpoints.
    levels : numpy.ndarray
        ``(K+1,)`` grade values.
    u : numpy.ndarray
        ``(M,)`` uniform numbers in (0, 1): one offset per simulation, for all its times
        (``offset = "subject"``); or ``(M, T)``: one per record (``offset = "record"``).
    xp : module, optional
        Array namespace: `numpy` (default) or `jax.numpy` (inside a compiled function).

    Returns
    -------
    numpy.ndarray
        ``(M, T)`` grades: ``levels[#{k: latent + logit(u) > c_k}]``.
    """
    e = xp.log(u) - xp.log1p(-u)
    if e.ndim == 1:
        e = e[:, None]
    count = xp.sum((latent[..., None] + e[..., None]) > cutpoints[:, None, :], axis=-1)
    return xp.asarray(levels)[count]


def simulate_strategies(
    model: Any,
    population: Population,
    strategies: Sequence[Strategy],
    *,
    grid: Sequence[float] | None = None,
    horizon: float = 28.0,
    solver: Solver | None = None,
    chunk_size: int | None = None,
    keep_trajectories: int = 400,
    max_passes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    integrator: str = "auto",
) -> xr.Dataset:
    """Simulate every strategy for every (draw, patient) pair of a population.

    Parameters
    ----------
    model : CompiledModel
        The model (with its ``spec``); strategies are validated against it first.
    population : Population
        Draws, patients and common random numbers (`make_population`).
    strategies : sequence of Strategy
        Strategies to compare (names unique).
    grid : sequence of float, optional
        Output times in days (default: every 6 h from 0 to ``horizon``).
    horizon : float
        Last day simulated when no grid is given.
    solver : Solver, optional
        Default Tsit5, rtol 1e-6, atol 1e-9.
    chunk_size : int, optional
        Simulations per batched solve (default: `CPU_CHUNK` on a CPU, `ACCELERATOR_CHUNK` on a
        GPU/TPU, where larger batches cost little more than small ones).
    keep_trajectories : int
        Number of (draw, patient) pairs whose full trajectories are kept (the same pairs in
        every strategy); outcomes are kept for all.
    max_passes : int, optional
        Cap on reactive passes (default: total ``max_doses`` of the policies + 1).
    progress : callable, optional
        ``progress(done, total)`` after each chunk.
    integrator : {"auto", "lanes", "engine"}
        ``"lanes"``: `pkpd.solve.lanes.solve_lanes` (explicit methods only; the engine's stops,
        tableau and controller with subjects on the last axis, ~2x faster on a CPU);
        ``"engine"``: `pkpd.solve.solve_batch`, the integrator of the fits, to the last bit;
        ``"auto"`` (default): lanes when the solver's method allows it. The two agree to the
        solver's tolerance, not to rounding.

    Returns
    -------
    xarray.Dataset
        Outcomes over ``(strategy, draw, patient)``: ``max_<endpoint>`` and ``onset_<endpoint>``
        (first day with grade >= 1) per ordinal endpoint; ``auc_<endpoint>``, ``cmax_<endpoint>``
        and ``last_<endpoint>`` per continuous endpoint (on the grid); ``doses_<drug>`` reactive
        doses given per drug; ``ok``; ``reactive_on (strategy)``, the quantities its reactive
        triggers look at (comma-separated, empty for none). Trajectories
        ``traj (strategy, pair, time, endpoint)`` and reactive dose times
        ``reactive_time (strategy, pair, slot)`` for the kept pairs.

    Raises
    ------
    StrategyError
        An invalid strategy (before anything is simulated).
    SolverError
        If solves fail.
    """
    names = [s.name for s in strategies]
    if len(set(names)) != len(names):
        raise ValueError(f"strategy names must be unique, got {names}")
    population.check(model)
    has_wt = "WT" in population.provided
    for s in strategies:
        validate(s, model, has_weight=has_wt)
    solver = solver or Solver("tsit5", rtol=1e-6, atol=1e-9)
    if integrator not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
    use_lanes = integrator == "lanes" or (integrator == "auto" and lanes_supports(model, solver))
    if integrator == "lanes" and not lanes_supports(model, solver):
        raise ValueError(f"integrator 'lanes' needs an explicit method, got {solver.method!r}")
    tf = U.factor("day", model.time_unit)
    grid_days = np.asarray(
        grid if grid is not None else np.arange(0.0, horizon + 1e-9, 0.25), dtype=float
    )
    assess = sorted({a for s in strategies for p in s.reactive for a in p.assessments()})
    # Every strategy starts integrating at the same time (the earliest dose of any strategy, or
    # the first output time), so that pre-infusion doses do not move one strategy's start.
    first_dose = [t for s in strategies for r in s.regimens for t in r.times()]
    first_dose += [float(np.min(b.time)) for b in population.base]
    t_start = min([grid_days[0], 0.0] + first_dose)
    times = np.union1d(np.union1d(grid_days, np.asarray(assess, float)), [t_start])
    grid_idx = np.searchsorted(times, grid_days)
    days = jnp.asarray(grading_days(times))
    d, n = population.n_draws, population.n_patients
    total = d * n
    endpoints = list(model.endpoints)
    ordinal = _ordinal_info(model)
    ord_idx = {e for e, _, _ in ordinal}
    cont_idx = [e for e in range(len(endpoints)) if e not in ord_idx]
    ord_e, cont_e = tuple(e for e, _, _ in ordinal), tuple(cont_idx)
    drugs = sorted({p.dose.drug for s in strategies for p in s.reactive})
    rng = np.random.default_rng([d, n, 20261123])  # which pairs keep trajectories
    keep = np.sort(rng.choice(total, size=min(keep_trajectories, total), replace=False))
    n_slots = max([sum(p.max_doses for p in s.reactive) for s in strategies] + [1])
    passes_cap = max_passes or n_slots + 1

    shape = (len(strategies), d, n)
    out: dict[str, np.ndarray] = {"ok": np.ones(shape, bool)}
    for e, _, _ in ordinal:
        out[f"max_{endpoints[e]}"] = np.zeros(shape)
        out[f"onset_{endpoints[e]}"] = np.full(shape, np.nan)
    for e in cont_idx:
        for kind in ("auc", "cmax", "last"):
            out[f"{kind}_{endpoints[e]}"] = np.zeros(shape)
    for drug in drugs:
        out[f"doses_{drug}"] = np.zeros(shape)
    traj = np.full((len(strategies), keep.size, grid_days.size, len(endpoints)), np.nan)
    reactive_time = np.full((len(strategies), keep.size, n_slots), np.nan)
    passes_used = np.zeros(len(strategies), int)

    # Column layout is the same for every chunk: compute the widest strategy once.
    widths = []
    for s in strategies:
        cols = len(population.base) + sum(
            r.n_doses * (2 if r.dose.duration > 0 else 1) for r in s.regimens
        )
        cols += sum(p.max_doses * (2 if p.dose.duration > 0 else 1) for p in s.reactive)
        widths.append(cols)
    width = max(widths + [1])

    done = 0
    if chunk_size is None:
        chunk_size = CPU_CHUNK if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK
    chunk = min(int(chunk_size), total)
    for start in range(0, total, chunk):
        real = np.arange(start, min(start + chunk, total))
        # Pad the last chunk (repeating its last simulation) so every chunk has one shape and
        # one compiled program; padded rows are dropped below.
        idx = np.concatenate([real, np.full(chunk - real.size, real[-1])])
        m = idx.size
        n_real = real.size
        di, ni = idx // n, idx % n
        eta = population.eta(di, ni)
        p = np.asarray(
            _individual(
                model,
                jnp.asarray(population.theta[di]),
                jnp.asarray(eta),
                jnp.asarray(population.covariates[ni]),
            )
        )
        resolver = _Resolver(model, population.covariates, ni)
        base_cols = [
            _Column(
                b.time[ni] * tf,
                b.amount[ni],
                int(model.dose_targets[b.route]),
                0.0,
                b.amount[ni] > 0,
            )
            for b in population.base
        ]
        t_arr = np.broadcast_to(times * tf, (m, times.size))
        seq = np.full((m, times.size), 0.5)
        u = population.u[ni]
        kept = np.isin(idx, keep)
        kept_pos = np.searchsorted(keep, idx[kept])
        for si, s in enumerate(strategies):
            fixed = list(base_cols)
            for r in s.regimens:
                for day in r.times():
                    fixed.append(resolver.column(r.dose, day, np.ones(m, bool)))
            slot_time = [np.full((m, pol.max_doses), np.nan) for pol in s.reactive]
            frontier = np.full(m, -np.inf)
            passes = 0
            rows = np.arange(m)  # simulations to (re)solve in this pass
            values = states = status = None
            while True:
                cols = list(fixed)
                for pol, st in zip(s.reactive, slot_time, strict=True):
                    for k in range(pol.max_doses):
                        on = np.isfinite(st[:, k])
                        cols.append(resolver.column(pol.dose, np.where(on, st[:, k], 0.0), on))
                ev = _event_table(cols, width, m)
                # Later passes re-solve only the simulations that got a new dose, padded to a
                # power-of-two count so that few shapes get compiled.
                bucket = 1 << int(rows.size - 1).bit_length()
                size = m if rows.size == m else min(m, max(64, bucket))
                sel = np.concatenate([rows, np.full(size - rows.size, rows[-1])])
                # Trajectories stay on the device; only decisions' inputs, outcomes and kept
                # trajectories come back (on a GPU, host-side work on full trajectories cost
                # more than the solve).
                ev_sel = event_arrays({k: v[sel] for k, v in ev.items()})
                o, y, st_ = _run(
                    model,
                    solver,
                    use_lanes,
                    ev_sel,
                    jnp.asarray(t_arr[sel]),
                    jnp.asarray(seq[sel]),
                    jnp.asarray(p[sel]),
                    jnp.asarray(u[sel]),
                    days,
                )
                if values is None:
                    values, states, status = o, y, np.array(st_)
                else:
                    values = values.at[sel].set(o)
                    states = states.at[sel].set(y)
                    status[rows] = np.asarray(st_)[: rows.size]
                passes += 1
                if not s.reactive or passes >= passes_cap:
                    break

                def lookup(q: str, values=values, states=states) -> Any:
                    if q in endpoints:
                        return values[:, :, endpoints.index(q)]
                    return states[:, :, model.state_index(q)]

                changed = _decide(s, lookup, times, slot_time, frontier, status == 0)
                if not changed.any():
                    break
                rows = np.flatnonzero(changed)
            passes_used[si] = max(passes_used[si], passes)
            ok = status == 0
            if not ok.all():
                bad = np.flatnonzero(~ok)[:10]
                reasons = [STATUS_MESSAGES[int(status[b])] for b in bad]
                raise SolverError(
                    f"strategy {s.name!r}: {int((~ok).sum())} of {m} simulations failed",
                    [f"draw {di[b]} patient {ni[b]}" for b in bad],
                    reasons,
                )
            g = values[:, jnp.asarray(grid_idx), :]
            summary = _outcomes(g, jnp.asarray(grid_days), ord_e, cont_e)
            for key, v in summary.items():
                kind, e = key.split("_")
                out[f"{kind}_{endpoints[int(e)]}"][si, di, ni] = np.asarray(v)
            for drug in drugs:
                given = sum(
                    np.isfinite(st).sum(axis=1)
                    for pol, st in zip(s.reactive, slot_time, strict=True)
                    if pol.dose.drug == drug
                )
                out[f"doses_{drug}"][si, di, ni] = given
            traj[si, kept_pos] = np.asarray(g[jnp.asarray(np.flatnonzero(kept))])
            if s.reactive:
                all_slots = np.concatenate(slot_time, axis=1)
                reactive_time[si, kept_pos, : all_slots.shape[1]] = all_slots[kept]
        done += n_real
        if progress is not None:
            progress(done, total)

    data = {k: (("strategy", "draw", "patient"), v) for k, v in out.items()}
    data["traj"] = (("strategy", "pair", "time", "endpoint"), traj)
    data["reactive_time"] = (("strategy", "pair", "slot"), reactive_time)
    data["pair_draw"] = ("pair", keep // n)
    data["pair_patient"] = ("pair", keep % n)
    data["passes"] = ("strategy", passes_used)
    # What each strategy's reactive doses look at: a course that reacts to a grade depends on
    # that grade's offset (`pkpd.strategies.worst`).
    data["reactive_on"] = (
        "strategy",
        [",".join(sorted({p.trigger.quantity for p in s.reactive})) for s in strategies],
    )
    covs = {
        f"cov_{c}": ("patient", population.covariates[:, k]) for k, c in enumerate(model.covariates)
    }
    data.update(covs)
    ds = xr.Dataset(
        data,
        coords={
            "strategy": names,
            "draw": np.arange(d),
            "patient": np.arange(n),
            "time": ("time", grid_days, {"units": "day"}),
            "endpoint": endpoints,
            "endpoint_unit": ("endpoint", list(model.endpoint_units)),
        },
        attrs={
            "model": model.name,
            "model_hash": model.spec.hash if model.spec is not None else "",
            "parameters_from": population.source,
            "solver": repr(solver),
            "integrator": "lanes" if use_lanes else "engine",
            "strategies": "\n".join(s.describe() for s in strategies),
            "reference": next((s.name for s in strategies if s.reference), names[0]),
            "created": _time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )
    return ds


def _decide(
    strategy: Strategy,
    lookup: Callable[[str], np.ndarray],
    times: np.ndarray,
    slot_time: list[np.ndarray],
    frontier: np.ndarray,
    ok: np.ndarray,
) -> np.ndarray:
    """Add the reactive doses of each simulation's next decision time; return who changed.

    ``lookup(quantity)`` gives ``(M, T)`` values on ``times`` (days). ``frontier`` holds the last
    decision time of each simulation: assessments up to it are settled.
    """
    m = frontier.shape[0]
    earliest = []
    for pol, st in zip(strategy.reactive, slot_time, strict=True):
        a_times = np.asarray(pol.assessments())
        cols = np.searchsorted(times, a_times)
        values = np.asarray(lookup(pol.trigger.quantity)[:, cols])
        cond = _OPS[pol.trigger.op](values, pol.trigger.threshold)
        if pol.trigger.persist > 0:
            # Held at every assessment of the last `persist` days (assessments before the
            # policy's start count as not held).
            k = int(round(pol.trigger.persist / pol.assess_every))
            held = cond.copy()
            for shift in range(1, k + 1):
                shifted = np.zeros_like(cond)
                shifted[:, shift:] = cond[:, :-shift]
                held &= shifted
            cond = held
        given = np.isfinite(st).sum(axis=1)
        last = np.max(np.where(np.isfinite(st), st, -np.inf), axis=1)
        eligible = (
            cond
            & (a_times[None, :] > frontier[:, None])
            & (given < pol.max_doses)[:, None]
            & (a_times[None, :] >= last[:, None] + pol.min_interval - 1e-9)
        )
        first = np.argmax(eligible, axis=1)
        earliest.append(np.where(eligible.any(axis=1), a_times[first], np.inf))
    when = np.min(np.stack(earliest), axis=0) if earliest else np.full(m, np.inf)
    act = np.isfinite(when) & ok
    for (_pol, st), e_j in zip(
        zip(strategy.reactive, slot_time, strict=True), earliest, strict=True
    ):
        fire = act & (e_j == when)
        rows = np.flatnonzero(fire)
        st[rows, np.isfinite(st[rows]).sum(axis=1)] = when[rows]
    frontier[act] = when[act]
    return act
