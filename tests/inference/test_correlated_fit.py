"""A correlated-IIV fit with the default sampler (nutpie), and its use in strategy simulation.

Regression: nutpie 0.16 stopped every correlated-IIV fit with "Unexpected expand key: expected
chol_iiv_corr but found V" (its trace cannot hold the square LKJ deterministics), so
``fit(..., correlated_iiv=True)`` failed with the default sampler; and strategy populations drew
the random effects of such fits independently, ignoring the fitted correlation.
"""

import numpy as np
import pytest

import pkpd
from pkpd.inference import fit
from pkpd.strategies import make_population

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corr_fit():
    return fit(
        "pk_1cmt_oral",
        "theophylline",
        seed=3,
        chains=2,
        draws=150,
        tune=150,
        correlated_iiv=True,
        progressbar=False,
    )


def test_nutpie_fit_records_the_iiv_correlation(corr_fit):
    post = corr_fit.idata.posterior
    corr = post["corr_iiv"]
    assert corr.dims == ("chain", "draw", "iiv", "iiv_bis")
    assert list(corr.coords["iiv"].values) == ["ka", "CL", "V"]
    c = corr.values
    np.testing.assert_allclose(np.diagonal(c, axis1=2, axis2=3), 1.0, atol=1e-12)
    np.testing.assert_allclose(c, np.swapaxes(c, 2, 3), atol=1e-12)
    # ... and it is the correlation of the sampled Cholesky factor of the covariance
    # (packed lower triangle, row by row), as are the IIV SDs.
    packed = post["chol_iiv"].values
    low = np.zeros((*packed.shape[:2], 3, 3))
    low[..., np.tril_indices(3)[0], np.tril_indices(3)[1]] = packed
    cov = low @ np.swapaxes(low, 2, 3)
    sd = np.sqrt(np.diagonal(cov, axis1=2, axis2=3))
    np.testing.assert_allclose(c, cov / sd[..., :, None] / sd[..., None, :], atol=1e-10)
    for k, name in enumerate(("ka", "CL", "V")):
        np.testing.assert_allclose(post[f"omega_{name}"].values, sd[..., k], rtol=1e-10)
    assert "IIV correlation" in set(corr_fit.summary()["kind"])


def test_strategy_population_keeps_the_fitted_correlation(corr_fit):
    model = corr_fit.spec.compile()
    pop = make_population(
        model,
        n_patients=4000,
        n_draws=3,
        seed=1,
        fit=corr_fit,
        cohort=pkpd.load_dataset("theophylline"),
        base_routes=["oral"],
    )
    assert pop.corr_chol.shape == (3, 3, 3)
    flat = corr_fit.idata.posterior["corr_iiv"].values.reshape(-1, 3, 3)
    for d in range(3):
        target = pop.corr_chol[d] @ pop.corr_chol[d].T
        # one of the posterior's correlation matrices
        assert np.min(np.abs(flat - target).max(axis=(1, 2))) < 1e-9
        eta = pop.eta(np.full(4000, d), np.arange(4000))
        np.testing.assert_allclose(np.corrcoef(eta.T), target, atol=0.05)
        np.testing.assert_allclose(eta.std(axis=0), pop.omega[d], rtol=0.05)


def test_compare_command_over_a_saved_fit(corr_fit, tmp_path):
    # The whole path a user takes: a saved fit -> `pkpd compare` over its posterior.
    import xarray as xr
    from typer.testing import CliRunner

    from pkpd.cli import app

    path = tmp_path / "fit.nc"
    corr_fit.save(path)
    strategies = tmp_path / "s.toml"
    strategies.write_text(
        '[[strategy]]\nname = "single"\nreference = true\n\n'
        '[[strategy]]\nname = "second dose"\n[[strategy.regimen]]\n'
        'drug = "oral"\ndose = 320\nstart = "12 h"\n'
    )
    out = tmp_path / "c.nc"
    result = CliRunner().invoke(
        app,
        [
            "compare",
            str(path),
            str(strategies),
            "--cohort",
            "theophylline",
            "--base-route",
            "oral",
            "--patients",
            "12",
            "--draws",
            "5",
            "--horizon",
            "2",
            "--seed",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    ds = xr.open_dataset(out)
    assert ds.attrs["parameters_from"].startswith("posterior")
    assert ds.sizes["draw"] == 5 and ds.sizes["patient"] == 12
    assert list(ds["strategy"].values) == ["single", "second dose"]
