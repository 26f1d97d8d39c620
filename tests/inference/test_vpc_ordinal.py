"""VPC of an ordinal endpoint: observed and simulated fractions of records at or above a grade."""

import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from pkpd.inference import fit
from pkpd.inference.predictive import posterior_predictive, time_bins, vpc_table

matplotlib.use("Agg")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def short_fit(multi_spec, multi_cohort):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(
            multi_spec,
            multi_cohort,
            chains=1,
            draws=60,
            tune=60,
            seed=11,
            progressbar=False,
            log_likelihood_group=False,
        )


def test_ordinal_rows_hold_grade_fractions(short_fit):
    table = vpc_table(short_fit, n_sim=40, n_bins=3, seed=2)
    grade = table[table["endpoint"] == "grade"]
    assert set(grade["level"]) == {1.0, 2.0}  # every level above the lowest (0)
    assert grade["q"].isna().all() and grade["blq_observed"].isna().all()
    cont = table[table["endpoint"] != "grade"]
    assert cont["level"].isna().all() and cont["q"].notna().all()

    # Observed fractions, from the CSV itself (DVID 3 = grade), binned as the table says.
    df = pd.read_csv(DATA / "multi_endpoint.csv", na_values=".")
    obs = df[(df["EVID"] == 0) & (df["DVID"] == 3)]
    edges = time_bins(obs["TIME"].to_numpy(float), 3)
    which = np.clip(np.searchsorted(edges, obs["TIME"], side="right") - 1, 0, len(edges) - 2)
    for _, row in grade.iterrows():
        here = obs["DV"].to_numpy()[which == row["bin"]]
        assert row["n"] == here.size
        assert row["observed"] == pytest.approx(np.mean(here >= row["level"]))
        assert 0.0 <= row["sim_lo"] <= row["sim_median"] <= row["sim_hi"] <= 1.0

    # Simulated fractions: those of the replicated datasets (same seed, same replicates).
    rep = posterior_predictive(short_fit, n_draws=40, seed=2, new_subjects=True)
    sel = np.flatnonzero(rep["endpoint"].values == "grade")
    b0 = grade[(grade["bin"] == 0) & (grade["level"] == 1.0)].iloc[0]
    cols = sel[(rep["time"].values[sel] >= b0["t_lo"]) & (rep["time"].values[sel] < b0["t_hi"])]
    frac = (rep["y_rep"].values[:, cols] >= 1).mean(axis=1)
    assert b0["sim_median"] == pytest.approx(np.median(frac))
    # at or above grade 2 is never more frequent than at or above grade 1
    for b, part in grade.groupby("bin"):
        one, two = part.set_index("level").loc[[1.0, 2.0], "sim_median"]
        assert two <= one, b


def test_vpc_plot_has_an_ordinal_panel(short_fit, tmp_path):
    from pkpd.inference.plots import plot_vpc

    fig = plot_vpc(short_fit, tmp_path / "vpc.png", n_sim=20, n_bins=3)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_visible()]
    assert "fraction of records with grade >= k" in labels
    assert (tmp_path / "vpc.png").stat().st_size > 10_000
