from pathlib import Path

import numpy as np
import pytest

import pkpd
from pkpd.strategies import make_population

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def toy():
    return pkpd.load_model(HERE / "toy_crs.toml").compile()


@pytest.fixture(scope="session")
def population(toy):
    n = 60
    return make_population(
        toy,
        n_patients=n,
        n_draws=6,
        seed=11,
        covariates={"WT": np.linspace(50, 110, n), "TB": np.exp(np.linspace(-1, 1, n))},
    )
