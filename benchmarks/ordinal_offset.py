"""Daily grades with one logistic offset per patient, fitted as independent days.

The simulators (`pkpd.strategies.simulate.grades`, hence `pkpd.data.virtual`) give each patient
one logistic offset ``e`` for all days: grade >= k on day t iff ``latent(t) + e > c_k``. The
patient-level likelihood (`pkpd.inference`, ``error = "ordinal"``) treats each day's grade as an
independent ordered-logistic draw. This script measures what that mismatch does to cutpoint
estimates when the latent course is known: a toy latent (a Gaussian bump per patient), cohorts
of ``--patients`` patients, the maximum-likelihood c_2 under the independent-days likelihood,
its spread over cohorts against the model-based SD (inverse of the numerical Hessian), with
grades generated both ways (`grades` itself). Seconds.

    python benchmarks/ordinal_offset.py --patients 60 --cohorts 200
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from pkpd.strategies.simulate import grades

DAYS = np.arange(0, 28.0)
CUTPOINTS = np.array([3.15, 5.0, 7.43, 8.08])  # cart_crs's CRS cutpoints


def cutpoints(x: np.ndarray) -> np.ndarray:
    return np.concatenate([[x[0]], x[0] + np.cumsum(np.exp(x[1:]))])


def simulate(rng: np.random.Generator, n: int, persistent: bool) -> tuple:
    peak = rng.normal(4.0, 1.5, n)
    t_peak = rng.uniform(2, 8, n)
    latent = peak[:, None] * np.exp(-0.5 * ((DAYS[None] - t_peak[:, None]) / 2.0) ** 2)
    levels = np.arange(CUTPOINTS.size + 1)
    if persistent:  # the simulators' grades: one offset per patient
        u = rng.uniform(size=(n, 1))[:, 0]
        cut = np.broadcast_to(CUTPOINTS, (n, CUTPOINTS.size))
        return latent, grades(latent, cut, levels, u)
    u = rng.uniform(size=(n, DAYS.size)).ravel()  # one offset per patient-day
    cut = np.broadcast_to(CUTPOINTS, (u.size, CUTPOINTS.size))
    return latent, grades(latent.reshape(-1, 1), cut, levels, u).reshape(n, DAYS.size)


def fit_c2(latent: np.ndarray, grade: np.ndarray) -> tuple[float, float]:
    """ML estimate of c_2 (independent days) and its SD from the numerical Hessian."""

    def nll(x):
        c = cutpoints(x)
        up, lo = np.append(c, np.inf), np.insert(c, 0, -np.inf)
        p = expit(up[grade] - latent) - expit(lo[grade] - latent)
        return -np.sum(np.log(np.maximum(p, 1e-300)))

    x = minimize(nll, np.array([3.0, 0.6, 0.9, -0.5]), method="BFGS").x
    h, k = 1e-4, x.size
    hess = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            di, dj = np.eye(k)[i] * h, np.eye(k)[j] * h
            hess[i, j] = (
                nll(x + di + dj) - nll(x + di - dj) - nll(x - di + dj) + nll(x - di - dj)
            ) / (4 * h * h)
    grad_c2 = np.array([1.0, np.exp(x[1]), 0.0, 0.0])
    return float(cutpoints(x)[1]), float(np.sqrt(grad_c2 @ np.linalg.pinv(hess) @ grad_c2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--cohorts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for persistent in (True, False):
        rng = np.random.default_rng(args.seed)
        est, sd = zip(
            *(fit_c2(*simulate(rng, args.patients, persistent)) for _ in range(args.cohorts)),
            strict=True,
        )
        how = "one offset per patient" if persistent else "independent days"
        print(
            f"grades generated with {how}: c_2 mean {np.mean(est):.2f} (truth "
            f"{CUTPOINTS[1]}), SD over cohorts {np.std(est):.2f}, median model-based SD "
            f"{np.median(sd):.2f}"
        )


if __name__ == "__main__":
    main()
