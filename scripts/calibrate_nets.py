"""Calibrate the NET -> endothelium weight ``wVN`` (models/vascular.toml) to Flora 2024.

Flora 2024 (science.md C1) found baseline NET-related proteins predictive of CRS in 26 patients,
21 with CRS and 5 without; no AUC was retrievable. What the finding implies is computed here:

1. the smallest sample AUC that an exact two-sided Mann-Whitney test at 21 vs 5 calls significant
   (p < 0.05), and the probability of reaching it (power) for a range of population AUCs
   (binormal, equal variances; Monte Carlo with a fixed seed);
2. for a grid of ``wVN`` values, the expected ROC AUC of baseline NET propensity (NETP) for any
   CRS in the typical-value virtual population used to calibrate the cutpoints (3000 patients,
   seed 8, natural course, grades with the model's noise per grading day), with the CRS
   cutpoints recalibrated to Hay 2017 at each ``wVN`` (so the AUC is read at the published
   incidence, not at a drifting one);
3. the ``wVN`` at which that AUC equals the target (0.70; log-linear interpolation on the grid).

The result is the prior median written in models/vascular.toml; rerun this after changing the
model and then ``python scripts/prior_predictive.py --calibrate`` for the cutpoints.

Usage: python scripts/calibrate_nets.py [--target 0.70] [--grid 0,0.1,0.2,0.3,0.4,0.6]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import expit
from scipy.stats import mannwhitneyu, norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from prior_predictive import (  # noqa: E402
    CAL_PATIENTS,
    CAL_SEED,
    CRS_TARGETS,
    GRID,
    _cut,
    natural_course,
    noisy_peaks,
)

import pkpd  # noqa: E402
from pkpd.data import virtual as V  # noqa: E402
from pkpd.strategies import expected_auc, simulate_strategies  # noqa: E402

#: Flora 2024: patients with and without CRS.
N_CRS, N_NONE = 21, 5


def critical_auc(n1: int = N_CRS, n2: int = N_NONE, alpha: float = 0.05) -> float:
    """Smallest sample AUC (U / (n1 n2)) with an exact two-sided Mann-Whitney p below alpha."""
    for u in range(n1 * n2 // 2, n1 * n2 + 1):
        # A configuration with statistic u: cases above controls except for n1*n2 - u pairs.
        cases = np.arange(n1, dtype=float)
        controls = np.full(n2, -1.0)
        swaps = n1 * n2 - u
        for k in range(n2):  # raise controls past cases one pair at a time
            step = min(swaps, n1)
            controls[k] = step - 0.5 if step else -1.0
            swaps -= step
        res = mannwhitneyu(cases, controls, method="exact")
        assert int(round(res.statistic)) == u
        if res.pvalue < alpha:
            return u / (n1 * n2)
    return 1.0


def power(auc: float, reps: int = 4000, seed: int = 1) -> float:
    """Probability that a 21 vs 5 study finds the marker significant at population AUC ``auc``."""
    rng = np.random.default_rng(seed)
    shift = np.sqrt(2.0) * norm.ppf(auc)
    hits = sum(
        mannwhitneyu(rng.normal(shift, 1, N_CRS), rng.normal(0, 1, N_NONE), method="exact").pvalue
        < 0.05
        for _ in range(reps)
    )
    return hits / reps


def auc_at(model, weights: list[float]) -> list[tuple[float, float, float]]:
    """(wVN, c_crs1, expected AUC of NETP for any CRS) for each weight, one batched simulation."""
    patients = V.draw_patients(CAL_PATIENTS, CAL_SEED)
    pop = V.make_population(model, patients, CAL_SEED, n_draws=len(weights), typical=True)
    theta = pop.theta.copy()
    theta[:, model.parameter_index("wVN")] = weights
    pop = pop.with_theta(theta, "wVN grid")
    keep = len(weights) * CAL_PATIENTS
    sim = simulate_strategies(model, pop, [natural_course()], grid=GRID, keep_trajectories=keep)
    peaks = noisy_peaks(model, pop, sim)["crs"]  # with the grades' day noise
    netp = patients["NETP"].to_numpy()
    out = []
    for d, w in enumerate(weights):
        peak = peaks[0, d]
        c1 = _cut(peak, CRS_TARGETS[0])
        out.append((w, c1, expected_auc(expit(peak - c1), netp)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.70, help="population AUC to reach")
    parser.add_argument("--grid", default="0,0.1,0.2,0.3,0.4,0.6", help="wVN values")
    args = parser.parse_args()
    t0 = time.time()
    crit = critical_auc()
    print(
        f"Flora 2024, {N_CRS} CRS vs {N_NONE} without: smallest significant sample AUC {crit:.3f}"
    )
    print("| population AUC | P(significant) |\n|---|---|")
    for a in (0.55, 0.58, 0.60, 0.65, 0.70, 0.75, 0.80):
        print(f"| {a:.2f} | {power(a):.2f} |")
    model = pkpd.load_model("cart_crs").compile()
    weights = [float(w) for w in args.grid.split(",")]
    rows = auc_at(model, weights)
    print(
        f"\nTypical-value virtual population ({CAL_PATIENTS} patients, seed {CAL_SEED}), "
        f"any CRS at {CRS_TARGETS[0]:.0%}:"
    )
    print("| wVN | c_crs1 | expected AUC of NETP |\n|---|---|---|")
    for w, c1, a in rows:
        print(f"| {w:g} | {c1:.2f} | {a:.3f} |")
    ws, aucs = np.array([r[0] for r in rows]), np.array([r[2] for r in rows])
    k = int(np.searchsorted(aucs, args.target))
    if not (np.all(np.diff(aucs) > 0) and 0 < k < len(ws)):
        print(f"\ntarget AUC {args.target} not bracketed by the grid (AUC must rise with wVN)")
    else:
        lo, hi = max(ws[k - 1], 1e-3), ws[k]  # log-linear between the bracketing weights
        f = (args.target - aucs[k - 1]) / (aucs[k] - aucs[k - 1])
        w = float(np.exp(np.log(lo) + f * (np.log(hi) - np.log(lo))))
        print(f"\nwVN for AUC {args.target:.2f}: {w:.3g} (bracket {lo:g}-{hi:g})")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
