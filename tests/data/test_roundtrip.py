"""Writing back: exact round trip through CSV, DataFrame and NetCDF."""

import numpy as np
import pytest
import xarray as xr

from pkpd.data import Cohort, from_dataframe, read_dataset
from pkpd.errors import DatasetError

MESSY = """\
id,Time,AMT,dv,EVID,MDV,CMT,DVID,RATE,II,ADDL,LLOQ,BLQ,wt,AGE,SITE,Flag
101,0,100,.,1,1,depot,conc,0,12,2,.,.,70.25,41,north,1
101,0.1,,0.30000000000000004,0,0,central,conc,,,,0.05,0,70.25,,"a,b",
101,1.2e0,.,1.5e-300,0,0,central,conc,.,.,.,0.05,1,71,41,north,.
101,2.5,.,12345678.123456789,0,1,central,effect,.,.,.,0.05,0,71,41,north,.
202,0,2.5e3,.,1,1,depot,conc,100.0,.,.,.,.,80,60,south,007
202,1,.,-0.0,2,1,central,conc,.,.,.,.,.,80,60,south,.
"""


@pytest.fixture
def messy(tmp_path):
    path = tmp_path / "messy.csv"
    path.write_text(MESSY)
    return path


def test_csv_round_trip_is_identical(messy, tmp_path):
    first = read_dataset(messy, time_unit="day", covariates=["WT", "AGE"])
    out = tmp_path / "out.csv"
    first.to_csv(out)
    second = read_dataset(out, time_unit="day", covariates=["WT", "AGE"])
    expected = first.ds.copy()
    expected.attrs["source"] = str(out)
    xr.testing.assert_identical(second.ds, expected)


