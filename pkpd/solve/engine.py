"""The batched integrator: exact dose handling, one compiled solve for a whole cohort.

Every subject is integrated piecewise. Its events (doses, infusion switches, resets) and its
requested times (observations, grid points) are merged into one sequence of *stops*, sorted by the
ordering rule; a `jax.lax.scan` runs over the stops, and each step integrates the ODE from the
previous stop to this one with one `diffrax.diffeqsolve` (saving only the end state), then either
records the state (an observation) or applies the event (a bolus jump, an infusion switched on or
off, a reset). The whole thing is written for one subject and `jax.vmap`-ed over subjects, so a
cohort is one XLA program; it is differentiable with respect to the individual parameters ``p``.

Ordering rule (see `pkpd.events`): event ``e`` precedes observation ``o`` iff
``t_e < t_o or (t_e == t_o and seq_e < seq_o)``, with ``t_e`` the *effective* event time (after
lag, and after the infusion duration for an infusion end). Because lags and infusion durations
depend on parameters, stops are sorted inside JAX by ``(time, seq)`` (ties: events first, then
column order); sorting is exactly the rule.

Why stops rather than saving at observation times inside each inter-dose interval: diffrax saves
``SaveAt(ts=...)`` points one per iteration of an inner loop, and under `vmap` every interval pays
for every observation; stopping at observations instead was 2.6x faster on the benchmark
(``benchmarks/solve.py``) and needs no per-interval bookkeeping. The price of a stop is a restart
of the step-size controller; each interval therefore starts from the mean accepted step of the
previous one (the first from ``Solver.dt0``, else 1e-3 of the subject's time span) rather than
from a fresh conservative guess: on ``cart_crs`` with a stop every 6 h this took the solve from
0.51 to 0.36 s (256 simulations, best of 8).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from pkpd.events import BOLUS, INFUSION_END, INFUSION_START, PAD, RESET, EventTable
from pkpd.solve.config import Solver

jax.config.update("jax_enable_x64", True)

#: Status codes of `SolveResult.status`.
OK, STEP_LIMIT, NONFINITE, SOLVER_FAILURE = 0, 1, 2, 3

#: Human-readable reason for each status code.
STATUS_MESSAGES: dict[int, str] = {
    OK: "ok",
    STEP_LIMIT: "step limit reached (max_steps) in an integration interval",
    NONFINITE: "non-finite state (the solution blew up or a parameter is not finite)",
    SOLVER_FAILURE: "ODE solver failure (step size collapse, nonlinear solve or other)",
}

#: Names of the event columns, in `EventTable` field order.
EVENT_FIELDS = ("time", "kind", "amount", "cmt", "rate", "duration", "link", "seq", "mask")

_TRACES = {"count": 0}


def trace_count() -> int:
    """Return how many times the compiled solve has been traced (for cache tests).

    Returns
    -------
    int
        Number of traces of the batched solve since the process started.
    """
    return _TRACES["count"]


class SolveResult(NamedTuple):
    """States at the requested times.

    Attributes
    ----------
    y : jax.Array
        ``(N, O, S)`` state of every subject at every requested time; NaN for failed subjects.
    ok : jax.Array
        ``(N,)`` bool, True where the solve succeeded.
    status : jax.Array
        ``(N,)`` int, one of `OK`, `STEP_LIMIT`, `NONFINITE`, `SOLVER_FAILURE`
        (see `STATUS_MESSAGES`).
    """

    y: jax.Array
    ok: jax.Array
    status: jax.Array


def event_arrays(events: EventTable | dict[str, Any]) -> dict[str, jax.Array]:
    """Return the event table as a dict of JAX arrays (a pytree the compiled solve accepts).

    Parameters
    ----------
    events : EventTable or dict
        The padded event table (numpy or JAX arrays).

    Returns
    -------
    dict of str to jax.Array
        Columns ``time, kind, amount, cmt, rate, duration, link, seq, mask``.
    """
    get = events.get if isinstance(events, dict) else lambda k: getattr(events, k)
    out = {}
    for name in EVENT_FIELDS:
        value = jnp.asarray(get(name))
        if name in ("time", "amount", "rate", "duration", "seq"):
            value = value.astype(jnp.float64)
        elif name == "mask":
            value = value.astype(bool)
        else:
            value = value.astype(jnp.int32)
        out[name] = value
    return out


class PreparedEvents(NamedTuple):
    """One subject's events with parameter-dependent quantities resolved, sorted by the rule.

    All arrays have length ``E`` and are in sorted order; ``col`` gives each event's column in
    the original table (infusion ``link`` values refer to original columns).
    """

    tau: jax.Array  # effective time
    seq: jax.Array
    kind: jax.Array
    cmt: jax.Array  # clipped to a valid state index
    col: jax.Array
    link: jax.Array
    real: jax.Array  # bool: a real (non-padding) event
    bolus: jax.Array  # amount arriving (F * scale * AMT) for boluses, else 0
    rate: jax.Array  # infusion input rate (state unit per time) for starts and ends, else 0
    end_tau: jax.Array  # for infusion starts: effective end time, else tau
    rate_by_col: jax.Array  # (E,) rate of each original column (starts only, else 0)
    cmt_by_col: jax.Array  # (E,) clipped target of each original column
    t0: jax.Array  # start of integration (first record)
    t_last: jax.Array  # last effective event time (real events)


def prepare_events(
    model: Any, ev: dict[str, jax.Array], p: jax.Array, obs_time: jax.Array, obs_seq: jax.Array
) -> PreparedEvents:
    """Apply lag, bioavailability, dose scaling and infusion durations, then sort events.

    Parameters
    ----------
    model : CompiledModel
        Supplies ``dose_lag``, ``dose_bioavailability`` and ``dose_scale``.
    ev : dict of str to jax.Array
        One subject's event columns (1-D, see `event_arrays`).
    p : jax.Array
        Individual vector ``(P+C,)``.
    obs_time, obs_seq : jax.Array
        The subject's requested times and their ordering keys (used for the start time).

    Returns
    -------
    PreparedEvents
    """
    n_states = model.n_states
    n_ev = ev["time"].shape[0]
    kind = ev["kind"]
    real = ev["mask"] & (kind != PAD)
    is_dose = real & ((kind == BOLUS) | (kind == INFUSION_START) | (kind == INFUSION_END))
    c = jnp.clip(ev["cmt"], 0, n_states - 1)
    lag = jnp.where(is_dose, jnp.asarray(model.dose_lag(p))[c], 0.0)
    bio = jnp.where(is_dose, jnp.asarray(model.dose_bioavailability(p))[c], 1.0)
    scale = jnp.where(is_dose, jnp.asarray(model.dose_scale(p))[c], 1.0)
    amount = ev["amount"]
    by_rate = ev["rate"] > 0
    # RATE given: F changes the duration; DUR given: F changes the rate (NONMEM semantics).
    rate_safe = jnp.where(by_rate, ev["rate"], 1.0)
    dur_given = jnp.where(ev["duration"] > 0, ev["duration"], 1.0)
    duration = jnp.where(by_rate, bio * amount / rate_safe, ev["duration"])
    rate = jnp.where(by_rate, ev["rate"] * scale, bio * amount * scale / dur_given)
    is_inf = real & ((kind == INFUSION_START) | (kind == INFUSION_END))
    rate = jnp.where(is_inf, rate, 0.0)
    tau = ev["time"] + lag + jnp.where(kind == INFUSION_END, duration, 0.0)
    bolus = jnp.where(real & (kind == BOLUS), amount * scale * bio, 0.0)

    # Start of integration: the first record (event or finite-keyed observation).
    finite_obs = jnp.isfinite(obs_seq) & jnp.isfinite(obs_time)
    big = jnp.inf
    t0 = jnp.minimum(
        jnp.min(jnp.where(real, jnp.minimum(ev["time"], tau), big), initial=big),
        jnp.min(jnp.where(finite_obs, obs_time, big), initial=big),
    )
    t_any = jnp.min(jnp.where(jnp.isfinite(obs_time), obs_time, big), initial=big)
    t0 = jnp.where(jnp.isfinite(t0), t0, jnp.where(jnp.isfinite(t_any), t_any, 0.0))
    # The start is the first *recorded* time, data rather than a parameter: at a lag of exactly
    # 0 the min above ties a dose's effective time with its nominal time and would take half of
    # d/d(lag) away from the dose (regression: tests/model/test_library.py zero-lag gradient).
    t0 = jax.lax.stop_gradient(t0)
    t_last = jnp.max(jnp.where(real, tau, -big), initial=-big)
    t_obs = jnp.max(jnp.where(jnp.isfinite(obs_time), obs_time, -big), initial=-big)
    t_end = jnp.maximum(jnp.maximum(t_last, t_obs), t0)
    # Padding sorts last: at the end time with an infinite key.
    tau = jnp.where(real, tau, t_end)
    seq = jnp.where(real, ev["seq"], jnp.inf)

    cols = jnp.arange(n_ev)
    link = ev["link"]
    end_tau_by_col = jnp.where(
        real & (kind == INFUSION_START), tau[jnp.clip(link, 0, n_ev - 1)], tau
    )
    rate_by_col = jnp.where(real & (kind == INFUSION_START), rate, 0.0)
    order = jnp.lexsort((cols, seq, jax.lax.stop_gradient(tau)))
    return PreparedEvents(
        tau=tau[order],
        seq=seq[order],
        kind=kind[order],
        cmt=c[order],
        col=cols[order],
        link=link[order],
        real=real[order],
        bolus=bolus[order],
        rate=rate[order],
        end_tau=end_tau_by_col[order],
        rate_by_col=rate_by_col,
        cmt_by_col=c,
        t0=t0,
        t_last=t_last,
    )


def count_preceding(pe: PreparedEvents, obs_time: jax.Array, obs_seq: jax.Array) -> jax.Array:
    """Count the events that precede each observation under the ordering rule.

    Parameters
    ----------
    pe : PreparedEvents
        Sorted events of one subject.
    obs_time, obs_seq : jax.Array
        ``(O,)`` times and keys.

    Returns
    -------
    jax.Array
        ``(O,)`` int: the index of the integration interval holding each observation.
    """
    t_e = pe.tau[None, :]
    before = (t_e < obs_time[:, None]) | (
        (t_e == obs_time[:, None]) & (pe.seq[None, :] < obs_seq[:, None])
    )
    return jnp.sum(before & pe.real[None, :], axis=1)


def _straight_through(x: jax.Array, bounded: jax.Array) -> jax.Array:
    """``bounded``'s value with ``x``'s gradient.

    Stops are sorted, so clipping them to the integration window only guards against round-off;
    at a tie (an event exactly at the start, or two stops at one time) ``clip``/``maximum`` would
    split the derivative between the stop and the bound. The time derivative belongs to the stop.
    """
    return x + jax.lax.stop_gradient(bounded - x)


def _status_of(result: Any) -> jax.Array:
    ok = result == diffrax.RESULTS.successful
    steps = result == diffrax.RESULTS.max_steps_reached
    return jnp.where(ok, OK, jnp.where(steps, STEP_LIMIT, SOLVER_FAILURE)).astype(jnp.int32)


class Stops(NamedTuple):
    """One subject's events and requested times merged into one sorted sequence of stops.

    ``xs`` holds ``K = E + O`` stops in the order the ordering rule gives (see the module
    docstring); the other fields are what the integration needs besides the stops.
    """

    xs: dict[str, jax.Array]  # t, is_obs, index, kind, real, cmt, col, link, bolus; each (K,)
    rate_by_col: jax.Array  # (E,) infusion rate of each original column (starts only, else 0)
    cmt_by_col: jax.Array  # (E,) clipped target state of each original column
    t0: jax.Array  # start of integration
    t_stop: jax.Array  # end of integration (last requested time, at least t0)


def merge_stops(
    model: Any, ev: dict[str, jax.Array], obs_time: jax.Array, obs_seq: jax.Array, p: jax.Array
) -> Stops:
    """Merge one subject's prepared events and requested times into sorted stops.

    Parameters
    ----------
    model : CompiledModel
        The model (dose lags, bioavailability, scaling).
    ev : dict of str to jax.Array
        One subject's event columns (1-D, see `event_arrays`).
    obs_time, obs_seq : jax.Array
        ``(O,)`` requested times and their ordering keys; non-finite times are padding
        (recorded at the start).
    p : jax.Array
        Individual vector ``(P+C,)``.

    Returns
    -------
    Stops
    """
    n_obs = obs_time.shape[0]
    pe = prepare_events(model, ev, p, obs_time, obs_seq)
    n_ev = pe.tau.shape[0]
    t_obs = jnp.where(jnp.isfinite(obs_time), obs_time, pe.t0)
    obs_seq = jnp.where(jnp.isfinite(obs_time), obs_seq, -jnp.inf)  # padding: before all
    t_stop = jnp.maximum(jnp.max(t_obs, initial=-jnp.inf), pe.t0)

    # Merge events and observations; sorting by (time, key) is the ordering rule.
    times = jnp.concatenate([pe.tau, t_obs])
    keys = jnp.concatenate([pe.seq, obs_seq])
    is_obs = jnp.concatenate([jnp.zeros(n_ev, bool), jnp.ones(n_obs, bool)])
    index = jnp.concatenate([jnp.arange(n_ev), jnp.arange(n_obs)])
    order = jnp.lexsort((index, is_obs, keys, jax.lax.stop_gradient(times)))

    def ev_col(x: jax.Array, fill: Any) -> jax.Array:
        return jnp.concatenate([x, jnp.full((n_obs,), fill, x.dtype)])[order]

    xs = {
        "t": _straight_through(times, jnp.clip(times, pe.t0, t_stop))[order],
        "is_obs": is_obs[order],
        "index": index[order],
        "kind": ev_col(pe.kind, PAD),
        "real": ev_col(pe.real, False),
        "cmt": ev_col(pe.cmt, 0),
        "col": ev_col(pe.col, 0),
        "link": ev_col(pe.link, -1),
        "bolus": ev_col(pe.bolus, 0.0),
    }
    return Stops(xs, pe.rate_by_col, pe.cmt_by_col, pe.t0, t_stop)


def _solve_one_ode(
    model: Any,
    solver: Solver,
    ev: dict[str, jax.Array],
    obs_time: jax.Array,
    obs_seq: jax.Array,
    p: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Integrate one subject stopping at every event and observation; states ``(O, S)``."""
    n_states = model.n_states
    n_obs = obs_time.shape[0]
    n_ev = ev["time"].shape[0]
    st = merge_stops(model, ev, obs_time, obs_seq, p)
    xs, t_stop = st.xs, st.t_stop
    rate_matrix = st.rate_by_col[:, None] * jax.nn.one_hot(st.cmt_by_col, n_states)
    y0 = jnp.asarray(model.initial(p), dtype=jnp.float64)
    cols = jnp.arange(n_ev)
    states = jnp.arange(n_states)

    term = diffrax.ODETerm(lambda t, y, args: model.rhs(t, y, args[0]) + args[1])
    dsolver = solver.diffrax_solver()
    controller = diffrax.PIDController(rtol=solver.rtol, atol=solver.atol)
    span = jax.lax.stop_gradient(jnp.maximum(t_stop - st.t0, 1e-12))
    h0 = jnp.asarray(solver.dt0 if solver.dt0 is not None else 1e-3, jnp.float64) * (
        1.0 if solver.dt0 is not None else span
    )
    adjoint = solver.diffrax_adjoint()

    def step(carry, x):
        y, active, out, status, a, h = carry
        failed = status != OK
        b = jnp.where(failed, a, _straight_through(x["t"], jnp.maximum(x["t"], a)))
        y_in = jnp.where(jnp.isfinite(y), y, 0.0)
        u = active @ rate_matrix
        # Each stop restarts the step-size controller; starting from the mean accepted step of
        # the previous interval instead of a fresh, conservative guess saves the steps that
        # the controller would spend growing it back (cart_crs stops every 6 h).
        # Not capped at b - a: a first step ending exactly at b would tie with the clip of the
        # step to b inside diffrax and split d/db (as at a zero lag); the 1.01 keeps an
        # interval as long as the last one from tying with it.
        dt0 = jax.lax.stop_gradient(jnp.maximum(1.01 * h, 1e-12 * span))
        sol = diffrax.diffeqsolve(
            term,
            dsolver,
            a,
            b,
            dt0,
            y_in,
            args=(p, u),
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=solver.max_steps,
            throw=False,
        )
        y_end = sol.ys[-1]
        code = _status_of(sol.result)
        code = jnp.where((code == OK) & ~jnp.all(jnp.isfinite(y_end)), NONFINITE, code).astype(
            jnp.int32
        )
        status = jnp.where(failed, status, code)
        slot = x["index"]
        out = out.at[slot].set(jnp.where(x["is_obs"], y_end, out[slot]))
        kind, real = x["kind"], x["real"]
        is_bolus = real & (kind == BOLUS)
        y_new = y_end + jnp.where(is_bolus & (states == x["cmt"]), x["bolus"], 0.0)
        is_reset = real & (kind == RESET)
        y_new = jnp.where(is_reset, y0, y_new)
        start = real & (kind == INFUSION_START) & (cols == x["col"])
        end = real & (kind == INFUSION_END) & (cols == x["link"])
        active = jnp.where(start, 1.0, jnp.where(end | is_reset, 0.0, active))
        n_acc = sol.stats["num_accepted_steps"]
        h = jnp.where((n_acc > 0) & (b > a), (b - a) / jnp.maximum(n_acc, 1), h)
        return (y_new, active, out, status, b, h), None

    init = (
        y0,
        jnp.zeros(n_ev, dtype=jnp.float64),
        jnp.zeros((n_obs, n_states), dtype=jnp.float64),
        jnp.asarray(OK, dtype=jnp.int32),
        st.t0,
        h0,
    )
    (_, _, out, status, _, _), _ = jax.lax.scan(step, init, xs)
    status = jnp.where((status == OK) & ~jnp.all(jnp.isfinite(out)), NONFINITE, status).astype(
        jnp.int32
    )
    return out, status


