"""Benchmark: virtual-patient simulations per minute of a strategy comparison.

Simulates N virtual patients x D prior draws of a model (default: the full ``cart_crs``) under
(a) a fixed regimen (one batched solve per chunk) and (b) standard of care with a reactive
tocilizumab policy (one solve per reactive pass), after a warm-up run that compiles; reports
simulations per minute for each. Append the table to RESULTS.md with --write.

    python benchmarks/strategies.py [--model cart_crs] [--patients 500] [--draws 20] [--write]
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
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pkpd  # noqa: E402
from pkpd.solve import Solver  # noqa: E402
from pkpd.strategies import make_population, simulate_strategies, strategy_from_dict  # noqa: E402

FIXED = {
    "name": "prophylactic_toc",
    "regimen": [
        {
            "drug": "tocilizumab",
            "route": "iv",
            "dose": 8,
            "dose_unit": "mg/kg",
            "cap": 800,
            "duration": "1 h",
            "start": "-1 h",
        }
    ],
}
REACTIVE = {
    "name": "soc_reactive_toc",
    "reactive": [
        {
            "drug": "tocilizumab",
            "route": "iv",
            "dose": 8,
            "dose_unit": "mg/kg",
            "cap": 800,
            "duration": "1 h",
            "trigger": "crs_grade >= 2",
            "assess_every": "12 h",
            "max_doses": 4,
            "min_interval": "8 h",
        }
    ],
}


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cart_crs")
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="simulations per batched solve (default: the library's, per backend)",
    )
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--atol", type=float, default=1e-9)
    ap.add_argument("--base", default="cart_iv=1e8", help="ROUTE=AMOUNT at day 0 ('' for none)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)

    model = pkpd.load_model(args.model).compile()
    base = []
    if args.base:
        route, amount = args.base.split("=")
        base = [(route, 0.0, float(amount))]
    n = args.patients
    rng = np.random.default_rng(1)
    covs = {"WT": rng.uniform(50, 110, n)}
    pop = make_population(
        model, n_patients=n, n_draws=args.draws, seed=2, covariates=covs, base=base
    )
    solver = Solver("tsit5", rtol=args.rtol, atol=args.atol)
    rows = []
    for spec in (FIXED, REACTIVE):
        strategy = strategy_from_dict(spec)
        # Warm-up: the identical call compiles every shape the timed call uses.
        simulate_strategies(model, pop, [strategy], solver=solver, chunk_size=args.chunk)
        t0 = time.perf_counter()
        sim = simulate_strategies(model, pop, [strategy], solver=solver, chunk_size=args.chunk)
        wall = time.perf_counter() - t0
        total = n * args.draws
        rows.append((strategy.name, int(sim["passes"].values[0]), total, wall, total / wall * 60))

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"### strategies benchmark, {stamp}",
        "",
        f"model {args.model} ({model.n_states} states), {n} patients x {args.draws} prior draws, "
        f"days 0-28, Tsit5 rtol {args.rtol:g} atol {args.atol:g}, "
        f"chunks of {args.chunk or 'default'}",
        "",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"JAX {', '.join(str(d) for d in jax.devices())}, jax {jax.__version__}, "
        f"load average {open('/proc/loadavg').read().split()[0]} (1 min, after the run)",
        "",
        "| strategy | solver passes | simulations | wall (s) | simulations/min |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]:.1f} | {r[4]:,.0f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as fh:
            fh.write("\n" + table)
    return table


if __name__ == "__main__":
    main()
