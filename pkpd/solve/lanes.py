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
- it has no adjoint: `jax.jvp` (forward mode) works, reverse mode does not (a `while_loop`
  of unknown length). Stop times and their order, and the step-size controller, are not
  differentiated (as diffrax does for the controller), so the forward sensitivities are exact
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

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pkpd.events import BOLUS, INFUSION_END, INFUSION_START, RESET
from pkpd.solve.config import Solver
from pkpd.solve.engine import NONFINITE, OK, SOLVER_FAILURE, STEP_LIMIT, SolveResult, merge_stops
from pkpd.solve.erk import UnrolledERK

jax.config.update("jax_enable_x64", True)

# diffrax's PIDController defaults (an integral controller with these three constants).
_SAFETY, _FACTOR_MIN, _FACTOR_MAX = 0.9, 0.2, 10.0


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

    Returns
    -------
    SolveResult or (SolveResult, LanesStats)
        ``y (N, O, S)`` (NaN for failed subjects), ``ok (N,)``, ``status (N,)``.

    Raises
    ------
    ValueError
        If the solver's method is not an explicit Runge-Kutta method of `pkpd.solve.erk`.
    """
    method = solver.diffrax_solver()
    if solver.uses_analytic(model) or not isinstance(method, UnrolledERK):
        raise ValueError(
            f"the subjects-last integrator needs an explicit method (tsit5, dopri5, dopri8), "
            f"got {solver.method!r}"
        )
    tab = method.tableau
    expo = -1.0 / method.method_order
    rtol, atol = float(solver.rtol), float(solver.atol)
    n_states = model.n_states
    n, n_obs = obs_time.shape
    n_ev = ev["time"].shape[1]

    stops = jax.vmap(lambda e, ot, os, pp: merge_stops(model, e, ot, os, pp))(
        ev, obs_time, obs_seq, p
    )
    # Stop times and their order are data here (forward mode differentiates amounts and rates,
    # not event times; `differentiable` says when that is exact).
    xs = dict(stops.xs)  # each (N, K)
    xs["t"] = jax.lax.stop_gradient(xs["t"])
    stops = stops._replace(xs=xs, t0=jax.lax.stop_gradient(stops.t0),
                           t_stop=jax.lax.stop_gradient(stops.t_stop))
    n_stops = xs["t"].shape[1]
    lane = jnp.arange(n)
    states = jnp.arange(n_states)[:, None]
    cols = jnp.arange(n_ev)[:, None]
    p_t = p.T  # (P+C, N)
    # vmap with the batch on axis 1 in and out: any per-subject model works, and XLA keeps the
    # subjects-last layout (as fast as calling a broadcasting right-hand side directly).
    rhs = jax.vmap(model.rhs, in_axes=(0, 1, 1), out_axes=1)
    y_init = jax.vmap(model.initial, in_axes=1, out_axes=1)(p_t).astype(jnp.float64)  # (S, N)
    # rate_in[s, e, n]: input rate into state s while column e's infusion runs.
    rate_in = (states[:, :, None] == stops.cmt_by_col.T[None]) * stops.rate_by_col.T[None]
    span = jnp.maximum(stops.t_stop - stops.t0, 1e-12)
    h0 = jnp.full(n, float(solver.dt0)) if solver.dt0 is not None else 1e-3 * span
    max_steps = int(solver.max_steps)

    def field(t: jax.Array, y: jax.Array, u: jax.Array) -> jax.Array:
        return rhs(t, y, p_t) + u

    def at(name: str, ptr: jax.Array) -> jax.Array:
        return jnp.take_along_axis(xs[name], jnp.minimum(ptr, n_stops - 1)[:, None], 1)[:, 0]

    def cond(c: tuple) -> jax.Array:
        ptr, status = c[3], c[7]
        return jnp.any((ptr < n_stops) & (status == OK))

    def body(c: tuple) -> tuple:
        y, t, h, ptr, f, stale, u_in, status, since, active, out = c[:11]
        live = (ptr < n_stops) & (status == OK)
        t_next = at("t", ptr)
        gap = jnp.maximum(t_next - t, 0.0)
        he = jnp.where(live, jnp.minimum(h, gap), 0.0)
        # First-same-as-last: the last stage of an accepted step is f at the new point; it is
        # stale only after an event changed the state or the inputs.
        f0 = jax.lax.cond(
            jnp.any(stale & live),
            lambda: jnp.where(stale[None], field(t, y, u_in), f),
            lambda: f,
        )
        ks = [he * f0]
        fs = [f0]
        for cc, a in zip(tab.c, tab.a_lower, strict=True):
            fs.append(field(t + float(cc) * he, y + _combine(a, ks), u_in))
            ks.append(he * fs[-1])
        y1 = y + _combine(tab.b_sol, ks)
        err = _combine(tab.b_error, ks)
        scale = atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y1))
        enorm = jnp.sqrt(jnp.mean((err / scale) ** 2, axis=0))
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
        y = jnp.where(is_reset[None], y_init, y)
        start = event & (kind == INFUSION_START)
        end = event & (kind == INFUSION_END)
        active = jnp.where(start[None] & (cols == at("col", ptr)[None]), 1.0, active)
        active = jnp.where((end[None] & (cols == at("link", ptr)[None])) | is_reset[None], 0.0,
                           active)
        switched = start | end | is_reset
        u_in = jax.lax.cond(
            jnp.any(switched),
            lambda: jnp.einsum("sen,en->sn", rate_in, active),
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
        if with_stats:
            iterations, accepted, rejected, after = c[11:]
            new += (iterations + 1, accepted + stepped, rejected + (live & ~accept),
                    after + (stepped & (t - he >= count_after)))
        return new

    init = (
        y_init,
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
    if with_stats:
        zeros = jnp.zeros(n, jnp.int32)
        init += (jnp.zeros((), jnp.int32), zeros, zeros, zeros)
    final = jax.lax.while_loop(cond, body, init)
    out, status = final[10][:, :n_obs], final[7]
    status = jnp.where((status == OK) & ~jnp.all(jnp.isfinite(out), axis=(1, 2)), NONFINITE,
                       status).astype(jnp.int32)
    ok = status == OK
    result = SolveResult(y=jnp.where(ok[:, None, None], out, jnp.nan), ok=ok, status=status)
    if with_stats:
        return result, LanesStats(*final[11:])
    return result

