"""NUTS in pieces: a long fit that reports its progress and survives an interruption.

A `cart_crs_core` fit of 60 patients needs hours of NUTS on a 2-core machine (several seconds
per iteration, ``benchmarks/RESULTS.md``); a process killed after 90 minutes by a time limit or
a closed laptop leaves nothing with the one-call samplers, and nutpie says nothing about how
far it got when its output is not a terminal. Here numpyro's NUTS kernel is driven one
iteration at a time, one thread per chain, and each chain's complete state (position, gradient,
step size and mass-matrix adaptation, random key, iteration) and its kept draws are written to
a folder at regular intervals. Calling again with the same folder goes on from the last saved
iteration: a run interrupted and resumed gives the same draws as one left alone (the state
saved is all that the next iteration depends on).

>>> fit("cart_crs", cohort, checkpoint="runs/core60", sampler_kwargs={"max_seconds": 3600})
... # SamplingPaused after an hour: rerun the same call to go on

Warm-up is numpyro's windowed adaptation of the step size and a diagonal mass matrix (Stan's
schedule, `numpyro.infer.NUTS`), so warm-up can be interrupted too.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pkpd.errors import PkpdError

#: Layout version of the checkpoint folder.
CHECKPOINT_VERSION = 1
#: Settings that must not change between the calls of one run (``draws`` may: more draws can be
#: added after the others, or fewer kept).
FIXED_SETTINGS = (
    "chains",
    "tune",
    "seed",
    "target_accept",
    "max_tree_depth",
    "init_metric",
    "names",
    "shapes",
)
#: How the warm-up's first mass matrix is chosen (`sample_resumable`'s ``init_metric``).
INIT_METRICS = ("curvature", "unit")
#: Step of the central differences of the gradient that give the curvature (unconstrained scale).
CURVATURE_STEP = 1e-3
#: Half-width of the starts' jitter, in conditional posterior SDs at the centre (at most 1 on the
#: unconstrained scale, PyMC's): over-dispersed against the posterior, as R-hat needs, without
#: starting chains where the solve is stiff (`_scaled_jitter`).
JITTER_SDS = 5.0
#: Relative difference of the log-density at the first chain's start above which a folder is
#: taken to come from another model or dataset (or from another version of the solve: a change
#: of the integrator's steps moves the log-density by more than this).
FINGERPRINT_RTOL = 1e-8
#: Sampler statistics recorded for every kept draw (ArviZ's names).
STATS = ("lp", "diverging", "n_steps", "tree_depth", "acceptance_rate", "energy", "step_size")


def _new_warmup(start: int) -> dict[str, Any]:
    """Return an empty record of warm-up statistics from iteration ``start`` on.

    Iterations done before it (by a version of pkpd that kept none) are not recorded.
    """
    return {"from": int(start), "divergent": [], **{k: [] for k in STATS}}


class SamplingPaused(PkpdError, RuntimeError):
    """Sampling stopped at its time limit before the last draw; the checkpoint folder holds it.

    Attributes
    ----------
    directory : Path
        The checkpoint folder: call again with it to go on.
    progress : list of dict
        Per chain: ``chain``, ``iteration`` (done), ``total`` (warm-up plus draws),
        ``seconds`` (spent on this chain over all calls).
    """

    def __init__(
        self, directory: Path, progress: list[dict[str, Any]], reason: str = "at its time limit"
    ) -> None:
        self.directory = directory
        self.progress = progress
        done = ", ".join(f"chain {p['chain']} {p['iteration']}/{p['total']}" for p in progress)
        super().__init__(
            f"sampling paused {reason} ({done}); call again with "
            f"checkpoint={str(directory)!r} to go on"
        )


def _save(path: Path, obj: Any) -> None:
    """Write ``obj`` so that a kill at any moment leaves either the old file or the new one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load(path: Path) -> Any:
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _agree_with_state(rec: dict, done: int, tune: int, chain: int, path: Path) -> None:
    """Make a chain's record count the iterations its saved state has done.

    The kernel's state counts its own iterations (``i``, warm-up included). Until 2026-12-05
    a resumed call saved the state it had *loaded* (the record kept it and overwrote the new
    one), so after a third call the record counted more iterations than the state had done: the
    chain went on from an older state, with the adaptation still running where the record said
    "sampling". The iterations and kept draws after the state's are dropped, with a warning.
    """
    if rec["iteration"] == done:
        return
    if done > rec["iteration"]:
        raise ValueError(
            f"{path}: the saved state has done {done} iterations and its record "
            f"only {rec['iteration']}"
        )
    keep = max(0, done - tune)
    warnings.warn(
        f"chain {chain}: {path} counted {rec['iteration']} iterations but its saved "
        f"state has done {done} (a checkpoint written by pkpd before 2026-12-05 that "
        f"was resumed more than once); going on from iteration {done}, keeping "
        f"{min(keep, len(rec['draws']))} of {len(rec['draws'])} kept draws",
        stacklevel=3,
    )
    rec["iteration"] = done
    del rec["draws"][keep:]
    for k in STATS:
        del rec["stats"][k][keep:]
    warm = rec.get("warmup")
    if warm is not None:
        for k in STATS:
            del warm[k][max(0, min(done, tune) - warm["from"]) :]
        warm["divergent"] = [d for d in warm["divergent"] if d[0] <= done]


