"""Compile: the JAX functions of a compiled model against hand-written numpy formulas.

Right-hand sides, observations and initial values are compared at random points to
``rtol=1e-12`` (the same arithmetic in a different order: a few ulp). End-to-end checks through
`pkpd.simulate` use a tight solver (rtol 1e-10, atol 1e-12) and compare with closed forms to
``rtol=1e-7``, well above the solver's error and far below any modelling error they could hide.
"""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import sympy as sp
from scipy.special import expit, logit

from pkpd import expr as E
from pkpd.data import from_dataframe
from pkpd.errors import ModelError
from pkpd.model import load_model
from pkpd.model.jaxify import translate
from pkpd.solve import Solver, simulate

TIGHT = Solver(rtol=1e-10, atol=1e-12)


def hand_rhs(name, v):
    """d state / dt of the library models, written from the textbooks (v: values by name)."""
    k10, cp = v["CL"] / v["V"], v["central"] / v["V"]
    if name == "pk_1cmt_iv":
        return {"central": -k10 * v["central"]}
    if name == "pk_1cmt_oral":
        absorbed = v["ka"] * v["depot"]
        return {"depot": -absorbed, "central": absorbed - k10 * v["central"]}
    if name in ("pk_2cmt_iv", "pk_2cmt_oral"):
        k12, k21 = v["Q"] / v["V"], v["Q"] / v["V2"]
        out = {
            "central": -(k10 + k12) * v["central"] + k21 * v["periph"],
            "periph": k12 * v["central"] - k21 * v["periph"],
        }
        if name == "pk_2cmt_oral":
            out["depot"] = -v["ka"] * v["depot"]
            out["central"] += v["ka"] * v["depot"]
        return out
    if name == "pd_turnover":
        out = hand_rhs("pk_1cmt_oral", v)
        kin = v["R0"] * v["kout"]
        out["R"] = kin * (1 - v["Imax"] * cp / (v["IC50"] + cp)) - v["kout"] * v["R"]
        return out
    if name == "pd_emax":
        return hand_rhs("pk_1cmt_oral", v)
    raise KeyError(name)


def hand_observe(name, v):
    cp = v["central"] / v["V"]
    if name == "pd_turnover":
        return {"conc": cp, "response": v["R"]}
    if name == "pd_emax":
        g = v["gamma"]
        return {"conc": cp, "effect": v["E0"] + v["Emax"] * cp**g / (v["EC50"] ** g + cp**g)}
    return {"conc": cp}


HAND_WRITTEN = [
    "pk_1cmt_iv",
    "pk_1cmt_oral",
    "pk_2cmt_iv",
    "pk_2cmt_oral",
    "pd_turnover",
    "pd_emax",
]


def random_point(model, rng):
    """Parameters around their typical values, covariates around their defaults, states > 0."""
    typical = np.asarray(model.typical_values)
    params = np.where(typical != 0, typical * rng.uniform(0.5, 2.0, typical.size), rng.normal())
    covs = np.asarray(model.covariate_defaults) * rng.uniform(0.7, 1.3, len(model.covariates))
    y = rng.uniform(0.1, 100.0, model.n_states)
    return np.concatenate([params, covs]), y


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_rhs_and_observations_match_hand_written_formulas(name):
    model = load_model(name).compile()
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    for _ in range(5):
        p, y = random_point(model, rng)
        t = rng.uniform(0, 48)
        v = dict(zip(model.parameters + model.covariates, p, strict=True))
        v.update(zip(model.states, y, strict=True))
        expected = hand_rhs(name, v)
        assert set(expected) == set(model.states)
        got = np.asarray(model.rhs(t, jnp.asarray(y), jnp.asarray(p)))
        want = np.array([expected[s] for s in model.states])
        np.testing.assert_allclose(got, want, rtol=1e-12)
        observed = hand_observe(name, v)
        assert set(observed) == set(model.endpoints)
        got = np.asarray(model.observe(t, jnp.asarray(y), jnp.asarray(p)))
        np.testing.assert_allclose(got, [observed[e] for e in model.endpoints], rtol=1e-12)


def test_initial_values():
    model = load_model("pd_turnover").compile()
    p, _ = random_point(model, np.random.default_rng(1))
    y0 = np.asarray(model.initial(jnp.asarray(p)))
    expected = {s: 0.0 for s in model.states}
    expected["R"] = p[model.parameter_index("R0")]
    np.testing.assert_array_equal(y0, [expected[s] for s in model.states])


