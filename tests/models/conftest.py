"""Fixtures of the model-library tests: library models compiled once per session."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import pkpd  # noqa: E402


@pytest.fixture(scope="session")
def cart_crs():
    return pkpd.load_model("cart_crs").compile()


@pytest.fixture(scope="session")
def cart_kinetics():
    return pkpd.load_model("cart_kinetics").compile()


@pytest.fixture(scope="session")
def cart_il6_toc():
    return pkpd.load_model("cart_il6_toc").compile()