def _start_points(
    pm_model: Any,
    start: Mapping[str, Any] | None,
    chains: int,
    seed: int,
    names: list[str],
    flatten: Any,
    jitter: bool = True,
) -> np.ndarray:
    """Jittered starts on the unconstrained scale, as PyMC's samplers draw them."""
    from pymc.sampling.mcmc import _get_seeds_per_chain, _init_jitter

    points = _init_jitter(
        pm_model,
        dict(start) if start else None,
        seeds=_get_seeds_per_chain(seed, chains),
        jitter=jitter,
        jitter_max_retries=10,
    )
    return np.stack([flatten(p) for p in points])


def _scaled_jitter(
    centre: np.ndarray,
    inverse_mass: np.ndarray,
    chains: int,
    seed: int,
    potential: Any,
    retries: int = 10,
) -> np.ndarray:
    """Draw starts around ``centre``, `JITTER_SDS` conditional SDs (at most 1) per coordinate.

    PyMC's uniform(-1, 1) on the unconstrained scale puts a typical value that the data pin to
    0.5% (log rho of the CAR-T core profile at 60 patients) 100-200 SDs from the posterior, where
    the ODE is stiff and warm-up spends its first iterations at tiny step sizes. A start with a
    non-finite log-density is drawn again (up to ``retries`` times, as PyMC does), each time at
    half the width: a likelihood that is zero outside a narrow region (ordinal grades with one
    offset per subject) leaves no room for a full-width draw in hundreds of dimensions. After
    the retries, the chain starts at ``centre``.
    """
    import jax.numpy as jnp

    rng = np.random.default_rng([seed, 0x5EED])
    width = np.minimum(1.0, JITTER_SDS * np.sqrt(inverse_mass))
    starts = [
        jitter_until_finite(
            centre, width, rng, lambda x: np.isfinite(float(potential(jnp.asarray(x)))), retries
        )
        for _ in range(chains)
    ]
    return np.stack(starts)


def jitter_until_finite(
    centre: np.ndarray, width: Any, rng: np.random.Generator, finite: Any, retries: int = 10
) -> np.ndarray:
    """Draw ``centre + uniform(-1, 1) * width`` until ``finite`` holds, halving the width.

    After ``retries`` halvings, ``centre`` itself. For chains' starts around a point when the
    log-density may be zero outside a narrow region, e.g. grades with one offset per subject.
    """
    scale = 1.0
    for _ in range(retries + 1):
        draw = centre + rng.uniform(-1.0, 1.0, centre.shape) * width * scale
        if finite(draw):
            return draw
        scale /= 2.0
    return centre


def _constrained_fn(pm_model: Any) -> tuple[Any, list[str]]:
    """Return a JAX function of the value variables giving the free variables (constrained)."""
    from pymc.sampling.jax import get_jaxified_graph

    free = {rv.name for rv in pm_model.free_RVs}
    outs = [v for v in pm_model.unobserved_value_vars if v.name in free]
    return get_jaxified_graph(inputs=pm_model.value_vars, outputs=outs), [v.name for v in outs]


