"""Reading a checkpoint folder alone (`pkpd.inference.checkpoint_report`, ``pkpd fit-progress``):
folders written by hand, so every number is known. A real run's folder is read in
`test_resumable.py`."""

import json
import pickle
import types

import numpy as np
import pytest
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.inference import resumable
from pkpd.inference.checkpoint_report import checkpoint_progress, interim_diagnostics

TUNE, DRAWS = 10, 40


def _record(iteration, draws, divergent_warm=(), divergent_draws=(), step_size=None):
    n_warm = min(iteration, TUNE)
    warm = {k: [0.0] * n_warm for k in resumable.STATS}
    warm["n_steps"] = [7] * n_warm
    warm["diverging"] = [i in divergent_warm for i in range(n_warm)]
    stats = {k: [0.0] * len(draws) for k in resumable.STATS}
    stats["n_steps"] = [3] * len(draws)
    stats["diverging"] = [i in divergent_draws for i in range(len(draws))]
    rec = {
        "iteration": iteration,
        "draws": list(draws),
        "stats": stats,
        "warmup": {"from": 0, "divergent": [], **warm},
        "seconds": 2.0 * iteration,
    }
    if step_size is not None:  # as numpyro's HMCState: state.adapt_state.step_size
        rec["state"] = types.SimpleNamespace(
            adapt_state=types.SimpleNamespace(step_size=np.float64(step_size))
        )
    return rec


def _folder(path, records, chains=None):
    run = {
        "chains": chains or len(records),
        "tune": TUNE,
        "draws": DRAWS,
        "names": ["log_CL", "z"],
        "shapes": [[], [2]],
    }
    path.mkdir(exist_ok=True)
    (path / "run.json").write_text(json.dumps(run))
    for c, rec in enumerate(records):
        with open(path / f"chain{c}.pkl", "wb") as fh:
            pickle.dump(rec, fh)
    return path


def test_progress_says_where_each_chain_stands(tmp_path):
    rng = np.random.default_rng(0)
    folder = _folder(
        tmp_path / "run",
        [
            _record(6, [], divergent_warm={1, 4}, step_size=0.25),
            _record(TUNE + 5, rng.normal(size=(5, 3)), divergent_draws={2}, step_size=0.1),
            _record(TUNE + DRAWS, rng.normal(size=(DRAWS, 3))),
        ],
        chains=4,  # the fourth has not saved yet
    )
    table = checkpoint_progress(folder)
    assert table.index.tolist() == [0, 1, 2, 3]
    assert table["phase"].tolist() == ["warm-up", "sampling", "done", "not started"]
    assert table["iteration"].tolist() == [6, 15, 50, 0]
    assert table["total"].tolist() == [50] * 4
    assert table["draws"].tolist() == [0, 5, 40, 0]
    assert table["warmup_divergent"].tolist() == [2, 0, 0, 0]
    assert table["warmup_recorded"].tolist() == [6, 10, 10, 0]
    assert table["draws_divergent"].tolist() == [0, 1, 0, 0]
    assert table["seconds"].tolist() == [12.0, 30.0, 100.0, 0.0]
    assert table["s_per_iteration"].tolist()[:3] == [2.0, 2.0, 2.0]
    np.testing.assert_array_equal(table["step_size"].values, [0.25, 0.1, np.nan, np.nan])
    # 44 iterations at 7 steps, 2 s per 7 steps; 35 at the recent median of 7 steps, 30 s per
    # the 10 * 7 + 5 * 3 steps so far.
    np.testing.assert_allclose(
        table["remaining_s"].values, [88.0, round(35 * 7 * 30 / 85, 1), 0.0, np.nan]
    )
    # the median over the last iterations, warm-up (7 steps) and draws (3) together
    assert table["recent_steps"].tolist()[:3] == [7.0, 7.0, 3.0]
    assert checkpoint_progress(folder, recent=5)["recent_steps"].tolist()[:3] == [7.0, 3.0, 3.0]


def test_interim_diagnostics_find_the_coordinate_whose_chains_disagree(tmp_path):
    rng = np.random.default_rng(1)
    draws = [rng.normal(size=(30 + 5 * c, 3)) for c in range(3)]
    draws[2][:, 1] += 4.0  # z[0] of chain 2 sits elsewhere
    folder = _folder(tmp_path / "run", [_record(TUNE + len(d), d, {0}, {0, 3}) for d in draws])
    diag = interim_diagnostics(folder)
    assert diag.index[0] == "z[0]" and diag["rhat"].iloc[0] > 1.5
    assert set(diag.index) == {"log_CL", "z[0]", "z[1]"}
    assert diag.loc[["log_CL", "z[1]"], "rhat"].max() < 1.1
    # every chain over the same stretch: the shortest chain's 30 draws
    assert diag.attrs == {"chains": 3, "draws": 30, "divergent": 6}
    assert np.all(diag["ess_bulk"] > 0) and np.all(diag["ess_tail"] > 0)


def test_interim_diagnostics_need_draws_in_every_chain(tmp_path):
    folder = _folder(tmp_path / "run", [_record(TUNE + 9, np.zeros((9, 3))), _record(4, [])])
    with pytest.raises(ValueError, match=r"kept \[9, 0\] draws"):
        interim_diagnostics(folder)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        checkpoint_progress(tmp_path)


def test_fit_progress_command(tmp_path):
    runner = CliRunner()
    rng = np.random.default_rng(2)
    early = _folder(tmp_path / "early", [_record(3, [], step_size=0.5)], chains=2)
    out = runner.invoke(app, ["fit-progress", str(early)])
    assert out.exit_code == 0, out.output
    assert "warm-up" in out.output and "not started" in out.output
    assert "no interim diagnostics yet" in out.output
    assert "about 94 s of sampling left for the slowest chain" in out.output  # 47 x 2 s
    later = _folder(
        tmp_path / "later", [_record(TUNE + 20, rng.normal(size=(20, 3))) for _ in range(2)]
    )
    out = runner.invoke(app, ["fit-progress", str(later), "--worst", "2"])
    assert out.exit_code == 0, out.output
    assert "draws so far: 20 per chain x 2 chains (0 divergent); max R-hat" in out.output
    lines = out.output.strip().splitlines()
    # 20 iterations left at the recent median of 3 steps, 60 s per 10 * 7 + 20 * 3 steps so far
    assert lines[4] == (
        "about 28 s of sampling left for the slowest chain at its rate so far (less once other "
        "chains finish, when chains outnumber cores)"
    )
    assert lines[-3].startswith("coordinate") and len(lines) == 10  # chains, 2 lines, 2 worst
    missing = runner.invoke(app, ["fit-progress", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "not a checkpoint folder" in missing.output
