"""The MAP optimiser (`pkpd.inference.optimize.lbfgs`) against scipy's L-BFGS-B.

Evaluations to converge on Rosenbrock's function, and where each stops on a bowl whose
evaluation fails beyond a box (as an ODE solve fails in a stiff corner; the failed evaluation
returns inf to L-BFGS-B, the only way to tell it). Deterministic: no timing, no seed.

    python benchmarks/optimizer.py
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, rosen, rosen_der

from pkpd.inference.optimize import lbfgs

TARGET = np.arange(1.0, 6.0) * 10.0


def bowl(x: np.ndarray) -> tuple[float, np.ndarray]:
    """Minimum near (9.8, 18.7, 26.3, 32.9, 38.5); evaluation fails where any |x_i| > 45."""
    if np.max(np.abs(x)) > 45.0:
        return np.inf, np.full_like(x, np.nan)
    return (float(np.sum((x - TARGET) ** 2) + 1e-4 * np.sum(x**4)), 2 * (x - TARGET) + 4e-4 * x**3)


def main() -> None:
    print("| problem | lbfgs (pkpd) evaluations | max error | L-BFGS-B evaluations | max error |")
    print("|---|---|---|---|---|")
    for n in (2, 10, 50):
        x0 = np.full(n, -1.2)
        ours = lbfgs(lambda x: (rosen(x), rosen_der(x)), x0, maxiter=5000)
        ref = minimize(rosen, x0, jac=rosen_der, method="L-BFGS-B", options={"maxiter": 5000})
        print(
            f"| Rosenbrock, {n}-D | {ours.nfev} | {np.max(np.abs(ours.x - 1)):.1e} | "
            f"{ref.nfev} | {np.max(np.abs(ref.x - 1)):.1e} |"
        )
    truth = minimize(
        lambda x: bowl(np.clip(x, -45, 45)), np.zeros(5), jac=True, method="L-BFGS-B"
    ).x
    ours = lbfgs(bowl, np.zeros(5), max_step=100.0)
    ref = minimize(bowl, np.zeros(5), jac=True, method="L-BFGS-B")
    print(
        f"| bowl failing beyond a box (optimum inside) | {ours.nfev} ({ours.failed} failed; "
        f"{ours.message}) | {np.max(np.abs(ours.x - truth)):.1e} | {ref.nfev} ({ref.message})"
        f" | {np.max(np.abs(ref.x - truth)):.1e} |"
    )


if __name__ == "__main__":
    main()
