"""Rendering: LaTeX equations as written (no conversion factors) and the markdown description."""

import sympy as sp

from pkpd.model import load_model

DAY_MODEL = """
[model]
name = "render_days"
description = "A | piped | description"
time_unit = "day"
references = ["Someone 2020, J Test 1:1"]

[states]
depot = { unit = "mg", description = "gut | amount" }
central = { unit = "mg", initial = "A0" }

[covariates]
WT = { unit = "kg", default = 70, description = "weight" }
CRCL = { unit = "mL/min", description = "creatinine clearance" }

[parameters]
ka = { unit = "1/h", value = 1.5, source = "test source ka" }
V = { unit = "L", value = 30.0, source = "assumption: test" }
A0 = { unit = "mg", value = 0.0, source = "test" }
F = { unit = "1", value = 0.8, iiv = "HalfNormal(0.2)", iiv_scale = "logit", source = "test" }
s = { unit = "mg/L", prior = "HalfNormal(1)", source = "test" }

[parameters.CL]
unit = "L/h"
prior = "LogNormal(median=3, cv=0.5)"
iiv = "HalfNormal(0.3)"
covariates = { WT = "power(0.75, ref=70)", CRCL = "linear(0.01, ref=100)" }
source = "test source CL"

[derived]
k = { expression = "CL / V", description = "elimination rate" }

[equations]
depot = "-ka * depot"
central = "ka * depot - k * central"

[doses.oral]
compartment = "depot"
unit = "mg/kg"
per = "WT"
bioavailability = "F"

[observations.conc]
expression = "central / V"
unit = "mg/L"
error = "additive"
sigma = "s"
"""


def test_latex_system_of_a_library_model():
    spec = load_model("pk_1cmt_oral")
    latex = spec.to_latex()
    lines = latex.splitlines()
    assert lines[0] == r"\begin{align*}" and lines[-1] == r"\end{align*}"
    body = lines[1:-1]
    assert len(body) == len(spec.states)
    for line, (state, (_, raw)) in zip(body, spec.equations.items(), strict=True):
        assert line.startswith(rf"\frac{{d\,{state}}}{{dt}} &= ")
        assert sp.latex(raw, mul_symbol="dot") in line
    assert r"\frac{CL \cdot central}{V}" in latex


def test_latex_shows_equations_as_written(write):
    spec = load_model(write("days.toml", DAY_MODEL))
    latex = spec.to_latex()
    # the compiled form carries x24 (rates in 1/h, time in days); the rendering does not
    assert spec.equations["depot"][0] == 24 * spec.equations["depot"][1]
    assert "24" not in latex
    assert r"k &= \frac{CL}{V}" in latex  # derived quantities come first
    assert latex.index(r"k &=") < latex.index(r"\frac{d\,depot}{dt}")


def test_describe_lists_everything(write):
    spec = load_model(write("days.toml", DAY_MODEL))
    text = spec.describe()
    assert text.startswith("# render_days\n")
    assert text.splitlines()[2] == "A | piped | description"  # not a table cell: as written
    assert "Time unit: day." in text
    assert spec.to_latex() in text
    for name, p in spec.parameters.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} "))
        assert f"| {p.unit} |" in row
        assert p.source in row
    cl = next(line for line in text.splitlines() if line.startswith("| CL "))
    assert "LogNormal(median=3, cv=0.5)" in cl
    assert "HalfNormal(sigma=0.3) (log)" in cl
    assert "power(0.75, ref=70) of WT; linear(0.01, ref=100) of CRCL" in cl
    f = next(line for line in text.splitlines() if line.startswith("| F "))
    assert "| fixed |" in f and "(logit)" in f
    assert "| WT | kg | 70 | weight |" in text
    assert "| CRCL | mL/min | required | creatinine clearance |" in text
    assert "| oral | depot | mg/kg per WT | $0$ | $F$ |" in text
    assert "| conc | 1 | $\\frac{central}{V}$ | mg/L | additive (sigma=s) |" in text
    assert "| depot | mg | $0$ | gut \\| amount |" in text  # a | inside a cell is escaped
    assert "| central | mg | $A_{0}$ |" in text
    assert "- Someone 2020, J Test 1:1" in text


def test_describe_every_library_model():
    from pkpd.model import list_models

    for name, _ in list_models():
        spec = load_model(name)
        text = spec.describe()
        assert text.startswith(f"# {spec.name}\n")
        for p in spec.parameters:
            assert f"| {p} " in text, (name, p)
        for e in spec.observations:
            assert f"| {e} | " in text, (name, e)
