"""Sample a parameter through its ratio to others: the combination the data inform.

A design often pins down a product or ratio of parameters much better than each of them. In
``cart_crs`` the height of the IL-6 peaks is set by ``p6 / (K_kill * k6)`` (production over
activation threshold and elimination, while the myeloid pool responds linearly), and daily
samples say little about ``k6`` alone: on the 60-patient virtual cohort the posterior of
``log p6``, ``log K_kill``, ``log k6`` and the 60 patients' ``log p6_i`` lies along one narrow
ridge (RESULTS.md, "The IL-6 gain ridge", 2026-12-07). A diagonal mass matrix cannot follow it.

``ratio_parameterization={"p6": ("K_kill", "k6")}`` samples ``log_p6_ratio = log p6 - log K_kill
- log k6`` in place of ``log_p6`` and keeps ``p6 = exp(log_p6_ratio + log K_kill + log k6)`` as
a deterministic. The map from ``(log K_kill, log k6, log p6)`` to ``(log K_kill, log k6,
log_p6_ratio)`` is linear with unit Jacobian, and ``log_p6_ratio ~ Normal(mu - log K_kill -
log k6, sigma)`` is the model file's ``log p6 ~ Normal(mu, sigma)`` written in it: the prior,
and so the posterior, are unchanged; only the coordinates NUTS moves in are. A centred random
effect of ``p6`` is centred on ``log_p6_ratio`` (each patient's ``log p6_i - log K_kill -
log k6``), so the patients' coordinates leave the ridge too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def ratio_name(name: str) -> str:
    """Return the free variable sampled in place of ``log_<name>``."""
    return f"log_{name}_ratio"


def parse_ratios(text: str) -> dict[str, tuple[str, ...]]:
    """Parse ``"p6=K_kill*k6,other=a"`` (the command line's form) into a mapping.

    ``""`` and ``"none"`` give no ratios.

    Raises
    ------
    ValueError
        For an item without ``=`` or without divisors.
    """
    text = text.strip()
    if text in ("", "none"):
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for item in text.split(","):
        target, sep, rest = item.partition("=")
        divisors = tuple(d.strip() for d in rest.split("*") if d.strip())
        if not sep or not target.strip() or not divisors:
            raise ValueError(
                f"ratio {item!r} is not of the form parameter=divisor*divisor (e.g. p6=K_kill*k6)"
            )
        out[target.strip()] = divisors
    return out


def resolve_ratios(
    option: Mapping[str, Sequence[str]] | None, spec: Any, estimated: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """Check a ``ratio_parameterization`` against a model.

    Parameters
    ----------
    option : mapping of str to sequence of str, optional
        ``{parameter: divisors}``.
    spec : ModelSpec
        The model (its priors and IIV scales).
    estimated : sequence of str
        The parameters whose typical values are estimated.

    Returns
    -------
    dict of str to tuple of str

    Raises
    ------
    ValueError
        For a parameter or divisor that is not estimated or has no log-normal prior, a random
        effect of the parameter not on the log scale, a divisor that is itself sampled as a
        ratio, or a divisor named twice or equal to its parameter.
    """
    if not option:
        return {}
    ratios = {str(k): tuple(str(d) for d in v) for k, v in option.items()}
    for target, divisors in ratios.items():
        where = f"ratio_parameterization {target}={'*'.join(divisors)}"
        if not divisors:
            raise ValueError(f"{where}: no divisors")
        if len(set(divisors)) != len(divisors) or target in divisors:
            raise ValueError(f"{where}: a parameter is named twice")
        for name in (target, *divisors):
            if name not in estimated:
                raise ValueError(
                    f"{where}: {name!r} is not an estimated parameter (estimated: "
                    f"{', '.join(estimated)})"
                )
            if spec.parameters[name].prior.family != "LogNormal":
                raise ValueError(
                    f"{where}: {name!r} has a {spec.parameters[name].prior.family} prior; "
                    "ratios are sampled on the log scale of log-normal priors"
                )
        nested = sorted(set(divisors) & set(ratios))
        if nested:
            raise ValueError(f"{where}: {', '.join(nested)} is itself sampled as a ratio")
        p = spec.parameters[target]
        if p.iiv is not None and p.iiv_scale != "log":
            raise ValueError(
                f"{where}: {target!r} has its random effect on the {p.iiv_scale} scale, "
                "not the log scale"
            )
    return ratios


def ratio_variable(name: str, prior: Any, divisors: Sequence[Any]) -> tuple[Any, Any]:
    """Create a log-normal parameter through its ratio to others (inside a model context).

    Parameters
    ----------
    name : str
        The parameter.
    prior : Prior
        Its ``LogNormal`` prior (``mu``, ``sigma`` of the log).
    divisors : sequence of TensorVariable
        The divisors on their natural scale.

    Returns
    -------
    value : TensorVariable
        The deterministic ``<name>`` on its natural scale.
    log_ratio : TensorVariable
        The free variable ``log_<name>_ratio``.
    """
    import pymc as pm
    import pytensor.tensor as pt

    log_divisors = sum(pt.log(d) for d in divisors)
    log_ratio = pm.Normal(
        ratio_name(name), mu=prior.params["mu"] - log_divisors, sigma=prior.params["sigma"]
    )
    return pm.Deterministic(name, pt.exp(log_ratio + log_divisors)), log_ratio
