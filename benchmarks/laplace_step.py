"""The Laplace step's Hessian: why `calibrate` differences the gradient over 0.02, not 1e-4.

Builds the calibration of ``benchmarks/aggregate_calibration.py`` (``--with-neuro`` by default),
finds its mode as `calibrate` does (scipy L-BFGS-B on the unconstrained scale), then reports

- the Hessian by central differences of the JAX gradient at several steps (smallest and largest
  eigenvalue), and with ``--autodiff`` the exact Hessian of the smooth piece at the mode
  (``jax.hessian``, forward over reverse: ~5 min of compilation at 512 patients);
- along the eigenvector of the smallest eigenvalue at the smallest step: the objective, the
  directional derivative, and the secant curvature ``(g(s) - g(-s)) / 2s`` at offsets ``s``.

The objective is a mean over virtual patients of functions of each one's worst grade (a maximum
over grading days), so the gradient jumps where a patient's worst day changes: a curvature that
depends on the step below ~1e-3 and settles above it is those jumps.

    python benchmarks/laplace_step.py [--patients 512] [--crs-only] [--autodiff] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STEPS = (1e-5, 1e-4, 1e-3, 0.02, 0.04)
OFFSETS = (0.001, 0.003, 0.01, 0.03, 0.1)


def step_table(
    gradient: Callable[[np.ndarray], np.ndarray], x: np.ndarray, steps=STEPS
) -> tuple[list[dict], np.ndarray]:
    """Eigenvalues of the central-difference Hessian per step; the smallest step's eigenvector."""
    from pkpd.inference.calibration import _fd_hessian

    rows, direction = [], None
    for step in steps:
        w, v = np.linalg.eigh(_fd_hessian(gradient, x, step))
        rows.append({"step": step, "eig_min": float(w[0]), "eig_max": float(w[-1])})
        if direction is None:
            direction = v[:, 0]
    return rows, direction


def line_scan(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    direction: np.ndarray,
    offsets=OFFSETS,
) -> list[dict]:
    """Objective, directional derivative and secant curvature at +-s along ``direction``."""
    f0, g0 = objective(x)
    rows = [{"s": 0.0, "f": f0, "slope": float(g0 @ direction), "curvature": np.nan}]
    for s in offsets:
        (fp, gp), (fm, gm) = objective(x + s * direction), objective(x - s * direction)
        sp, sm = float(gp @ direction), float(gm @ direction)
        rows.append({"s": -s, "f": fm, "slope": sm, "curvature": np.nan})
        rows.append({"s": s, "f": fp, "slope": sp, "curvature": (sp - sm) / (2 * s)})
    return sorted(rows, key=lambda r: r["s"])


def main(argv: list[str] | None = None) -> str:
    from pkpd._jax import host_cpu

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=512, help="virtual patients per arm")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--crs-only", action="store_true", help="the CRS-only calibration")
    ap.add_argument("--autodiff", action="store_true", help="also jax.hessian at the mode")
    ap.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from aggregate_calibration import CALIBRATION, calibration_problem
    from scipy.optimize import minimize

    from pkpd.data.trials import published_trials
    from pkpd.inference.aggregate import AggregateLikelihood, AggregateWarning
    from pkpd.inference.calibration import UnconstrainedPosterior

    warnings.simplefilter("ignore", AggregateWarning)
    t_start = time.perf_counter()
    problem = calibration_problem(args.patients, args.seed, with_neuro=not args.crs_only)
    parameters = problem.parameters
    lik = AggregateLikelihood(
        problem.model,
        published_trials(*CALIBRATION),
        parameters,
        design=problem.design,
        priors=problem.priors,
        **problem.options,
    )
    post = UnconstrainedPosterior(lik)
    lik.refresh(np.asarray(post.to_natural(post.x0)))
    res = minimize(
        post.objective,
        post.x0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 500, "maxfun": 1000},
    )
    x = res.x
    t_map = time.perf_counter() - t_start
    rows, direction = step_table(post.gradient, x)
    auto = None
    if args.autodiff:
        t0 = time.perf_counter()
        h = np.asarray(jax.jit(jax.hessian(lambda xx: post.neg(xx, lik.data)))(jnp.asarray(x)))
        w = np.linalg.eigvalsh((h + h.T) / 2)
        auto = (float(w[0]), float(w[-1]), time.perf_counter() - t0)
    scan = line_scan(post.objective, x, direction)
    total = time.perf_counter() - t_start

    loadings = ", ".join(f"{p} {c:+.3f}" for p, c in zip(post.names, direction, strict=True))
    cmd = "python benchmarks/laplace_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"### Laplace step, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"`{cmd.strip()}`: {'CRS-only' if args.crs_only else 'with-neuro'} calibration of "
        f"benchmarks/aggregate_calibration.py ({', '.join(parameters)}), {args.patients} "
        f"virtual patients per arm. Mode: {res.nit} L-BFGS-B iterations, negative log-posterior "
        f"{res.fun:.6f}, largest gradient component {np.abs(res.jac).max():.2g} ({t_map:.0f} s). "
        f"Machine: {platform.machine()} ({host_cpu()}), total {total:.0f} s.",
        "",
        "| difference step | smallest eigenvalue | largest eigenvalue |",
        "|---|---|---|",
    ]
    lines += [f"| {r['step']:g} | {r['eig_min']:.4g} | {r['eig_max']:.4g} |" for r in rows]
    if auto is not None:
        lines.append(f"| jax.hessian ({auto[2]:.0f} s) | {auto[0]:.4g} | {auto[1]:.4g} |")
    lines += [
        "",
        f"Along the eigenvector of the smallest eigenvalue at step {STEPS[0]:g} ({loadings}):",
        "",
        "| s | objective - mode | directional derivative | secant curvature over +-s |",
        "|---|---|---|---|",
    ]
    f0 = next(r["f"] for r in scan if r["s"] == 0.0)
    for r in scan:
        curv = "" if np.isnan(r["curvature"]) else f"{r['curvature']:.3g}"
        lines.append(f"| {r['s']:+g} | {r['f'] - f0:.3g} | {r['slope']:.4g} | {curv} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write("\n" + text)
    return text


if __name__ == "__main__":
    main()