def test_compiled_metadata_of_a_library_model():
    spec = load_model("pk_2cmt_oral")
    model = spec.compile()
    assert spec.compile() is model  # cached per spec
    assert model.time_unit == "h"
    assert set(model.states) == {"depot", "central", "periph"}
    assert model.state_units == ("mg", "mg", "mg")
    assert model.endpoints == ("conc",) and model.endpoint_dvid == (1,)
    assert model.endpoint_units == ("mg/L",)
    assert model.iiv == ("CL", "V", "ka")
    assert model.covariates == ("WT",) and model.covariate_defaults == (70.0,)
    assert {k: model.states[i] for k, i in model.dose_targets.items()} == {
        "oral": "depot",
        "iv": "central",
    }
    typical = dict(zip(model.parameters, model.typical_values, strict=True))
    assert typical["tlag"] == 0.0 and typical["F"] == 1.0  # values
    assert typical["CL"] == pytest.approx(3.0, rel=1e-12)  # prior median
    assert typical["ka"] == pytest.approx(1.0, rel=1e-12)
    assert model.analytic.kind == "2cmt" and model.analytic.depot == "depot"


# -- individual parameters: covariate effects and between-subject variability ---------------

COVARIATE_MODEL = """
[model]
name = "covs"
time_unit = "h"

[states]
central = { unit = "mg" }

[covariates]
WT = { unit = "kg", default = 70 }
AGE = { unit = "year", default = 40 }
SEX = { unit = "1", default = 0 }
CRCL = { unit = "mL/min" }

[parameters]
theta_crcl = { unit = "1", value = 0.004, source = "test" }
beta_V = { unit = "1", prior = "Normal(1, 0.1)", source = "test" }
F = { unit = "1", value = 0.6, iiv = "HalfNormal(0.3)", iiv_scale = "logit", source = "test" }

[parameters.V]
unit = "L"
value = 30.0
iiv = "HalfNormal(0.3)"
covariates = { WT = "power(beta_V, ref=70)" }

[parameters.CL]
unit = "L/h"
value = 3.0
iiv = "HalfNormal(0.3)"
source = "test"

[parameters.CL.covariates]
WT = "power(0.75, ref=70)"
AGE = "exp(-0.01, ref=40)"
SEX = "factor(0.8)"
CRCL = "linear(theta_crcl, ref=100)"

[equations]
central = "-CL / V * central"
"""


def test_covariate_effects_and_iiv(write):
    spec = load_model(write("covs.toml", COVARIATE_MODEL))
    model = spec.compile()
    assert model.covariates == ("WT", "AGE", "SEX", "CRCL")
    assert np.isnan(model.covariate_defaults[3])  # required
    assert model.iiv == ("F", "V", "CL")
    theta = np.asarray(model.typical_values)
    assert theta[model.parameter_index("beta_V")] == pytest.approx(1.0, rel=1e-12)
    theta[model.parameter_index("beta_V")] = 0.9  # a coefficient that is a parameter
    rng = np.random.default_rng(7)
    for _ in range(4):
        eta = rng.normal(0, 0.4, 3)
        cov = np.array([rng.uniform(40, 120), rng.uniform(20, 80), rng.integers(0, 2), 70.0])
        p = np.asarray(model.individual(jnp.asarray(theta), jnp.asarray(eta), jnp.asarray(cov)))
        wt, age, sex, crcl = cov
        cl = (
            3.0
            * (wt / 70) ** 0.75
            * np.exp(-0.01 * (age - 40))
            * 0.8**sex
            * (1 + 0.004 * (crcl - 100))
            * np.exp(eta[2])
        )
        v = 30.0 * (wt / 70) ** 0.9 * np.exp(eta[1])
        f = expit(logit(0.6) + eta[0])
        got = dict(zip(model.parameters + model.covariates, p, strict=True))
        assert got["CL"] == pytest.approx(cl, rel=1e-13)
        assert got["V"] == pytest.approx(v, rel=1e-13)
        assert got["F"] == pytest.approx(f, rel=1e-13)
        assert 0 < got["F"] < 1
        assert got["theta_crcl"] == 0.004 and got["beta_V"] == 0.9
        np.testing.assert_array_equal(p[model.n_parameters :], cov)
    # eta = 0 at the reference covariates gives the typical values back
    ref = np.array([70.0, 40.0, 0.0, 100.0])
    p = np.asarray(model.individual(jnp.asarray(theta), jnp.zeros(3), jnp.asarray(ref)))
    np.testing.assert_allclose(p[: model.n_parameters], theta, rtol=1e-15)