def probe_groups(
    pm_model: Any, names: list[str], shapes: list[tuple[int, ...]]
) -> list[np.ndarray]:
    """Return the sets of coordinates whose second derivatives can be probed together.

    Different subjects' random effects never meet in one term of the log-density (each
    subject's likelihood and prior involve its own), so the Hessian has no entries between
    them: one probe along the k-th random effect of every subject at once gives each subject's
    own curvature (the colouring of Curtis, Powell & Reid 1974). Every other coordinate is
    probed alone. A variable is per subject when its first dimension is ``subject``.
    """
    dims = pm_model.named_vars_to_dims
    groups: list[np.ndarray] = []
    offset = 0
    for name, shape in zip(names, shapes, strict=True):
        size = int(np.prod(shape))
        idx = offset + np.arange(size).reshape(shape) if size else np.zeros(0, dtype=int)
        var_dims = dims.get(name) or ()
        if len(shape) == 2 and var_dims and var_dims[0] == "subject":
            groups.extend(idx[:, k] for k in range(shape[1]))
        else:
            groups.extend(np.atleast_1d(i) for i in np.ravel(idx))
        offset += size
    return groups


def curvature_metric(
    grad: Any, x: np.ndarray, groups: list[np.ndarray], step: float = CURVATURE_STEP
) -> tuple[np.ndarray, dict[str, Any]]:
    """Return a diagonal inverse mass matrix from the curvature of the potential at ``x``.

    NUTS's warm-up starts with the identity, whose step size must suit the most sharply
    curved direction: on the CAR-T core profile (typical values pinned to ~1% by 3,000
    observations, random effects of SD ~1) the first iterations took 100-1000 leapfrog steps of
    size ~0.003 and a minute each (``benchmarks/RESULTS.md``, 2026-12-05). Scaling each
    coordinate by its conditional posterior SD (1 / sqrt of the Hessian's diagonal) removes
    most of that spread before adaptation starts. The diagonal comes from central differences
    of the gradient (two gradients per group of `probe_groups`); a coordinate whose curvature
    is not positive and finite keeps 1. Adaptation replaces it from the first window on.

    Returns
    -------
    inverse_mass : numpy.ndarray
        The diagonal inverse mass matrix.
    report : dict
        ``probes`` (gradient pairs), ``not_positive`` (coordinates left at 1), ``min`` and
        ``max`` of the diagonal.
    """
    diag = np.full(x.shape, np.nan)
    for idx in groups:
        v = np.zeros_like(x)
        v[idx] = step
        hi, lo = np.asarray(grad(x + v)), np.asarray(grad(x - v))
        diag[idx] = (hi[idx] - lo[idx]) / (2 * step)
    good = np.isfinite(diag) & (diag > 0)
    inverse = np.where(good, 1.0 / np.where(good, diag, 1.0), 1.0)
    report = {
        "probes": len(groups),
        "not_positive": int((~good).sum()),
        "min": float(inverse.min()),
        "max": float(inverse.max()),
    }
    return inverse, report


