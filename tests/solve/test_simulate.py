"""simulate: parameters, random effects, grid output, units, compilation cache."""

import numpy as np
import pandas as pd
import pytest
from handmodels import make_cohort

from pkpd.solve import Solver, bind, simulate
from pkpd.solve import simulate as simulate_module  # noqa: F401
from pkpd.solve.simulate import trace_count

SOLVER = Solver(rtol=1e-10, atol=1e-12)
GRID = np.linspace(0.0, 24.0, 7)


@pytest.fixture(scope="module")
def cohort():
    rows = []
    for sid, wt in (("A", 50.0), ("B", 70.0), ("C", 100.0)):
        rows += [
            dict(ID=sid, TIME=0.0, EVID=1, AMT=100.0, CMT="oral", WT=wt),
            dict(ID=sid, TIME=0.0, EVID=0, DV=0.0, WT=wt),
            dict(ID=sid, TIME=1.0, EVID=0, DV=1.0, WT=wt),
            dict(ID=sid, TIME=12.0, EVID=1, AMT=50.0, CMT="iv", WT=wt),
            dict(ID=sid, TIME=12.0, EVID=0, DV=1.0, WT=wt),
            dict(ID=sid, TIME=20.0, EVID=0, DV=1.0, WT=wt),
        ]
    return make_cohort(pd.DataFrame(rows), covariates=["WT"])


@pytest.fixture(scope="module")
def typical(model1, cohort):
    return simulate(model1, cohort, solver=SOLVER, times=GRID)


def test_output_layout(model1, typical):
    sim = typical
    assert list(sim["subject"].values) == ["A", "B", "C"]
    assert sim["pred"].dims == ("subject", "obs")
    assert sim["pred_grid"].dims == ("subject", "time", "endpoint")
    assert sim["state_grid"].dims == ("subject", "time", "state")
    assert sim["pred"].attrs["units"] == "mg/L"
    assert sim["time"].attrs["units"] == "h"
    assert list(sim["state_unit"].values) == ["mg", "mg"]
    assert sim["ok"].all()
    # the sample at 12 h is on a later line than the dose at 12 h: post-dose
    central = sim["state_grid"].sel(state="central")
    assert float(sim["pred"][0, 2]) == pytest.approx(
        float(central.sel(subject="A", time=12.0)) / float(sim["params"][0, 1]), rel=1e-12
    )
    # covariate effect CL ~ WT^0.75
    cl = sim["params"].sel(parameter="CL").values
    np.testing.assert_allclose(cl, 3.0 * (np.array([50, 70, 100]) / 70) ** 0.75)


def test_grid_and_observations_agree(typical):
    # observation at 20 h vs the analytic path on the same grid
    sim = typical
    assert np.all(np.isfinite(sim["pred"].values))
    assert np.all(sim["pred_grid"].sel(time=0.0).values == 0.0)


def test_analytic_auto_path_agrees(model1, cohort, typical):
    fast = simulate(model1, cohort, solver=Solver("auto"), times=GRID)
    np.testing.assert_allclose(fast["pred"], typical["pred"], rtol=1e-7)
    np.testing.assert_allclose(fast["state_grid"], typical["state_grid"], rtol=1e-7, atol=1e-10)


def test_params_dict_array_and_eta(model1, cohort, typical):
    bound = bind(model1, cohort)
    by_dict = simulate(model1, bound, {"CL": [3.0, 3.0, 3.0]}, solver=SOLVER)
    np.testing.assert_allclose(by_dict["pred"], simulate(model1, bound, solver=SOLVER)["pred"])
    individual = typical["params"].values[:, : model1.n_parameters]
    by_array = simulate(model1, bound, individual, solver=SOLVER)
    # typical was run with a grid to 24 h: a different last interval, same answer to tolerance
    np.testing.assert_allclose(by_array["pred"], typical["pred"], rtol=1e-9)
    eta = np.zeros((3, 2))
    eta[:, 0] = np.log(2.0)  # doubles CL
    with_eta = simulate(model1, bound, eta=eta, solver=SOLVER)
    np.testing.assert_allclose(
        with_eta["params"].sel(parameter="CL"), 2 * typical["params"].sel(parameter="CL")
    )
    with pytest.raises(ValueError, match="unknown parameter"):
        simulate(model1, bound, {"CLX": 1.0})
    with pytest.raises(ValueError, match="shape"):
        simulate(model1, bound, np.ones((3, 2)))


def test_repeated_calls_do_not_retrace(model1, cohort):
    bound = bind(model1, cohort)
    simulate(model1, bound, {"CL": 2.0}, solver=SOLVER, times=GRID)
    before = trace_count()
    for cl in (2.5, 3.5):
        simulate(model1, bound, {"CL": cl}, solver=SOLVER, times=GRID)
    assert trace_count() == before
