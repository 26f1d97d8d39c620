"""Preventive and reactive dosing strategies compared over the posterior (layer 5).

>>> from pkpd.strategies import load_strategies, make_population, simulate_strategies, compare
>>> strategies = load_strategies("strategies.toml")
>>> pop = make_population(model, n_patients=200, n_draws=100, seed=1, fit=fit)
>>> sim = simulate_strategies(model, pop, strategies)
>>> table = decision_table(compare(sim))

See ``docs/strategies.md``.
"""

from pkpd.strategies.metrics import (
    Metric,
    compare,
    decision_table,
    default_metrics,
    expected_auc,
    subgroup_masks,
)
from pkpd.strategies.population import BaseDose, Population, make_population, prior_draws
from pkpd.strategies.regimen import (
    Dose,
    ReactivePolicy,
    Regimen,
    Strategy,
    StrategyError,
    Trigger,
    load_strategies,
    parse_time,
    strategy_from_dict,
    validate,
)
from pkpd.strategies.simulate import grades, simulate_strategies
from pkpd.strategies.worst import worst_grade_probability, worst_latent

__all__ = [
    "BaseDose",
    "Dose",
    "Metric",
    "Population",
    "ReactivePolicy",
    "Regimen",
    "Strategy",
    "StrategyError",
    "Trigger",
    "compare",
    "decision_table",
    "default_metrics",
    "expected_auc",
    "grades",
    "load_strategies",
    "make_population",
    "parse_time",
    "prior_draws",
    "simulate_strategies",
    "strategy_from_dict",
    "subgroup_masks",
    "validate",
    "worst_grade_probability",
    "worst_latent",
]