def sample_resumable(
    pm_model: Any,
    directory: str | Path,
    *,
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    seed: int = 0,
    start: Mapping[str, Any] | None = None,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    init_metric: str = "curvature",
    max_seconds: float | None = None,
    checkpoint_every_s: float = 60.0,
    progress: bool = True,
    progress_every_s: float = 60.0,
) -> Any:
    """Run (or go on with) NUTS, saving every chain's state to ``directory`` as it goes.

    Parameters
    ----------
    pm_model : pymc.Model
        The model (`pkpd.inference.build_model`).
    directory : str or Path
        Checkpoint folder: created on the first call; a later call with the same folder, model,
        data and settings goes on from where the last one stopped.
    chains, draws, tune : int, optional
        Chains (run in parallel, one thread each), kept draws and warm-up iterations per chain.
    seed : int, optional
        Random seed (starts and every chain's random key).
    start : mapping, optional
        Constrained start values by variable name (``initvals``), jittered as by PyMC.
    target_accept : float, optional
        NUTS target acceptance probability.
    max_tree_depth : int, optional
        NUTS maximum tree depth (at most ``2**max_tree_depth - 1`` leapfrog steps).
    init_metric : {"curvature", "unit"}, optional
        The warm-up's first (diagonal) mass matrix: from the curvature of the log-density at
        the un-jittered start (`curvature_metric`; default), or the identity (numpyro's and
        Stan's default). Either way the first step size is found by numpyro's heuristic. With
        ``"curvature"`` the chains' starts are jittered by uniform(-1, 1) x `JITTER_SDS`
        conditional SDs (at most 1) per coordinate (`_scaled_jitter`); with ``"unit"`` by
        PyMC's uniform(-1, 1).
    max_seconds : float, optional
        Wall-clock limit of this call: past it each chain saves its state and stops after the
        iteration it is in, and `SamplingPaused` is raised.
    checkpoint_every_s : float, optional
        How often each chain writes its state (and always when it stops).
    progress : bool, optional
        Print a line per chain to stderr every ``progress_every_s`` seconds.
    progress_every_s : float, optional
        Seconds between progress lines of a chain.

    Returns
    -------
    arviz.InferenceData
        ``posterior`` (free variables, constrained) and ``sample_stats`` (`STATS`), whose
        attributes say where and how it ran: ``pkpd_checkpoint`` (folder), ``pkpd_calls``
        (calls it took) and ``pkpd_sampling_s`` (their sampling wall time, summed; chains in
        parallel, compilation included; a call killed from outside adds none).

    Raises
    ------
    SamplingPaused
        ``max_seconds`` ran out first (the folder holds everything done so far).
    ValueError
        The folder holds a run of another model, dataset or settings.
    """
    import jax
    import jax.numpy as jnp
    from numpyro.infer import NUTS

    from pkpd.inference.sample import _flat_fn, flat_view

    t_call = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    logp, names, shapes = _flat_fn(pm_model)
    flatten, unflatten = flat_view(names, shapes)

    def potential(x: Any) -> Any:
        return -logp(*unflatten(x))[0]

    if init_metric not in INIT_METRICS:
        raise ValueError(f"init_metric must be one of {INIT_METRICS}, got {init_metric!r}")
    settings = {
        "version": CHECKPOINT_VERSION,
        "chains": int(chains),
        "draws": int(draws),
        "tune": int(tune),
        "seed": int(seed),
        "target_accept": float(target_accept),
        "max_tree_depth": int(max_tree_depth),
        "init_metric": init_metric,
        "names": names,
        "shapes": [list(s) for s in shapes],
    }
    run_file = directory / "run.json"
    potential_jit = jax.jit(potential)
    if run_file.is_file():
        saved = json.loads(run_file.read_text())
        changed = [k for k in ("version", *FIXED_SETTINGS) if saved.get(k) != settings[k]]
        if changed:
            raise ValueError(
                f"checkpoint {directory} holds a run with other settings ("
                + ", ".join(f"{k}: {saved.get(k)!r} there, {settings[k]!r} now" for k in changed)
                + ")"
            )
        x0 = np.asarray(saved["start"], dtype=float)
        now = float(potential_jit(jnp.asarray(x0[0])))
        then = float(saved["potential_start"])
        if not abs(now - then) <= FINGERPRINT_RTOL * max(1.0, abs(then)):
            raise ValueError(
                f"checkpoint {directory} was made with another model or dataset, "
                f"or a version of pkpd that solves it differently (log-density at "
                f"its start {-then:.10g} there, {-now:.10g} now)"
            )
        calls = int(saved.get("calls", 1)) + 1
        walls = list(saved.get("wall_s", []))
        inverse_mass, metric_report = saved.get("inverse_mass"), saved.get("metric")
        centre = saved.get("centre")
    else:
        calls, walls = 1, []
        inverse_mass = metric_report = centre = None
        if init_metric == "unit":
            x0 = _start_points(pm_model, start, chains, seed, names, flatten)
        else:
            centre = _start_points(pm_model, start, 1, seed, names, flatten, jitter=False)[0]
            t0 = time.perf_counter()
            inv, metric_report = curvature_metric(
                jax.jit(jax.grad(potential)), centre, probe_groups(pm_model, names, shapes)
            )
            metric_report["seconds"] = round(time.perf_counter() - t0, 1)
            inverse_mass = inv.tolist()
            x0 = _scaled_jitter(centre, inv, chains, seed, potential_jit)
            centre = centre.tolist()
            if progress:
                print(
                    f"initial mass matrix from the curvature at the start: "
                    f"{metric_report['probes']} probes in {metric_report['seconds']} s, "
                    f"inverse mass {metric_report['min']:.3g} to {metric_report['max']:.3g}, "
                    f"{metric_report['not_positive']} coordinates left at 1",
                    file=sys.stderr,
                    flush=True,
                )
    saved_run = {
        **settings,
        "start": x0.tolist(),
        "centre": centre,
        "potential_start": float(potential_jit(jnp.asarray(x0[0]))),
        "calls": calls,
        "wall_s": walls,
        "inverse_mass": inverse_mass,
        "metric": metric_report,
    }
    run_file.write_text(json.dumps(saved_run))

    kernel = NUTS(
        potential_fn=potential,
        target_accept_prob=target_accept,
        max_tree_depth=max_tree_depth,
        find_heuristic_step_size=True,
        inverse_mass_matrix=None if inverse_mass is None else jnp.asarray(inverse_mass),
    )
    keys = jax.random.split(jax.random.PRNGKey(seed), chains)
    states = []
    for c in range(chains):
        # init builds the kernel's step function (the same for every chain) and a fresh state.
        fresh = kernel.init(
            keys[c], tune, init_params=jnp.asarray(x0[c]), model_args=(), model_kwargs={}
        )
        path = directory / f"chain{c}.pkl"
        if path.is_file():
            rec = _load(path)
            state = jax.tree_util.tree_map(jnp.asarray, rec.pop("state"))
            _agree_with_state(rec, int(state.i), tune, c, path)
            # Folders written before 2026-12-05 evening kept no warm-up statistics.
            rec.setdefault("warmup", _new_warmup(rec["iteration"]))
        else:
            rec = {
                "iteration": 0,
                "draws": [],
                "stats": {k: [] for k in STATS},
                "warmup": _new_warmup(0),
                "seconds": 0.0,
            }
            state = fresh
        states.append((state, rec))
    step = jax.jit(lambda s: kernel.sample(s, (), {}))
    total = tune + draws
    deadline = None if max_seconds is None else t_call + float(max_seconds)
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()  # set by Ctrl-C or SIGTERM: chains save and stop

    def run_chain(c: int) -> None:
        state, rec = states[c]
        path = directory / f"chain{c}.pkl"
        # Kept draws beyond a smaller ``draws`` of a later call are dropped.
        del rec["draws"][max(0, draws) :]
        for k in STATS:
            del rec["stats"][k][max(0, draws) :]
        last_save = last_print = time.perf_counter()
        since_print = (rec["iteration"], 0, 0)

        def save(st: Any) -> None:
            # The state last: a record loaded from an older file must not bring its own.
            _save(path, {**rec, "state": jax.device_get(st)})

        try:
            while rec["iteration"] < total and len(rec["draws"]) < draws:
                if stop.is_set() or (deadline is not None and time.perf_counter() >= deadline):
                    break
                t0 = time.perf_counter()
                before = state
                state = step(state)
                n_steps = int(state.num_steps)
                rec["seconds"] += time.perf_counter() - t0
                rec["iteration"] = int(state.i)  # the state's own count: the two cannot drift
                diverged = bool(state.diverging)
                values = {
                    "lp": -float(state.potential_energy),
                    "diverging": diverged,
                    "n_steps": n_steps,
                    "tree_depth": int(np.ceil(np.log2(n_steps + 1))),
                    "acceptance_rate": float(state.accept_prob),
                    "energy": float(state.energy),
                    # the step size this iteration used (warm-up adapts it afterwards)
                    "step_size": float(before.adapt_state.step_size),
                }
                if rec["iteration"] > tune:
                    rec["draws"].append(np.asarray(state.z))
                    for k in STATS:
                        rec["stats"][k].append(values[k])
                else:
                    warm = rec["warmup"]
                    for k in STATS:
                        warm[k].append(values[k])
                    if diverged:  # where the divergent trajectory started (unconstrained)
                        warm["divergent"].append((rec["iteration"], np.asarray(before.z)))
                it0, steps0, div0 = since_print
                since_print = (it0, steps0 + n_steps, div0 + int(diverged))
                now = time.perf_counter()
                if now - last_save >= checkpoint_every_s:
                    save(state)
                    last_save = now
                if progress and (now - last_print >= progress_every_s or rec["iteration"] == total):
                    it0, steps0, div0 = since_print
                    n_it = max(rec["iteration"] - it0, 1)
                    phase = "warm-up" if rec["iteration"] <= tune else "sampling"
                    with lock:
                        print(
                            f"chain {c}: {phase}, iteration {rec['iteration']}/{total}; "
                            f"since the last line {(now - last_print) / n_it:.2f} s and "
                            f"{steps0 / n_it:.1f} leapfrog steps per iteration, {div0} "
                            f"divergent; step size "
                            f"{float(state.adapt_state.step_size):.3g}",
                            file=sys.stderr,
                            flush=True,
                        )
                    last_print = now
                    since_print = (rec["iteration"], 0, 0)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            errors.append(exc)
        finally:
            save(state)
            states[c] = (state, rec)

    threads = [threading.Thread(target=run_chain, args=(c,), daemon=True) for c in range(chains)]
    t_sample = time.perf_counter()
    interrupted = _run_threads(threads, stop)
    # Wall time of each call's sampling (chains in parallel), compilation included.
    saved_run["wall_s"] = [*walls, round(time.perf_counter() - t_sample, 1)]
    run_file.write_text(json.dumps(saved_run))
    if errors:
        raise errors[0]
    records = [rec for _, rec in states]
    if any(len(rec["draws"]) < draws for rec in records):
        paused = SamplingPaused(
            directory,
            [
                {
                    "chain": c,
                    "iteration": rec["iteration"],
                    "total": total,
                    "seconds": round(rec["seconds"], 1),
                }
                for c, rec in enumerate(records)
            ],
            "at its time limit"
            if interrupted is None
            else "by Ctrl-C"
            if isinstance(interrupted, KeyboardInterrupt)
            else "by SIGTERM",
        )
        if interrupted is not None:
            print(paused, file=sys.stderr, flush=True)
            raise interrupted
        raise paused
    return _to_idata(pm_model, records, unflatten, draws, directory, calls, saved_run["wall_s"])