def test_covariate_effect_text_is_kept(write):
    spec = load_model(write("covs.toml", COVARIATE_MODEL))
    effects = [str(e) for e in spec.parameters["CL"].covariates]
    assert effects == [
        "power(0.75, ref=70) of WT",
        "exp(-0.01, ref=40) of AGE",
        "factor(0.8, ref=0) of SEX",
        "linear(theta_crcl, ref=100) of CRCL",
    ]


# -- dose routes: units, per-kg, lag and bioavailability -------------------------------------

DOSE_MODEL = """
[model]
name = "doses"
time_unit = "h"

[states]
gut = { unit = "mg" }
central = { unit = "mg" }
tissue = { unit = "ug" }

[covariates]
WT = { unit = "kg", default = 70 }

[parameters]
ka = { unit = "1/h", value = 1.2 }
CL = { unit = "L/h", value = 3.0 }
V = { unit = "L", value = 30.0 }
tlag = { unit = "min", value = 30.0 }
F = { unit = "1", value = 0.7 }
kt = { unit = "1/h", value = 0.1 }

[equations]
gut = "-ka * gut"
central = "ka * gut - CL / V * central"
tissue = "-kt * tissue"

[doses.oral]
compartment = "gut"
unit = "mg/kg"
per = "WT"
lag = "tlag"
bioavailability = "F"

[doses.iv]
compartment = "central"
unit = "ug"

[doses.tis]
compartment = "tissue"
unit = "mg"

[observations.conc]
expression = "central / V"
unit = "mg/L"
error = "none"
"""


def test_dose_scale_lag_and_bioavailability(write):
    model = load_model(write("doses.toml", DOSE_MODEL)).compile()
    p = np.concatenate([model.typical_values, [82.0]])
    index = {s: model.state_index(s) for s in model.states}
    scale = np.asarray(model.dose_scale(jnp.asarray(p)))
    assert scale[index["gut"]] == 82.0  # mg/kg times WT into a state in mg
    assert scale[index["central"]] == pytest.approx(0.001, rel=1e-15)  # ug into mg
    assert scale[index["tissue"]] == pytest.approx(1000.0, rel=1e-15)  # mg into ug
    lag = np.asarray(model.dose_lag(jnp.asarray(p)))
    assert lag[index["gut"]] == pytest.approx(0.5, rel=1e-15)  # 30 min in a model timed in h
    assert lag[index["central"]] == 0.0
    bio = np.asarray(model.dose_bioavailability(jnp.asarray(p)))
    assert bio[index["gut"]] == 0.7 and bio[index["central"]] == 1.0


