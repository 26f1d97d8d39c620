"""Closed-form linear PK: 1- and 2-compartment models, IV bolus, infusion, first-order absorption.

The amounts in every state follow from superposition. For the linear system ``dA/dt = K A + u``
with rate matrix ``K`` (states depot, central, peripheral in the model's state order), the
response to a unit bolus into state ``c`` is column ``c`` of ``Phi(t) = expm(K t)``, and the
response to a unit-rate input switched on at 0 is ``Psi(t) = int_0^t Phi = K^{-1} (Phi(t) - I)``.
``K`` has the real eigenvalues ``-ka`` (oral) and ``-k`` (one compartment, ``k = CL/V``) or
``-alpha``, ``-beta`` (two compartments, the macro-constants), with

    alpha + beta = k10 + k12 + k21,   alpha * beta = k10 * k21,
    k10 = CL/V,  k12 = Q/V,  k21 = Q/V2,

so ``expm`` has a closed form. Written with Sylvester's projectors it gives the textbook
formulas, e.g. the central amount after a unit bolus into the central compartment of the
2-compartment model, ``(alpha - k21)/(alpha - beta) e^{-alpha t} + (k21 - beta)/(alpha - beta)
e^{-beta t}``, and after an oral dose the extra ``ka (k21 - ka) / ((alpha - ka)(beta - ka))
e^{-ka t}`` term next to the alpha/beta terms. Those divide by ``ka - alpha`` (and ``ka - k``),
so they lose all accuracy near ``ka == k``. We evaluate the same polynomial in Newton's form
instead (Cayley-Hamilton),

    Phi(t) = e^{l0 t} I + exp[l0, l1](t) (K - l0 I) + exp[l0, l1, l2](t) (K - l0 I)(K - l1 I),

with sorted eigenvalues ``l0 <= l1 <= l2`` and the divided differences of ``l -> e^{l t}``
computed with ``expm1`` (``exp[a, b](t) = t e^{max t} expm1((min - max) t) / ((min - max) t)``):
exact at confluent rate constants, no cancellation, no overflow.

A zero-order infusion of rate ``R`` from ``s`` to ``e`` contributes ``R K^{-1} (Phi(t - s) -
Phi(max(t - e, 0))) e_c``. A dose counts at time ``t`` when it precedes ``t`` under the ordering
rule of `pkpd.events` and no reset lies between them; after the last reset (or the first record)
the initial state ``initial(p)`` evolves freely.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pkpd.events import BOLUS, INFUSION_START, RESET
from pkpd.solve.engine import count_preceding, prepare_events

jax.config.update("jax_enable_x64", True)

_ROLES = {"1cmt": ("CL", "V"), "2cmt": ("CL", "V", "Q", "V2")}


def analytic_supported(model: Any) -> tuple[bool, str]:
    """Whether ``model`` can use the closed form, and why not.

    Parameters
    ----------
    model : CompiledModel
        A model whose ``analytic`` may be an `~pkpd.model.compiled.AnalyticSpec`.

    Returns
    -------
    ok : bool
        True when the closed form applies.
    reason : str
        Empty when ``ok``, else what is missing.
    """
    spec = getattr(model, "analytic", None)
    if spec is None:
        return False, "the model declares no closed form (analytic)"
    if spec.kind not in _ROLES:
        return False, f"unknown closed form {spec.kind!r} (expected 1cmt or 2cmt)"
    roles = list(_ROLES[spec.kind]) + (["ka"] if spec.depot else [])
    missing = [r for r in roles if r not in spec.parameters]
    if missing:
        return False, f"parameter role(s) {', '.join(missing)} not mapped"
    unknown = [spec.parameters[r] for r in roles if spec.parameters[r] not in model.parameters]
    if unknown:
        return False, f"parameter(s) {', '.join(unknown)} not in the model"
    if spec.kind == "2cmt" and not spec.peripheral:
        return False, "a 2cmt closed form needs a peripheral state"
    wanted = {s for s in (spec.central, spec.depot, spec.peripheral) if s}
    if spec.kind == "1cmt" and spec.peripheral:
        return False, "a 1cmt closed form has no peripheral state"
    if wanted != set(model.states):
        return False, (
            f"states {sorted(model.states)} are not exactly the closed form's {sorted(wanted)}"
        )
    return True, ""


def rate_matrix(model: Any, p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return the rate matrix ``K`` and its eigenvalues for one individual vector.

    Parameters
    ----------
    model : CompiledModel
        A model with a supported `~pkpd.model.compiled.AnalyticSpec`.
    p : jax.Array
        Individual vector ``(P+C,)``.

    Returns
    -------
    K : jax.Array
        ``(S, S)`` with ``dA/dt = K A`` in the model's state order.
    lam : jax.Array
        ``(S,)`` eigenvalues (minus the rate constants ``ka``, ``k`` or ``alpha``, ``beta``),
        sorted in ascending order.
    """
    spec = model.analytic
    n = model.n_states

    def par(role: str) -> jax.Array:
        return p[model.parameter_index(spec.parameters[role])]

    c = model.state_index(spec.central)
    k10 = par("CL") / par("V")
    K = jnp.zeros((n, n), dtype=jnp.float64)
    if spec.kind == "2cmt":
        q = model.state_index(spec.peripheral)
        k12 = par("Q") / par("V")
        k21 = par("Q") / par("V2")
        K = K.at[c, c].set(-(k10 + k12)).at[q, c].set(k12).at[c, q].set(k21).at[q, q].set(-k21)
        s = k10 + k12 + k21
        alpha = 0.5 * (s + jnp.sqrt(s * s - 4.0 * k10 * k21))
        beta = k10 * k21 / alpha  # stable: no cancellation in s - sqrt(...)
        rates = [alpha, beta]
    else:
        K = K.at[c, c].set(-k10)
        rates = [k10]
    if spec.depot:
        d = model.state_index(spec.depot)
        ka = par("ka")
        K = K.at[d, d].set(-ka).at[c, d].set(ka)
        rates = [ka, *rates]
    return K, jnp.sort(-jnp.stack(rates))


