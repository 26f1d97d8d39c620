"""Reading valid datasets: the Cohort schema of docs/contracts.md."""

import numpy as np
import pandas as pd
import pytest

from pkpd.data import Cohort, from_dataframe, read_dataset

BASIC = """
ID,TIME,AMT,DV,EVID,MDV,CMT,DVID,WT
1,0,100,.,1,1,1,1,70
1,1,.,5.5,0,0,2,1,70
1,2,.,4.25,0,0,2,1,70
2,0,50,.,1,1,1,1,80.5
2,0.5,.,2,0,0,2,1,80.5
"""


def test_basic_schema(write_csv):
    path = write_csv(BASIC)
    c = read_dataset(path, time_unit="h")
    ds = c.ds
    assert isinstance(c, Cohort)
    assert dict(ds.sizes) == {"subject": 2, "obs": 2, "dose": 1, "record": 3}
    assert c.subjects.tolist() == [1, 2] and c.subjects.dtype == np.int64
    assert c.n_subjects == 2 and c.source == str(path) and c.time_unit == "h"
    np.testing.assert_array_equal(ds.obs_time.values, [[1, 2], [0.5, np.nan]])
    np.testing.assert_array_equal(ds.obs_dv.values, [[5.5, 4.25], [2, np.nan]])
    np.testing.assert_array_equal(ds.obs_mask.values, [[True, True], [True, False]])
    np.testing.assert_array_equal(ds.obs_mdv.values, [[False, False], [False, True]])
    np.testing.assert_array_equal(ds.obs_line.values, [[3, 4], [6, -1]])
    np.testing.assert_array_equal(ds.obs_cmt.values, [[2, 2], [2, -1]])
    np.testing.assert_array_equal(ds.obs_dvid.values[:, 0], [1, 1])
    assert ds.obs_cens.dtype == np.int8 and not ds.obs_cens.values.any()
    assert np.isnan(ds.obs_limit.values).all()
    np.testing.assert_array_equal(ds.dose_amt.values, [[100], [50]])
    np.testing.assert_array_equal(ds.dose_line.values, [[2], [5]])
    np.testing.assert_array_equal(ds.dose_evid.values, [[1], [1]])
    np.testing.assert_array_equal(ds.dose_cmt.values, [[1], [1]])
    assert ds.dose_addl.dtype == np.int64
    for name in ("rate", "dur", "ii"):
        np.testing.assert_array_equal(ds[f"dose_{name}"].values, 0.0)
    np.testing.assert_array_equal(ds.cov_WT.values, [70, 80.5])
    assert "tvcov_WT" not in ds
    np.testing.assert_array_equal(ds.rec_line.values, [[2, 3, 4], [5, 6, -1]])
    assert ds.attrs["columns"] == ["ID", "TIME", "AMT", "DV", "EVID", "MDV", "CMT", "DVID", "WT"]
    assert c.covariate_names == ["WT"] and c.endpoints == [1]
    assert repr(c) == (
        f"<Cohort {str(path)!r}: 2 subjects, 3 observations, 2 doses, covariates: WT, time unit: h>"
    )


def test_lower_case_names_and_missing_spellings(write_csv):
    c = read_dataset(
        write_csv("""
        id,time,amt,dv,wt
        1,0,100,,70
        1,1,NA,5,70
        1,2,.,6,NaN
        """)
    )
    assert c.columns == ["id", "time", "amt", "dv", "wt"]
    assert c.covariate_names == ["WT"]
    np.testing.assert_array_equal(c.ds.obs_dv.values, [[5, 6]])
    np.testing.assert_array_equal(c.ds.dose_amt.values, [[100]])
    assert c.time_unit is None


def test_evid_derived_from_amt(write_csv):
    # No EVID: AMT > 0 is a dose, everything else an observation (MDV=1 keeps it unused).
    c = read_dataset(
        write_csv("""
        ID,TIME,AMT,DV,MDV
        1,0,10,.,1
        1,1,0,3,0
        1,2,.,.,1
        """)
    )
    np.testing.assert_array_equal(c.ds.dose_time.values, [[0]])
    np.testing.assert_array_equal(c.ds.obs_time.values, [[1, 2]])
    np.testing.assert_array_equal(c.ds.obs_mdv.values, [[False, True]])
    np.testing.assert_array_equal(c.ds.obs_dvid.values, [[1, 1]])
    np.testing.assert_array_equal(c.ds.obs_cmt.values, [[-1, -1]])


