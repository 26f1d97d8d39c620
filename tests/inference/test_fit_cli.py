"""``pkpd fit``, ``summary``, ``vpc``, ``fit-progress`` on theophylline: exit codes, outputs."""

import pytest
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.inference import load_fit

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_summary_of_a_good_fit(theo_fit):
    _, path = theo_fit
    result = invoke("summary", path, "--loo")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK:")
    for text in ("ka", "CL", "V", "omega_CL", "sigma_add", "IIV %CV", "elpd_loo"):
        assert text in result.output


@pytest.mark.slow
def test_vpc_of_a_good_fit(theo_fit, tmp_path):
    _, path = theo_fit
    out = tmp_path / "vpc.png"
    result = invoke("vpc", path, "--out", out, "--n-sim", 50)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000


@pytest.mark.slow
def test_fit_command_flags_a_short_fit(tmp_path):
    out = tmp_path / "short.nc"
    result = invoke(
        "fit",
        "pk_1cmt_oral",
        "theophylline",
        "--out",
        out,
        "--chains",
        1,
        "--draws",
        40,
        "--tune",
        40,
        "--seed",
        4,
        "--no-progress",
        "--centered",
        "CL",
    )
    assert result.exit_code == 1, result.output
    assert "FLAGGED" in result.stderr
    assert out.is_file()
    saved = load_fit(out).settings
    assert saved.draws == 40
    assert saved.iiv_parameterization == {"ka": "noncentered", "CL": "centered", "V": "noncentered"}
    summary = invoke("summary", out)
    assert summary.exit_code == 1
    assert summary.output.startswith("FLAGGED")
    vpc = invoke("vpc", out, "--out", tmp_path / "vpc.png", "--n-sim", 20)
    assert vpc.exit_code == 1 and (tmp_path / "vpc.png").is_file()


def test_bad_inputs_exit_2(tmp_path):
    result = invoke(
        "fit", "pk_1cmt_oral", "theophylline", "--out", tmp_path / "x.nc", "--sampler", "bogus"
    )
    assert result.exit_code == 2
    assert "unknown sampler" in result.stderr
    assert invoke("summary", tmp_path / "missing.nc").exit_code == 2
    result = invoke(
        "fit", "pk_1cmt_oral", "theophylline", "--out", tmp_path / "x.nc", "--centered", "tlag"
    )
    assert result.exit_code == 2
    assert "without IIV: tlag" in result.stderr
    result = invoke(
        "fit",
        "pk_1cmt_oral",
        "theophylline",
        "--out",
        tmp_path / "x.nc",
        "--centered",
        "all",
        "--sampler",
        "map",
    )
    assert result.exit_code == 2
    assert "non-centred random effects" in result.stderr
    for ratio, message in (("CL", "parameter=divisor"), ("CL=sigma_add", "HalfNormal prior")):
        result = invoke(
            "fit", "pk_1cmt_oral", "theophylline", "--out", tmp_path / "x.nc", "--ratio", ratio
        )
        assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_fit_command_uses_the_fitting_tolerances(tmp_path):
    """Regression: `pkpd fit` solved with atol 1e-9 and 100,000 steps per interval, not the
    fitting defaults of `fit` (rtol 1e-6, atol 1e-14, 4096 steps)."""
    from pkpd.inference.builder import FIT_ATOL, FIT_MAX_STEPS, FIT_RTOL
    from pkpd.solve import Solver

    out = tmp_path / "map.nc"
    result = invoke(
        "fit", "pk_1cmt_oral", "theophylline", "--out", out, "--sampler", "map", "--no-progress"
    )
    assert result.exit_code == 1, result.output  # MAP is always flagged
    default = Solver("auto", rtol=FIT_RTOL, atol=FIT_ATOL, max_steps=FIT_MAX_STEPS)
    assert load_fit(out).settings.solver == repr(default)
    out2 = tmp_path / "map2.nc"
    result = invoke(
        "fit",
        "pk_1cmt_oral",
        "theophylline",
        "--out",
        out2,
        "--sampler",
        "map",
        "--atol",
        1e-10,
        "--solver",
        "tsit5",
        "--no-progress",
    )
    assert result.exit_code == 1, result.output
    given = Solver("tsit5", rtol=FIT_RTOL, atol=1e-10, max_steps=FIT_MAX_STEPS)
    assert load_fit(out2).settings.solver == repr(given)


