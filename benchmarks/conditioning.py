"""How a diagonal mass matrix sees a fit's posterior at its start: the Hessian, scaled.

For the last stage of a CAR-T fitting profile on a generated cohort, at the prior medians with
every patient typical (the un-jittered start without earlier stages), the Hessian of the
negative log-density is assembled from the coloured probes of
`pkpd.inference.resumable.curvature_metric` (a probe along one population coordinate gives its
whole column; a probe along the k-th random effect of every patient at once gives each patient's
block, since no term involves two patients), scaled by its diagonal, and summarised: its largest
eigenvalues (a diagonal metric's step size must be below ~2/sqrt of the largest), and for every
population coordinate the summed absolute scaled coupling to the patients' coordinates (how
tied the typical values are to the random effects). Used to compare random-effect
parameterizations (docs/inference.md, "Centred random effects"):

    python benchmarks/conditioning.py --patients 60 --profile cart_crs_core \
        --iiv-parameterization noncentered
    python benchmarks/conditioning.py --patients 60 --profile cart_crs_core \
        --iiv-parameterization centered
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def scaled_hessian(n_patients: int, profile: str, parameterization: str, seed: int) -> dict:
    """Return the summaries of the diagonally scaled Hessian at the start."""
    import cart_recovery as cr
    import jax

    from pkpd.inference import build_model
    from pkpd.inference.resumable import (
        CURVATURE_STEP,
        _start_points,
        probe_groups,
    )
    from pkpd.inference.sample import _flat_fn, flat_view

    spec, cohort = cr._last_stage(n_patients, profile, seed)
    pm_model, _ = build_model(
        spec,
        cohort,
        solver=cr._fit_solver(),
        integrator="lanes",
        iiv_parameterization=parameterization,
    )
    logp, names, shapes = _flat_fn(pm_model)
    flatten, unflatten = flat_view(names, shapes)
    grad = jax.jit(jax.grad(lambda x: -logp(*unflatten(x))[0]))
    x = _start_points(pm_model, None, 1, seed, names, flatten, jitter=False)[0]
    n = x.size
    patient = -np.ones(n, dtype=int)  # which patient a coordinate belongs to (-1: population)
    offset = 0
    for name, shape in zip(names, shapes, strict=True):
        size = int(np.prod(shape))
        dims = pm_model.named_vars_to_dims.get(name) or ()
        if len(shape) == 2 and dims and dims[0] == "subject":
            patient[offset : offset + size] = np.repeat(np.arange(shape[0]), shape[1])
        offset += size
    hess = np.zeros((n, n))
    for idx in probe_groups(pm_model, names, shapes):
        v = np.zeros(n)
        v[idx] = CURVATURE_STEP
        col = (np.asarray(grad(x + v)) - np.asarray(grad(x - v))) / (2 * CURVATURE_STEP)
        if len(idx) == 1:
            hess[:, idx[0]] = col
        else:
            for j in idx:
                rows = np.flatnonzero(patient == patient[j])
                hess[rows, j] = col[rows]
    pop, sub = patient < 0, patient >= 0
    hess[np.ix_(pop, sub)] = hess[np.ix_(sub, pop)].T
    hess = 0.5 * (hess + hess.T)
    diag = np.diag(hess)
    d = 1 / np.sqrt(np.where(diag > 0, diag, 1.0))
    scaled = hess * d[:, None] * d[None, :]
    eig = np.linalg.eigvalsh(scaled)
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    coupling = {}
    for name, a, b in zip(names, offsets[:-1], offsets[1:], strict=True):
        if pop[a]:
            coupling[name] = float(np.abs(scaled[a:b][:, sub]).sum(axis=1).max())
    return {
        "parameterization": parameterization,
        "dimensions": n,
        "largest_eigenvalues": [round(float(v), 2) for v in eig[-3:]],
        "negative_eigenvalues": int((eig < 0).sum()),
        "coupling": {k: round(v, 2) for k, v in coupling.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--profile", default="cart_crs_core")
    parser.add_argument(
        "--iiv-parameterization", default="noncentered", choices=["noncentered", "centered"]
    )
    parser.add_argument("--seed", type=int, default=20261123)
    args = parser.parse_args()
    import json

    print(
        json.dumps(
            scaled_hessian(args.patients, args.profile, args.iiv_parameterization, args.seed)
        )
    )


if __name__ == "__main__":
    main()