def test_mdv_one_hides_a_given_dv(write_csv):
    c = read_dataset(
        write_csv("""
        ID,TIME,DV,MDV
        1,1,3,1
        1,2,4,0
        """)
    )
    np.testing.assert_array_equal(c.ds.obs_dv.values, [[np.nan, 4]])
    np.testing.assert_array_equal(c.ds.obs_mdv.values, [[True, False]])
    assert c.ds.sizes["dose"] == 0


def test_evid_2_3_4_and_time_restart(write_csv):
    c = read_dataset(
        write_csv("""
        ID,TIME,AMT,DV,EVID,CMT,RATE,II,ADDL
        1,0,100,.,1,1,10,12,3
        1,5,.,.,2,2,.,.,.
        1,6,.,.,3,.,.,.,.
        1,0,80,.,4,2,.,.,.
        1,1,.,3,0,2,.,.,.
        """)
    )
    ds = c.ds
    np.testing.assert_array_equal(ds.dose_evid.values, [[1, 3, 4]])
    np.testing.assert_array_equal(ds.dose_amt.values, [[100, 0, 80]])
    np.testing.assert_array_equal(ds.dose_rate.values, [[10, 0, 0]])
    np.testing.assert_array_equal(ds.dose_ii.values, [[12, 0, 0]])
    np.testing.assert_array_equal(ds.dose_addl.values, [[3, 0, 0]])
    np.testing.assert_array_equal(ds.dose_cmt.values, [[1, -1, 2]])
    np.testing.assert_array_equal(ds.dose_line.values, [[2, 4, 5]])
    # EVID 2 is kept as an observation not to be used (a prediction time).
    np.testing.assert_array_equal(ds.obs_time.values, [[5, 1]])
    np.testing.assert_array_equal(ds.obs_mdv.values, [[True, False]])
    np.testing.assert_array_equal(ds.obs_line.values, [[3, 6]])


def test_string_ids_cmt_and_dvid(write_csv):
    c = read_dataset(
        write_csv("""
        ID,TIME,AMT,DV,CMT,DVID
        A1,0,100,.,depot,.
        A1,1,.,5,central,conc
        B2,0,100,.,depot,.
        B2,1,.,0.2,.,effect
        """)
    )
    assert c.subjects.tolist() == ["A1", "B2"] and c.subjects.dtype.kind == "U"
    assert c.ds.obs_cmt.values.tolist() == [["central"], [""]]
    assert c.ds.dose_cmt.values.tolist() == [["depot"], ["depot"]]
    assert c.endpoints == ["conc", "effect"]


def test_integer_cmt_written_as_float(write_csv):
    c = read_dataset(write_csv("ID,TIME,AMT,CMT\n1,0,5,1.0\n1,1,5,2.0"))
    assert c.ds.dose_cmt.values.tolist() == [[1, 2]]


def test_time_varying_covariate_carried_forward(write_csv):
    c = read_dataset(
        write_csv("""
        ID,TIME,AMT,DV,WT,CRCL
        1,0,100,.,.,90
        1,1,.,5,70,90
        1,2,.,4,.,.
        1,3,.,3,72,90
        2,0,100,.,60,50
        2,1,.,5,60,50
        """)
    )
    ds = c.ds
    np.testing.assert_array_equal(ds.cov_WT.values, [70, 60])
    np.testing.assert_array_equal(ds.cov_CRCL.values, [90, 50])
    np.testing.assert_array_equal(ds.tvcov_WT.values, [[70, 70, 72], [60, np.nan, np.nan]])
    assert "tvcov_CRCL" not in ds
    assert c.covariate_names == ["WT", "CRCL"]


def test_covariates_argument_selects_columns(write_csv):
    c = read_dataset(
        write_csv("""
        ID,TIME,DV,wt,SEX,SITE
        1,1,5,70,1,Paris
        """),
        covariates=["WT", "sex"],
    )
    assert c.covariate_names == ["WT", "SEX"]
    assert "cov_SITE" not in c.ds
    assert c.ds.rec_SITE.values.tolist() == [["Paris"]]


def test_lloq_with_blq_flag(write_csv):
    c = read_dataset(
        write_csv("""
        ID,TIME,DV,LLOQ,BLQ
        1,1,5,0.1,0
        1,2,.,0.1,1
        1,3,0.05,0.1,1
        """)
    )
    np.testing.assert_array_equal(c.ds.obs_cens.values, [[0, 1, 1]])
    np.testing.assert_array_equal(c.ds.obs_limit.values, [[0.1, 0.1, 0.1]])
    # A censored observation without DV is a real observation (not MDV).
    np.testing.assert_array_equal(c.ds.obs_mdv.values, [[False, False, False]])


