"""A batched integrator with subjects on the last axis ("lanes"), for simulation and fitting.

`pkpd.solve.engine` writes the solve for one subject and `jax.vmap`s it: the batch axis of every
array in the compiled loop is then the *first* one, ``(N, S)``, and each state of the model's
right-hand side is a strided column. Here the whole batch is integrated by one loop over arrays of
shape ``(S, N)``: each state is a contiguous row of N subjects, which XLA's CPU code vectorises.
Every subject keeps its own time, step size and place in its own sequence of stops, so the
numerical method is the engine's: the same stops (events and requested times merged by the
ordering rule, `pkpd.solve.engine.merge_stops`), the same explicit Runge-Kutta tableau
(`pkpd.solve.erk`), the same error norm and step-size controller (diffrax's `PIDController` as
an integral controller: accept when the RMS of the scaled error is below 1, then
``h *= clip(0.9 * err**(-1/order), ...)``). It differs in two ways, both numerical only:

- the step size is carried across stops (a stop clips a step; it does not restart the
  controller), so solutions agree with the engine's to the tolerances, not to rounding;
- JAX's reverse mode does not go through `solve_lanes` (a `while_loop` of unknown length);
  `jax.jvp` (forward mode) does, and `solve_lanes_adjoint` is its discrete adjoint (a
  recorded forward pass replayed backwards: reverse mode at a cost that does not grow with the
  number of parameters). Stop times and their order, and the step-size controller, are not
  differentiated (as diffrax does for the controller), so the sensitivities are exact
  with respect to everything but parameters that move an event time (a dose lag, or the
  bioavailability of an infusion given by rate); dose amounts, infusion rates, initial states
  and the right-hand side are differentiated. `pkpd.inference.predict.lanes_gradient` says
  when a fit may use it.

Each iteration every subject takes one step towards its next stop (a step of length 0 when it is
already there) and, if it reaches it, processes that stop: records the state (a requested time)
or applies the event (bolus, infusion on/off, reset). The loop ends when every subject has
processed its last stop or failed. A subject that fails (step budget between two stops, a
non-finite state, a collapsed step) is frozen with its status, as in the engine.

Measured on ``cart_crs`` (23 states, 28 days, output every 6 h): see ``benchmarks/RESULTS.md``
(strategies benchmark) and ``docs/solver.md``.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pkpd.events import BOLUS, INFUSION_END, INFUSION_START, RESET
from pkpd.solve.config import Solver
from pkpd.solve.engine import NONFINITE, OK, SOLVER_FAILURE, STEP_LIMIT, SolveResult, merge_stops
from pkpd.solve.erk import UnrolledERK

jax.config.update("jax_enable_x64", True)

# diffrax's PIDController defaults (an integral controller with these three constants).
_SAFETY, _FACTOR_MIN, _FACTOR_MAX = 0.9, 0.2, 10.0

# Largest magnitude of an adjoint state (see `_step_back`).
_ADJOINT_CAP = 1e100


def supports(model: Any, solver: Solver) -> bool:
    """Whether `solve_lanes` can integrate ``model`` with ``solver``.

    Parameters
    ----------
    model : CompiledModel
        The model.
    solver : Solver
        Method and tolerances.

    Returns
    -------
    bool
        True for the explicit methods of `pkpd.solve.erk` (``"tsit5"``, ``"dopri5"``,
        ``"dopri8"``, and ``"auto"`` when the model has no closed form).
    """
    if solver.uses_analytic(model):
        return False
    return isinstance(solver.diffrax_solver(), UnrolledERK)


def _combine(coefs: Any, ks: list[jax.Array]) -> jax.Array | None:
    total = None
    for a, k in zip(coefs, ks, strict=False):
        a = float(a)
        if a != 0.0:
            total = a * k if total is None else total + a * k
    return total


def _stages(
    field: Any, tab: Any, t: jax.Array, he: jax.Array, y: jax.Array, f0: jax.Array
) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
    """One explicit Runge-Kutta step of length ``he`` per lane: ``(y1, error, stage values)``."""
    ks = [he * f0]
    fs = [f0]
    for cc, a in zip(tab.c, tab.a_lower, strict=True):
        fs.append(field(t + float(cc) * he, y + _combine(a, ks)))
        ks.append(he * fs[-1])
    return y + _combine(tab.b_sol, ks), _combine(tab.b_error, ks), fs


class LanesStats(NamedTuple):
    """What the loop did (`solve_lanes` with ``with_stats=True``).

    Attributes
    ----------
    iterations : jax.Array
        Loop iterations (the slowest subject's steps, rejected ones and stops).
    accepted, rejected : jax.Array
        ``(N,)`` steps of non-zero length accepted and rejected by each subject.
    accepted_after : jax.Array
        ``(N,)`` accepted steps that started at or after ``count_after``.
    """

    iterations: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    accepted_after: jax.Array


def solve_lanes(
    model: Any,
    solver: Solver,
    ev: dict[str, jax.Array],
    obs_time: jax.Array,
    obs_seq: jax.Array,
    p: jax.Array,
    *,
    with_stats: bool = False,
    count_after: float = float("inf"),
    needed_until: Any = None,
) -> SolveResult | tuple[SolveResult, LanesStats]:
    """Integrate every subject with the subjects-last loop (un-jitted; call inside `jax.jit`).

    Same arguments and result as `pkpd.solve.engine.solve_batch`, and optionally the step
    counts (for profiling: `benchmarks/cart_recovery.py --steps`).

    Parameters
    ----------
    model : CompiledModel
        The model (static).
    solver : Solver
        An explicit method (see `supports`), tolerances and ``max_steps`` (the step budget
        between two consecutive stops of a subject, as in the engine).
    ev : dict of str to jax.Array
        Padded event table ``(N, E)`` as JAX arrays (`pkpd.solve.engine.event_arrays`).
    obs_time, obs_seq : jax.Array
        ``(N, O)`` requested times and their ordering keys.
    p : jax.Array
        ``(N, P+C)`` individual vectors.

    with_stats : bool, optional
        Also return a `LanesStats`.
    count_after : float, optional
        Time from which accepted steps are counted in ``LanesStats.accepted_after``.
    needed_until : array-like, optional
        ``(N, S)`` times (data, not differentiated): state ``s`` of subject ``n`` is integrated
        while ``t < needed_until[n, s]``; from the first step that starts at or after it, its
        derivative is 0 (its value frozen) and it leaves the error norm. Recorded values of a
        frozen state are stale. Exact for the states a caller reads, at the times it reads
        them, when no state still integrated depends on a frozen one
        (`pkpd.inference.predict.needed_until` builds such times for a fit); a frozen stiff
        state no longer bounds the step. Default: every state integrated throughout.

    Returns
    -------
    SolveResult or (SolveResult, LanesStats)
        ``y (N, O, S)`` (NaN for failed subjects), ``ok (N,)``, ``status (N,)``.

    Raises
    ------
    ValueError
        If the solver's method is not an explicit Runge-Kutta method of `pkpd.solve.erk`.
    """
    result, stats, _ = _run(
        model,
        solver,
        ev,
        obs_time,
        obs_seq,
        p,
        with_stats=with_stats,
        count_after=count_after,
        needed_until=needed_until,
    )
    return (result, stats) if with_stats else result


class _Inputs(NamedTuple):
    """What the loop differentiates through: everything that depends on ``p``."""

    p_t: jax.Array  # (P+C, N)
    y_init: jax.Array  # (S, N)
    bolus: jax.Array  # (N, K) bolus amount of each stop
    rate_in: jax.Array  # (S, E, N): input rate into state s while column e's infusion runs


def _method(model: Any, solver: Solver) -> UnrolledERK:
    method = solver.diffrax_solver()
    if solver.uses_analytic(model) or not isinstance(method, UnrolledERK):
        raise ValueError(
            f"the subjects-last integrator needs an explicit method (tsit5, dopri5, dopri8), "
            f"got {solver.method!r}"
        )
    return method


def _inputs(
    model: Any, ev: dict[str, jax.Array], obs_time: jax.Array, obs_seq: jax.Array, p: jax.Array
) -> tuple[_Inputs, Any]:
    """Merge the stops (times not differentiated); return the loop's differentiable inputs."""
    stops = jax.vmap(lambda e, ot, os, pp: merge_stops(model, e, ot, os, pp))(
        ev, obs_time, obs_seq, p
    )
    # Stop times and their order are data here (the loop differentiates amounts and rates,
    # not event times; `differentiable` says when that is exact).
    xs = dict(stops.xs)  # each (N, K)
    xs["t"] = jax.lax.stop_gradient(xs["t"])
    stops = stops._replace(
        xs=xs, t0=jax.lax.stop_gradient(stops.t0), t_stop=jax.lax.stop_gradient(stops.t_stop)
    )
    p_t = p.T
    # vmap with the batch on axis 1 in and out: any per-subject model works, and XLA keeps the
    # subjects-last layout (as fast as calling a broadcasting right-hand side directly).
    y_init = jax.vmap(model.initial, in_axes=1, out_axes=1)(p_t).astype(jnp.float64)
    states = jnp.arange(model.n_states)[:, None]
    rate_in = (states[:, :, None] == stops.cmt_by_col.T[None]) * stops.rate_by_col.T[None]
    return _Inputs(p_t, y_init, xs["bolus"], rate_in), stops


def _rhs(model: Any) -> Any:
    rhs = jax.vmap(model.rhs, in_axes=(0, 1, 1), out_axes=1)

    def field(t: jax.Array, y: jax.Array, u: jax.Array, p_t: jax.Array) -> jax.Array:
        return rhs(t, y, p_t) + u

    return field


def _take(a: jax.Array, ptr: jax.Array) -> jax.Array:
    """Return ``a[n, ptr[n]]`` for each lane (ptr clipped to the last stop)."""
    return jnp.take_along_axis(a, jnp.minimum(ptr, a.shape[1] - 1)[:, None], 1)[:, 0]


def _run(
    model: Any,
    solver: Solver,
    ev: dict[str, jax.Array],
    obs_time: jax.Array,
    obs_seq: jax.Array,
    p: jax.Array,
    *,
    with_stats: bool = False,
    count_after: float = float("inf"),
    capacity: int = 0,
    needed_until: Any = None,
) -> tuple[SolveResult, LanesStats | None, dict[str, jax.Array] | None]:
    """Run the loop; with ``capacity > 0`` also record its first ``capacity`` iterations.

    The record (``tape``) holds what a reverse pass needs to replay each iteration with the
    same decisions: the state, time, step, acceptance, stop reached and running infusions at
    the start of each iteration, and the number of iterations.
    """
    method = _method(model, solver)
    tab = method.tableau
    expo = -1.0 / method.method_order
    rtol, atol = float(solver.rtol), float(solver.atol)
    n_states = model.n_states
    n, n_obs = obs_time.shape
    n_ev = ev["time"].shape[1]

    inp, stops = _inputs(model, ev, obs_time, obs_seq, p)
    xs = stops.xs
    n_stops = xs["t"].shape[1]
    lane = jnp.arange(n)
    states = jnp.arange(n_states)[:, None]
    cols = jnp.arange(n_ev)[:, None]
    span = jnp.maximum(stops.t_stop - stops.t0, 1e-12)
    h0 = jnp.full(n, float(solver.dt0)) if solver.dt0 is not None else 1e-3 * span
    max_steps = int(solver.max_steps)
    rhs = _rhs(model)
    cut = _cut(needed_until)

    def field(t: jax.Array, y: jax.Array, u: jax.Array) -> jax.Array:
        return rhs(t, y, u, inp.p_t)

    def at(name: str, ptr: jax.Array) -> jax.Array:
        return _take(inp.bolus if name == "bolus" else xs[name], ptr)

    def cond(c: tuple) -> jax.Array:
        ptr, status = c[3], c[7]
        return jnp.any((ptr < n_stops) & (status == OK))

    def body(c: tuple) -> tuple:
        y, t, h, ptr, f, stale, u_in, status, since, active, out = c[:11]
        live = (ptr < n_stops) & (status == OK)
        t_next = at("t", ptr)
        gap = jnp.maximum(t_next - t, 0.0)
        he = jnp.where(live, jnp.minimum(h, gap), 0.0)
        # States still integrated in this step (all without `needed_until`); a state only
        # ever leaves, at a stop, so a derivative carried over needs no recomputation.
        keep = None if cut is None else t[None] < cut

        def step_field(ts: jax.Array, ys: jax.Array) -> jax.Array:
            fy = field(ts, ys, u_in)
            return fy if keep is None else jnp.where(keep, fy, 0.0)

        # First-same-as-last: the last stage of an accepted step is f at the new point; it is
        # stale only after an event changed the state or the inputs.
        f0 = jax.lax.cond(
            jnp.any(stale & live),
            lambda: jnp.where(stale[None], step_field(t, y), f),
            lambda: f,
        )
        if keep is not None:
            f0 = jnp.where(keep, f0, 0.0)
        y_start, t_start, ptr_start, active_start = y, t, ptr, active
        y1, err, fs = _stages(step_field, tab, t, he, y, f0)
        scale = atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y1))
        if keep is None:
            enorm = jnp.sqrt(jnp.mean((err / scale) ** 2, axis=0))
        else:  # the RMS over the states integrated: frozen ones do not dilute it
            enorm = jnp.sqrt(
                jnp.sum(jnp.where(keep, (err / scale) ** 2, 0.0), axis=0)
                / jnp.maximum(jnp.sum(keep, axis=0), 1)
            )
        finite = jnp.all(jnp.isfinite(y1), axis=0)
        # The step-size controller is not differentiated (as in diffrax's PIDController).
        enorm = jax.lax.stop_gradient(jnp.where(finite, enorm, jnp.inf))
        accept = live & ((he == 0) | (enorm < 1.0))
        inv = 1.0 / jnp.maximum(enorm, 1e-300)
        factor = jnp.clip(
            _SAFETY * inv**-expo,
            jnp.where(accept, 1.0, _FACTOR_MIN),
            jnp.where(accept, _FACTOR_MAX, _SAFETY),
        )
        clipped = he < h
        h_new = jnp.where(he > 0, he * factor, h)
        # A step shortened to reach a stop says nothing about the step the solution allows.
        h_new = jnp.where(accept & clipped, jnp.maximum(h_new, h), h_new)
        h = jnp.where(live, h_new, h)
        reached = accept & (he == gap)
        t = jnp.where(accept, jnp.where(reached, t_next, t + he), t)
        y = jnp.where(accept[None], y1, y)
        stepped = accept & (he > 0)
        if tab.fsal:
            f = jnp.where(stepped[None], fs[-1], f)
            fresh = stepped
        else:
            fresh = jnp.zeros_like(stepped)
        since = jnp.where(reached, 0, since + (live & (he > 0)))

        # Process the stop reached.
        is_obs, real, kind = at("is_obs", ptr), at("real", ptr), at("kind", ptr)
        record = reached & is_obs
        # A lane that records nothing writes to its own spare column n_obs (cut off at the
        # end), so the indices are unique and sorted: with that promise XLA's CPU scatter is
        # cheap, notably for the tangents in forward mode (`cart_crs_core`, 60 patients, 8
        # tangents: gradient 0.52 -> 0.39 s; with mode="drop" and a shared out-of-range slot).
        slot = jnp.where(record, at("index", ptr), n_obs)
        out = out.at[lane, slot].set(y.T, indices_are_sorted=True, unique_indices=True)
        event = reached & ~is_obs & real
        is_bolus = event & (kind == BOLUS)
        y = y + jnp.where(is_bolus[None] & (states == at("cmt", ptr)[None]), at("bolus", ptr), 0.0)
        is_reset = event & (kind == RESET)
        y = jnp.where(is_reset[None], inp.y_init, y)
        start = event & (kind == INFUSION_START)
        end = event & (kind == INFUSION_END)
        active = jnp.where(start[None] & (cols == at("col", ptr)[None]), 1.0, active)
        active = jnp.where(
            (end[None] & (cols == at("link", ptr)[None])) | is_reset[None], 0.0, active
        )
        switched = start | end | is_reset
        u_in = jax.lax.cond(
            jnp.any(switched),
            lambda: jnp.einsum("sen,en->sn", inp.rate_in, active),
            lambda: u_in,
        )
        # (f was evaluated for this step's start; a zero-length step computed nothing new)
        stale = (stale & ~fresh) | ~jnp.asarray(tab.fsal) | is_bolus | switched
        ptr = ptr + reached

        # A non-finite trial step is only rejected (its error is infinite: the step shrinks), as
        # in diffrax; a subject fails when its state itself is not finite, or the step collapses.
        code = jnp.where(
            live & ~jnp.all(jnp.isfinite(y), axis=0),
            NONFINITE,
            jnp.where(
                since > max_steps,
                STEP_LIMIT,
                jnp.where(live & (h < 1e-14 * span), SOLVER_FAILURE, OK),
            ),
        )
        status = jnp.where(status == OK, code, status).astype(jnp.int32)
        new = (y, t, h, ptr, f, stale, u_in, status, since, active, out)
        extra = c[11:]
        if capacity:
            tape, extra = extra[0], extra[1:]
            i = tape["iterations"]
            at_i = jnp.minimum(i, capacity - 1)
            row = {
                "y": y_start,
                "t": t_start,
                "he": he,
                "accept": accept,
                "reached": reached,
                "ptr": ptr_start,
                "active": active_start.astype(bool),
            }
            tape = {k: tape[k].at[at_i].set(v) for k, v in row.items()}
            tape["iterations"] = i + 1
            new += (tape,)
        if with_stats:
            iterations, accepted, rejected, after = extra
            new += (
                iterations + 1,
                accepted + stepped,
                rejected + (live & ~accept),
                after + (stepped & (t - he >= count_after)),
            )
        return new

    init = (
        inp.y_init,
        stops.t0,
        h0,
        jnp.zeros(n, jnp.int32),
        jnp.zeros((n_states, n)),
        jnp.ones(n, bool),
        jnp.zeros((n_states, n)),
        jnp.full(n, OK, jnp.int32),
        jnp.zeros(n, jnp.int32),
        jnp.zeros((n_ev, n)),
        jnp.full((n, n_obs + 1, n_states), jnp.nan),
    )
    if capacity:
        init += (
            {
                "y": jnp.zeros((capacity, n_states, n)),
                "t": jnp.zeros((capacity, n)),
                "he": jnp.zeros((capacity, n)),
                "accept": jnp.zeros((capacity, n), bool),
                "reached": jnp.zeros((capacity, n), bool),
                "ptr": jnp.zeros((capacity, n), jnp.int32),
                "active": jnp.zeros((capacity, n_ev, n), bool),
                "iterations": jnp.zeros((), jnp.int32),
            },
        )
    if with_stats:
        zeros = jnp.zeros(n, jnp.int32)
        init += (jnp.zeros((), jnp.int32), zeros, zeros, zeros)
    final = jax.lax.while_loop(cond, body, init)
    out, status = final[10][:, :n_obs], final[7]
    status = jnp.where(
        (status == OK) & ~jnp.all(jnp.isfinite(out), axis=(1, 2)), NONFINITE, status
    ).astype(jnp.int32)
    ok = status == OK
    result = SolveResult(y=jnp.where(ok[:, None, None], out, jnp.nan), ok=ok, status=status)
    tape = final[11] if capacity else None
    stats = LanesStats(*final[-4:]) if with_stats else None
    return result, stats, tape


