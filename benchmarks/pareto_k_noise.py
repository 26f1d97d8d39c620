"""How often `calibrate`'s Laplace check flags a Gaussian, by the number of draws it evaluates.

`pkpd.inference.calibration.laplace_check` evaluates the log-posterior at S draws of the Laplace
Gaussian q and reports the Pareto k of the importance weights p / q (PSIS), flagged above the
sample-size threshold min(1 - 1 / log10(S), 0.7) (Vehtari et al. 2024). Here p and q are known:
q = N(0, 1) and p = N(0, s^2) in one dimension, whose weights exp(x^2 (1 - 1/s^2) / 2) have a
Pareto tail with k = 1 - 1/s^2 exactly. For each s and S, ``--reps`` independent checks give
the median and 5-95% range of k-hat, the share flagged, and the median relative ESS of the
smoothed weights. A posterior 2x wider than its Gaussian is k = 0.75.

    python benchmarks/pareto_k_noise.py [--reps 200] [--seed 0] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCALES = (1.02, 1.2, 1.41, 2.0)
SIZES = (100, 200, 400, 1000)


def noise_table(reps: int, seed: int, scales=SCALES, sizes=SIZES) -> list[dict[str, float | int]]:
    """One row per (posterior SD s, draws S): k-hat's spread and the share flagged."""
    from pkpd.inference.calibration import laplace_check

    rng = np.random.default_rng(seed)
    rows = []
    for s in scales:
        for n in sizes:
            ks, ess, flagged = [], [], 0
            for _ in range(reps):
                xs = rng.normal(size=(n, 1))
                check = laplace_check(
                    lambda x, s=s: float(-0.5 * x[0] ** 2 / s**2), xs, np.zeros(1), np.eye(1)
                )
                ks.append(check["pareto_k"])
                ess.append(check["ess"] / n)
                flagged += check["pareto_k"] > check["k_threshold"]
            rows.append(
                {
                    "s": s,
                    "k": 1.0 - 1.0 / s**2,
                    "draws": n,
                    "k_median": float(np.median(ks)),
                    "k_5": float(np.quantile(ks, 0.05)),
                    "k_95": float(np.quantile(ks, 0.95)),
                    "flagged": flagged / reps,
                    "relative_ess": float(np.median(ess)),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> str:
    from pkpd._jax import host_cpu

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    rows = noise_table(args.reps, args.seed)
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmd = "python benchmarks/pareto_k_noise.py " + " ".join(argv or sys.argv[1:])
    lines = [
        f"### Pareto k of the Laplace check, {now}",
        "",
        f"`{cmd.strip()}` ({args.reps} checks per row; q = N(0, 1), p = N(0, s^2); "
        f"machine {platform.machine()} ({host_cpu()})):",
        "",
        "| posterior SD s | true k | draws S | k-hat median | k-hat 5-95% | flagged | "
        "relative ESS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['s']} | {r['k']:.2f} | {r['draws']} | {r['k_median']:.2f} | "
            f"{r['k_5']:.2f} to {r['k_95']:.2f} | {r['flagged']:.0%} | {r['relative_ess']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n" + text)
    return text


if __name__ == "__main__":
    main()
