"""Strategy files: parsing, units of time, and rejection of invalid strategies before simulating."""

import textwrap

import numpy as np
import pytest

from pkpd.strategies import (
    StrategyError,
    load_strategies,
    make_population,
    parse_time,
    simulate_strategies,
    strategy_from_dict,
    validate,
)

REACTIVE = {
    "drug": "tocilizumab",
    "route": "iv",
    "dose": 8,
    "dose_unit": "mg/kg",
    "cap": 800,
    "trigger": "crs_grade >= 2",
    "assess_every": "12 h",
    "max_doses": 3,
    "min_interval": "8 h",
}


def write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_times_carry_units():
    assert parse_time("12 h") == pytest.approx(0.5)
    assert parse_time("-1 h") == pytest.approx(-1 / 24)
    assert parse_time("2 d") == 2.0
    assert parse_time(3) == 3.0
    with pytest.raises(ValueError, match="not a time"):
        parse_time("5 mg")


def test_regimen_until_expands_to_doses():
    s = strategy_from_dict(
        {
            "name": "ana",
            "regimen": [
                {
                    "drug": "anakinra",
                    "route": "sc",
                    "dose": 100,
                    "start": "0 d",
                    "interval": "12 h",
                    "until": "10 d",
                }
            ],
        }
    )
    assert s.regimens[0].n_doses == 21
    assert s.regimens[0].times()[-1] == pytest.approx(10.0)


def test_file_roundtrip(tmp_path):
    path = write(
        tmp_path,
        """
        [[strategy]]
        name = "soc"
        reference = true
        [[strategy.reactive]]
        drug = "tocilizumab"
        route = "iv"
        dose = 8
        dose_unit = "mg/kg"
        cap = 800
        trigger = "crs_grade >= 2"
        max_doses = 4
        min_interval = "8 h"
        """,
    )
    (s,) = load_strategies(path)
    assert s.reference and s.reactive[0].max_doses == 4
    assert s.reactive[0].min_interval == pytest.approx(8 / 24)
    assert s.reactive[0].trigger.threshold == 2.0


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"dose": -1}, "dose", "zero or positive"),
        ({"min_interval": "-8 h"}, "min_interval", "must not be negative"),
        ({"trigger": "crs_grade => 2"}, "trigger", "must look like"),
        ({"dose_unit": "mL"}, "dose_unit", "mass"),
        ({"max_doses": 0}, "max_doses", ">= 1"),
        ({"frequency": 2}, "frequency", "unknown key"),
    ],
)
def test_invalid_fields_are_rejected_with_the_field(change, field, message):
    with pytest.raises(StrategyError, match=message) as exc:
        strategy_from_dict({"name": "bad", "reactive": [{**REACTIVE, **change}]}, "s.toml")
    assert exc.value.first.column == field
    assert exc.value.first.file == "s.toml"
    assert "'bad'" in str(exc.value)


def test_negative_interval_is_rejected():
    with pytest.raises(StrategyError, match="interval must not be negative"):
        strategy_from_dict(
            {
                "name": "x",
                "regimen": [
                    {
                        "drug": "anakinra",
                        "route": "sc",
                        "dose": 100,
                        "interval": "-12 h",
                        "n_doses": 3,
                    }
                ],
            }
        )


def test_duplicate_names_and_empty_files(tmp_path):
    path = write(
        tmp_path,
        """
        [[strategy]]
        name = "a"
        [[strategy]]
        name = "a"
        """,
    )
    with pytest.raises(StrategyError, match="duplicate"):
        load_strategies(path)
    with pytest.raises(StrategyError, match="no \\[\\[strategy\\]\\]"):
        load_strategies(write(tmp_path, "x = 1\n"))


def test_unknown_drug_and_trigger_quantity_against_the_model(toy):
    s = strategy_from_dict({"name": "x", "reactive": [{**REACTIVE, "drug": "siltuximab"}]})
    with pytest.raises(StrategyError, match="unknown drug/route 'siltuximab_iv'"):
        validate(s, toy, has_weight=True)
    s = strategy_from_dict({"name": "x", "reactive": [{**REACTIVE, "trigger": "ferritin > 5"}]})
    with pytest.raises(StrategyError, match="unknown quantity 'ferritin'"):
        validate(s, toy, has_weight=True)


def test_mg_per_kg_without_weights_is_rejected_before_simulating(toy):
    s = strategy_from_dict({"name": "x", "reactive": [REACTIVE]})
    with pytest.raises(StrategyError, match="per kg but the patients have no body weight"):
        validate(s, toy, has_weight=False)
    # A mg dose does not need weights.
    validate(
        strategy_from_dict({"name": "y", "reactive": [{**REACTIVE, "dose_unit": "mg"}]}),
        toy,
        has_weight=False,
    )


def test_default_weight_does_not_count_as_a_weight(toy):
    # The toy model has a default WT of 70 kg; mg/kg dosing must still ask for real weights.
    pop = make_population(toy, n_patients=3, n_draws=2, seed=0)
    s = strategy_from_dict({"name": "x", "reactive": [REACTIVE]})
    with pytest.raises(StrategyError, match="no body weight"):
        simulate_strategies(toy, pop, [s])


def test_simulate_validates_first(toy, population):
    bad = strategy_from_dict({"name": "x", "reactive": [{**REACTIVE, "trigger": "nope > 1"}]})
    with pytest.raises(StrategyError):
        simulate_strategies(toy, population, [bad])


def test_population_needs_required_covariates(toy):
    pop = make_population(toy, n_patients=3, n_draws=2, seed=0)  # defaults exist for WT, TB
    assert np.allclose(pop.covariates[:, 0], 70.0)