def _cut(needed_until: Any) -> jax.Array | None:
    """``needed_until`` as ``(S, N)`` data (not differentiated), or None."""
    if needed_until is None:
        return None
    return jax.lax.stop_gradient(jnp.asarray(needed_until, dtype=jnp.float64).T)


def _rows(a: jax.Array) -> list[jax.Array]:
    # split (whose transpose is a concatenate), not indexing (whose transpose pads)
    return [r[0] for r in jax.lax.split(a, [1] * a.shape[0])]


def _stage_field(rows_rhs: Any, ts: jax.Array, y: jax.Array, p_t: jax.Array) -> jax.Array:
    return jnp.stack(rows_rhs(ts, _rows(y), _rows(p_t)))


def _step_back(
    rows_rhs: Any,
    tab: Any,
    row: dict[str, jax.Array],
    p_t: jax.Array,
    u: jax.Array,
    lam: jax.Array,
    keep: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pull ``lam`` (cotangent of the step's result) back through one recorded step.

    Returns the cotangents of the step's start state, of ``p_t`` and of the inputs ``u``.
    ``keep`` (``(S, N)``) marks the states the step integrated (`solve_lanes`'s
    ``needed_until``); the others had derivative 0.
    Written stage by stage (recompute the stages, then one vector-Jacobian product of the
    right-hand side per stage, last stage first) with a barrier after each product: left
    to itself XLA fuses the whole transposed step into a few huge loops that recompute
    shared terms (`cart_crs_core`, 60 patients: 0.85 s against 0.71 s per gradient).
    """
    # A rejected trial step changed nothing, and its stages may not be finite (0 x inf
    # would poison the products): replay it as a step of length 0.
    t, y = row["t"], row["y"]
    he = jnp.where(row["accept"], row["he"], 0.0)
    lam_step = jnp.where(row["accept"][None], lam, 0.0)

    def masked(fy: jax.Array) -> jax.Array:
        return fy if keep is None else jnp.where(keep, fy, 0.0)

    stage_y, stage_t = [y], [t]
    ks = [he * masked(_stage_field(rows_rhs, t, y, p_t) + u)]
    for cc, a in zip(tab.c, tab.a_lower, strict=True):
        stage_y.append(y + _combine(a, ks))
        stage_t.append(t + float(cc) * he)
        ks.append(he * masked(_stage_field(rows_rhs, stage_t[-1], stage_y[-1], p_t) + u))
    n_stages = len(stage_y)
    # a[j][m]: coefficient of stage m in stage j's state (explicit: m < j)
    a_full = [[0.0] * n_stages] + [
        [float(x) for x in row_a] + [0.0] * (n_stages - len(row_a)) for row_a in tab.a_lower
    ]
    b = [float(x) for x in tab.b_sol] + [0.0] * (n_stages - len(tab.b_sol))
    nus: list[jax.Array | None] = [None] * n_stages
    lam_y, d_p, d_u = lam, jnp.zeros_like(p_t), jnp.zeros_like(u)
    for m in reversed(range(n_stages)):
        mu = b[m] * lam_step
        for j in range(m + 1, n_stages):
            if a_full[j][m] != 0.0:
                mu = mu + a_full[j][m] * nus[j]
        mu = masked(he * mu)  # cotangent of stage m's derivative f(Y_m)
        _, pull = jax.vjp(
            lambda yy, pp, m=m: _stage_field(rows_rhs, stage_t[m], yy, pp), stage_y[m], p_t
        )
        nu, dp = jax.lax.optimization_barrier(pull(mu))
        nus[m] = nu
        lam_y, d_p, d_u = lam_y + nu, d_p + dp, d_u + mu
    # A mode the steps do not resolve (an unused drug's depot: its state is exactly 0, so the
    # error control ignores it and the steps are far beyond its time constant) is unstable in
    # the scheme; its forward sensitivities stay exactly 0, but its adjoint grows backwards
    # (cart_crs: 1e306 within 250 steps) until 0 x inf poisons the gradient. Its products
    # with those zero sensitivities are 0 whatever its size, so it is capped: this changes
    # nothing where the exact adjoint stays below the cap.
    return jnp.clip(lam_y, -_ADJOINT_CAP, _ADJOINT_CAP), d_p, d_u


def iterations(
    model: Any,
    solver: Solver,
    ev: dict[str, jax.Array],
    obs_time: jax.Array,
    obs_seq: jax.Array,
    p: jax.Array,
    needed_until: Any = None,
) -> int:
    """Loop iterations of one solve (jitted here): to size `solve_lanes_adjoint`'s record.

    Parameters
    ----------
    model, solver, ev, obs_time, obs_seq, p, needed_until
        As in `solve_lanes`.

    Returns
    -------
    int
    """

    def count(q: jax.Array) -> jax.Array:
        return solve_lanes(
            model, solver, ev, obs_time, obs_seq, q, with_stats=True, needed_until=needed_until
        )[1].iterations

    return int(jax.jit(count)(p))


class AdjointCounter:
    """How many reverse passes of `solve_lanes_adjoint` ran, and how many fell back.

    A reverse pass whose solve needed more loop iterations than the record holds takes forward
    mode instead (exact, slower); a fit reports the count (`pkpd.inference.fit`).

    Attributes
    ----------
    gradients : int
        Reverse passes run.
    fallbacks : int
        Those that took forward mode.
    capacity : int or None
        The record's size in loop iterations (set by `solve_lanes_adjoint`).
    """

    def __init__(self) -> None:
        self.gradients = 0
        self.fallbacks = 0
        self.capacity: int | None = None
        self._lock = threading.Lock()  # chains may differentiate from several threads

    def record(self, fell_back: Any) -> None:
        """Count one reverse pass (called from the compiled code, `jax.debug.callback`)."""
        with self._lock:
            self.gradients += 1
            self.fallbacks += int(bool(fell_back))

    def __repr__(self) -> str:
        return (
            f"AdjointCounter(gradients={self.gradients}, fallbacks={self.fallbacks}, "
            f"capacity={self.capacity})"
        )


def solve_lanes_adjoint(
    model: Any,
    solver: Solver,
    ev: dict[str, jax.Array],
    obs_time: jax.Array,
    obs_seq: jax.Array,
    p: jax.Array,
    *,
    capacity: int,
    columns: Any = None,
    counter: AdjointCounter | None = None,
    needed_until: Any = None,
) -> SolveResult:
    """`solve_lanes` with a discrete adjoint: reverse mode at a cost that does not grow with P.

    The forward pass records each loop iteration (state, time, step, acceptance, stop reached,
    running infusions); the reverse pass replays the iterations backwards with the same
    decisions, pulling the cotangent of the recorded states back through each step's
    Runge-Kutta stages and events (vector-Jacobian products of the right-hand side), into the
    individual vectors ``p``. It differentiates the same discrete scheme as `solve_lanes` in
    forward mode (stop times, their order and the step-size controller are not
    differentiated), so the two give the same derivatives to rounding; one reverse pass costs a
    few solves whatever the number of parameters, where forward mode costs about one solve per
    parameter.

    Parameters
    ----------
    model, solver, ev, obs_time, obs_seq, p
        As in `solve_lanes`; ``ev``, ``obs_time`` and ``obs_seq`` must be concrete arrays (data
        the reverse rule closes over, as in a fit), not values traced by an enclosing
        transformation.
    capacity : int
        Loop iterations the record holds (memory ``capacity x (S + E + 6) x N`` numbers). A solve
        that needs more falls back, in the reverse pass, to forward mode (exact, slower):
        size it from `iterations` at typical values with a margin.
    columns : sequence of int, optional
        Columns of ``p`` the fallback pushes tangents for (default: all); the others get a
        zero cotangent there.
    counter : AdjointCounter, optional
        Counts the reverse passes and the fallbacks (one host callback per reverse pass) and
        records ``capacity``.
    needed_until : array-like, optional
        As in `solve_lanes` (concrete data).

    Returns
    -------
    SolveResult
        As `solve_lanes`; ``y`` is differentiable in reverse mode with respect to ``p``
        (not twice).
    """
    capacity = int(capacity)
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    if any(isinstance(a, jax.core.Tracer) for a in (obs_time, obs_seq, *ev.values())):
        raise ValueError(
            "solve_lanes_adjoint needs concrete event and observation arrays "
            "(pass them as constants, not as arguments of a jitted function)"
        )
    if counter is not None:
        counter.capacity = capacity
    method = _method(model, solver)
    tab = method.tableau
    n_states = model.n_states
    n, n_obs = obs_time.shape
    # numpy, not jax: the custom rule must not close over values created in a trace
    states = np.arange(n_states)[:, None]
    cols = np.arange(p.shape[1]) if columns is None else np.asarray(list(columns), dtype=np.int32)
    cut_np = None if needed_until is None else np.asarray(needed_until, dtype=np.float64).T

    def primal(q: jax.Array) -> tuple[SolveResult, dict[str, jax.Array]]:
        result, _, tape = _run(
            model, solver, ev, obs_time, obs_seq, q, capacity=capacity, needed_until=needed_until
        )
        return result, tape

    @jax.custom_vjp
    def solve(q: jax.Array) -> SolveResult:
        return primal(q)[0]

    def fwd(q: jax.Array) -> tuple[SolveResult, tuple]:
        result, tape = primal(q)
        return result, (q, result.ok, tape)

    if model.rhs_rows is not None:
        rows_rhs = model.rhs_rows
    else:  # a hand-written model: correct, but its transpose gathers and scatters
        vm = _rhs(model)

        def rows_rhs(t: jax.Array, y: list, p_rows: list) -> list:
            return list(vm(t, jnp.stack(y), 0.0, jnp.stack(p_rows)))

    def bwd(res: tuple, g: SolveResult) -> tuple[jax.Array]:
        q, ok, tape = res
        # Failed subjects predict NaN: no cotangent flows into them.
        g_out = jnp.where(ok[:, None, None], g.y, 0.0)  # (N, O, S)

        def adjoint(_: None) -> jax.Array:
            inp, stops = _inputs(model, ev, obs_time, obs_seq, q)
            xs = stops.xs
            lane = jnp.arange(n)
            n_stops = xs["t"].shape[1]

            def back(j: jax.Array, c: tuple) -> tuple:
                lam, acc = c
                i = tape["iterations"] - 1 - j
                row = jax.lax.optimization_barrier(
                    {k: v[i] for k, v in tape.items() if k != "iterations"}
                )
                ptr, reached = row["ptr"], row["reached"]
                kind, real, is_obs = (_take(xs[k], ptr) for k in ("kind", "real", "is_obs"))
                event = reached & ~is_obs & real
                bolus_into = (event & (kind == BOLUS))[None] & (
                    states == _take(xs["cmt"], ptr)[None]
                )
                reset = (event & (kind == RESET))[None]
                record = reached & is_obs
                slot = jnp.where(record, _take(xs["index"], ptr), 0)
                g_rec = jnp.where(record[None], g_out[lane, slot].T, 0.0)  # (S, N)
                # Events after the step: y2 = reset ? y_init : y1 + bolus; y1 is recorded.
                d_init = jnp.where(reset, lam, 0.0)
                d_amt = jnp.sum(jnp.where(bolus_into & ~reset, lam, 0.0), axis=0)
                lam = jnp.where(reset, 0.0, lam) + g_rec
                active = row["active"].astype(jnp.float64)
                u = jnp.einsum("sen,en->sn", inp.rate_in, active)
                keep = None if cut_np is None else row["t"][None] < cut_np
                lam, d_p, d_u = _step_back(rows_rhs, tab, row, inp.p_t, u, lam, keep)
                acc = _Inputs(
                    acc.p_t + d_p,
                    acc.y_init + d_init,
                    acc.bolus.at[lane, jnp.minimum(ptr, n_stops - 1)].add(d_amt),
                    acc.rate_in + d_u[:, None, :] * active[None],
                )
                return lam, acc

            zeros = jax.tree_util.tree_map(jnp.zeros_like, inp)
            lam, acc = jax.lax.fori_loop(
                0, tape["iterations"], back, (jnp.zeros((n_states, n)), zeros)
            )
            cot = acc._replace(y_init=acc.y_init + lam)
            _, pull_inputs = jax.vjp(lambda r: _inputs(model, ev, obs_time, obs_seq, r)[0], q)
            return pull_inputs(cot)[0]

        def forward_mode(_: None) -> jax.Array:
            def along(k: jax.Array) -> jax.Array:
                tangent = jnp.zeros_like(q).at[:, k].set(1.0)
                dy = jax.jvp(
                    lambda r: (
                        _run(model, solver, ev, obs_time, obs_seq, r, needed_until=needed_until)[
                            0
                        ].y
                    ),
                    (q,),
                    (tangent,),
                )[1]
                return jnp.einsum("nos,nos->n", jnp.where(ok[:, None, None], dy, 0.0), g_out)

            return jnp.zeros_like(q).at[:, cols].set(jax.vmap(along)(cols).T)

        over = tape["iterations"] > capacity
        if counter is not None:
            jax.debug.callback(counter.record, over)
        grad = jax.lax.cond(over, forward_mode, adjoint, None)
        return (grad,)

    solve.defvjp(fwd, bwd)
    return solve(p)
