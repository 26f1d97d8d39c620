"""The ``pkpd`` command line, driven through typer's CliRunner (same process, real files)."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import pkpd
from pkpd._jax import host_cpu
from pkpd.cli import app
from pkpd.model import list_models
from pkpd.solve import Solver

runner = CliRunner()

BAD_MODEL = """[model]
name = "bad"
time_unit = "h"

[states]
central = { unit = "mg" }

[parameters]
CL = { unit = "L/h", value = 2.0 }

[equations]
central = "-CL / Vc * central"
"""

GOOD_MODEL = (
    BAD_MODEL.replace('name = "bad"', 'name = "good"')
    .replace("/ Vc", "/ V")
    .replace("[equations]", 'V = { unit = "L", value = 20.0 }\n\n[equations]')
)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("models", "datasets", "check", "simulate", "demo", "version"):
        assert command in result.output


def test_no_arguments_shows_help():
    result = invoke()
    assert "Usage" in result.output


def test_version():
    result = invoke("version")
    assert result.exit_code == 0
    assert result.output.startswith(f"pkpd {pkpd.__version__} (jax ")
    assert f"; CPU {host_cpu()})" in result.output


def test_models_lists_the_library():
    result = invoke("models")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == len(list_models())
    for line, (name, description) in zip(lines, list_models(), strict=True):
        assert line.split()[0] == name
        assert line.rstrip().endswith(description.strip())


def test_datasets_lists_the_bundled_data():
    # regression: the command crashed ('list' object has no attribute 'items')
    result = invoke("datasets")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("theophylline ")
    assert "12 subjects" in result.output


def test_check_describes_a_library_model():
    result = invoke("check", "pk_2cmt_oral")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# pk_2cmt_oral")
    assert result.output.strip() == pkpd.load_model("pk_2cmt_oral").describe().strip()


def test_check_a_model_file_by_path(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD_MODEL)
    result = invoke("check", path)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# good\n")
    assert "| CL | L/h | 2 | fixed |" in result.output


def test_check_a_bad_file_names_file_line_and_name(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD_MODEL)
    result = invoke("check", path)
    assert result.exit_code == 2
    assert "error: model file is invalid" in result.output
    line = BAD_MODEL.splitlines().index('central = "-CL / Vc * central"') + 1
    assert f"{path.resolve()}, line {line}, 'central': unknown symbol 'Vc'" in result.output


def test_check_a_model_that_does_not_compile(tmp_path):
    # two routes into one state with different unit scaling: loads, but cannot be compiled
    path = tmp_path / "routes.toml"
    path.write_text(
        GOOD_MODEL
        + '\n[doses.a]\ncompartment = "central"\nunit = "mg"\n'
        + '\n[doses.b]\ncompartment = "central"\nunit = "ug"\n'
    )
    result = invoke("check", path)
    assert result.exit_code == 2
    assert "model does not compile" in result.output
    assert "dose routes 'a' and 'b' enter state 'central'" in result.output


def test_check_a_missing_model():
    result = invoke("check", "no_such_model")
    assert result.exit_code == 2
    assert "no model file 'no_such_model'" in result.output


@pytest.fixture(scope="module")
def theophylline():
    cohort = pkpd.load_dataset("theophylline")
    model = pkpd.load_model("pk_1cmt_oral").compile()
    return cohort, model


def test_simulate_writes_predictions_and_a_plot(tmp_path, theophylline):
    cohort, model = theophylline
    out, plot = tmp_path / "out" / "pred.csv", tmp_path / "fig" / "pred.png"
    result = invoke("simulate", "pk_1cmt_oral", "theophylline", "--out", out, "--plot", plot)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["ID", "TIME", "ENDPOINT", "DV", "PRED"]
    assert len(table) == 132
    assert table["ID"].tolist() == sorted(table["ID"].tolist())
    assert sorted(table["ID"].unique()) == list(range(1, 13))
    assert set(table["ENDPOINT"]) == {"conc"}
    # the same numbers as the Python API at typical values (the CLI's default solver is "auto")
    sim = pkpd.simulate(model, cohort, solver=Solver("auto"))
    np.testing.assert_allclose(table["PRED"], sim["pred"].values[sim["obs_mask"].values])
    dv = np.asarray(cohort.ds["obs_dv"].values, dtype=float)[sim["obs_mask"].values]
    np.testing.assert_array_equal(table["DV"], dv)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote 132 predictions for 12 subjects to {out}" in result.output
    assert f"wrote plot to {plot}" in result.output
    assert "median_abs_rel_err_pct" in result.output


def test_simulate_with_a_parameter_override(tmp_path, theophylline):
    cohort, model = theophylline
    out = tmp_path / "pred.csv"
    result = invoke(
        "simulate",
        "pk_1cmt_oral",
        "theophylline",
        "--out",
        out,
        "--param",
        "ka=1.59",
        "--param",
        "CL=2.74",
        "--solver",
        "tsit5",
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    sim = pkpd.simulate(model, cohort, {"ka": 1.59, "CL": 2.74}, solver=Solver("tsit5"))
    np.testing.assert_allclose(table["PRED"], sim["pred"].values[sim["obs_mask"].values])
    typical = pkpd.simulate(model, cohort, solver=Solver("tsit5"))
    assert not np.allclose(table["PRED"], typical["pred"].values[typical["obs_mask"].values])


@pytest.mark.parametrize(
    "param, words",
    [
        ("kaa=1.59", "unknown parameter(s) ['kaa']; the model has ['ka', 'tlag', 'F'"),
        ("ka", "--param takes NAME=VALUE, got 'ka'"),
        ("ka=fast", "--param ka: 'fast' is not a number"),
    ],
)
def test_simulate_bad_parameter(tmp_path, param, words):
    out = tmp_path / "pred.csv"
    result = invoke("simulate", "pk_1cmt_oral", "theophylline", "--out", out, "--param", param)
    assert result.exit_code == 2
    assert words in result.output
    assert not out.exists()


def test_simulate_a_csv_file_with_a_time_unit(tmp_path):
    data = tmp_path / "study.csv"
    data.write_text("ID,TIME,EVID,AMT,CMT,DV\n1,0,1,100,iv,.\n1,60,0,.,.,2.5\n1,120,0,.,.,1.7\n")
    out = tmp_path / "pred.csv"
    result = invoke(
        "simulate",
        "pk_1cmt_oral",
        data,
        "--out",
        out,
        "--time-unit",
        "min",
        "--param",
        "CL=3",
        "--param",
        "V=30",
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    # minutes in the data, hours in the model: 100 mg / 30 L * exp(-0.1 t), t = 1 h, 2 h
    np.testing.assert_allclose(table["TIME"], [1.0, 2.0])
    np.testing.assert_allclose(table["PRED"], 100 / 30 * np.exp(-0.1 * np.array([1.0, 2.0])))


def test_simulate_an_invalid_dataset(tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text("ID,TIME,EVID,AMT,DV\n1,0,1,-5,.\n1,1,0,.,2\n")
    result = invoke("simulate", "pk_1cmt_oral", data, "--out", tmp_path / "p.csv")
    assert result.exit_code == 2
    assert "dataset is invalid" in result.output
    assert f"{data}, line 2" in result.output


@pytest.mark.slow
def test_demo_writes_its_outputs(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "--quick")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "theophylline_predictions.csv")
    assert len(table) == 132
    assert (out / "theophylline_predictions.png").read_bytes()[:4] == b"\x89PNG"
    assert "ka 1.59 /h, CL 2.74 L/h, V 31.7 L" in result.output
    assert "\nall " in result.output  # the overall row of the residual summary
    # the fit and the strategy comparison
    assert (out / "theophylline_fit.nc").exists() and (out / "theophylline_vpc.png").exists()
    decision = pd.read_csv(out / "strategies_decision_table.csv", index_col=0)
    assert {"soc_reactive_toc", "prophylactic_toc", "prophylactic_anakinra"} <= set(decision.index)
    assert (out / "strategies_forest.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "option, words",
    [
        # regression: these crashed with a traceback (exit status 1) instead of a message
        (["--solver", "rk4"], "unknown solver method 'rk4'"),
        (["--solver", "analytic", "--rtol", "1e-6"], None),  # pk_1cmt_oral has a closed form
        (["--rtol", "-1"], "tolerances must be positive"),
    ],
)
def test_simulate_solver_options(tmp_path, option, words):
    out = tmp_path / "pred.csv"
    result = invoke("simulate", "pk_1cmt_oral", "theophylline", "--out", out, *option)
    if words is None:
        assert result.exit_code == 0, result.output
        assert out.exists()
    else:
        assert result.exit_code == 2, result.output
        assert words in result.output
        assert not out.exists()


def test_simulate_analytic_solver_for_a_model_without_closed_form(tmp_path):
    out = tmp_path / "pred.csv"
    result = invoke("simulate", "pd_turnover", "theophylline", "--out", out, "--solver", "analytic")
    assert result.exit_code == 2
    assert "model 'pd_turnover' has no analytic solution" in result.output