def _solve_one(
    model: Any,
    solver: Solver,
    ev: dict[str, jax.Array],
    obs_time: jax.Array,
    obs_seq: jax.Array,
    p: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    if solver.uses_analytic(model):
        from pkpd.solve.analytic import analytic_subject

        y = analytic_subject(model, ev, obs_time, obs_seq, p)
        status = jnp.where(jnp.all(jnp.isfinite(y)), OK, NONFINITE).astype(jnp.int32)
        return y, status
    return _solve_one_ode(model, solver, ev, obs_time, obs_seq, p)


def solve_batch(
    model: Any,
    solver: Solver,
    ev: dict[str, jax.Array],
    obs_time: jax.Array,
    obs_seq: jax.Array,
    p: jax.Array,
) -> SolveResult:
    """Un-jitted batched solve (vmap over subjects); see `solve`.

    Use this inside your own `jax.jit`-ed function (a likelihood); use `solve` otherwise.
    """
    _TRACES["count"] += 1
    batched = jax.vmap(lambda a: _solve_one(model, solver, *a))
    args = (ev, obs_time, obs_seq, p)
    n = p.shape[0]
    size = solver.resolved_batch_size()
    if size and n > size:
        # vmap within chunks, loop over chunks: large vmapped while loops run slower per
        # subject (each waits for its slowest subject; working sets leave the cache). Equal
        # chunks (the last subject repeated as padding) keep it to one compiled body.
        n_chunks = -(-n // size)
        chunk = -(-n // n_chunks)
        pad = n_chunks * chunk - n

        def split(x: jax.Array) -> jax.Array:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x
            return x.reshape((n_chunks, chunk, *x.shape[1:]))

        y, status = jax.lax.map(batched, jax.tree_util.tree_map(split, args))
        y = y.reshape((n_chunks * chunk, *y.shape[2:]))[:n]
        status = status.reshape(-1)[:n]
    else:
        y, status = batched(args)
    ok = status == OK
    y = jnp.where(ok[:, None, None], y, jnp.nan)
    return SolveResult(y=y, ok=ok, status=status)


_solve_jit = jax.jit(solve_batch, static_argnums=(0, 1))


def solve(
    model: Any,
    events: EventTable | dict[str, Any],
    obs_time: Any,
    obs_seq: Any,
    p: Any,
    solver: Solver | None = None,
) -> SolveResult:
    """Integrate every subject of a cohort, with exact dose handling.

    Parameters
    ----------
    model : CompiledModel
        The model (static: one compilation per model and solver and input shapes).
    events : EventTable or dict
        Padded event table ``(N, E)`` (from `pkpd.events.build_event_table` or `bind`).
    obs_time : array_like
        ``(N, O)`` requested times in model time units. Non-finite entries are padding (their
        rows of ``y`` are meaningless).
    obs_seq : array_like
        ``(N, O)`` ordering keys of the requested times (dataset line numbers; ``+inf`` puts a
        time after every event at that time, ``-inf`` before).
    p : array_like
        ``(N, P+C)`` individual vectors.
    solver : Solver, optional
        Method and tolerances (default `Solver()`).

    Returns
    -------
    SolveResult
        States ``y (N, O, S)`` (NaN for failed subjects), ``ok (N,)`` and ``status (N,)``.

    Notes
    -----
    Differentiable with respect to ``p`` (`jax.grad` with the default adjoint, `jax.jacfwd` with
    ``Solver(adjoint=diffrax.ForwardMode())``).
    """
    solver = Solver() if solver is None else solver
    return _solve_jit(
        model,
        solver,
        event_arrays(events),
        jnp.asarray(obs_time, dtype=jnp.float64),
        jnp.asarray(obs_seq, dtype=jnp.float64),
        jnp.asarray(p, dtype=jnp.float64),
    )


def solve_dense(
    model: Any,
    events: EventTable | dict[str, Any],
    times: Any,
    p: Any,
    solver: Solver | None = None,
) -> SolveResult:
    """Integrate every subject on a common time grid.

    Grid points carry the key ``+inf``: at a dose time they show the post-dose state.

    Parameters
    ----------
    model : CompiledModel
        The model.
    events : EventTable or dict
        Padded event table ``(N, E)``.
    times : array_like
        ``(G,)`` grid in model time units.
    p : array_like
        ``(N, P+C)`` individual vectors.
    solver : Solver, optional
        Method and tolerances.

    Returns
    -------
    SolveResult
        ``y`` has shape ``(N, G, S)``.
    """
    p = jnp.asarray(p, dtype=jnp.float64)
    grid = jnp.broadcast_to(jnp.asarray(times, dtype=jnp.float64), (p.shape[0], np.size(times)))
    return solve(model, events, grid, jnp.full(grid.shape, jnp.inf), p, solver)
