"""Parameter recovery: coverage of 90% credible intervals over replicate simulated studies.

For each replicate, a study is simulated from known parameters (one-compartment oral model,
``pk_1cmt_oral``, a theophylline-like design: one 320 mg dose, 10 samples over 24 h, truth close
to the published theophylline estimates), fitted with `pkpd.inference.fit` (default sampler and
settings), and each population parameter's 90% central credible interval is checked against the
truth. Over R replicates the coverage should be close to 90%; the binomial 95% interval of a
coverage estimate from R = 20 fits is about +-13 points, so only large departures are evidence
of miscalibration.

    python benchmarks/recovery.py                      # 20 replicates, prints the table
    python benchmarks/recovery.py --replicates 50 --workers 4 --write

``--write`` appends the table (machine, date, settings) to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

TRUTH = {"ka": 1.5, "CL": 2.7, "V": 32.0, "sigma_add": 0.7}
OMEGA = {"ka": 0.6, "CL": 0.3, "V": 0.15}
TIMES = [0.25, 0.5, 1, 2, 3.5, 5, 7, 9, 12, 24]
MASS = 0.90


def one_replicate(args: tuple[int, int, int, int, int]) -> dict:
    """Simulate and fit replicate ``r``; return coverage indicators and diagnostics."""
    r, n_subjects, chains, draws, tune = args
    warnings.simplefilter("ignore")
    import pkpd
    from pkpd.inference import fit
    from pkpd.inference.synthetic import dosing_design, simulate_study

    spec = pkpd.load_model("pk_1cmt_oral")
    design = dosing_design(n_subjects, 320.0, TIMES, cmt=1)
    cohort, _ = simulate_study(spec, design, TRUTH, omega=OMEGA, seed=1000 + r)
    t0 = time.perf_counter()
    result = fit(spec, cohort, chains=chains, draws=draws, tune=tune, seed=r, progressbar=False)
    seconds = time.perf_counter() - t0
    table = result.summary(mass=MASS)
    diag = result.diagnostics()
    row = {
        "replicate": r,
        "seconds": seconds,
        "ok": diag["ok"],
        "rhat_max": diag["rhat_max"],
        "ess_bulk_min": diag["ess_bulk_min"],
        "divergences": diag["divergences"],
    }
    truth = {**TRUTH, **{f"omega_{k}": v for k, v in OMEGA.items()}}
    for name, value in truth.items():
        lo, hi = table.loc[name, "lower"], table.loc[name, "upper"]
        row[f"cover_{name}"] = bool(lo <= value <= hi)
        row[f"median_{name}"] = float(table.loc[name, "median"])
    return row


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def coverage_table(rows: list[dict]) -> pd.DataFrame:
    """Coverage, its 95% Wilson interval and the median estimate per parameter."""
    df = pd.DataFrame(rows)
    truth = {**TRUTH, **{f"omega_{k}": v for k, v in OMEGA.items()}}
    out = []
    for name, value in truth.items():
        hits = int(df[f"cover_{name}"].sum())
        lo, hi = wilson(hits, len(df))
        med = df[f"median_{name}"]
        out.append(
            {
                "parameter": name,
                "truth": value,
                "covered": f"{hits}/{len(df)}",
                "coverage_%": 100 * hits / len(df),
                "wilson95_lo_%": 100 * lo,
                "wilson95_hi_%": 100 * hi,
                "median_of_medians": float(med.median()),
                "rel_bias_%": 100 * float(np.mean(np.log(med / value))),
            }
        )
    return pd.DataFrame(out).set_index("parameter")


def _save_row(path: Path | None, row: dict) -> None:
    if path is not None:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(
                json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
                + "\n"
            )


def markdown(table: pd.DataFrame) -> str:
    """A pipe table (pandas' to_markdown needs the optional tabulate package)."""
    cols = [table.index.name or ""] + list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in table.iterrows():
        cells = [str(idx)] + [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from pkpd._jax import host_cpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="parallel processes (each fit runs its chains sequentially)",
    )
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    parser.add_argument(
        "--rows",
        type=Path,
        default=None,
        help="JSON-lines file: each finished replicate is appended; replicates "
        "already there are not refitted (resume an interrupted run)",
    )
    args = parser.parse_args()

    done: dict[int, dict] = {}
    if args.rows is not None and args.rows.is_file():
        for line in args.rows.read_text().splitlines():
            row = json.loads(line)
            done[row["replicate"]] = row
    jobs = [
        (r, args.subjects, args.chains, args.draws, args.tune)
        for r in range(args.replicates)
        if r not in done
    ]
    t0 = time.perf_counter()
    if args.workers > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
            for row in pool.map(one_replicate, jobs):
                done[row["replicate"]] = row
                _save_row(args.rows, row)
    else:
        for job in jobs:
            row = one_replicate(job)
            done[row["replicate"]] = row
            _save_row(args.rows, row)
            print(f"replicate {job[0]}: {row['seconds']:.0f} s, ok={row['ok']}", flush=True)
    rows = [done[r] for r in sorted(done)]
    wall = time.perf_counter() - t0
    table = coverage_table(rows)
    n_ok = sum(r["ok"] for r in rows)
    header = (
        f"## Recovery: 90% CrI coverage ({dt.date.today().isoformat()})\n\n"
        f"Machine: {platform.machine()} ({host_cpu()}), {os.cpu_count()} CPUs, "
        f"{platform.system()}; "
        f"Python {platform.python_version()}. "
        f"`python benchmarks/recovery.py --replicates {args.replicates} --subjects "
        f"{args.subjects}`: pk_1cmt_oral, {args.subjects} subjects x {len(TIMES)} samples, "
        f"{args.replicates} replicate studies (data seeds 1000..{999 + args.replicates}), "
        f"default sampler, {args.chains} chains x {args.draws} draws (+{args.tune} warm-up). "
        f"Fits passing the convergence checks: {n_ok}/{len(rows)}. Fitting time "
        f"{sum(r['seconds'] for r in rows) / 60:.1f} min (this run: {wall / 60:.1f} min).\n\n"
    )
    text = header + markdown(table) + "\n"
    print(text)
    if args.write:
        path = Path(__file__).parent / "RESULTS.md"
        with path.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
