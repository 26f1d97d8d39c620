"""Composition: include, [terms], override, diamonds; a composed model equals its flat form."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import sympy as sp
from model_helpers import MINIMAL, line_of

from pkpd import expr as E
from pkpd.data import from_dataframe
from pkpd.errors import ModelError
from pkpd.model import library_path, load_model
from pkpd.solve import Solver, simulate

TIGHT = Solver(rtol=1e-10, atol=1e-12)

#: pk_2cmt_oral written out in one file, by hand (same names and units, no include, no terms).
FLAT_2CMT_ORAL = """
[model]
name = "flat_2cmt_oral"
time_unit = "h"

[states]
depot = { unit = "mg" }
central = { unit = "mg" }
periph = { unit = "mg" }

[covariates]
WT = { unit = "kg", default = 70 }

[parameters]
ka = { unit = "1/h", prior = "LogNormal(median=1.0, cv=1.0)" }
tlag = { unit = "h", value = 0.0 }
F = { unit = "1", value = 1.0 }

[parameters.CL]
unit = "L/h"
prior = "LogNormal(median=3.0, cv=1.0)"
covariates = { WT = "power(0.75, ref=70)" }

[parameters.V]
unit = "L"
prior = "LogNormal(median=30, cv=1.0)"
covariates = { WT = "power(1, ref=70)" }

[parameters.Q]
unit = "L/h"
prior = "LogNormal(median=5.0, cv=1.0)"
covariates = { WT = "power(0.75, ref=70)" }

[parameters.V2]
unit = "L"
prior = "LogNormal(median=50, cv=1.0)"
covariates = { WT = "power(1, ref=70)" }

[equations]
depot = "-ka * depot"
central = "ka * depot - CL / V * central - Q / V * central + Q / V2 * periph"
periph = "Q / V * central - Q / V2 * periph"

[doses.oral]
compartment = "depot"
lag = "tlag"
bioavailability = "F"

[doses.iv]
compartment = "central"

