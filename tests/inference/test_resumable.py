"""NUTS in pieces (`pkpd.inference.resumable`): a run stopped and resumed gives the draws of
one left alone; a folder of another run is refused."""

import itertools
import json
import time

import numpy as np
import pytest
import xarray as xr

from pkpd.inference import fit, resumable
from pkpd.inference.resumable import SamplingPaused

RUN = {"chains": 2, "tune": 40, "draws": 20, "seed": 11, "progressbar": False}


class _Clock:
    """A clock that advances one second each time it is read: the time limit then falls after
    a number of iterations that does not depend on the machine's speed."""

    def __init__(self):
        self._ticks = itertools.count()

    def perf_counter(self):
        return float(next(self._ticks))

    def __getattr__(self, name):  # sleep and the rest: the real ones
        return getattr(time, name)


def _paused_call(folder, monkeypatch, max_seconds: float) -> SamplingPaused:
    """Run `RUN` in ``folder`` until the `_Clock` passes ``max_seconds``; return the pause."""
    monkeypatch.setattr(resumable, "time", _Clock())
    try:
        with pytest.raises(SamplingPaused) as err:
            fit(
                "pk_1cmt_oral",
                "theophylline",
                checkpoint=folder,
                sampler_kwargs={"max_seconds": max_seconds},
                **RUN,
            )
    finally:
        monkeypatch.undo()
    return err.value


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    return fit(
        "pk_1cmt_oral", "theophylline", checkpoint=tmp_path_factory.mktemp("whole") / "run", **RUN
    )


def test_uninterrupted_run_is_a_complete_fit(whole):
    post = whole.posterior
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 20
    assert whole.settings.sampler == "numpyro"
    assert whole.extra["checkpoint"]["calls"] == 1
    stats = whole.idata.sample_stats
    for name in resumable.STATS:
        assert stats[name].shape == (2, 20)
    # Leapfrog steps and tree depth agree (a tree of depth d has at most 2**d - 1 steps).
    assert np.all(stats["n_steps"].values <= 2 ** stats["tree_depth"].values - 1)
    assert np.all(stats["n_steps"].values > 2 ** (stats["tree_depth"].values - 1) - 1)
    assert "log_likelihood" in whole.idata.groups()
    # the warm-up's statistics too, every iteration of it
    warm = whole.idata.warmup_sample_stats
    assert warm["lp"].shape == (2, RUN["tune"]) and warm.attrs["pkpd_first_iteration"] == 1
    assert warm["diverging"].dtype == bool
    assert np.all(warm["n_steps"].values <= 2 ** warm["tree_depth"].values - 1)
    assert np.unique(warm["step_size"].values[0]).size > 5  # adapted during warm-up
    # the step size recorded is the one the iteration used: the last warm-up iteration's is
    # not yet the final one, which every draw uses
    final = stats["step_size"].values[:, 0]
    np.testing.assert_array_equal(stats["step_size"].values, np.repeat(final[:, None], 20, 1))
    assert np.all(warm["step_size"].values[:, -1] != final)
    # Draws inside the prior's support, chains not stuck at their start.
    assert np.all(post["CL"].values > 0)
    assert np.unique(post["CL"].values[0]).size > 5