def test_fit_command_in_pieces(tmp_path):
    out, folder = tmp_path / "fit.nc", tmp_path / "chains"
    common = (
        "fit",
        "pk_1cmt_oral",
        "theophylline",
        "--out",
        out,
        "--chains",
        2,
        "--draws",
        20,
        "--tune",
        20,
        "--seed",
        4,
        "--no-progress",
        "--checkpoint",
        folder,
    )
    paused = invoke(*common, "--max-seconds", 0)
    assert paused.exit_code == 3, paused.output
    assert "call again" in paused.stderr and not out.exists()
    assert (folder / "chain0.pkl").is_file()
    between = invoke("fit-progress", folder)
    assert between.exit_code == 0 and "no interim diagnostics yet" in between.output
    done = invoke(*common)
    assert done.exit_code in (0, 1), done.output  # 20 draws: flagged or not, but finished
    after = invoke("fit-progress", folder)
    assert after.exit_code == 0 and "draws so far: 20 per chain x 2 chains" in after.output
    back = load_fit(out)
    assert back.posterior.sizes["draw"] == 20
    assert back.idata.warmup_sample_stats["lp"].shape[0] == 2  # the warm-up's, saved too
    assert (
        invoke("fit", "pk_1cmt_oral", "theophylline", "--out", out, "--max-seconds", 5).exit_code
        == 2
    )


def test_fit_command_profile_options_reach_fit_staged(monkeypatch, tmp_path):
    """``--profile`` fits in stages; the profile's own start and random-effect form are kept
    unless ``--init`` / ``--centered`` are given."""
    calls = []

    def recorder(spec, cohort, profile, **kwargs):
        calls.append((spec.name, profile, kwargs))
        raise ValueError("recorded")

    monkeypatch.setattr("pkpd.inference.profiles.fit_staged", recorder)
    out = tmp_path / "x.nc"
    result = invoke(
        "fit",
        "cart_crs",
        "virtual_cart",
        "--out",
        out,
        "--profile",
        "cart_crs_core",
        "--chains",
        2,
        "--no-progress",
    )
    assert result.exit_code == 2 and "recorded" in result.stderr
    name, profile, kw = calls[-1]
    assert (name, profile) == ("cart_crs", "cart_crs_core")
    assert kw["init"] is None and kw["iiv_parameterization"] is None and kw["chains"] == 2
    assert kw["ratio_parameterization"] is None  # the profile's
    invoke(
        "fit",
        "cart_crs",
        "virtual_cart",
        "--out",
        out,
        "--profile",
        "cart_crs_core",
        "--init",
        "prior",
        "--centered",
        "none",
        "--ratio",
        "none",
    )
    assert calls[-1][2]["init"] == "prior"
    assert calls[-1][2]["iiv_parameterization"] == "noncentered"
    assert calls[-1][2]["ratio_parameterization"] == {}
    invoke(
        "fit",
        "cart_crs",
        "virtual_cart",
        "--out",
        out,
        "--profile",
        "cart_crs_core",
        "--centered",
        "rho",
        "--ratio",
        "p6=K_kill*k6",
    )
    assert calls[-1][2]["iiv_parameterization"] == {"rho": "centered"}
    assert calls[-1][2]["ratio_parameterization"] == {"p6": ("K_kill", "k6")}
    assert len(calls) == 3


def test_fit_command_refuses_a_bad_profile(tmp_path):
    out = tmp_path / "x.nc"
    result = invoke("fit", "cart_crs", "virtual_cart", "--out", out, "--profile", "cart_all")
    assert result.exit_code == 2
    assert "unknown profile 'cart_all'" in result.stderr and "cart_crs_core" in result.stderr
    result = invoke(
        "fit",
        "cart_crs",
        "virtual_cart",
        "--out",
        out,
        "--profile",
        "cart_kinetics",
        "--correlated-iiv",
    )
    assert result.exit_code == 2 and "--correlated-iiv" in result.stderr
    # a model without the profile's parameters: named, exit 2 (not a traceback)
    result = invoke(
        "fit",
        "pk_1cmt_oral",
        "theophylline",
        "--out",
        out,
        "--profile",
        "cart_crs_core",
        "--sampler",
        "map",
    )
    assert result.exit_code == 2, result.output
    assert not out.exists()


@pytest.mark.slow
def test_fit_command_with_a_profile_saves_the_staged_fit(tmp_path):
    out = tmp_path / "staged.nc"
    result = invoke(
        "fit",
        "cart_crs",
        "virtual_cart",
        "--out",
        out,
        "--profile",
        "cart_kinetics",
        "--sampler",
        "map",
        "--no-progress",
    )
    assert result.exit_code == 1, result.output  # a MAP is always flagged
    assert "in the stages of profile cart_kinetics" in result.output
    saved = load_fit(out)
    assert saved.extra["staged"]["profile"] == "cart_kinetics"
    assert [s["stage"] for s in saved.extra["staged"]["stages"]] == ["pooled", "kinetics"]
    assert saved.spec.estimated() == ["rho", "alpha", "FB", "V_car", "sigma_cart"]
