"""Checks of the benchmark scripts' own logic (not their timings)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cart_recovery_refuses_more_patients_than_the_dataset_has():
    # Regression: --timing --patients 100 timed the 60 patients of virtual_cart and printed 100.
    cart_recovery = _load("cart_recovery")
    spec, cohort = cart_recovery._last_stage(3, "cart_crs_core")
    assert len(cohort.subjects) == 3
    with pytest.raises(ValueError, match="virtual_cart has 60 patients, not 61"):
        cart_recovery._last_stage(61, "cart_crs_core")
