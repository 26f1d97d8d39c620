"""The model's dependency graph (`pkpd.model.dependencies`)."""

import pytest

import pkpd
from pkpd.model.dependencies import (
    closure,
    expression_states,
    observation_closures,
    state_dependencies,
)


def test_turnover_model_graph():
    spec = pkpd.load_model("pd_turnover")
    deps = state_dependencies(spec)
    assert deps == {
        "depot": {"depot"},
        "central": {"depot", "central"},
        "R": {"R", "central"},
    }  # through the derived Cp = central / V
    assert closure(spec, ["R"]) == {"R", "central", "depot"}
    assert closure(spec, ["depot"]) == {"depot"}
    obs = observation_closures(spec)
    assert obs["response"] == {"R", "central", "depot"}
    assert expression_states(spec, spec.derived["kin"].expr) == set()
    with pytest.raises(KeyError, match="'Cp' is not a state"):
        closure(spec, ["Cp"])


def test_cart_crs_day_90_count_needs_no_cytokine():
    """What a fit may stop integrating once only CAR-T counts are left to predict: the CAR-T
    count's closure has the tumour, CAR-T and dexamethasone states, not IL-6, the neutrophils,
    tocilizumab or CRP (`docs/cart-fitting.md`)."""
    spec = pkpd.load_model("cart_crs")
    obs = observation_closures(spec)
    assert obs["cart_blood"] == {"B", "Bn", "E", "M", "Dx", "dex_c", "dex_gut"}
    assert {"I6", "RO6", "toc_c", "N", "CRP"} <= obs["crp"]
    assert "Q" not in obs["crs_grade"]
