"""Virtual CAR-T patients and the bundled synthetic cohort (pkpd.data.virtual)."""

import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pkpd
from pkpd.data import from_dataframe, load_dataset, read_dataset
from pkpd.data import virtual as V
from pkpd.solve import bind

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return pkpd.load_model("cart_crs").compile()


def test_patients_are_reproducible_and_plausible():
    a, b = V.draw_patients(500, 11), V.draw_patients(500, 11)
    pd.testing.assert_frame_equal(a, b)
    assert not V.draw_patients(500, 12).equals(a)
    assert list(a.columns) == ["ID", "TUMOR", "WT", "NETP", "PRODUCT", "CART_DOSE"]
    assert 60 < a["TUMOR"].median() < 150  # Kimmel 2021 median 94.86 mL
    assert 65 < a["WT"].median() < 85 and 0.7 < a["NETP"].median() < 1.4
    assert set(a["PRODUCT"]) == {0, 1}
    tisa = a["PRODUCT"] == 0
    assert (a.loc[tisa, "CART_DOSE"] == 1e8).all()
    assert (a.loc[~tisa, "CART_DOSE"] <= 2e8).all()


def test_dose_rules():
    np.testing.assert_allclose(V.cart_dose([0, 1, 1], [70, 70, 120]), [1e8, 1.4e8, 2e8])
    np.testing.assert_allclose(V.tocilizumab_dose([20, 70, 150]), [240, 560, 800])


def test_cohort_records_read_back_and_bind(model):
    patients = V.draw_patients(5, 3)
    records = V.make_virtual_cohort(patients, 3, model=model)
    again = V.make_virtual_cohort(patients, 3, model=model)
    pd.testing.assert_frame_equal(records, again)  # same seed, same cohort
    cohort = from_dataframe(records, time_unit="day", source="virtual")
    assert cohort.n_subjects == 5
    assert cohort.covariate_names == ["TUMOR", "WT", "NETP", "PRODUCT"]
    bound = bind(model, cohort)  # every CMT and DVID is one of the model's
    assert bound.n_subjects == 5
    obs = records[records["EVID"] == 0]
    grades = obs[obs["DVID"].isin([10, 11])]["DV"]
    assert set(grades.unique()) <= {0, 1, 2, 3, 4}
    # Daily grades for 4 weeks, CAR-T counts on the CAR-T schedule.
    per = obs[obs["ID"] == 1]
    assert sorted(per[per["DVID"] == 10]["TIME"]) == list(V.GRADE_DAYS)
    assert sorted(per[per["DVID"] == 1]["TIME"]) == [float(d) for d in V.CART_DAYS]
    # Censoring: BLQ records carry an LLOQ and no DV; the pre-infusion CAR-T count is BLQ.
    blq = obs[obs["BLQ"] == 1]
    assert blq["DV"].isna().all() and blq["LLOQ"].notna().all()
    assert (obs[(obs["DVID"] == 1) & (obs["TIME"] == 0)]["BLQ"] == 1).all()
    doses = records[records["EVID"] == 1]
    assert (doses.groupby("ID")["CMT"].first() == "cart_iv").all()
    assert set(doses["CMT"]) <= {"cart_iv", "tocilizumab_iv", "dexamethasone_iv"}


def test_rescue_doses_follow_the_grades(model):
    patients = V.draw_patients(40, 5)
    # Output on the 12-hourly assessment times of the rescue policies.
    courses = V.simulate_courses(model, patients, 5, times=np.arange(0.0, 28.01, 0.5))
    crs = courses.endpoints.index("crs_grade")
    for i, doses in enumerate(courses.doses):
        toc = doses[doses["route"] == "tocilizumab_iv"]
        worst = courses.values[i, :, crs].max()
        if worst < 2:
            assert toc.empty
        assert len(toc) <= 4
        if len(toc) > 1:
            assert np.diff(toc["TIME"]).min() >= 8 / 24 - 1e-9
    got = courses.outcomes["doses_tocilizumab"].to_numpy()
    assert (got == [int((d["route"] == "tocilizumab_iv").sum()) for d in courses.doses]).all()
    assert got.sum() > 0  # some patients needed rescue


def test_bundled_cohort(model):
    cohort = load_dataset("virtual_cart")
    assert cohort.n_subjects == 60 and cohort.time_unit == "day"
    assert cohort.covariate_names == ["TUMOR", "WT", "NETP", "PRODUCT"]
    bind(model, cohort)
    md = (ROOT / "pkpd" / "data" / "datasets" / "virtual_cart.md").read_text()
    assert "SYNTHETIC" in md and "not patient data" in md


@pytest.mark.slow
def test_bundled_cohort_is_regenerated_by_its_script(tmp_path):
    script = runpy.run_path(str(ROOT / "scripts" / "make_virtual_cohort.py"))
    cohort = script["build"]()
    out = tmp_path / "virtual_cart.csv"
    cohort.to_csv(out)
    new = read_dataset(out, time_unit="day").to_dataframe()
    old = load_dataset("virtual_cart").to_dataframe()
    pd.testing.assert_frame_equal(new, old, check_exact=False, rtol=1e-6)
