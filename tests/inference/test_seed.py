"""The same seed gives the same draws; another seed gives other draws."""

import numpy as np
import pytest
import xarray as xr

from pkpd.inference import DEFAULT_SAMPLER, fit

SETTINGS = {"chains": 2, "draws": 100, "tune": 100, "progressbar": False}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [DEFAULT_SAMPLER])  # numpyro passes too (97 s; not in CI)
def test_same_seed_same_draws(sampler):
    a = fit("pk_1cmt_oral", "theophylline", sampler=sampler, seed=5, **SETTINGS)
    b = fit("pk_1cmt_oral", "theophylline", sampler=sampler, seed=5, **SETTINGS)
    c = fit("pk_1cmt_oral", "theophylline", sampler=sampler, seed=6, **SETTINGS)
    xr.testing.assert_equal(a.posterior, b.posterior)
    np.testing.assert_array_equal(
        a.idata.log_likelihood["y"].values, b.idata.log_likelihood["y"].values
    )
    assert not np.array_equal(a.posterior["CL"].values, c.posterior["CL"].values)
