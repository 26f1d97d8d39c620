"""Benchmark: the subjects-last integrator (`pkpd.solve.lanes`) against the vmapped engine.

One batched solve of ``cart_crs`` (23 states) over days 0-28 with a 6-hourly output grid: a CAR-T
bolus at day 0 and a 1 h tocilizumab infusion at a random time in days 0-3 per subject, typical
values with log-normal noise (SD 0.3) on the random effects, Tsit5 rtol 1e-6 atol 1e-9 (the
strategies' default). Reports compile and steady-state wall time of each path (best of 3) and the
largest difference between them relative to each state's maximum. Append to RESULTS.md with --write.

    python benchmarks/lanes.py [--subjects 512 1024 4096] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pkpd  # noqa: E402
from pkpd._jax import host_cpu  # noqa: E402
from pkpd.events import BOLUS, INFUSION_END, INFUSION_START  # noqa: E402
from pkpd.solve import Solver  # noqa: E402
from pkpd.solve.engine import event_arrays, solve_batch  # noqa: E402
from pkpd.solve.lanes import solve_lanes  # noqa: E402


def case(model, n: int, seed: int = 0):
    """Event table, grid, keys and individual vectors of the benchmark cohort."""
    rng = np.random.default_rng(seed)
    cov = np.array([d if np.isfinite(d) else 70.0 for d in model.covariate_defaults])
    eta = jnp.asarray(rng.normal(size=(n, len(model.iiv))) * 0.3)
    theta, c = jnp.asarray(model.typical_values), jnp.asarray(cov)
    p = jax.vmap(lambda e: model.individual(theta, e, c))(eta)
    ev = {k: np.zeros((n, 3)) for k in ("time", "amount", "rate", "duration", "seq")}
    toc = model.dose_targets["tocilizumab_iv"]
    ev.update(
        kind=np.array([[BOLUS, INFUSION_START, INFUSION_END]] * n),
        cmt=np.array([[model.dose_targets["cart_iv"], toc, toc]] * n),
        link=np.array([[-1, 2, 1]] * n),
        mask=np.ones((n, 3), bool),
    )
    ev["amount"][:] = [1e8, 8.0, 8.0]
    ev["duration"][:, 1:] = 1 / 24
    ev["seq"][:] = [2.0, 0.0, 1.0]
    ev["time"][:, 1:] = rng.uniform(0, 3, (n, 1))
    grid = jnp.asarray(np.tile(np.linspace(0.0, 28.0, 113), (n, 1)))
    return event_arrays(ev), grid, jnp.full(grid.shape, 0.5), jnp.asarray(p)


def timed(fn, args, repeats: int = 3) -> tuple[float, float, np.ndarray]:
    t0 = time.perf_counter()
    out = fn(*args)
    out.y.block_until_ready()
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        out.y.block_until_ready()
        best = min(best, time.perf_counter() - t0)
    assert bool(out.ok.all()), "a subject failed"
    return first, best, np.asarray(out.y)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, nargs="+", default=[512, 1024, 4096])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    model = pkpd.load_model("cart_crs").compile()
    solver = Solver("tsit5", rtol=1e-6, atol=1e-9)
    engine = jax.jit(lambda *a: solve_batch(model, solver, *a))
    lanes = jax.jit(lambda *a: solve_lanes(model, solver, *a))
    rows = []
    for n in args.subjects:
        data = case(model, n)
        e_first, e_best, ye = timed(engine, data)
        l_first, l_best, yl = timed(lanes, data)
        scale = np.abs(ye).max(axis=1, keepdims=True) + 1e-12
        diff = float(np.max(np.abs(yl - ye) / scale))
        rows.append(
            f"| {n:,} | {e_first:.1f} | {e_best:.3f} | {l_first:.1f} | {l_best:.3f} | "
            f"{e_best / l_best:.2f}x | {60 * n / l_best:,.0f} | {diff:.1e} |"
        )
        print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    text = (
        f"\n### lanes benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}\n\n"
        "`python benchmarks/lanes.py`: one batched solve of cart_crs (23 states), days 0-28, "
        "6-hourly grid, CAR-T bolus + 1 h tocilizumab infusion, Tsit5 rtol 1e-6 atol 1e-9; "
        "engine = vmapped `solve_batch` (chunks of 512 on a CPU), lanes = `solve_lanes` (one "
        "batch); best of 3 after the first (compiling) call\n\n"
        f"machine: {platform.machine()} ({host_cpu()}), {os.cpu_count()} CPUs, "
        f"JAX {jax.devices()[0]}, "
        f"jax {jax.__version__}, load average {load:.2f} (1 min, after the run)\n\n"
        "| subjects | engine first (s) | engine (s) | lanes first (s) | lanes (s) | speed-up | "
        "lanes solves/min | max difference / state max |\n|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    if args.write:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(text)
    return text


if __name__ == "__main__":
    print(main())