def _run_threads(threads: list[threading.Thread], stop: threading.Event) -> BaseException | None:
    """Run the chains' threads; on Ctrl-C or SIGTERM let them save and stop, and return it.

    A batch system's SIGTERM (or ``timeout``) would otherwise kill the process with up to a
    checkpoint interval of iterations unsaved.
    """
    import signal

    caught: list[BaseException] = []
    previous = None
    main = threading.current_thread() is threading.main_thread()
    if main:

        def on_term(signum: int, frame: Any) -> None:
            caught.append(SystemExit(128 + signum))
            stop.set()

        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for th in threads:
            th.start()
        # Polled, not joined: a join interrupted by Ctrl-C can leave is_alive() False for a
        # thread still running (CPython gh-90882), and the chains would not be waited for.
        while any(th.is_alive() for th in threads):
            try:
                time.sleep(0.2)
            except KeyboardInterrupt as exc:
                caught.append(exc)
                stop.set()
        for th in threads:
            th.join()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    return caught[0] if caught else None


def _to_idata(
    pm_model: Any,
    records: list[dict],
    unflatten: Any,
    draws: int,
    directory: Path,
    calls: int,
    walls: list[float],
) -> Any:
    import arviz as az
    import jax

    fn, out_names = _constrained_fn(pm_model)
    z = np.stack([np.stack(rec["draws"][:draws]) for rec in records])  # (chain, draw, dim)
    flat = z.reshape(-1, z.shape[-1])
    values = jax.jit(jax.vmap(lambda x: fn(*unflatten(x))))(flat)
    posterior = {
        n: np.asarray(v).reshape(z.shape[0], z.shape[1], *np.shape(v)[1:])
        for n, v in zip(out_names, values, strict=True)
    }
    stats = {k: np.asarray([rec["stats"][k][:draws] for rec in records]) for k in STATS}
    stats["diverging"] = stats["diverging"].astype(bool)
    dims = {
        n: list(d)
        for n, d in pm_model.named_vars_to_dims.items()
        if n in posterior and d is not None
    }
    coords = {
        d: list(pm_model.coords[d]) for ds in dims.values() for d in ds if d in pm_model.coords
    }
    warmup, first = _warmup_stats(records)
    idata = az.from_dict(
        posterior=posterior,
        sample_stats=stats,
        warmup_sample_stats=warmup,
        save_warmup=warmup is not None,
        coords=coords,
        dims=dims,
    )
    if warmup is not None:
        # draw k of the group is warm-up iteration first + k (1-based)
        idata.warmup_sample_stats.attrs["pkpd_first_iteration"] = first
    idata.sample_stats.attrs["pkpd_checkpoint"] = str(directory)
    idata.sample_stats.attrs["pkpd_calls"] = calls
    idata.sample_stats.attrs["pkpd_sampling_s"] = float(sum(walls))
    return idata