def test_per_kg_and_unit_conversion_end_to_end(write):
    model = load_model(write("doses.toml", DOSE_MODEL)).compile()
    rows = [
        dict(ID=1, TIME=0.0, EVID=1, AMT=2.0, CMT="oral", WT=82.0),  # 2 mg/kg
        dict(ID=2, TIME=0.0, EVID=1, AMT=5000.0, CMT="iv", WT=82.0),  # 5000 ug = 5 mg
    ]
    times = [0.25, 1.0, 2.0, 6.0, 12.0]
    rows += [dict(ID=i, TIME=t, EVID=0, DV=1.0, WT=82.0) for i in (1, 2) for t in times]
    cohort = from_dataframe(pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable"))
    pred = simulate(model, cohort, solver=TIGHT)["pred"].values
    t = np.array(times)
    ka, k, V = 1.2, 0.1, 30.0
    dose = 0.7 * 2.0 * 82.0  # F * AMT * WT
    tl = np.clip(t - 0.5, 0, None)  # 30 min lag
    oral = dose * ka / (V * (ka - k)) * (np.exp(-k * tl) - np.exp(-ka * tl))
    iv = 5.0 / V * np.exp(-k * t)
    np.testing.assert_allclose(pred[0], oral, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(pred[1], iv, rtol=1e-7)


def test_two_routes_into_one_state_with_different_lag(write):
    text = DOSE_MODEL + '\n[doses.oral2]\ncompartment = "gut"\nunit = "mg/kg"\nper = "WT"\n'
    path = write("two.toml", text)
    spec = load_model(path)  # the file is consistent; the engine applies lag per state
    with pytest.raises(ModelError) as exc:
        spec.compile()
    problem = exc.value.problems[0]
    assert problem.file == str(path.resolve())
    assert problem.row == text.lstrip("\n").splitlines().index("[doses.oral2]") + 1
    assert problem.column == "oral2"
    assert "dose routes 'oral' and 'oral2' enter state 'gut' with different lag" in problem.message


def test_two_routes_into_one_state_with_the_same_handling(write):
    text = DOSE_MODEL + (
        '\n[doses.oral2]\ncompartment = "gut"\nunit = "mg/kg"\nper = "WT"\n'
        'lag = "tlag"\nbioavailability = "F"\n'
    )
    model = load_model(write("same.toml", text)).compile()
    assert model.dose_targets["oral"] == model.dose_targets["oral2"]


# -- time units: a model timed in days gives the same solution as one timed in hours ----------

TIMED = """
[model]
name = "timed_{unit}"
time_unit = "{unit}"

[states]
depot = {{ unit = "mg" }}
central = {{ unit = "mg" }}

[parameters]
ka = {{ unit = "1/h", value = 0.9 }}
CL = {{ unit = "L/h", value = 2.5 }}
V = {{ unit = "L", value = 25.0 }}
tlag = {{ unit = "h", value = 0.4 }}
tau = {{ unit = "h", value = 6.0 }}

[derived]
ramp = "1 - 0.5 * exp(-t / tau)"

[equations]
depot = "-ka * depot"
central = "ka * depot - ramp * CL / V * central"

[doses.oral]
compartment = "depot"
lag = "tlag"

[doses.iv]
compartment = "central"

[observations.conc]
expression = "central / V"
unit = "mg/L"
error = "none"
"""


def test_model_in_days_with_parameters_in_hours_matches_the_model_in_hours(write):
    hours = load_model(write("h.toml", TIMED.format(unit="h"))).compile()
    days = load_model(write("d.toml", TIMED.format(unit="day"))).compile()
    # the converted right-hand side is 24 times larger per day
    p = jnp.asarray(np.asarray(hours.typical_values))
    y = jnp.asarray([40.0, 60.0])
    np.testing.assert_allclose(
        np.asarray(days.rhs(5.0 / 24.0, y, p)), 24.0 * np.asarray(hours.rhs(5.0, y, p)), rtol=1e-14
    )
    assert float(days.dose_lag(p)[0]) == pytest.approx(0.4 / 24.0, rel=1e-15)
    rows = [
        dict(ID=1, TIME=0.0, EVID=1, AMT=100.0, CMT="oral", RATE=0.0),
        dict(ID=1, TIME=30.0, EVID=1, AMT=60.0, CMT="iv", RATE=20.0),  # mg/h, 3 h
    ]
    rows += [dict(ID=1, TIME=t, EVID=0, DV=1.0) for t in (0.5, 1.0, 2.0, 6.0, 24.0, 31.0, 48.0)]
    rows = sorted(rows, key=lambda r: r["TIME"])
    cohort = from_dataframe(pd.DataFrame(rows), time_unit="h")
    in_hours = simulate(hours, cohort, solver=TIGHT)
    in_days = simulate(days, cohort, solver=TIGHT)
    np.testing.assert_allclose(in_days["obs_time"] * 24.0, in_hours["obs_time"], rtol=1e-15)
    np.testing.assert_allclose(in_days["pred"], in_hours["pred"], rtol=1e-8)
    assert np.all(in_hours["pred"].values > 0.1)


# -- derived quantities and time -------------------------------------------------------------

RAMP = """
[model]
name = "ramp"
time_unit = "h"

[states]
c = { unit = "mg", initial = "A0" }

[parameters]
k = { unit = "1/h", value = 0.3 }
tau = { unit = "h", value = 2.0 }
A0 = { unit = "mg", value = 50.0 }
V = { unit = "L", value = 10.0 }

[derived]
ramp = { expression = "1 - exp(-t / tau)", description = "time-dependent" }
c0 = { expression = "A0 / V", unit = "mg/L", description = "static" }

[equations]
c = "-k * ramp * c"

[observations.ratio]
expression = "c / V / c0"
unit = "1"
error = "none"
"""


def test_time_dependent_derived_quantity(write):
    # regression: a derived quantity using t was evaluated with the static ones and compile()
    # raised KeyError 't'
    model = load_model(write("ramp.toml", RAMP)).compile()
    p = jnp.asarray(np.asarray(model.typical_values))
    assert float(model.initial(p)[0]) == 50.0
    for t in (0.0, 1.0, 5.0):
        want = -0.3 * (1 - np.exp(-t / 2.0)) * 20.0
        assert float(model.rhs(t, jnp.asarray([20.0]), p)[0]) == pytest.approx(want, rel=1e-14)
    times = [0.5, 1.0, 3.0, 8.0]
    rows = [dict(ID=1, TIME=0.0, EVID=0, DV=1.0)] + [
        dict(ID=1, TIME=t, EVID=0, DV=1.0) for t in times
    ]
    sim = simulate(model, from_dataframe(pd.DataFrame(rows)), solver=TIGHT)
    t = np.array([0.0, *times])
    # c(t) = A0 exp(-k (t - tau (1 - exp(-t/tau)))); ratio = c / A0
    want = np.exp(-0.3 * (t - 2.0 * (1 - np.exp(-t / 2.0))))
    np.testing.assert_allclose(sim["pred"].values[0], want, rtol=1e-8)


# -- the sympy -> JAX translator -------------------------------------------------------------


def test_translate_refuses_unknown_nodes():
    x = sp.Symbol("x", real=True)
    with pytest.raises(TypeError, match="cannot compile sin"):
        translate(sp.sin(x))


def test_translate_values():
    x, y = sp.Symbol("x", real=True), sp.Symbol("y", real=True)
    env = {"x": 2.0, "y": 3.0}
    cases = [
        (x**y, 8.0),
        (x ** sp.Rational(1, 2), np.sqrt(2.0)),
        (x**-2, 0.25),
        (sp.log(x, 10), np.log10(2.0)),
        (sp.E * x, np.e * 2.0),
        (sp.Piecewise((1, x > y), (2, x > 1), (3, True)), 2.0),
        (sp.Piecewise((1, sp.And(x > 1, y > 2)), (0, True)), 1.0),
        (sp.Min(x, y, 1), 1.0),
    ]
    for expr, want in cases:
        assert float(translate(expr)(env)) == pytest.approx(want, rel=1e-15), expr


def test_defaults_and_short_forms(write):
    # the short forms and defaults that docs/model-files.md documents
    spec = load_model(
        write(
            "short.toml",
            """
            [model]
            name = "short"

            [states]
            central = "mg"

            [covariates]
            WT = "kg"

            [parameters]
            k = { unit = "1/h", value = 0.5, source = "test" }
            sd = { unit = "mg/L", prior = "HalfNormal(1)", source = "test" }
            V = { unit = "L", value = 10.0, prior = "LogNormal(median=12, cv=0.3)" }

            [derived]
            kk = "2 * k"

            [equations]
            central = "-kk * central"

            [doses]
            iv = "central"

            [observations.conc]
            expression = "central / V"
            unit = "mg/L"
            sigma = "sd"
            lloq = 0.05
            """,
        )
    )
    assert spec.time_unit == "day"  # default time unit
    assert spec.states["central"].unit == "mg" and spec.states["central"].initial == 0
    assert np.isnan(spec.covariates["WT"].default)  # no default: the dataset must give it
    assert spec.doses["iv"].compartment == "central" and spec.doses["iv"].amount_unit == "mg"
    assert spec.doses["iv"].lag == 0 and spec.doses["iv"].bioavailability == 1
    conc = spec.observations["conc"]
    assert (conc.error, conc.sigma, conc.dvid, conc.lloq) == ("additive", {"sigma": "sd"}, 1, 0.05)
    assert spec.parameters["k"].fixed and spec.parameters["sd"].estimated
    v = spec.parameters["V"]  # value and prior: the value is the typical value, V is estimated
    assert v.typical == 10.0 and not v.fixed
    assert spec.parameters["sd"].typical == pytest.approx(0.6744897501960817, rel=1e-12)
    assert spec.derived["kk"].expr == 2 * E.symbol("k") and spec.derived["kk"].unit == "1 / h"
    assert spec.equations["central"][0] == -24 * E.symbol("kk") * E.symbol("central")
