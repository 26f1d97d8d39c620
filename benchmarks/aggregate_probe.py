"""Predicted calibration rows of `aggregate_calibration.py` at given parameter values.

What the model can reach, e.g. whether a misfit row is held back by a ceiling of the model or by
the other rows and the priors: the rows' predicted probabilities (512 virtual patients per arm,
as the calibration) at a base point and with one parameter set to other values:

    python benchmarks/aggregate_probe.py --with-neuro \\
        --at rho=0.355,rho_cd28=1.01,c_crs1=2.79,c_crs2=5.38,c_crs3=7.65,c_crs4=8.54,\\
shift_penn=0.692,c_icans1=1.62,c_icans2=2.17,c_icans3=2.79,shift_label_nt=3.37 \\
        --vary shift_label_nt=6,10 --vary c_crs1=-5
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aggregate_calibration as ac  # noqa: E402


def _values(text: str) -> dict[str, float]:
    """``"a=1,b=2"`` as ``{"a": 1.0, "b": 2.0}``."""
    return {
        name.strip(): float(value)
        for name, _, value in (item.partition("=") for item in text.split(","))
    }


def probe(
    at: dict[str, float], vary: list[tuple[str, list[float]]], with_neuro: bool, patients: int
) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Rows' names, and (label, probabilities) at ``at`` and at each varied value."""
    from pkpd.data.trials import published_trials
    from pkpd.inference.aggregate import AggregateLikelihood

    prob = ac.calibration_problem(patients, 1, with_neuro=with_neuro)
    missing = [p for p in prob.parameters if p not in at]
    if missing:
        raise SystemExit(f"--at lacks {', '.join(missing)}")
    lik = AggregateLikelihood(
        prob.model,
        published_trials(*ac.CALIBRATION),
        prob.parameters,
        design=prob.design,
        priors=prob.priors,
        **prob.options,
    )
    points = [("at", dict(at))] + [
        (f"{name}={v:g}", dict(at, **{name: v})) for name, values in vary for v in values
    ]
    out = []
    for label, point in points:
        vec = np.array([point[p] for p in lik.parameters])
        lik.refresh(vec)
        out.append((label, [float(x) for x in lik.probabilities(vec)]))
    return [f"{r.trial}:{r.label}" for r in lik.rows], out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--with-neuro", action="store_true")
    ap.add_argument("--patients", type=int, default=512)
    ap.add_argument("--at", required=True, help="name=value,... for every calibrated parameter")
    ap.add_argument("--vary", action="append", default=[], help="name=v1,v2 (repeatable)")
    args = ap.parse_args()
    vary = [
        (name.strip(), [float(v) for v in values.split(",")])
        for name, _, values in (item.partition("=") for item in args.vary)
    ]
    warnings.simplefilter("ignore")
    rows, results = probe(_values(args.at), vary, args.with_neuro, args.patients)
    print("| row | " + " | ".join(label for label, _ in results) + " |")
    print("|---|" + "---|" * len(results))
    for i, row in enumerate(rows):
        print(f"| {row} | " + " | ".join(f"{100 * p[i]:.1f}%" for _, p in results) + " |")


if __name__ == "__main__":
    main()