def test_paused_in_warm_up_and_resumed_gives_the_same_draws(whole, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    err = _paused_call(folder, monkeypatch, 60)
    done = [p["iteration"] for p in err.progress]
    assert all(i < RUN["tune"] for i in done) and sum(done) > 0, done
    assert "call again" in str(err)
    resumed = fit("pk_1cmt_oral", "theophylline", checkpoint=folder, **RUN)
    assert resumed.extra["checkpoint"]["calls"] == 2
    xr.testing.assert_equal(resumed.posterior, whole.posterior)
    xr.testing.assert_equal(
        resumed.idata.sample_stats[["lp", "n_steps"]], whole.idata.sample_stats[["lp", "n_steps"]]
    )
    xr.testing.assert_equal(resumed.idata.warmup_sample_stats, whole.idata.warmup_sample_stats)


def test_a_folder_without_warm_up_statistics_has_them_from_its_next_call(
    whole, tmp_path, monkeypatch
):
    # Folders written before 2026-12-05 evening kept no warm-up statistics.
    import pickle

    folder = tmp_path / "run"
    err = _paused_call(folder, monkeypatch, 60)
    for c in range(RUN["chains"]):
        path = folder / f"chain{c}.pkl"
        with open(path, "rb") as fh:
            rec = pickle.load(fh)
        del rec["warmup"]
        with open(path, "wb") as fh:
            pickle.dump(rec, fh)
    resumed = fit("pk_1cmt_oral", "theophylline", checkpoint=folder, **RUN)
    xr.testing.assert_equal(resumed.posterior, whole.posterior)
    first = max(p["iteration"] for p in err.progress) + 1
    warm = resumed.idata.warmup_sample_stats
    assert warm.attrs["pkpd_first_iteration"] == first
    assert warm.sizes["draw"] == RUN["tune"] - first + 1
    np.testing.assert_array_equal(
        warm["lp"].values, whole.idata.warmup_sample_stats["lp"].values[:, first - 1 :]
    )


def test_divergent_warm_up_trajectories_are_listed_with_their_start(tmp_path):
    import pickle

    (tmp_path / "run.json").write_text(
        json.dumps({"chains": 2, "names": ["log_CL", "z"], "shapes": [[], [2, 2]]})
    )
    z = np.arange(5.0)
    recs = [
        {"warmup": {"divergent": [(3, z), (7, z + 1)]}},
        {},  # a record of a version that kept none
    ]
    for c, rec in enumerate(recs):
        with open(tmp_path / f"chain{c}.pkl", "wb") as fh:
            pickle.dump(rec, fh)
    table = resumable.warmup_divergences(tmp_path)
    assert list(table.columns) == [
        "chain",
        "iteration",
        "log_CL",
        *[f"z[{i},{j}]" for i in range(2) for j in range(2)],
    ]
    assert table["iteration"].tolist() == [3, 7] and table["chain"].tolist() == [0, 0]
    assert table["z[1,1]"].tolist() == [4.0, 5.0]


def test_paused_twice_and_resumed_gives_the_same_draws(whole, tmp_path, monkeypatch):
    # Regression: a resumed call saved the state it had loaded (the loaded record carried it
    # and overwrote the new one), so a third call went on from the first pause's state while
    # counting on from the second's: its "draws" were still warm-up.
    import pickle

    folder = tmp_path / "run"
    for _ in range(2):
        _paused_call(folder, monkeypatch, 25)
        for c in range(RUN["chains"]):
            with open(folder / f"chain{c}.pkl", "rb") as fh:
                rec = pickle.load(fh)
            assert int(rec["state"].i) == rec["iteration"] > 0
    resumed = fit("pk_1cmt_oral", "theophylline", checkpoint=folder, **RUN)
    assert resumed.extra["checkpoint"]["calls"] == 3
    xr.testing.assert_equal(resumed.posterior, whole.posterior)


def test_a_record_ahead_of_its_state_goes_on_from_the_state():
    # Folders written before the fix: the record counted iterations the saved state had not.
    from pathlib import Path

    def rec(iteration, n_draws):
        return {
            "iteration": iteration,
            "draws": list(range(n_draws)),
            "stats": {k: list(range(n_draws)) for k in resumable.STATS},
        }

    r = rec(508, 8)
    with pytest.warns(UserWarning, match="counted 508 iterations but its saved state has done 150"):
        resumable._agree_with_state(r, 150, 500, 0, Path("chain0.pkl"))
    assert r["iteration"] == 150 and r["draws"] == [] and r["stats"]["lp"] == []
    r = rec(620, 120)  # paused in sampling at 560 (60 draws), then resumed twice
    with pytest.warns(UserWarning, match="keeping 60 of 120"):
        resumable._agree_with_state(r, 560, 500, 1, Path("chain1.pkl"))
    assert r["iteration"] == 560 and r["draws"] == list(range(60))
    r = rec(508, 8)
    r["warmup"] = {
        "from": 100,
        "divergent": [(120, 0), (151, 0), (300, 0)],
        **{k: list(range(400)) for k in resumable.STATS},
    }
    with pytest.warns(UserWarning):
        resumable._agree_with_state(r, 150, 500, 0, Path("chain0.pkl"))
    assert len(r["warmup"]["lp"]) == 50 and r["warmup"]["divergent"] == [(120, 0)]
    r = rec(30, 0)
    resumable._agree_with_state(r, 30, 500, 0, Path("chain0.pkl"))  # agreeing: unchanged
    assert r == rec(30, 0)
    with pytest.raises(ValueError, match="only 30"):
        resumable._agree_with_state(rec(30, 0), 31, 500, 0, Path("chain0.pkl"))


def test_more_draws_go_on_from_the_last_state(whole, tmp_path):
    folder = tmp_path / "run"
    first = fit("pk_1cmt_oral", "theophylline", checkpoint=folder, **{**RUN, "draws": 8})
    xr.testing.assert_equal(first.posterior, whole.posterior.isel(draw=slice(0, 8)))
    more = fit("pk_1cmt_oral", "theophylline", checkpoint=folder, **RUN)
    xr.testing.assert_equal(more.posterior, whole.posterior)


def test_a_folder_of_another_run_is_refused(whole):
    folder = whole.extra["checkpoint"]["directory"]
    run_file = resumable.Path(folder) / "run.json"
    calls = json.loads(run_file.read_text())["calls"]
    with pytest.raises(ValueError, match="other settings.*seed"):
        fit("pk_1cmt_oral", "theophylline", checkpoint=folder, **{**RUN, "seed": 12})
    with pytest.raises(ValueError, match="another model or dataset"):
        fit("pk_1cmt_oral", _changed_concentration(), checkpoint=folder, **RUN)
    assert json.loads(run_file.read_text())["calls"] == calls  # refused calls change nothing


def _changed_concentration():
    """Theophylline with one concentration changed: the same shapes, other data."""
    import pkpd
    from pkpd.data.cohort import Cohort

    ds = pkpd.load_dataset("theophylline").ds.copy(deep=True)
    ds["obs_dv"][0, 1] = ds["obs_dv"][0, 1] * 1.5
    return Cohort(ds)


def test_checkpoint_needs_numpyro():
    with pytest.raises(ValueError, match="checkpoint needs NUTS by numpyro"):
        fit("pk_1cmt_oral", "theophylline", sampler="nutpie", checkpoint="unused", **RUN)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_lets_the_chains_save_and_stop(signum):
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    if signum == "SIGINT" and signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("Ctrl-C does not raise KeyboardInterrupt here (an xdist worker ignores it)")
    stop = threading.Event()
    stopped = []

    def chain():  # a chain that runs until told to stop, then "saves"
        stop.wait(30)
        stopped.append(stop.is_set())

    threads = [threading.Thread(target=chain, daemon=True) for _ in range(2)]
    timer = threading.Timer(0.3, signal.raise_signal, args=(getattr(signal, signum),))
    timer.start()
    before = signal.getsignal(signal.SIGTERM)
    caught = resumable._run_threads(threads, stop)
    assert stopped == [True, True]
    if signum == "SIGTERM":
        assert isinstance(caught, SystemExit) and caught.code == 128 + signal.SIGTERM
    else:
        assert isinstance(caught, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored


def test_curvature_of_a_quadratic_is_exact():
    a = np.array([4.0, 0.25, 1e4, -1.0, 0.0])

    def grad(x):
        return a * x

    inverse, report = resumable.curvature_metric(
        grad, np.ones(5), [np.array([i]) for i in range(5)]
    )
    np.testing.assert_allclose(inverse[:3], 1 / a[:3], rtol=1e-12)
    np.testing.assert_array_equal(inverse[3:], 1.0)  # not positive: left at 1
    assert (report["probes"], report["not_positive"]) == (5, 2)
    assert report["min"] == pytest.approx(1e-4) and report["max"] == pytest.approx(4.0)


def test_probing_subjects_together_gives_each_subject_its_own_curvature():
    """The colouring's premise on a real hierarchical model (theophylline, 12 subjects x 3
    random effects): probing all subjects' k-th random effect at once gives the same diagonal
    as probing every coordinate alone."""
    import jax

    import pkpd
    from pkpd.inference import build_model
    from pkpd.inference.sample import _flat_fn, flat_view

    pm_model, _ = build_model(pkpd.load_model("pk_1cmt_oral"), pkpd.load_dataset("theophylline"))
    logp, names, shapes = _flat_fn(pm_model)
    flatten, unflatten = flat_view(names, shapes)
    grad = jax.jit(jax.grad(lambda x: -logp(*unflatten(x))[0]))
    groups = resumable.probe_groups(pm_model, names, shapes)
    n = sum(int(np.prod(s)) for s in shapes)
    assert sorted(np.concatenate(groups).tolist()) == list(range(n))  # each coordinate once
    z = names.index("z")
    assert shapes[z] == (12, 3)
    assert len(groups) == n - 12 * 3 + 3  # one probe per random effect, not per subject
    x = resumable._start_points(pm_model, None, 1, 0, names, flatten)[0]  # jittered: z != 0
    grouped, _ = resumable.curvature_metric(grad, x, groups)
    alone, _ = resumable.curvature_metric(grad, x, [np.array([i]) for i in range(n)])
    np.testing.assert_allclose(grouped, alone, rtol=1e-6)
    assert np.ptp(np.log10(grouped)) > 1  # scales that differ: what the metric is for


def test_starts_are_jittered_by_the_curvature(whole):
    saved = json.loads(
        (resumable.Path(whole.extra["checkpoint"]["directory"]) / "run.json").read_text()
    )
    start, centre = np.asarray(saved["start"]), np.asarray(saved["centre"])
    width = np.minimum(1.0, resumable.JITTER_SDS * np.sqrt(saved["inverse_mass"]))
    assert np.all(np.abs(start - centre) <= width)
    assert width.min() < 0.5  # narrower than PyMC's uniform(-1, 1) where the data say so
    assert not np.allclose(start[0], start[1])  # dispersed chains
    assert saved["metric"]["probes"] == len(centre) - 12 * 3 + 3


def test_a_resumed_fit_does_not_recompute_its_start(whole, monkeypatch):
    from pkpd.inference import sample

    def no_map(*args, **kwargs):
        raise AssertionError("the MAP was recomputed for a resumed run")

    monkeypatch.setattr(sample, "map_estimate", no_map)
    again = fit(
        "pk_1cmt_oral",
        "theophylline",
        init="map",
        checkpoint=whole.extra["checkpoint"]["directory"],
        **RUN,
    )
    assert "resumed" in again.extra["map"]["skipped"]
    xr.testing.assert_equal(again.posterior, whole.posterior)


def test_the_folder_reads_alone_progress_and_interim_diagnostics(whole):
    import arviz as az

    from pkpd.inference.checkpoint_report import checkpoint_progress, interim_diagnostics

    folder = whole.extra["checkpoint"]["directory"]
    table = checkpoint_progress(folder)
    assert table["phase"].tolist() == ["done", "done"]
    assert table["iteration"].tolist() == [RUN["tune"] + RUN["draws"]] * 2
    assert table["draws"].tolist() == [RUN["draws"]] * 2
    stats = whole.idata.sample_stats
    # the step size the chains go on with is the one every draw used
    np.testing.assert_allclose(table["step_size"].values, stats["step_size"].values[:, 0])
    assert table["draws_divergent"].tolist() == stats["diverging"].values.sum(axis=1).tolist()
    warm = whole.idata.warmup_sample_stats
    assert table["warmup_recorded"].tolist() == [RUN["tune"]] * 2
    assert table["warmup_divergent"].tolist() == warm["diverging"].values.sum(axis=1).tolist()
    # the last 50 iterations: 30 of the warm-up, then the 20 draws
    steps = np.concatenate([warm["n_steps"].values[:, -30:], stats["n_steps"].values], axis=1)
    assert table["recent_steps"].tolist() == np.median(steps, axis=1).tolist()
    draws_only = checkpoint_progress(folder, recent=RUN["draws"])["recent_steps"]
    assert draws_only.tolist() == np.median(stats["n_steps"].values, axis=1).tolist()

    diag = interim_diagnostics(folder)
    assert diag.attrs == {
        "chains": 2,
        "draws": RUN["draws"],
        "divergent": int(stats["diverging"].values.sum()),
    }
    assert list(diag["rhat"]) == sorted(diag["rhat"], reverse=True)
    # Bulk and tail ESS are rank-based: a monotone transform does not change them, so on the
    # unconstrained log they are the constrained parameter's. R-hat's folded part is not, so
    # R-hat is compared where the sampler's coordinate is the parameter itself.
    post = whole.posterior
    for coordinate, name in [("omega_CL_log__", "omega_CL"), ("sigma_add_log__", "sigma_add")]:
        for method in ("bulk", "tail"):
            expected = float(az.ess(post[name], method=method)[name])
            assert diag.loc[coordinate, f"ess_{method}"] == pytest.approx(expected, rel=1e-9)
    for name in ("log_CL", "log_V", "log_ka"):
        assert diag.loc[name, "rhat"] == pytest.approx(float(az.rhat(post[name])[name]), rel=1e-12)
    expected = float(az.rhat(post["z"])["z"].isel(subject=11, iiv=0))
    assert diag.loc["z[11,0]", "rhat"] == pytest.approx(expected, rel=1e-12)
