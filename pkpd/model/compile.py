"""Compile a `ModelSpec` into a `CompiledModel`: pure JAX functions for the solver.

The converted sympy expressions (unit factors already inserted at load time) are translated to
JAX by `pkpd.model.jaxify`. Derived quantities are evaluated once per call, in file order, so an
expression used by several equations costs one evaluation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from pkpd.errors import ModelError, Problem
from pkpd.model.compiled import AnalyticSpec, CompiledModel
from pkpd.model.jaxify import translate
from pkpd.model.spec import ModelSpec

jax.config.update("jax_enable_x64", True)


def _covariate_factor(form: str, cov: Any, coef: Any, ref: float) -> Any:
    if form == "power":
        return (cov / ref) ** coef
    if form == "exp":
        return jnp.exp(coef * (cov - ref))
    if form == "linear":
        return 1.0 + coef * (cov - ref)
    if form == "factor":
        return coef ** (cov - ref)
    raise ValueError(form)  # pragma: no cover - the loader validates forms


def compile_spec(spec: ModelSpec) -> CompiledModel:
    """Compile a model specification.

    Parameters
    ----------
    spec : ModelSpec
        A loaded model.

    Returns
    -------
    CompiledModel

    Raises
    ------
    ModelError
        If two dose routes into the same state disagree on lag, bioavailability or scaling (the
        engine applies them per state).
    """
    states = tuple(spec.states)
    params = tuple(spec.parameters)
    covs = tuple(spec.covariates)
    n_p = len(params)
    derived = [(name, translate(d.expr)) for name, d in spec.derived.items()]
    derived_syms = {name for name, _ in derived}
    state_set = set(states)

    def uses_states(e: sp.Expr, seen: set[str]) -> bool:
        for s in e.free_symbols:
            if s.name in state_set or s.name == "t":  # changes during a solve
                return True
            if s.name in derived_syms and s.name not in seen:
                seen.add(s.name)
                if uses_states(spec.derived[s.name].expr, seen):
                    return True
        return False

    static_derived = [(n, f) for n, f in derived if not uses_states(spec.derived[n].expr, set())]
    rhs_fns = [translate(spec.equations[s][0]) for s in states]
    init_fns = [translate(spec.states[s].initial) for s in states]
    obs_fns = [translate(o.expr) for o in spec.observations.values()]

    def static_env(p: Any) -> dict[str, Any]:
        env = {name: p[i] for i, name in enumerate(params)}
        env.update({name: p[n_p + k] for k, name in enumerate(covs)})
        for name, fn in static_derived:
            env[name] = fn(env)
        return env

    def full_env(t: Any, y: Any, p: Any) -> dict[str, Any]:
        env = {name: p[i] for i, name in enumerate(params)}
        env.update({name: p[n_p + k] for k, name in enumerate(covs)})
        env.update({name: y[i] for i, name in enumerate(states)})
        env["t"] = t
        for name, fn in derived:
            env[name] = fn(env)
        return env

    def as_vector(values: list[Any], like: Any) -> Any:
        zero = jnp.zeros_like(like, dtype=jnp.float64)
        return jnp.stack([jnp.asarray(v, dtype=jnp.float64) + zero for v in values])

    def rhs(t, y, p):
        env = full_env(t, y, p)
        return as_vector([f(env) for f in rhs_fns], p[0])

    def rhs_rows(t, y, p):
        # Every translated expression is elementwise, so rows of subjects go straight through;
        # no stacking, so the reverse pass of `pkpd.solve.lanes` has no scatters.
        env = full_env(t, y, p)
        zero = jnp.zeros(jnp.broadcast_shapes(jnp.shape(t), *(jnp.shape(v) for v in y)))
        return [jnp.asarray(f(env), dtype=jnp.float64) + zero for f in rhs_fns]

    def initial(p):
        env = static_env(p)
        return as_vector([f(env) for f in init_fns], p[0])

    def observe(t, y, p):
        env = full_env(t, y, p)
        return as_vector([f(env) for f in obs_fns], p[0])

    # Per-state dose handling (the engine applies lag/F/scale by target state).
    per_state: dict[str, tuple[sp.Expr, sp.Expr, sp.Expr, str]] = {}
    problems = []
    for route in spec.doses.values():
        key = (route.lag, route.bioavailability, route.scale)
        prev = per_state.get(route.compartment)
        if prev is not None and prev[:3] != key:
            problems.append(
                Problem(
                    f"dose routes {prev[3]!r} and {route.name!r} enter state "
                    f"{route.compartment!r} with different lag, bioavailability or unit "
                    "scaling; give each route its own state",
                    file=route.where.file,
                    row=route.where.line,
                    column=route.name,
                )
            )
        per_state[route.compartment] = (*key, route.name)
    if problems:
        raise ModelError(problems)
    zero, one = sp.Integer(0), sp.Integer(1)
    lag_fns = [translate(per_state.get(s, (zero,))[0]) for s in states]
    bio_fns = [translate(per_state[s][1] if s in per_state else one) for s in states]
    scale_fns = [translate(per_state[s][2] if s in per_state else one) for s in states]

    def dose_lag(p):
        env = static_env(p)
        return as_vector([f(env) for f in lag_fns], p[0])

    def dose_bioavailability(p):
        env = static_env(p)
        return as_vector([f(env) for f in bio_fns], p[0])

    def dose_scale(p):
        env = static_env(p)
        return as_vector([f(env) for f in scale_fns], p[0])

    iiv = tuple(n for n, p in spec.parameters.items() if p.iiv is not None)
    iiv_index = [params.index(n) for n in iiv]
    logit = [spec.parameters[n].iiv_scale == "logit" for n in iiv]
    effects = []
    for j, name in enumerate(params):
        for eff in spec.parameters[name].covariates:
            coef = eff.coef if isinstance(eff.coef, str) else float(eff.coef)
            coef_index = params.index(coef) if isinstance(coef, str) else None
            effects.append((j, covs.index(eff.covariate), eff.form, coef, coef_index, eff.ref))

    def individual(theta, eta, cov):
        theta = jnp.asarray(theta, dtype=jnp.float64)
        cov = jnp.asarray(cov, dtype=jnp.float64)
        values = [theta[j] for j in range(n_p)]
        for j, c, form, coef, coef_index, ref in effects:
            k = theta[coef_index] if coef_index is not None else coef
            values[j] = values[j] * _covariate_factor(form, cov[c], k, ref)
        for k, (j, is_logit) in enumerate(zip(iiv_index, logit, strict=True)):
            if is_logit:
                values[j] = jax.nn.sigmoid(jnp.log(values[j]) - jnp.log1p(-values[j]) + eta[k])
            else:
                values[j] = values[j] * jnp.exp(eta[k])
        return jnp.concatenate([jnp.stack(values) if values else jnp.zeros(0), cov])

    analytic = None
    if spec.analytic is not None:
        a = spec.analytic
        analytic = AnalyticSpec(a.kind, dict(a.parameters), a.central, a.depot, a.peripheral)

    return CompiledModel(
        name=spec.name,
        time_unit=spec.time_unit,
        states=states,
        state_units=tuple(s.unit for s in spec.states.values()),
        parameters=params,
        parameter_units=tuple(p.unit for p in spec.parameters.values()),
        covariates=covs,
        covariate_units=tuple(c.unit for c in spec.covariates.values()),
        covariate_defaults=tuple(c.default for c in spec.covariates.values()),
        endpoints=tuple(spec.observations),
        endpoint_units=tuple(o.unit for o in spec.observations.values()),
        endpoint_dvid=tuple(o.dvid for o in spec.observations.values()),
        typical_values=np.array([p.typical for p in spec.parameters.values()], dtype=float),
        iiv=iiv,
        rhs=rhs,
        initial=initial,
        observe=observe,
        individual=individual,
        dose_lag=dose_lag,
        dose_bioavailability=dose_bioavailability,
        dose_scale=dose_scale,
        dose_targets={name: states.index(r.compartment) for name, r in spec.doses.items()},
        analytic=analytic,
        spec=spec,
        rhs_rows=rhs_rows,
    )
