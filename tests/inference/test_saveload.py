"""Saved fits: round trip, provenance, refusal of a changed model file, atomic writes."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import pkpd
from pkpd.inference import ModelChangedError, fit, load_fit
from pkpd.inference.fitresult import host_cpu
from pkpd.model.library import library_path


@pytest.fixture(scope="module")
def short_fit():
    """A short NUTS fit (flagged: too short; enough to carry every group)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(
            "pk_1cmt_oral", "theophylline", chains=2, draws=50, tune=50, seed=2, progressbar=False
        )


@pytest.mark.slow
def test_round_trip(short_fit, tmp_path):
    path = short_fit.save(tmp_path / "fit.nc")
    loaded = load_fit(path)
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data", "constant_data"):
        a, b = getattr(short_fit.idata, group), getattr(loaded.idata, group)
        xr.testing.assert_equal(
            a.drop_attrs() if hasattr(a, "drop_attrs") else a,
            b.drop_attrs() if hasattr(b, "drop_attrs") else b,
        )
    assert loaded.spec.hash == short_fit.spec.hash
    assert loaded.settings == short_fit.settings
    assert loaded.cohort.to_dataframe().equals(short_fit.cohort.to_dataframe())
    prov = loaded.provenance
    assert prov["model_hash"] == short_fit.spec.hash
    assert prov["seed"] == 2 and prov["sampler"] == short_fit.settings.sampler
    assert set(prov["versions"]) >= {"pkpd", "jax", "diffrax", "pymc", "pytensor", "arviz", "cpu"}
    assert prov["versions"]["cpu"] == host_cpu() != ""
    assert "pk_1cmt_oral" in next(iter(__import__("json").loads(prov["model_files"])))
    assert loaded.diagnostics()["rhat_max"] == short_fit.diagnostics()["rhat_max"]
    # The re-attached model predicts exactly as the original.
    theta, eta = loaded.draws(max_draws=3)
    np.testing.assert_array_equal(
        np.asarray(loaded.info.predict(theta[0], eta[0])),
        np.asarray(short_fit.info.predict(theta[0], eta[0])),
    )


def test_changed_model_file_is_refused(tmp_path):
    model_file = tmp_path / "model.toml"
    shutil.copy(library_path() / "pk_1cmt_oral.toml", model_file)
    spec = pkpd.load_model(model_file)
    result = fit(spec, "theophylline", sampler="map", progressbar=False)
    path = result.save(tmp_path / "fit.nc")
    assert load_fit(path).spec.hash == spec.hash

    model_file.write_text(model_file.read_text() + "\n# edited\n")
    with pytest.raises(ModelChangedError, match="has changed"):
        load_fit(path)
    with pytest.warns(UserWarning, match="differs"):
        explicit = load_fit(path, model=model_file)
    assert explicit.spec.hash != spec.hash

    # With the file gone, the model is rebuilt from the text saved in the fit.
    model_file.unlink()
    rebuilt = load_fit(path)
    assert rebuilt.spec.hash == spec.hash
    assert rebuilt.spec.parameters.keys() == spec.parameters.keys()


def test_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    result = fit("pk_1cmt_oral", "theophylline", sampler="map", progressbar=False)
    path = result.save(tmp_path / "fit.nc")
    before = path.read_bytes()

    original = xr.Dataset.to_netcdf

    def failing(self, *args, **kwargs):
        if kwargs.get("group") == "pkpd_cohort":  # the last step of a save
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", failing)
    with pytest.raises(KeyboardInterrupt):
        result.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["fit.nc"]


def test_not_a_fit(tmp_path):
    path = tmp_path / "other.nc"
    xr.Dataset({"x": ("a", [1.0])}).to_netcdf(path)
    with pytest.raises(ValueError, match="not a pkpd fit"):
        load_fit(path)


def test_sampler_kwargs_are_recorded_and_saved(tmp_path):
    # Regression: the sampler's extra options (e.g. nutpie's low-rank mass matrix) were not
    # part of the saved settings, so a saved fit did not say how it was sampled.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(
            "pk_1cmt_oral",
            "theophylline",
            chains=1,
            draws=20,
            tune=20,
            seed=3,
            progressbar=False,
            sampler_kwargs={
                "low_rank_modified_mass_matrix": True,
                "mass_matrix_eigval_cutoff": np.float64(3.0),
            },
        )
    assert result.settings.sampler_kwargs["low_rank_modified_mass_matrix"] is True
    loaded = load_fit(result.save(tmp_path / "fit.nc"))
    assert loaded.settings.sampler_kwargs == {
        "low_rank_modified_mass_matrix": True,
        "mass_matrix_eigval_cutoff": 3.0,
    }