def test_lloq_without_flag_censors_values_below(write_csv):
    c = read_dataset(
        write_csv("""
        ID,TIME,DV,LLOQ
        1,1,5,0.1
        1,2,0.05,0.1
        1,3,0.1,0.1
        1,4,7,.
        """)
    )
    np.testing.assert_array_equal(c.ds.obs_cens.values, [[0, 1, 0, 0]])
    np.testing.assert_array_equal(c.ds.obs_limit.values, [[0.1, 0.1, 0.1, np.nan]])


def test_cens_and_limit(write_csv):
    c = read_dataset(
        write_csv("""
        ID,TIME,DV,CENS,LIMIT
        1,1,5,0,.
        1,2,.,1,0.5
        1,3,.,-1,100
        """)
    )
    np.testing.assert_array_equal(c.ds.obs_cens.values, [[0, 1, -1]])
    np.testing.assert_array_equal(c.ds.obs_limit.values, [[np.nan, 0.5, 100]])


def test_comment_and_blank_lines_skipped_line_numbers_kept(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("ID,TIME,DV\n# a comment\n1,1,5\n\n1,2,6\r\n")
    c = read_dataset(path)
    np.testing.assert_array_equal(c.ds.obs_line.values, [[3, 5]])


def test_no_dv_column_gives_prediction_times(write_csv):
    c = read_dataset(write_csv("ID,TIME,AMT,EVID\n1,0,100,1\n1,4,.,0"))
    np.testing.assert_array_equal(c.ds.obs_time.values, [[4]])
    np.testing.assert_array_equal(c.ds.obs_mdv.values, [[True]])


def test_subject_without_doses_or_observations(write_csv):
    c = read_dataset(write_csv("ID,TIME,AMT,DV\n1,0,100,.\n2,1,.,4"))
    np.testing.assert_array_equal(c.ds.dose_mask.values, [[True], [False]])
    np.testing.assert_array_equal(c.ds.obs_mask.values, [[False], [True]])


def test_from_dataframe_matches_csv(write_csv):
    df = pd.DataFrame(
        {
            "ID": [1, 1, 2],
            "TIME": [0.0, 1.5, 0.0],
            "AMT": [100.0, np.nan, 20.0],
            "DV": [np.nan, 3.25, np.nan],
            "WT": [70, 70, 81],
        }
    )
    c = from_dataframe(df, source="frame")
    assert c.source == "frame"
    np.testing.assert_array_equal(c.ds.obs_line.values, [[3], [-1]])
    from_csv = read_dataset(
        write_csv("ID,TIME,AMT,DV,WT\n1,0.0,100.0,.,70\n1,1.5,.,3.25,70\n2,0.0,20.0,.,81")
    )
    ds = from_csv.ds.copy()
    ds.attrs["source"] = "frame"
    assert ds.identical(c.ds)


def test_cohort_rejects_foreign_dataset():
    import xarray as xr

    with pytest.raises(ValueError, match="not a Cohort dataset"):
        Cohort(xr.Dataset())


def test_trailing_empty_columns_are_dropped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("ID,TIME,DV,,\n1,0,5,,\n1,1,6,,\n")
    assert read_dataset(path).columns == ["ID", "TIME", "DV"]


def test_integer_ids_compared_by_value(write_csv):
    c = read_dataset(write_csv("ID,TIME,DV\n1,0,5\n01,1,6"))
    assert c.subjects.tolist() == [1]
    np.testing.assert_array_equal(c.ds.obs_time.values, [[0, 1]])


def test_quoted_field_spanning_lines_keeps_line_numbers(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('ID,TIME,DV,NOTE\n1,0,5,"two\nlines"\n1,1,6,x\n')
    c = read_dataset(path, covariates=[])
    np.testing.assert_array_equal(c.ds.obs_line.values, [[2, 4]])
    assert c.ds.rec_NOTE.values.tolist() == [["two\nlines", "x"]]


def test_evid0_without_dv_and_mdv1_is_kept(write_csv):
    c = read_dataset(write_csv("ID,TIME,DV,EVID,MDV\n1,1,.,0,1\n1,2,4,0,0"))
    np.testing.assert_array_equal(c.ds.obs_time.values, [[1, 2]])
    np.testing.assert_array_equal(c.ds.obs_mdv.values, [[True, False]])
    np.testing.assert_array_equal(c.ds.obs_line.values, [[2, 3]])
