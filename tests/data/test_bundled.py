"""Bundled datasets: registry, packaging, and the real theophylline data."""

import runpy
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pkpd.data import DATASETS, list_datasets, load_dataset
from pkpd.errors import DatasetError

SHARED = Path("/work/shared/data/theophylline")
ROOT = Path(__file__).resolve().parents[2]


def test_registry_lists_theophylline():
    assert "theophylline" in list_datasets()
    assert list_datasets() == sorted(DATASETS)
    for entry in DATASETS.values():
        files = resources.files("pkpd.data") / "datasets"
        assert (files / entry.filename).is_file()
        assert (files / entry.filename.replace(".csv", ".md")).is_file()


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="theophylline"):
        load_dataset("theophyline")


def test_theophylline_layout():
    c = load_dataset("theophylline")
    ds = c.ds
    assert c.source == "theophylline" and c.time_unit == "h"
    assert c.n_subjects == 12 and c.subjects.tolist() == list(range(1, 13))
    assert c.covariate_names == ["WT"] and c.endpoints == [1]
    assert int(ds.obs_mask.sum()) == 132 and not ds.obs_mdv.values.any()
    assert (ds.obs_cmt.values == 2).all() and (ds.obs_dvid.values == 1).all()
    assert ds.sizes["dose"] == 1
    assert (ds.dose_evid.values == 1).all() and (ds.dose_cmt.values == 1).all()
    assert (ds.dose_time.values == 0).all()
    assert ds.dose_amt.values[0, 0] == 319.992 and ds.dose_amt.values[8, 0] == 267.84
    assert ds.cov_WT.values[0] == 79.6
    # The dose record comes first, so the t=0 sample is taken after the dose (as in theo_sd).
    assert (ds.dose_line.values[:, 0] < ds.obs_line.values[:, 0]).all()
    assert ds.obs_dv.values[0, 0] == 0.74 and ds.obs_time.values[0, -1] == 24.37


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared source data not available")
def test_theophylline_matches_r_theoph():
    theoph = pd.read_csv(SHARED / "Theoph.csv")
    ds = load_dataset("theophylline").ds
    mask = ds.obs_mask.values
    np.testing.assert_array_equal(ds.obs_time.values[mask], theoph["Time"].to_numpy())
    np.testing.assert_array_equal(ds.obs_dv.values[mask], theoph["conc"].to_numpy())
    first = theoph.groupby("Subject").first()
    np.testing.assert_array_equal(ds.cov_WT.values, first["Wt"].to_numpy())
    np.testing.assert_allclose(ds.dose_amt.values[:, 0], first["Dose"] * first["Wt"], rtol=1e-12)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared source data not available")
def test_script_regenerates_the_shipped_file(tmp_path, capsys):
    shipped = resources.files("pkpd.data") / "datasets" / "theophylline.csv"
    script = runpy.run_path(str(ROOT / "scripts" / "make_theophylline.py"))
    target = tmp_path / "theophylline.csv"
    script["main"](SHARED, target)
    assert target.read_bytes() == shipped.read_bytes()
    assert "12 subjects" in capsys.readouterr().out
