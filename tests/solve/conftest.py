"""Hand-built models (plain JAX) and a stand-in Cohort, so pkpd.solve is tested on its own."""

import sys
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).parent))

import handmodels  # noqa: E402


@pytest.fixture(scope="session")
def model1():
    return handmodels.one_cmt()


@pytest.fixture(scope="session")
def model2():
    return handmodels.two_cmt()


@pytest.fixture(scope="session")
def blowup_model():
    return handmodels.blowup()
