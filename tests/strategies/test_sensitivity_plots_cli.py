"""Assumption sensitivity, figures and the ``pkpd compare`` command on the toy model."""

import numpy as np
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.strategies import Metric, compare, simulate_strategies, strategy_from_dict
from pkpd.strategies.plots import forest, ribbons, tradeoff
from pkpd.strategies.sensitivity import assumption_sensitivity

from .conftest import HERE

TOC = {"drug": "tocilizumab", "route": "iv", "dose": 8, "dose_unit": "mg/kg", "cap": 800}
STRATEGIES = [
    strategy_from_dict({"name": "none", "reference": True}),
    strategy_from_dict({"name": "prophylactic", "regimen": [{**TOC, "start": "-1 h"}]}),
]
METRIC = Metric("P(CRS >= 3)", "max_crs_grade", "risk", 3.0)


def test_assumption_sensitivity_redraws_only_assumptions(toy, population):
    table = assumption_sensitivity(
        toy,
        population,
        STRATEGIES,
        metric=METRIC,
        factors=(3.0,),
        shifts=(0.5,),
        parameters=["KD"],
        seed=1,
    )
    assert list(table.index) == ["base", "assumption priors x3 wider", "assumption medians x0.5"]
    assert table.attrs["parameters"] == ["KD"]
    # KD only acts through the antibody: without it, the re-drawn scenarios change nothing.
    assert table.loc["assumption priors x3 wider", "none"] == table.loc["base", "none"]
    assert (
        table.loc["assumption priors x3 wider", "prophylactic"] != table.loc["base", "prophylactic"]
    )
    assert table["same best"].dtype == bool
    assert table.loc["base", "ranking"] == "prophylactic < none"


def test_figures(toy, population, tmp_path):
    sim = simulate_strategies(toy, population, STRATEGIES, keep_trajectories=50)
    summary = compare(sim, [METRIC, Metric("il6 AUC", "auc_il6", "mean")])
    forest(summary, path=tmp_path / "f.png")
    ribbons(sim, path=tmp_path / "r.png", log_y=["il6"])
    tradeoff(summary, "P(CRS >= 3)", "il6 AUC", path=tmp_path / "t.png")
    for name in ("f.png", "r.png", "t.png"):
        assert (tmp_path / name).stat().st_size > 5000


def test_compare_command(tmp_path):
    strategies = tmp_path / "s.toml"
    strategies.write_text(
        '[[strategy]]\nname = "none"\nreference = true\n\n'
        '[[strategy]]\nname = "toc"\n[[strategy.regimen]]\ndrug = "tocilizumab"\nroute = "iv"\n'
        'dose = 8\ndose_unit = "mg/kg"\ncap = 800\nstart = "-1 h"\n'
    )
    out = tmp_path / "c.nc"
    result = CliRunner().invoke(
        app,
        [
            "compare",
            str(HERE / "toy_crs.toml"),
            str(strategies),
            "--patients",
            "20",
            "--draws",
            "4",
            "--out",
            str(out),
            "--plots",
            str(tmp_path / "figs"),
            "--seed",
            "3",
            "--covariate",
            "WT=80",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "P(CRS >= 3)" in result.output and "reference" in result.output
    assert out.exists() and (tmp_path / "figs" / "forest.png").exists()
    import xarray as xr

    ds = xr.open_dataset(out)
    assert ds.sizes["draw"] == 4 and ds.sizes["patient"] == 20
    assert np.isfinite(ds["mean"].values).any()


def test_compare_rejects_invalid_strategy_file(tmp_path):
    strategies = tmp_path / "s.toml"
    strategies.write_text(
        '[[strategy]]\nname = "x"\n[[strategy.regimen]]\ndrug = "aspirin"\ndose = 5\n'
    )
    result = CliRunner().invoke(
        app,
        ["compare", str(HERE / "toy_crs.toml"), str(strategies), "--out", str(tmp_path / "c.nc")],
    )
    assert result.exit_code == 2
    assert "unknown drug/route 'aspirin'" in result.output
    assert not (tmp_path / "c.nc").exists()
