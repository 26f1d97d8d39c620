"""Build the bundled SYNTHETIC dataset pkpd/data/datasets/virtual_cart.csv (virtual CAR-T patients).

60 virtual patients (seed 2024) drawn by `pkpd.data.virtual.draw_patients`, simulated with the
``cart_crs`` library model at its typical values with between-subject variability, managed with
reactive tocilizumab (CRS grade >= 2) and dexamethasone (ICANS grade >= 2), sampled on the
schedule of `pkpd.data.virtual.SAMPLING` with residual error and LLOQs. Nothing here is patient
data. Same seed, same file.

Usage: python scripts/make_virtual_cohort.py [--patients 60] [--seed 2024] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pkpd.data import from_dataframe  # noqa: E402
from pkpd.data import virtual as V  # noqa: E402

TARGET = ROOT / "pkpd" / "data" / "datasets" / "virtual_cart.csv"
N_PATIENTS, SEED = 60, 2024


def build(n_patients: int = N_PATIENTS, seed: int = SEED):
    """Return the cohort (a `Cohort`) of ``n_patients`` virtual patients."""
    patients = V.draw_patients(n_patients, seed)
    records = V.make_virtual_cohort(patients, seed)
    return from_dataframe(records, source="virtual_cart", time_unit="day")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=N_PATIENTS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--output", type=Path, default=TARGET)
    args = parser.parse_args()
    cohort = build(args.patients, args.seed)
    cohort.to_csv(args.output)
    print(f"wrote {args.output}: {cohort!r}")


if __name__ == "__main__":
    main()
