"""Sensitivity of a strategy comparison to the model's unsourced assumptions.

Parameters whose source is ``"assumption: ..."`` carry priors that nobody measured. This module
re-runs a comparison with those priors widened (or shifted) and reports whether the ranking of
the strategies changes. The patients and the common random numbers stay the same; only the
draws of the assumption parameters change (their other draws are kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pkpd.strategies.metrics import Metric, compare
from pkpd.strategies.population import Population
from pkpd.strategies.regimen import Strategy
from pkpd.strategies.simulate import simulate_strategies


def _redraw(
    model: Any,
    population: Population,
    names: Sequence[str],
    factor: float,
    shift: float | None,
    seed: int,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    theta = population.theta.copy()
    for name in names:
        p = model.spec.parameters[name]
        j = model.parameter_index(name)
        prior = p.prior
        if prior is None:  # a fixed assumption: spread it log-normally around its value
            from pkpd.model.priors import parse_prior

            prior = parse_prior(f"LogNormal(median={p.value}, cv=0.5)") if p.value else None
            if prior is None:
                continue
        if shift is not None and prior.family == "LogNormal":
            prior = prior.shifted(shift)
        if factor != 1.0:
            prior = prior.widened(factor)
        theta[:, j] = prior.sample(rng, population.n_draws)
    return theta


def assumption_sensitivity(
    model: Any,
    population: Population,
    strategies: Sequence[Strategy],
    *,
    metric: Metric,
    factors: Sequence[float] = (2.0,),
    shifts: Sequence[float] = (),
    parameters: Sequence[str] | None = None,
    seed: int = 0,
    **simulate_kwargs: Any,
) -> pd.DataFrame:
    """Re-run a comparison with the priors of assumption parameters widened or shifted.

    Parameters
    ----------
    model : CompiledModel
    population : Population
        The population of the base comparison.
    strategies : sequence of Strategy
    metric : Metric
        The metric that ranks strategies (e.g. P(CRS >= 3)).
    factors : sequence of float
        Spread multipliers (2: twice the prior SD on the log scale).
    shifts : sequence of float
        Median multipliers for log-normal priors (0.5, 2, ...).
    parameters : sequence of str, optional
        Default: every parameter whose source starts with ``"assumption"``.
    seed : int
        Seed of the re-drawn parameters.
    **simulate_kwargs
        Passed to `simulate_strategies`.

    Returns
    -------
    pandas.DataFrame
        One row per scenario (``base`` first): the metric's mean per strategy, the ranking, and
        whether the best strategy and the full ranking are the same as in the base run.
    """
    names = list(parameters if parameters is not None else model.spec.assumptions())
    scenarios: list[tuple[str, Population]] = [("base", population)]
    for f in factors:
        theta = _redraw(model, population, names, f, None, seed)
        scenarios.append(
            (
                f"assumption priors x{f:g} wider",
                population.with_theta(theta, f"{population.source}; assumptions widened x{f:g}"),
            )
        )
    for sh in shifts:
        theta = _redraw(model, population, names, 1.0, sh, seed)
        scenarios.append(
            (
                f"assumption medians x{sh:g}",
                population.with_theta(theta, f"{population.source}; assumption medians x{sh:g}"),
            )
        )
    rows = []
    base_rank = None
    sign = 1.0 if metric.lower_is_better else -1.0
    for label, pop in scenarios:
        ds = simulate_strategies(model, pop, strategies, **simulate_kwargs)
        summary = compare(ds, [metric])
        means = summary["mean"].sel(subgroup="all", metric=metric.name)
        order = [
            str(s) for s in means["strategy"].values[np.argsort(sign * means.values, kind="stable")]
        ]
        if base_rank is None:
            base_rank = order
        row = {
            "scenario": label,
            **{
                str(s): float(v)
                for s, v in zip(means["strategy"].values, means.values, strict=True)
            },
        }
        row["ranking"] = " < ".join(order) if metric.lower_is_better else " > ".join(order)
        row["same best"] = order[0] == base_rank[0]
        row["same ranking"] = order == base_rank
        rows.append(row)
    out = pd.DataFrame(rows).set_index("scenario")
    out.attrs["parameters"] = names
    out.attrs["metric"] = metric.name
    return out
