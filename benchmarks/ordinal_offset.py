"""Daily grades with one logistic offset per patient, fitted as independent days or not.

The simulators (`pkpd.strategies.simulate.grades`, hence `pkpd.data.virtual`) give each patient
one logistic offset ``e`` for all days: grade >= k on day t iff ``latent(t) + e > c_k``. The
patient-level likelihood (`pkpd.inference.likelihood.observation_logp`) takes the grades of an
endpoint with ``offset = "record"`` as independent ordered-logistic draws, and those of an
endpoint with ``offset = "subject"`` as one course under one offset per patient. This script
measures what each does to cutpoint estimates when the latent course is known: a toy latent (a
Gaussian bump per patient), cohorts of ``--patients`` patients, the maximum-likelihood c_2 (the
library's likelihood), its spread over cohorts against the model-based SD (inverse of the
numerical Hessian), for grades generated both ways (`grades` itself). Seconds.

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


def nll(x: np.ndarray, latent: np.ndarray, grade: np.ndarray, offset: str) -> float:
    """Negative log-likelihood of the grades (patients x days) given the cutpoints ``x``.

    The formulas of `pkpd.inference.likelihood.observation_logp` in numpy (the library builds
    a PyTensor graph per dataset, seconds to compile; tests/test_benchmarks.py checks that the
    two agree): per day for ``offset = "record"``, per patient's course for ``"subject"``.
    """
    c = cutpoints(x)
    up, lo = np.append(c, np.inf)[grade] - latent, np.insert(c, 0, -np.inf)[grade] - latent
    if offset == "subject":  # one offset e per patient: e in (max lo, min up)
        up, lo = up.min(axis=1), lo.max(axis=1)
    p = expit(up) - expit(lo)
    return -float(np.sum(np.log(np.maximum(p, 1e-300))))


def fit_c2(latent: np.ndarray, grade: np.ndarray, offset: str = "record") -> tuple[float, float]:
    """ML estimate of c_2 and its SD from the numerical Hessian."""

    def f(v):
        return nll(v, latent, grade, offset)

    # The subject likelihood is 0 where some patient's course cannot be ordered by the latent:
    # its optimisation starts where every course is possible (the generating cutpoints).
    start = np.array([3.0, 0.6, 0.9, -0.5])
    if offset == "subject":
        start = np.concatenate([[CUTPOINTS[0]], np.log(np.diff(CUTPOINTS))])
    x = minimize(f, start, method="Nelder-Mead" if offset == "subject" else "BFGS").x
    if offset == "subject":
        x = minimize(f, x, method="BFGS").x
    h, k = 1e-4, x.size
    hess = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            di, dj = np.eye(k)[i] * h, np.eye(k)[j] * h
            hess[i, j] = (f(x + di + dj) - f(x + di - dj) - f(x - di + dj) + f(x - di - dj)) / (
                4 * h * h
            )
    grad_c2 = np.array([1.0, np.exp(x[1]), 0.0, 0.0])
    return float(cutpoints(x)[1]), float(np.sqrt(grad_c2 @ np.linalg.pinv(hess) @ grad_c2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--cohorts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    runs = (
        (True, "record", "one offset per patient", "independent days"),
        (False, "record", "independent days", "independent days"),
        (True, "subject", "one offset per patient", "one offset per patient"),
    )
    for persistent, offset, how, fitted in runs:
        rng = np.random.default_rng(args.seed)
        est, sd = zip(
            *(
                fit_c2(*simulate(rng, args.patients, persistent), offset=offset)
                for _ in range(args.cohorts)
            ),
            strict=True,
        )
        print(
            f"grades generated with {how}, fitted as {fitted} (offset = {offset!r}): c_2 mean "
            f"{np.mean(est):.2f} (truth {CUTPOINTS[1]}), SD over cohorts {np.std(est):.2f}, "
            f"median model-based SD {np.median(sd):.2f}"
        )


if __name__ == "__main__":
    main()
