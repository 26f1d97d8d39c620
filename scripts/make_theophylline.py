"""Build pkpd/data/datasets/theophylline.csv from the shared theophylline data.

Source: /work/shared/data/theophylline/theo_sd.csv (nlmixr2data, rxode2 event table). Changes:
EVID 101 (rxode2 code: bolus into CMT 1) -> EVID 1; dose rows get DV "." and MDV 1; AMT "." on
observation rows; a DVID column (1 = concentration); AMT recomputed as Dose (mg/kg) x Wt (kg)
from Theoph.csv and rounded to 6 decimals, which removes float noise (319.99199999999996 ->
319.992). The observations are checked equal to those of Theoph.csv (R datasets::Theoph).

Usage: python scripts/make_theophylline.py [--source DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pkpd.data import from_dataframe  # noqa: E402

SOURCE = Path("/work/shared/data/theophylline")
TARGET = ROOT / "pkpd" / "data" / "datasets" / "theophylline.csv"


def main(source: Path = SOURCE, target: Path = TARGET) -> None:
    """Convert ``source/theo_sd.csv`` into ``target``, checking it against ``Theoph.csv``."""
    sd = pd.read_csv(source / "theo_sd.csv")
    theoph = pd.read_csv(source / "Theoph.csv")
    assert set(sd["EVID"]) == {0, 101}, "unexpected EVID codes in theo_sd.csv"

    dose = sd["EVID"] == 101
    obs = sd[~dose]
    # The observations must be exactly those of R's Theoph (same subjects, order, times, values).
    np.testing.assert_array_equal(obs["ID"].to_numpy(), theoph["Subject"].to_numpy())
    np.testing.assert_array_equal(obs["TIME"].to_numpy(), theoph["Time"].to_numpy())
    np.testing.assert_array_equal(obs["DV"].to_numpy(), theoph["conc"].to_numpy())
    np.testing.assert_array_equal(obs["WT"].to_numpy(), theoph["Wt"].to_numpy())
    assert (obs["CMT"] == 2).all() and (sd.loc[dose, "CMT"] == 1).all()
    assert (sd.loc[dose, "TIME"] == 0).all() and dose.sum() == theoph["Subject"].nunique()

    per_subject = theoph.groupby("Subject", sort=False).first()
    amt = (per_subject["Dose"] * per_subject["Wt"]).round(6)
    np.testing.assert_allclose(sd.loc[dose, "AMT"].to_numpy(), amt.to_numpy(), rtol=1e-12)

    out = pd.DataFrame(
        {
            "ID": sd["ID"].astype("int64"),
            "TIME": sd["TIME"].astype("float64"),
            "DV": sd["DV"].where(~dose),
            "AMT": sd["ID"].map(amt).where(dose),
            "EVID": np.where(dose, 1, 0),
            "MDV": np.where(dose, 1, 0),
            "CMT": sd["CMT"].astype("int64"),
            "DVID": 1,
            "WT": sd["WT"].astype("float64"),
        }
    )
    cohort = from_dataframe(out, source="theophylline", time_unit="h")
    cohort.to_csv(target)
    print(f"wrote {target}: {cohort!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder with theo_sd.csv")
    parser.add_argument("--output", type=Path, default=TARGET, help="CSV file to write")
    args = parser.parse_args()
    main(args.source, args.output)