[observations.conc]
expression = "central / V"
unit = "mg/L"
error = "none"
"""


def test_terms_add_to_an_included_equation():
    spec = load_model("pk_2cmt_oral")
    assert list(spec.files)[0].endswith("pk_2cmt_oral.toml")
    assert list(spec.files)[1].endswith("pk_2cmt_iv.toml")
    assert spec.parameters["ka"].where.file.endswith("pk_2cmt_oral.toml")
    assert spec.states["central"].where.file.endswith("pk_2cmt_iv.toml")
    assert spec.states["depot"].where.file.endswith("pk_2cmt_oral.toml")
    # d central/dt = (the included 2-cmt IV equation) + ka * depot
    iv = load_model("pk_2cmt_iv")
    for form in (0, 1):  # converted and raw
        added = sp.expand(spec.equations["central"][form] - iv.equations["central"][form])
        assert added == E.symbol("ka") * E.symbol("depot")


def test_composed_model_equals_the_flat_model(write):
    composed = load_model("pk_2cmt_oral").compile()
    flat = load_model(write("flat.toml", FLAT_2CMT_ORAL)).compile()
    # the same right-hand side at random points (states matched by name)
    rng = np.random.default_rng(11)
    for _ in range(5):
        values = {n: rng.uniform(0.2, 5.0) for n in flat.parameters}
        values["WT"] = rng.uniform(40, 110)
        state = {s: rng.uniform(0, 100) for s in flat.states}

        def vec(model, values=values, state=state):
            names = model.parameters + model.covariates
            return jnp.asarray([values.get(n, 0.0) for n in names]), jnp.asarray(
                [state[s] for s in model.states]
            )

        pc, yc = vec(composed)
        pf, yf = vec(flat)
        dc = dict(zip(composed.states, np.asarray(composed.rhs(1.0, yc, pc)), strict=True))
        df = dict(zip(flat.states, np.asarray(flat.rhs(1.0, yf, pf)), strict=True))
        assert dc.keys() == df.keys()
        for s in dc:
            assert dc[s] == pytest.approx(df[s], rel=1e-13, abs=1e-12)
    # and the same predictions over a dosing history with oral and IV doses and a covariate
    rows = []
    for sid, wt in ((1, 55.0), (2, 90.0)):
        rows += [
            dict(ID=sid, TIME=0.0, EVID=1, AMT=100.0, CMT="oral", WT=wt),
            dict(ID=sid, TIME=12.0, EVID=1, AMT=50.0, CMT="iv", WT=wt),
        ]
        rows += [dict(ID=sid, TIME=t, EVID=0, DV=1.0, WT=wt) for t in (0.5, 2, 6, 13, 24, 48)]
    cohort = from_dataframe(pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable"))
    a = simulate(composed, cohort, solver=TIGHT)
    b = simulate(flat, cohort, solver=TIGHT)
    np.testing.assert_allclose(a["pred"], b["pred"], rtol=1e-9)
    a_params = a["params"].to_pandas()[list(flat.parameters)]
    b_params = b["params"].to_pandas()[list(flat.parameters)]
    np.testing.assert_allclose(a_params, b_params, rtol=1e-14)


def test_override_replaces_an_included_parameter(write):
    path = write(
        "faster.toml",
        """
        [model]
        name = "faster"
        time_unit = "h"
        include = ["pk_1cmt_oral"]

        [parameters]
        CL = { unit = "L/h", value = 5.0, override = true, source = "test: fixed clearance" }
        """,
    )
    spec = load_model(path)
    cl = spec.parameters["CL"]
    assert cl.value == 5.0 and cl.fixed and cl.prior is None and cl.iiv is None
    assert cl.where.file == str(path.resolve())
    assert cl.where.line == line_of(path, "CL = {")
    # the parameter keeps its place; its new value reaches the compiled model
    assert list(spec.parameters) == list(load_model("pk_1cmt_oral").parameters)
    model = spec.compile()
    assert model.typical_values[model.parameter_index("CL")] == 5.0
    assert "CL" not in model.iiv


def test_override_replaces_an_included_observation(write):
    path = write(
        "proportional.toml",
        """
        [model]
        name = "proportional"
        time_unit = "h"
        include = ["pk_1cmt_oral"]

        [parameters]
        sigma_prop = { unit = "1", value = 0.2, source = "test" }

        [observations.conc]
        override = true
        expression = "central / V"
        unit = "mg/L"
        error = "proportional"
        sigma_prop = "sigma_prop"
        """,
    )
    spec = load_model(path)
    base = load_model("pk_1cmt_oral")
    obs = spec.observations["conc"]
    assert obs.error == "proportional" and obs.sigma == {"sigma_prop": "sigma_prop"}
    assert obs.where.file == str(path.resolve())
    assert base.observations["conc"].error != "proportional"
    assert list(spec.observations) == list(base.observations)  # keeps its place (and DVID)
    assert obs.dvid == base.observations["conc"].dvid
    clash = write(
        "clash_obs.toml",
        '[model]\nname = "c"\ntime_unit = "h"\ninclude = ["pk_1cmt_oral"]\n\n'
        '[observations.conc]\nexpression = "central / V"\nunit = "mg/L"\n',
    )
    with pytest.raises(ModelError, match=r"duplicate observation 'conc'.*override = true"):
        load_model(clash)


def test_without_override_a_redefinition_is_an_error(write):
    path = write(
        "clash.toml",
        '[model]\nname = "c"\ntime_unit = "h"\ninclude = ["pk_1cmt_oral"]\n\n'
        '[parameters]\nCL = { unit = "L/h", value = 5.0 }\n',
    )
    with pytest.raises(ModelError) as exc:
        load_model(path)
    problem = exc.value.problems[0]
    assert (problem.file, problem.row, problem.column) == (str(path.resolve()), 7, "CL")
    lib = library_path() / "pk_1cmt_oral.toml"
    assert f"first defined at {lib.resolve()}, line {line_of(lib, '[parameters.CL]')}" in str(
        exc.value
    )


def test_diamond_includes_load_each_file_once(write):
    write(
        "leaf.toml",
        """
        [model]
        name = "leaf"
        time_unit = "h"

        [states]
        c = { unit = "mg" }

        [parameters]
        k = { unit = "1/h", value = 0.5 }

        [equations]
        c = "-k * c"
        """,
    )
    for side in ("left", "right"):
        write(
            f"{side}.toml",
            f"""
            [model]
            name = "{side}"
            time_unit = "h"
            include = ["leaf.toml"]

            [states]
            {side} = {{ unit = "mg" }}

            [equations]
            {side} = "k * c"
            """,
        )
    top = write(
        "top.toml",
        '[model]\nname = "top"\ntime_unit = "h"\ninclude = ["left.toml", "right"]\n'
        '\n[terms]\nc = "-k * c"\n',
    )
    spec = load_model(top)
    names = [p.rsplit("/", 1)[-1] for p in spec.files]
    assert names == ["top.toml", "right.toml", "left.toml", "leaf.toml"]  # main first, each once
    assert list(spec.states) == ["c", "left", "right"]  # include order, depth first
    assert list(spec.parameters) == ["k"]
    model = spec.compile()
    got = np.asarray(model.rhs(0.0, jnp.asarray([2.0, 0.0, 0.0]), jnp.asarray([0.5])))
    np.testing.assert_allclose(got, [-2.0, 1.0, 1.0])  # the leaf's term plus top's term


def test_includes_resolve_library_names_and_relative_paths(write, tmp_path):
    (tmp_path / "sub").mkdir()
    write("sub/base.toml", MINIMAL)
    path = write(
        "sub/main.toml",
        '[model]\nname = "m"\ntime_unit = "h"\ninclude = ["base", "pd_emax"]\n',
    )
    with pytest.raises(ModelError, match="duplicate"):  # both define V and central: found both
        load_model(path)
    text = '[model]\nname = "ok"\ntime_unit = "h"\ninclude = ["./base.toml"]\n'
    path = write("sub/ok.toml", text)
    assert list(load_model(path).states) == ["central"]


def test_shared_covariate_merges_and_a_different_unit_is_an_error(write):
    body = '[covariates]\nWT = {{ unit = "{unit}", default = 70 }}\n'
    write("a.toml", '[model]\nname = "a"\n' + body.format(unit="kg"))
    write("b_same.toml", '[model]\nname = "b"\n' + body.format(unit="kg"))
    write("b_other.toml", '[model]\nname = "b"\n' + body.format(unit="lb"))
    ok = write("ok.toml", '[model]\nname = "ok"\ntime_unit = "h"\ninclude = ["a", "b_same"]\n')
    assert list(load_model(ok).covariates) == ["WT"]
    bad = write("bad.toml", '[model]\nname = "bad"\ntime_unit = "h"\ninclude = ["a", "b_other"]\n')
    with pytest.raises(ModelError, match="duplicate covariate 'WT'"):
        load_model(bad)


def test_main_file_decides_name_and_time_unit(write):
    path = write(
        "in_days.toml",
        '[model]\nname = "emax_days"\ntime_unit = "day"\ninclude = ["pd_emax"]\n',
    )
    spec = load_model(path)
    assert spec.name == "emax_days" and spec.time_unit == "day"
    conv, raw = spec.equations["depot"]  # pd_emax's rates are in 1/h: x 24 per day
    assert conv == 24 * raw
    assert spec.analytic is None  # [model] analytic of an included file is not inherited


def test_load_model_texts_rebuilds_a_composed_model_from_its_files():
    from pkpd.model import load_model_texts

    spec = load_model("cart_crs")  # includes a dozen library files
    again = load_model_texts(spec.files)
    assert again.hash == spec.hash and list(again.files) == list(spec.files)
    assert list(again.parameters) == list(spec.parameters)
    assert list(again.observations) == list(spec.observations)
    np.testing.assert_array_equal(again.compile().typical_values, spec.compile().typical_values)
    with pytest.raises(ValueError, match="no model files"):
        load_model_texts({})
