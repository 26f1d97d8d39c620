"""Which states an expression, an equation or an observation depends on (the model's graph).

A state's equation uses some states directly or through derived quantities. The *closure* of a
set of states adds, repeatedly, every state their equations use: integrating the closure alone
gives the same trajectories for those states as integrating the whole model. A fit uses this to
stop integrating states that no later observation needs (`pkpd.inference.predict.needed_until`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pkpd.model.spec import ModelSpec


def names_used(spec: ModelSpec, exprs: Iterable[Any]) -> frozenset[str]:
    """Every name ``exprs`` use, directly or through derived quantities (those included).

    Parameters
    ----------
    spec : ModelSpec
        The model specification.
    exprs : iterable of sympy.Expr
        Expressions of the model (equations, observations, initial values, dose terms).

    Returns
    -------
    frozenset of str
        States, parameters, covariates, derived quantities and ``t`` among them.
    """
    derived = {name: d.expr for name, d in spec.derived.items()}
    seen: set[str] = set()
    todo = [s.name for e in exprs for s in getattr(e, "free_symbols", ())]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in derived:
            todo += [s.name for s in getattr(derived[name], "free_symbols", ())]
    return frozenset(seen)


def expression_states(spec: ModelSpec, expr: Any) -> frozenset[str]:
    """States ``expr`` uses, directly or through derived quantities.

    Parameters
    ----------
    spec : ModelSpec
        The model specification.
    expr : sympy.Expr
        An expression of the model (equation, observation, derived quantity).

    Returns
    -------
    frozenset of str
    """
    return names_used(spec, [expr]) & frozenset(spec.states)


def state_dependencies(spec: ModelSpec) -> dict[str, frozenset[str]]:
    """For each state, the states its equation uses.

    Parameters
    ----------
    spec : ModelSpec
        The model specification.

    Returns
    -------
    dict of str to frozenset of str
    """
    return {s: expression_states(spec, spec.equations[s][0]) for s in spec.states}


def closure(
    spec: ModelSpec, states: Iterable[str], dependencies: dict[str, frozenset[str]] | None = None
) -> frozenset[str]:
    """``states`` and every state their equations need, transitively.

    Parameters
    ----------
    spec : ModelSpec
        The model specification.
    states : iterable of str
        Starting states.
    dependencies : dict, optional
        `state_dependencies` of ``spec`` (computed when not given).

    Returns
    -------
    frozenset of str

    Raises
    ------
    KeyError
        For a name that is not a state of ``spec``.
    """
    deps = dependencies if dependencies is not None else state_dependencies(spec)
    out: set[str] = set()
    todo = list(states)
    while todo:
        s = todo.pop()
        if s in out:
            continue
        if s not in deps:
            raise KeyError(f"{s!r} is not a state of model {spec.name!r}")
        out.add(s)
        todo += deps[s]
    return frozenset(out)


def observation_closures(spec: ModelSpec) -> dict[str, frozenset[str]]:
    """For each observation (endpoint), the closure of the states its expression uses.

    Parameters
    ----------
    spec : ModelSpec
        The model specification.

    Returns
    -------
    dict of str to frozenset of str
    """
    deps = state_dependencies(spec)
    return {
        name: closure(spec, expression_states(spec, o.expr), deps)
        for name, o in spec.observations.items()
    }