def _warmup_stats(records: list[dict]) -> tuple[dict[str, np.ndarray] | None, int]:
    """Return the warm-up statistics of the iterations every chain recorded, and the first's.

    A folder resumed by a version of pkpd that kept none has them from its next call on. The
    first iteration's number is 1-based; the statistics are ``None`` when there are none.
    """
    warm = [rec["warmup"] for rec in records]  # every loaded record has one (setdefault)
    start = max(w["from"] for w in warm)
    n = min(w["from"] + len(w["lp"]) for w in warm) - start
    if n <= 0:
        return None, 0
    stats = {
        k: np.asarray([w[k][start - w["from"] : start - w["from"] + n] for w in warm])
        for k in STATS
    }
    stats["diverging"] = stats["diverging"].astype(bool)
    return stats, start + 1


def _read_run(directory: Path) -> dict[str, Any]:
    """Return a checkpoint folder's ``run.json``; a folder without one is refused."""
    run_file = directory / "run.json"
    if not run_file.is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint folder (no run.json)")
    return json.loads(run_file.read_text())


def coordinate_names(run: dict[str, Any]) -> list[str]:
    """Names of the flat unconstrained coordinates of a run, as in its chains' positions.

    Parameters
    ----------
    run : dict
        The folder's ``run.json`` (``names`` and ``shapes`` of the sampler's value variables).

    Returns
    -------
    list of str
        ``name`` for a scalar, ``name[i,j]`` for each element of an array, in flat order.
    """
    columns: list[str] = []
    for name, shape in zip(run["names"], run["shapes"], strict=True):
        if shape:
            columns += [f"{name}[{','.join(map(str, i))}]" for i in np.ndindex(*shape)]
        else:
            columns.append(name)
    return columns


def warmup_divergences(directory: str | Path) -> Any:
    """Where the warm-up's divergent trajectories of a checkpoint folder started.

    Parameters
    ----------
    directory : str or Path
        A checkpoint folder (`sample_resumable`, ``fit(checkpoint=...)``), finished or not.

    Returns
    -------
    pandas.DataFrame
        A row per divergent warm-up iteration: ``chain``, ``iteration`` (1-based) and the
        position the trajectory started from, a column per unconstrained coordinate (the
        sampler's value variables, e.g. ``log_omega_FB`` or ``phi[3,2]``). Iterations of calls
        made before pkpd kept them (2026-12-05) are missing.
    """
    import pandas as pd

    directory = Path(directory)
    run = _read_run(directory)
    columns = coordinate_names(run)
    rows = []
    for c in range(int(run["chains"])):
        path = directory / f"chain{c}.pkl"
        if not path.is_file():
            continue
        for iteration, z in _load(path).get("warmup", {}).get("divergent", []):
            rows.append(
                {"chain": c, "iteration": int(iteration), **dict(zip(columns, z, strict=True))}
            )
    return pd.DataFrame(rows, columns=["chain", "iteration", *columns])