def test_second_write_is_byte_identical(messy, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    read_dataset(messy, covariates=["WT"]).to_csv(a)
    read_dataset(a, covariates=["WT"]).to_csv(b)
    assert a.read_bytes() == b.read_bytes()


def test_written_text_conventions(messy, tmp_path):
    out = tmp_path / "out.csv"
    read_dataset(messy, covariates=["WT"]).to_csv(out)
    lines = out.read_text().splitlines()
    assert lines[0] == "id,Time,AMT,dv,EVID,MDV,CMT,DVID,RATE,II,ADDL,LLOQ,BLQ,wt,AGE,SITE,Flag"
    # floats with repr, integers as integers, missing as ".", text quoted when needed
    assert lines[1] == "101,0.0,100.0,.,1,1,depot,conc,0.0,12,2,.,.,70.25,41,north,1"
    assert lines[2] == (
        '101,0.1,.,0.30000000000000004,0,0,central,conc,.,.,.,0.05,0,70.25,.,"a,b",.'
    )
    assert lines[3].split(",")[1:4] == ["1.2", ".", "1.5e-300"]
    assert lines[4].split(",")[3] == repr(12345678.123456789) == "12345678.12345679"
    assert lines[5].split(",")[2] == "2500.0" and lines[5].endswith(",7")
    assert lines[6].split(",")[3] == "-0.0"


def test_numbers_do_not_drift(messy):
    ds = read_dataset(messy, covariates=["WT"]).ds
    assert ds.rec_DV.values[0, 1] == 0.1 + 0.2
    assert ds.rec_DV.values[0, 2] == 1.5e-300
    assert ds.rec_DV.values[0, 3] == 12345678.123456789


def test_to_dataframe_keeps_names_order_and_types(messy):
    df = read_dataset(messy, covariates=["WT"]).to_dataframe()
    assert list(df.columns) == MESSY.splitlines()[0].split(",")
    assert len(df) == 6
    assert df["id"].dtype == np.int64 and df["EVID"].dtype == np.int64
    assert str(df["ADDL"].dtype) == "Int64" and df["ADDL"].isna().sum() == 5
    assert df["Time"].dtype == np.float64
    assert df["SITE"].tolist() == ["north", "a,b", "north", "north", "south", "south"]
    assert df["AGE"].isna().tolist() == [False, True, False, False, False, False]


def test_dataframe_round_trip(messy):
    first = read_dataset(messy, covariates=["WT"])
    again = from_dataframe(first.to_dataframe(), source=first.source, covariates=["WT"])
    xr.testing.assert_identical(again.ds, first.ds)


def test_netcdf_round_trip(messy, tmp_path):
    for cohort in (
        read_dataset(messy, covariates=["WT"]),
        read_dataset(messy, time_unit="h", covariates=[]),
    ):
        path = tmp_path / "c.nc"
        cohort.to_netcdf(path)
        back = Cohort.from_netcdf(path)
        xr.testing.assert_identical(back.ds, cohort.ds)
        assert back.time_unit == cohort.time_unit


def test_subset_trims_and_keeps_lines(messy):
    cohort = read_dataset(messy, covariates=["WT"])
    sub = cohort.subset([202])
    assert sub.subjects.tolist() == [202]
    assert dict(sub.ds.sizes) == {"subject": 1, "obs": 1, "dose": 1, "record": 2}
    np.testing.assert_array_equal(sub.ds.rec_line.values, [[6, 7]])
    assert cohort.n_subjects == 2  # the original is untouched
    assert sub.to_dataframe()["id"].tolist() == [202, 202]
    assert cohort.subset([202, 101]).subjects.tolist() == [202, 101]
    with pytest.raises(DatasetError, match="unknown subject"):
        cohort.subset([3])
    with pytest.raises(DatasetError, match="twice"):
        cohort.subset([101, 101])


def test_netcdf_round_trip_string_ids(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("ID,TIME,AMT,DV,CMT\nA,0,1,.,depot\nA,1,.,2,central\nB,0,1,.,depot\n")
    cohort = read_dataset(path)
    cohort.to_netcdf(tmp_path / "s.nc")
    back = Cohort.from_netcdf(tmp_path / "s.nc")
    xr.testing.assert_identical(back.ds, cohort.ds)
    assert back.subjects.tolist() == ["A", "B"] and back.ds.dose_cmt.dtype.kind == "U"


def test_worst_per_day_keeps_the_days_worst_grade():
    import pandas as pd

    # Grades (DVID 10) every 8 h with one IL-6 (DVID 1) in between; time in hours.
    rows = [(1, 0.0, 5.0, 1, 1, 0)]  # ID, TIME, AMT/DV, EVID, DVID, MDV (a dose)
    rows += [(1, 8.0, 1, 0, 10, 0), (1, 16.0, 2, 0, 10, 0), (1, 20.0, 30.0, 0, 1, 0)]
    rows += [(1, 23.9, 2, 0, 10, 0), (1, 24.0, 0, 0, 10, 0), (1, 30.0, 3, 0, 10, 1)]
    rows += [(2, 1.0, 1, 0, 10, 0), (2, 2.0, 1, 0, 10, 0), (2, 50.0, 4, 0, 10, 0)]
    df = pd.DataFrame(
        [
            {
                "ID": i,
                "TIME": t,
                "AMT": v if evid == 1 else None,
                "DV": None if evid == 1 else v,
                "EVID": evid,
                "DVID": dvid,
                "MDV": 1 if evid == 1 else mdv,
                "CMT": 1,
            }
            for i, t, v, evid, dvid, mdv in rows
        ]
    )
    cohort = from_dataframe(df, time_unit="h")
    daily = cohort.worst_per_day([10])
    out = daily.to_dataframe()
    # Subject 1, day 0: grades 1, 2, 2 -> the first 2 (16 h); day 1: 0 and an MDV record
    # (not an observation: kept as it is). Subject 2: day 0 ties -> the first; day 2 alone.
    assert out["TIME"].tolist() == [0.0, 16.0, 20.0, 24.0, 30.0, 1.0, 50.0]
    assert out["DV"].tolist()[1:] == [2, 30.0, 0, 3, 1, 4]
    assert daily.n_doses == cohort.n_doses and daily.time_unit == "h"
    # A cohort without a time unit needs one; unknown endpoints are named.
    with pytest.raises(DatasetError, match="give time_unit="):
        from_dataframe(df).worst_per_day([10])
    assert from_dataframe(df).worst_per_day([10], time_unit="h").n_observations == 6
    with pytest.raises(DatasetError, match=r"no observations with DVID \[7\]"):
        cohort.worst_per_day([7])
