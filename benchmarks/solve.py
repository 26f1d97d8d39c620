"""Benchmark: batched compiled solve (pkpd) vs a per-subject scipy LSODA loop.

1,000 subjects of the library's 2-compartment oral model (``models/pk_2cmt_oral.toml``, compiled
from the model file: depot, central, peripheral; lag and F), 10 oral
doses q12h and 20 observations each, random individual parameters (fixed seed). Both integrate
piecewise between doses (exact bolus jumps) at the same tolerances; the script checks that they
agree and prints a markdown table (append it to benchmarks/RESULTS.md with --write).

    python benchmarks/solve.py [--subjects 1000] [--repeats 5] [--scipy-subjects N] [--write]
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

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pkpd._jax import host_cpu  # noqa: E402
from pkpd.events import DoseRecords, build_event_table  # noqa: E402
from pkpd.model import load_model  # noqa: E402
from pkpd.solve import Solver, solve  # noqa: E402

RTOL, ATOL = 1e-6, 1e-9
N_DOSES, II, N_OBS, DOSE = 10, 12.0, 20, 100.0


def make_problem(n: int, seed: int = 20240611):
    """Event table, observation times and individual vectors ``p`` for ``n`` subjects."""
    model = load_model("pk_2cmt_oral").compile()
    rng = np.random.default_rng(seed)
    typical = dict(zip(model.parameters, np.asarray(model.typical_values), strict=True))
    typical.update(CL=4.0, V=25.0, Q=6.0, V2=60.0, ka=0.9, tlag=0.25, F=0.7)
    theta = np.tile([typical[k] for k in model.parameters], (n, 1))
    omega = {"CL": 0.3, "V": 0.25, "Q": 0.3, "V2": 0.3, "ka": 0.4, "tlag": 0.3, "F": 0.1}
    for name, sd in omega.items():
        i = model.parameter_index(name)
        theta[:, i] *= np.exp(rng.normal(0.0, sd, n))
    theta[:, model.parameter_index("F")] = np.minimum(theta[:, model.parameter_index("F")], 1.0)
    # Individual vector: parameters then covariates (WT at its reference: no allometric change).
    p = np.concatenate([theta, np.tile(model.covariate_defaults, (n, 1))], axis=1)
    rec = DoseRecords(
        time=np.array([0.0]),
        amount=np.array([DOSE]),
        cmt=np.array([model.dose_targets["oral"]]),
        rate=np.zeros(1),
        duration=np.zeros(1),
        ii=np.array([II]),
        addl=np.array([N_DOSES - 1]),
        evid=np.array([1]),
        seq=np.array([2.0]),
    )
    events = build_event_table([rec] * n)
    base = np.linspace(0.25, N_DOSES * II - 0.5, N_OBS)
    obs_time = np.sort(base + rng.uniform(-0.2, 0.2, (n, N_OBS)), axis=1)
    obs_seq = np.full(obs_time.shape, 3.0)
    return model, events, obs_time, obs_seq, p


def scipy_subject(model, p: np.ndarray, obs_time: np.ndarray, method: str = "LSODA") -> np.ndarray:
    """Piecewise LSODA for one subject: integrate between doses, add each bolus (with lag, F)."""
    get = dict(zip(model.parameters, p, strict=False))
    CL, V, Q, V2, ka, tlag, F = (get[k] for k in ("CL", "V", "Q", "V2", "ka", "tlag", "F"))
    assert model.states == ("central", "periph", "depot"), model.states
    order = [2, 0, 1]  # scipy works in (depot, central, periph); the model's state order differs
    k10, k12, k21 = CL / V, Q / V, Q / V2

    def rhs(t, y):
        return [
            -ka * y[0],
            ka * y[0] - (k10 + k12) * y[1] + k21 * y[2],
            k12 * y[1] - k21 * y[2],
        ]

    dose_times = np.arange(N_DOSES) * II + tlag
    bounds = np.concatenate([[0.0], dose_times, [max(obs_time[-1], dose_times[-1])]])
    y = np.zeros(3)
    out = np.zeros((len(obs_time), 3))
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        sel = (obs_time >= a) & (obs_time < b) if k < len(bounds) - 2 else obs_time >= a
        if b > a:
            sol = solve_ivp(
                rhs,
                (a, b),
                y,
                method=method,
                rtol=RTOL,
                atol=ATOL,
                t_eval=np.union1d(obs_time[sel], [b]),
            )
            out[sel] = sol.y.T[: int(sel.sum())][:, np.argsort(order)]
            y = sol.y[:, -1]
        if k < N_DOSES:
            y = y.copy()
            y[0] += F * DOSE
    return out


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--scipy-subjects", type=int, default=None, help="default: all subjects")
    ap.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = ap.parse_args(argv)

    n = args.subjects
    model, events, obs_time, obs_seq, p = make_problem(n)
    solver = Solver("tsit5", rtol=RTOL, atol=ATOL)

    t0 = time.perf_counter()
    res = solve(model, events, obs_time, obs_seq, p, solver)
    jax.block_until_ready(res.y)
    first = time.perf_counter() - t0
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = solve(model, events, obs_time, obs_seq, p, solver)
        jax.block_until_ready(res.y)
        runs.append(time.perf_counter() - t0)
    steady = min(runs)
    assert bool(res.ok.all()), "pkpd solve failed for some subjects"

    m = args.scipy_subjects or n
    t0 = time.perf_counter()
    ref = np.stack([scipy_subject(model, p[i], obs_time[i]) for i in range(m)])
    scipy_time = (time.perf_counter() - t0) * n / m
    y = np.asarray(res.y[:m])
    central = slice(0, 1)  # model state order: central, periph, depot
    floor = 1e-6 * np.abs(ref[..., central]).max()
    rel = np.abs(y[..., central] - ref[..., central]) / (np.abs(ref[..., central]) + floor)
    speedup = scipy_time / steady

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    machine = f"{platform.machine()} ({host_cpu()})"
    devices = ", ".join(str(d) for d in jax.devices())
    extrap = "" if m == n else f" (timed on {m}, scaled)"
    table = "\n".join(
        [
            f"### solve benchmark, {stamp}",
            "",
            f"{n} subjects x 2-cmt oral, {N_DOSES} doses q{II:g}h, {N_OBS} observations; "
            f"rtol {RTOL:g}, atol {ATOL:g}",
            "",
            "| item | value |",
            "|---|---|",
            f"| machine | {machine}, {os.cpu_count()} CPUs, {platform.system()}, JAX {devices} |",
            f"| versions | python {platform.python_version()}, jax {jax.__version__}, "
            f"diffrax {diffrax.__version__}, numpy {np.__version__}, scipy {scipy.__version__} |",
            f"| pkpd first call (trace + compile + run) | {first:.2f} s |",
            f"| pkpd steady state (best of {args.repeats}) | {steady * 1e3:.1f} ms |",
            f"| pkpd throughput | {n / steady * 60:,.0f} subjects/min |",
            f"| scipy solve_ivp LSODA loop{extrap} | {scipy_time:.2f} s |",
            f"| speedup (steady state) | {speedup:.0f}x |",
            f"| max relative difference, central amount | {rel.max():.2e} |",
            "",
        ]
    )
    print(table)
    if args.write:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as fh:
            fh.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
