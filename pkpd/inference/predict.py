"""Population predictions as one jitted JAX function of (typical values, random effects).

The likelihood of a hierarchical model needs, at every proposal, the prediction of every
observation of every subject: ``(theta, eta) -> pred``. `make_predictor` builds that function
once per (model, cohort, solver): individual parameters through ``model.individual`` (vmapped
over subjects, covariate effects included), a batched solve (see "Integrator" below), then
``model.observe``. The whole cohort is one XLA program; there is no loop over subjects.

Gradients. Each subject's predictions depend only on its own individual vector ``p_i`` (a few
numbers), so the Jacobian ``d pred_i / d p_i`` is cheap in forward mode: one tangent per
parameter that can vary, shared by all subjects (a one-hot column of ``p``), pushed through the
solve (`diffrax.ForwardMode` in the engine). A `jax.custom_vjp` turns that Jacobian into the
reverse-mode gradient the samplers ask for. On theophylline (Tsit5, rtol 1e-6) this took 2.2 ms per
log-density and gradient against 6.7 ms for reverse mode through the solve
(`diffrax.RecursiveCheckpointAdjoint`); see ``docs/inference.md``. ``gradient="reverse"`` keeps
plain reverse mode.

Integrator. In forward mode the tangents can be pushed through either the vmapped engine
(`pkpd.solve.solve_batch`, subjects first) or the subjects-last loop (`pkpd.solve.lanes`), whose
stops and step-size control are not differentiated: its forward sensitivities are exact when no
event time depends on a parameter being estimated (no estimated lag, no estimated
bioavailability with an infusion given by rate), which `lanes_gradient` checks. ``"auto"`` takes
lanes when it applies and the problem is large enough for it to pay (`LANES_MIN_SIZE`). On
``cart_crs`` (the ``cart_crs_core`` profile, 60 patients, 7 tangents) one log-density and
gradient took 0.42 s against the engine's 2.2 s on 2 cores (``docs/cart-fitting.md``).

Parameters that only observation expressions use (`solve_parameters`) take no tangent through
the solve: their sensitivities come from differentiating the observation function at the
solved states.

Adjoint. Each forward tangent costs about one solve; ``gradient="adjoint"`` differentiates the
subjects-last loop in reverse instead (`pkpd.solve.lanes.solve_lanes_adjoint`: the same discrete
scheme, a few solves whatever the number of parameters), and ``"auto"`` (`resolve_gradient`)
takes it when enough parameters go through the solve (`ADJOINT_MIN_TANGENTS`): on the full
``cart_crs`` (64 tangents, 20 patients) 0.21 s per log-density and gradient against 0.93-1.21 s.

States no later observation needs. With the subjects-last loop a fit stops integrating each
subject's state after the last observation whose expression depends on it through the model's
equations (`needed_until`, `pkpd.model.dependencies`): on ``cart_crs_core`` the cytokine,
neutrophil and drug states, whose fast turnover bounds the explicit step, are no longer
integrated after the last IL-6 and CRS assessment (day 28), while CAR-T, tumour and
dexamethasone states go on to the day-90 count. Exact in exact arithmetic (only states nothing
observed later depends on are frozen); numerically within the solver's tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from pkpd.events import INFUSION_START
from pkpd.model.dependencies import names_used, observation_closures
from pkpd.solve import BoundCohort, Solver, event_arrays, solve_batch
from pkpd.solve.lanes import AdjointCounter, solve_lanes, solve_lanes_adjoint
from pkpd.solve.lanes import iterations as lanes_iterations
from pkpd.solve.lanes import supports as lanes_supports

jax.config.update("jax_enable_x64", True)

#: Accepted values of the ``gradient`` option.
GRADIENT_MODES = ("auto", "forward", "reverse", "adjoint")

#: Fewest parameters with a tangent through the solve for which ``gradient="auto"`` takes the
#: adjoint (where lanes applies). Measured per log-density + gradient on 2 cores (2026-12-04,
#: `benchmarks/cart_recovery.py --timing`): `cart_crs_core` (7 tangents), 60 patients, forward
#: 0.34 s, adjoint 0.40 s; full cart_crs (64 tangents), 5 and 20 patients, forward 0.44 and
#: 0.93-1.21 s, adjoint 0.17 and 0.21 s. Below the threshold forward mode also compiles faster
#: (first gradient 24 s against 53 s on `cart_crs_core`).
ADJOINT_MIN_TANGENTS = 8

#: Loop iterations the adjoint's record holds: this factor times those of a solve at the
#: typical values, plus `ADJOINT_SLACK` (a proposal that needs more falls back to forward
#: mode for that gradient: exact, slower).
ADJOINT_MARGIN, ADJOINT_SLACK = 2.0, 256

#: Accepted values of the ``integrator`` option (see the module docstring).
INTEGRATORS = ("auto", "engine", "lanes")

#: Smallest states x subjects for which ``integrator="auto"`` takes lanes. Lanes costs more per
#: loop iteration (every stop is processed inside the loop) and wins only when each iteration
#: has enough arithmetic. Measured per log-density + gradient on 2 cores (2026-12-04,
#: `benchmarks/fit.py --profile`, `benchmarks/cart_recovery.py --timing`): T/B/I, 3 states,
#: 5 and 20 subjects, engine 0.77 and 1.43 ms, lanes 1.51 and 1.68 ms; cart_kinetics, 4 states,
#: 10 / 25 / 60 patients, engine 2.1 / 3.1 / 6.2 ms, lanes 2.4 / 3.2 / 5.2 ms; cart_crs
#: (`cart_crs_core`), 23 states, 5 and 60 patients, engine 0.2-0.4 and 2.1 s, lanes 0.08 and 0.49 s
#: (0.09 and 0.42 s after lanes' unique-index scatter).
LANES_MIN_SIZE = 100


def dynamic_parameters(spec: Any) -> set[str]:
    """Names of the parameters that the predictions can depend on.

    A parameter that appears in no state equation, initial value, derived quantity, dose
    expression or observation expression (a residual error SD, an ordinal cutpoint) cannot change
    a prediction, so it needs no tangent.

    Parameters
    ----------
    spec : ModelSpec
        The model specification.

    Returns
    -------
    set of str
    """
    exprs = _solve_expressions(spec)
    exprs += [d.expr for d in spec.derived.values()]
    exprs += [o.expr for o in spec.observations.values()]
    names = {s.name for e in exprs for s in getattr(e, "free_symbols", ())}
    return names & set(spec.parameters)


def _solve_expressions(spec: Any) -> list[Any]:
    """State equations, initial values and dose lags, bioavailabilities and scalings."""
    exprs = [eq[0] for eq in spec.equations.values()]
    exprs += [s.initial for s in spec.states.values()]
    for dose in spec.doses.values():
        exprs += [dose.lag, dose.bioavailability, dose.scale]
    return exprs


def solve_parameters(spec: Any) -> set[str]:
    """Names of the parameters that the solution of the ODE can depend on.

    Those in a state equation, an initial value or a dose's lag, bioavailability or scaling,
    directly or through derived quantities. A parameter that predictions use only through an
    observation expression (an apparent volume that scales observed counts, the scale of an
    ordinal latent) changes no state, so its forward sensitivity needs no tangent through the
    solve: `make_predictor` differentiates only the observation function for it.

    Parameters
    ----------
    spec : ModelSpec
        The model specification.

    Returns
    -------
    set of str
    """
    return set(names_used(spec, _solve_expressions(spec)) & set(spec.parameters))


def varying_columns(spec: Any, model: Any) -> tuple[int, ...]:
    """Columns of the individual vector ``p`` that a fit can change and that predictions use.

    Parameters
    ----------
    spec : ModelSpec
        The model specification.
    model : CompiledModel
        Its compiled form.

    Returns
    -------
    tuple of int
        Indices into ``p`` (parameters only; covariates are data).
    """
    used = dynamic_parameters(spec)
    out = []
    for j, name in enumerate(model.parameters):
        par = spec.parameters[name]
        estimated_coef = any(
            isinstance(e.coef, str) and spec.parameters[e.coef].estimated for e in par.covariates
        )
        if name in used and (par.estimated or par.iiv is not None or estimated_coef):
            out.append(j)
    return tuple(out)


def lanes_gradient(
    spec: Any, model: Any, bound: BoundCohort, solver: Solver, gradient: str
) -> tuple[bool, str]:
    """Whether the subjects-last integrator gives exact predictions and gradients here.

    `pkpd.solve.lanes` does not differentiate stop times, so its forward sensitivities miss
    the derivative with respect to any parameter that moves an event: a dose lag, or the
    bioavailability of an infusion given by rate (F sets its duration, NONMEM semantics).

    Parameters
    ----------
    spec : ModelSpec
        The model specification.
    model : CompiledModel
        Its compiled form.
    bound : BoundCohort
        The cohort in the model's terms (whether it has infusions given by rate).
    solver : Solver
        How to integrate.
    gradient : {"forward", "reverse", "adjoint"}
        How the gradient is computed (lanes has no plain reverse mode; the adjoint is lanes'
        own).

    Returns
    -------
    (bool, str)
        Whether lanes can be used, and why not (empty when it can).
    """
    if gradient == "reverse":
        return False, (
            "the subjects-last integrator has no plain reverse mode (use "
            "gradient='forward' or 'adjoint')"
        )
    if not lanes_supports(model, solver):
        return False, f"it needs an explicit Runge-Kutta method, not {solver.method!r}"
    varying = {model.parameters[j] for j in varying_columns(spec, model)}
    ev = bound.events
    by_rate = (
        np.asarray(ev.mask) & (np.asarray(ev.kind) == INFUSION_START) & (np.asarray(ev.rate) > 0)
    )
    rate_states = {model.states[c] for c in np.unique(np.asarray(ev.cmt)[by_rate])}
    for route, dose in spec.doses.items():
        moved = {s.name for s in getattr(dose.lag, "free_symbols", ())} & varying
        if dose.compartment in rate_states:
            moved |= {s.name for s in getattr(dose.bioavailability, "free_symbols", ())} & varying
        if moved:
            return False, (
                f"dose route {route!r}: event times depend on estimated parameter(s) "
                f"{sorted(moved)}"
            )
    return True, ""


def _observe_all(model: Any) -> Callable:
    """``(N, O), (N, O, S), (N, P+C) -> (N, O, E)``: every endpoint at every time."""
    return jax.vmap(jax.vmap(model.observe, in_axes=(0, 0, None)), in_axes=(0, 0, 0))


def resolve_integrator(
    integrator: str, spec: Any, model: Any, bound: BoundCohort, solver: Solver, gradient: str
) -> str:
    """Return the integrator a fit uses: ``"lanes"`` or ``"engine"``.

    Parameters
    ----------
    integrator : {"auto", "engine", "lanes"}
        ``"auto"``: lanes where `lanes_gradient` allows it and the problem has at least
        `LANES_MIN_SIZE` states x subjects, else the engine.
    spec, model, bound, solver, gradient
        As in `make_predictor`.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        For an unknown name, or ``"lanes"`` where it does not apply (the reason is given).
    """
    if integrator not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
    if integrator == "engine":
        if gradient == "adjoint":
            raise ValueError("gradient='adjoint' is the subjects-last integrator's (lanes)")
        return "engine"
    ok, why = lanes_gradient(spec, model, bound, solver, gradient)
    if integrator == "lanes" or gradient == "adjoint":
        if not ok:
            asked = "integrator 'lanes'" if integrator == "lanes" else "gradient='adjoint'"
            raise ValueError(f"{asked} cannot be used for {spec.name!r}: {why}")
        return "lanes"
    return "lanes" if ok and model.n_states * bound.n_subjects >= LANES_MIN_SIZE else "engine"


def resolve_gradient(
    gradient: str, integrator: str, spec: Any, model: Any, bound: BoundCohort, solver: Solver
) -> str:
    """Return the gradient mode a fit uses: ``"forward"``, ``"reverse"`` or ``"adjoint"``.

    Parameters
    ----------
    gradient : {"auto", "forward", "reverse", "adjoint"}
        ``"auto"``: the adjoint of the subjects-last loop where that loop applies
        (`lanes_gradient`), the problem is large enough for it (`LANES_MIN_SIZE`) and at least
        `ADJOINT_MIN_TANGENTS` parameters go through the solve; else forward sensitivities.
    integrator : {"auto", "engine", "lanes"}
        The fit's integrator option (``"engine"`` rules the adjoint out).
    spec, model, bound, solver
        As in `make_predictor`.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        For an unknown mode.
    """
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"gradient must be one of {GRADIENT_MODES}, got {gradient!r}")
    if gradient != "auto":
        return gradient
    if integrator == "engine" or not lanes_gradient(spec, model, bound, solver, "adjoint")[0]:
        return "forward"
    in_solve = solve_parameters(spec)
    tangents = sum(model.parameters[j] in in_solve for j in varying_columns(spec, model))
    big = model.n_states * bound.n_subjects >= LANES_MIN_SIZE or integrator == "lanes"
    return "adjoint" if big and tangents >= ADJOINT_MIN_TANGENTS else "forward"


def needed_until(
    spec: Any, model: Any, bound: BoundCohort, subject_index: np.ndarray, obs_index: np.ndarray
) -> np.ndarray:
    """How long each subject's states must be integrated for the selected observations.

    A state is needed until the last selected observation of the subject whose expression
    uses it, directly or through the equations of the states it uses
    (`pkpd.model.dependencies.observation_closures`); a state no selected observation needs
    gets ``-inf`` (never integrated). Passed to `pkpd.solve.lanes.solve_lanes` as
    ``needed_until``.

    Parameters
    ----------
    spec : ModelSpec
        The model specification.
    model : CompiledModel
        Its compiled form (state and endpoint order).
    bound : BoundCohort
        The cohort in the model's terms.
    subject_index, obs_index : numpy.ndarray
        ``(n,)`` subject row and observation column of each prediction wanted.

    Returns
    -------
    numpy.ndarray
        ``(N, S)`` times in the model's time unit.
    """
    closures = observation_closures(spec)
    uses = np.array([[s in closures[e] for s in model.states] for e in model.endpoints])
    rows = np.asarray(subject_index, dtype=int)
    cols = np.asarray(obs_index, dtype=int)
    times = np.asarray(bound.obs_time, dtype=float)[rows, cols]
    needs = uses[np.asarray(bound.obs_endpoint)[rows, cols]]  # (n, S)
    until = np.full((bound.n_subjects, model.n_states), -np.inf)
    np.maximum.at(until, rows, np.where(needs, times[:, None], -np.inf))
    return until


def make_predictor(
    spec: Any,
    model: Any,
    bound: BoundCohort,
    solver: Solver,
    subject_index: np.ndarray,
    obs_index: np.ndarray,
    *,
    gradient: str = "forward",
    integrator: str = "auto",
    prune_states: bool = True,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Build ``predict(theta, eta) -> pred`` for the selected observations.

    Parameters
    ----------
    spec : ModelSpec
        The model specification (to find the parameters predictions depend on).
    model : CompiledModel
        The compiled model.
    bound : BoundCohort
        The cohort in the model's terms (`pkpd.solve.bind`).
    solver : Solver
        How to integrate (``"auto"`` / ``"analytic"`` use the closed form).
    subject_index, obs_index : numpy.ndarray
        ``(n,)`` subject row and observation column of each prediction wanted.
    gradient : {"forward", "reverse", "adjoint", "auto"}, optional
        How the gradient is computed (see the module docstring and `resolve_gradient`).
    integrator : {"auto", "engine", "lanes"}, optional
        Which integrator solves the ODE (see the module docstring and `resolve_integrator`).
    prune_states : bool, optional
        With the subjects-last loop, stop integrating each state once no later selected
        observation needs it (`needed_until`). The engine integrates every state.

    Returns
    -------
    callable
        A pure, jittable JAX function ``(theta (P,), eta (N, K)) -> (n,)``, differentiable in
        reverse mode. A failed solve gives NaN for that subject's predictions. With the
        adjoint it carries ``adjoint_counter`` (`pkpd.solve.lanes.AdjointCounter`: reverse
        passes, those that fell back to forward mode, and the record's capacity).

    Raises
    ------
    ValueError
        For an unknown ``gradient`` or ``integrator``, or ``"lanes"`` where it does not apply.
    """
    gradient = resolve_gradient(gradient, integrator, spec, model, bound, solver)
    on_lanes = resolve_integrator(integrator, spec, model, bound, solver, gradient) == "lanes"
    until = (
        needed_until(spec, model, bound, subject_index, obs_index)
        if on_lanes and prune_states
        else None
    )
    ev = event_arrays(bound.events)
    t = jnp.asarray(bound.obs_time, dtype=jnp.float64)
    seq = jnp.asarray(bound.obs_seq, dtype=jnp.float64)
    cov = jnp.asarray(bound.covariates, dtype=jnp.float64)
    endpoint = jnp.asarray(bound.obs_endpoint, dtype=jnp.int32)
    rows = jnp.asarray(subject_index, dtype=jnp.int32)
    cols = jnp.asarray(obs_index, dtype=jnp.int32)
    observe = _observe_all(model)
    analytic = solver.uses_analytic(model)
    if gradient == "forward" and not analytic:
        solver = dataclasses.replace(solver, adjoint=diffrax.ForwardMode())

    def individual(theta: jax.Array, eta: jax.Array) -> jax.Array:
        return jax.vmap(model.individual, in_axes=(None, 0, 0))(theta, eta, cov)

    def solve_y(p: jax.Array) -> jax.Array:
        if on_lanes:
            return solve_lanes(model, solver, ev, t, seq, p, needed_until=until).y
        return solve_batch(model, solver, ev, t, seq, p).y

    if gradient == "adjoint":
        columns = varying_columns(spec, model)
        typical = jax.vmap(model.individual, in_axes=(None, None, 0))(
            jnp.asarray(model.typical_values), jnp.zeros(len(model.iiv)), cov
        )
        capacity = (
            int(
                ADJOINT_MARGIN
                * lanes_iterations(model, solver, ev, t, seq, typical, needed_until=until)
            )
            + ADJOINT_SLACK
        )
        counter = AdjointCounter()

        def solve_y(p: jax.Array) -> jax.Array:  # noqa: F811 - the adjoint's solve
            return solve_lanes_adjoint(
                model,
                solver,
                ev,
                t,
                seq,
                p,
                capacity=capacity,
                columns=columns,
                counter=counter,
                needed_until=until,
            ).y

    def pick(y: jax.Array, p: jax.Array) -> jax.Array:
        every = observe(t, y, p)  # (N, O, E)
        return jnp.take_along_axis(every, endpoint[:, :, None], axis=2)[:, :, 0]

    def pred_matrix(p: jax.Array) -> jax.Array:
        return pick(solve_y(p), p)

    if gradient in ("reverse", "adjoint"):

        def predict(theta: jax.Array, eta: jax.Array) -> jax.Array:
            return pred_matrix(individual(theta, eta))[rows, cols]

        if gradient == "adjoint":
            predict.adjoint_counter = counter  # type: ignore[attr-defined]
        return predict

    # Columns whose tangents go through the solve, then those that only the observation
    # function uses (no tangent through the solve; cart_crs_core: V_car, one of 8 tangents).
    in_solve = solve_parameters(spec)
    columns = varying_columns(spec, model)
    ode_cols = [j for j in columns if model.parameters[j] in in_solve]
    obs_cols = [j for j in columns if model.parameters[j] not in in_solve]
    varying = jnp.asarray(ode_cols + obs_cols, dtype=jnp.int32)

    @jax.custom_vjp
    def pred_p(p: jax.Array) -> jax.Array:
        return pred_matrix(p)

    def one_hot(p: jax.Array, k: jax.Array) -> jax.Array:
        return jnp.zeros_like(p).at[:, k].set(1.0)

    def pred_p_fwd(p: jax.Array) -> tuple[jax.Array, jax.Array]:
        # One tangent per varying column of p, the same column for every subject: subjects are
        # independent, so the JVP gives d pred[i, o] / d p[i, k] for all i at once.
        def along(k: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
            def both(q: jax.Array) -> tuple[jax.Array, jax.Array]:
                y = solve_y(q)
                return pick(y, q), y

            (pred, y), (dpred, _) = jax.jvp(both, (p,), (one_hot(p, k),))
            return (pred, y), dpred

        if ode_cols:
            (primal, y), jac = jax.vmap(along)(jnp.asarray(ode_cols, dtype=jnp.int32))
            primal, y = primal[0], y[0]  # (V, ...) copies of the same primal
        else:
            y = solve_y(p)
            primal, jac = pick(y, p), jnp.zeros((0, *t.shape), p.dtype)
        if obs_cols:
            jac_obs = jax.vmap(lambda k: jax.jvp(lambda q: pick(y, q), (p,), (one_hot(p, k),))[1])(
                jnp.asarray(obs_cols, dtype=jnp.int32)
            )
            jac = jnp.concatenate([jac, jac_obs])
        return primal, jac

    def pred_p_bwd(jac: jax.Array, g: jax.Array) -> tuple[jax.Array]:
        grad_varying = jnp.einsum("kno,no->nk", jac, g)  # (N, V)
        n, width = g.shape[0], cov.shape[1] + len(model.parameters)
        return (jnp.zeros((n, width), g.dtype).at[:, varying].set(grad_varying),)

    pred_p.defvjp(pred_p_fwd, pred_p_bwd)

    def predict_fwd(theta: jax.Array, eta: jax.Array) -> jax.Array:
        return pred_p(individual(theta, eta))[rows, cols]

    return predict_fwd


def make_grid_predictor(
    model: Any, bound: BoundCohort, solver: Solver, times: np.ndarray
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Build ``predict(theta, eta) -> (N, G, E)``: every endpoint on a common time grid.

    Grid points carry the ordering key ``+inf`` (at a dose time they show the post-dose value).

    Parameters
    ----------
    model : CompiledModel
        The compiled model.
    bound : BoundCohort
        The cohort in the model's terms.
    solver : Solver
        How to integrate.
    times : numpy.ndarray
        ``(G,)`` grid, model time unit.

    Returns
    -------
    callable
        A pure, jittable JAX function (no gradient needed: used for plots).
    """
    ev = event_arrays(bound.events)
    n = bound.n_subjects
    grid = jnp.broadcast_to(jnp.asarray(times, dtype=jnp.float64), (n, len(times)))
    seq = jnp.full(grid.shape, jnp.inf)
    cov = jnp.asarray(bound.covariates, dtype=jnp.float64)
    observe = _observe_all(model)

    def predict(theta: jax.Array, eta: jax.Array) -> jax.Array:
        p = jax.vmap(model.individual, in_axes=(None, 0, 0))(theta, eta, cov)
        res = solve_batch(model, solver, ev, grid, seq, p)
        return observe(grid, res.y, p)

    return predict
