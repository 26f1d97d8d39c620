"""bind: compartments, endpoints, covariates, time units, located errors."""

import numpy as np
import pandas as pd
import pytest
from handmodels import make_cohort

from pkpd.errors import DatasetError
from pkpd.events import BOLUS, INFUSION_END, INFUSION_START, RESET
from pkpd.solve import bind
from pkpd.solve.bind import time_factor


def frame(cmt=None, dvid=None, extra=None):
    rows = [
        dict(ID=1, TIME=0.0, EVID=1, AMT=100.0),
        dict(ID=1, TIME=1.0, EVID=0, DV=1.0),
        dict(ID=1, TIME=12.0, EVID=1, AMT=50.0, RATE=25.0),
        dict(ID=1, TIME=13.0, EVID=0, DV=2.0),
        dict(ID=2, TIME=0.0, EVID=1, AMT=80.0, II=12.0, ADDL=1),
        dict(ID=2, TIME=2.0, EVID=0, DV=3.0),
    ]
    df = pd.DataFrame(rows)
    if cmt is not None:
        df["CMT"] = cmt
    if dvid is not None:
        df["DVID"] = dvid
    for k, v in (extra or {}).items():
        df[k] = v
    return df


def test_default_route_and_lines(model1):
    b = bind(model1, make_cohort(frame()))
    ev = b.events
    assert list(ev.kind[0, :3]) == [BOLUS, INFUSION_START, INFUSION_END]
    assert ev.cmt[0, 0] == model1.dose_targets["oral"]  # no CMT column: first dose route
    assert list(ev.seq[0, :1]) == [2.0]
    np.testing.assert_array_equal(b.obs_seq[0], [3.0, 5.0])
    np.testing.assert_array_equal(b.obs_endpoint, 0)
    # padding observation of subject 2 is masked, placed before everything
    assert b.obs_mask.tolist() == [[True, True], [True, False]]
    assert b.obs_seq[1, 1] == -np.inf
    np.testing.assert_array_equal(b.subjects, [1, 2])


@pytest.mark.parametrize(
    "cmt, expected",
    [
        ([2, -1, 1, -1, 2, -1], [1, 0, 1]),  # 1-based integers
        (["central", "", "depot", "", "iv", ""], [1, 0, 1]),  # state and route names
        (["oral", "", "Central", "", "", ""], [0, 1, 0]),  # missing -> first route
    ],
)
def test_compartment_mapping(model1, cmt, expected):
    ev = bind(model1, make_cohort(frame(cmt=cmt))).events
    got = [int(ev.cmt[0, 0]), int(ev.cmt[0, 1]), int(ev.cmt[1, 0])]
    assert got == expected


def test_unknown_compartment_is_located(model1):
    with pytest.raises(DatasetError) as info:
        bind(model1, make_cohort(frame(cmt=[1, -1, 7, -1, 1, -1]), source="study.csv"))
    problem = info.value.first
    assert (problem.file, problem.row, problem.column) == ("study.csv", 4, "CMT")
    assert "7" in problem.message


def test_endpoint_mapping(model2):
    b = bind(model2, make_cohort(frame(dvid=[0, 2, 0, 1, 0, "periph_conc"])))
    assert b.obs_endpoint.tolist() == [[1, 0], [1, 0]]


def test_unknown_endpoint_is_located(model2):
    with pytest.raises(DatasetError) as info:
        bind(model2, make_cohort(frame(dvid=[0, 1, 0, 9, 0, 1])))
    problem = info.value.first
    assert (problem.row, problem.column) == (5, "DVID")


def test_covariates_default_and_required(model1):
    b = bind(model1, make_cohort(frame()))
    np.testing.assert_array_equal(b.covariates, [[70.0], [70.0]])
    b = bind(model1, make_cohort(frame(extra={"WT": [50.0] * 4 + [90.0] * 2}), covariates=["WT"]))
    np.testing.assert_array_equal(b.covariates, [[50.0], [90.0]])

    import dataclasses

    required = dataclasses.replace(model1, covariate_defaults=(np.nan,))
    with pytest.raises(DatasetError, match="WT"):
        bind(required, make_cohort(frame()))


def test_time_unit_conversion(model1):
    hours = bind(model1, make_cohort(frame(), time_unit="h"))
    df = frame()
    df["TIME"] = df["TIME"] / 24.0
    df["II"] = df.get("II", 0.0) / 24.0
    df["RATE"] = df.get("RATE", 0.0) * 24.0  # mg/day
    days = bind(model1, make_cohort(df, time_unit="day"))
    assert days.time_factor == pytest.approx(24.0)
    np.testing.assert_allclose(days.obs_time, hours.obs_time, rtol=1e-14)
    np.testing.assert_allclose(days.events.time, hours.events.time, rtol=1e-14)
    np.testing.assert_allclose(days.events.rate, hours.events.rate, rtol=1e-14)
    assert time_factor(None, "h") == 1.0
    assert time_factor("min", "h") == pytest.approx(1 / 60)


def test_reset_records(model1):
    df = pd.DataFrame(
        [
            dict(ID=1, TIME=0.0, EVID=1, AMT=100.0),
            dict(ID=1, TIME=5.0, EVID=3, AMT=0.0),
            dict(ID=1, TIME=6.0, EVID=0, DV=1.0),
        ]
    )
    ev = bind(model1, make_cohort(df)).events
    assert list(ev.kind[0]) == [BOLUS, RESET]