def newton_basis(K: jax.Array, lam: jax.Array) -> jax.Array:
    """Matrices ``M_0 = I``, ``M_i = prod_{j < i} (K - lam_j I)`` of the Newton form.

    Parameters
    ----------
    K : jax.Array
        ``(S, S)`` matrix.
    lam : jax.Array
        ``(S,)`` its eigenvalues, sorted.

    Returns
    -------
    jax.Array
        ``(S, S, S)``: ``expm(K t) = sum_i exp[lam_0..lam_i](t) M_i`` (Cayley-Hamilton).
    """
    n = K.shape[0]
    eye = jnp.eye(n, dtype=K.dtype)
    out = [eye]
    for i in range(1, n):
        out.append(out[-1] @ (K - lam[i - 1] * eye))
    return jnp.stack(out)


def _phi1(x: jax.Array) -> jax.Array:
    """``expm1(x) / x``, 1 at 0 (smooth, for divided differences)."""
    small = jnp.abs(x) < 1e-8
    safe = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 + x / 2.0 + x * x / 6.0, jnp.expm1(safe) / safe)


def _dd12(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
    """Divided difference ``(e^{a t} - e^{b t}) / (a - b)`` without cancellation or overflow."""
    hi, lo = jnp.maximum(a, b), jnp.minimum(a, b)
    return t * jnp.exp(hi * t) * _phi1((lo - hi) * t)


def exp_divided_differences(lam: jax.Array, t: jax.Array) -> jax.Array:
    """Divided differences ``exp[lam_0..lam_i](t)`` of ``lam -> e^{lam t}``.

    Parameters
    ----------
    lam : jax.Array
        ``(S,)`` sorted eigenvalues, ``S <= 3``.
    t : jax.Array
        Times (any shape, non-negative).

    Returns
    -------
    jax.Array
        ``t.shape + (S,)``. Exact at confluent eigenvalues (``ka == k``): the first-order
        difference uses ``expm1``, the second divides by the largest gap ``lam_2 - lam_0``.
    """
    n = lam.shape[0]
    out = [jnp.exp(lam[0] * t)]
    if n >= 2:
        d01 = _dd12(lam[0], lam[1], t)
        out.append(d01)
    if n >= 3:
        d12 = _dd12(lam[1], lam[2], t)
        out.append((d12 - d01) / (lam[2] - lam[0]))
    if n > 3:
        raise ValueError("closed forms have at most 3 states")
    return jnp.stack(out, axis=-1)


def unit_responses(K: jax.Array, lam: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``Phi(t) = expm(K t)`` and ``Psi(t) = int_0^t Phi`` in closed form.

    Parameters
    ----------
    K, lam : jax.Array
        From `rate_matrix`.
    t : jax.Array
        Times (any shape, non-negative).

    Returns
    -------
    Phi, Psi : jax.Array
        Shape ``t.shape + (S, S)``; ``Psi = K^{-1} (Phi - I)`` (``K`` is invertible when
        ``CL > 0`` and ``ka > 0``).
    """
    M = newton_basis(K, lam)
    phi = jnp.einsum("...i,ijk->...jk", exp_divided_differences(lam, t), M)
    psi = jnp.einsum("jk,...kl->...jl", jnp.linalg.inv(K), phi - jnp.eye(K.shape[0]))
    return phi, psi


def analytic_subject(
    model: Any,
    ev: dict[str, jax.Array],
    obs_time: jax.Array,
    obs_seq: jax.Array,
    p: jax.Array,
) -> jax.Array:
    """Closed-form states of one subject at the requested times.

    Parameters
    ----------
    model : CompiledModel
        A model with a supported closed form.
    ev : dict of str to jax.Array
        One subject's event columns (see `pkpd.solve.engine.event_arrays`).
    obs_time, obs_seq : jax.Array
        ``(O,)`` requested times (model time unit) and their ordering keys.
    p : jax.Array
        Individual vector.

    Returns
    -------
    jax.Array
        ``(O, S)`` amounts in every state.
    """
    pe = prepare_events(model, ev, p, obs_time, obs_seq)
    t = jnp.where(jnp.isfinite(obs_time), obs_time, pe.t0)
    n_ev = pe.tau.shape[0]
    idx = count_preceding(pe, t, obs_seq)  # (O,) events 0..idx-1 precede
    t = jnp.maximum(t, pe.t0)  # before the first record: the initial state
    pos = jnp.arange(n_ev)
    is_reset = pe.real & (pe.kind == RESET)
    # Position of the last reset preceding each observation (-1: none).
    last_reset = jnp.max(
        jnp.where(is_reset[None, :] & (pos[None, :] < idx[:, None]), pos[None, :], -1), axis=1
    )
    t_ref = jnp.where(last_reset >= 0, pe.tau[jnp.maximum(last_reset, 0)], pe.t0)
    counts = pe.real[None, :] & (pos[None, :] < idx[:, None]) & (pos[None, :] > last_reset[:, None])

    K, lam = rate_matrix(model, p)
    M = newton_basis(K, lam)  # (I, S, S)
    y0 = jnp.asarray(model.initial(p), dtype=jnp.float64)
    # Free evolution of the initial state since the reference time.
    free = jnp.einsum(
        "oi,ijk,k->oj", exp_divided_differences(lam, jnp.maximum(t - t_ref, 0.0)), M, y0
    )

    cols = M[:, :, pe.cmt]  # (I, S, E): column of each event's target state
    on = jnp.where(counts, jnp.maximum(t[:, None] - pe.tau[None, :], 0.0), 0.0)  # (O, E)
    coef_on = exp_divided_differences(lam, on)  # (O, E, I)
    bolus = jnp.where(counts & (pe.kind == BOLUS)[None, :], pe.bolus[None, :], 0.0)
    from_bolus = jnp.einsum("oe,oei,ise->os", bolus, coef_on, cols)

    # Infusion of rate R from s to e: R K^{-1} (Phi(t - s) - Phi(max(t - e, 0))) e_c.
    inf_w = jnp.where(counts & (pe.kind == INFUSION_START)[None, :], pe.rate[None, :], 0.0)
    off = jnp.where(counts, jnp.maximum(t[:, None] - pe.end_tau[None, :], 0.0), 0.0)
    coef = coef_on - exp_divided_differences(lam, off)
    from_infusion = jnp.einsum("jk,oe,oei,ike->oj", jnp.linalg.inv(K), inf_w, coef, cols)
    return free + from_bolus + from_infusion


def analytic_amounts(model: Any, events: Any, obs_time: Any, obs_seq: Any, p: Any) -> jax.Array:
    """Closed-form states of a cohort (numpy or JAX input).

    Parameters
    ----------
    model : CompiledModel
        A model with a supported closed form.
    events : EventTable or dict
        Padded ``(N, E)`` event table.
    obs_time, obs_seq : array_like
        ``(N, O)`` requested times and keys.
    p : array_like
        ``(N, P+C)`` individual vectors.

    Returns
    -------
    jax.Array
        ``(N, O, S)`` amounts in every state.
    """
    from pkpd.solve.engine import event_arrays

    ok, why = analytic_supported(model)
    if not ok:
        raise ValueError(f"model {model.name!r} has no analytic solution: {why}")
    return jax.vmap(lambda e, t, s, q: analytic_subject(model, e, t, s, q))(
        event_arrays(events),
        jnp.asarray(obs_time, dtype=jnp.float64),
        jnp.asarray(obs_seq, dtype=jnp.float64),
        jnp.asarray(p, dtype=jnp.float64),
    )
