"""pkpd.expr: the whitelist, the functions' values, units and the conversions inserted.

Values are checked by building an expression, translating the converted sympy form to JAX with
`pkpd.model.jaxify.translate` (what the compiled model runs) and comparing with numpy at several
points; float64 throughout, so agreement is to a few ulp (``rtol=1e-12``).
"""

import numpy as np
import pytest
import sympy as sp

from pkpd import expr as E
from pkpd import units as U
from pkpd.model.jaxify import translate

HOUR, DAY = U.parse_unit("h"), U.parse_unit("day")

UNITS = {
    "x": "1",
    "y": "1",
    "z": "1",
    "c": "mg/L",
    "c50": "ug/mL",  # = mg/L
    "c_ng": "ng/mL",  # = 1e-3 mg/L
    "w": "mg/L",
    "a": "mg/h",
    "b": "ug/h",
    "tau": "h",
    "V": "L",
    "A": "mg",
}
UNITS = {k: U.parse_unit(v) for k, v in UNITS.items()}

rng = np.random.default_rng(20240601)
N = 7
ENV = {
    "x": rng.uniform(0.1, 2.0, N),
    "y": rng.uniform(-2.0, 2.0, N),
    "z": rng.uniform(0.5, 3.0, N),
    "c": rng.uniform(0.1, 10.0, N),
    "c50": rng.uniform(0.5, 5.0, N),
    "c_ng": rng.uniform(100.0, 5000.0, N),
    "w": rng.uniform(0.2, 2.0, N),
    "a": rng.uniform(0.1, 5.0, N),
    "b": rng.uniform(10.0, 900.0, N),
    "tau": rng.uniform(1.0, 48.0, N),
    "V": rng.uniform(5.0, 50.0, N),
    "A": rng.uniform(1.0, 100.0, N),
    "t": rng.uniform(0.0, 3.0, N),
}


def built(text, time_unit=HOUR, units=None):
    return E.build(E.parse(text), UNITS if units is None else units, time_unit)


def value(b):
    return np.broadcast_to(np.asarray(translate(b.converted)(ENV), dtype=float), (N,))


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


x, y, z, c, c50, w = (ENV[k] for k in ("x", "y", "z", "c", "c50", "w"))

#: One case per whitelisted function: (expression, numpy value).
FUNCTION_CASES = {
    "exp": ("exp(y)", np.exp(y)),
    "log": ("log(x)", np.log(x)),
    "log10": ("log10(x)", np.log10(x)),
    "sqrt": ("sqrt(x)", np.sqrt(x)),
    "abs": ("abs(y)", np.abs(y)),
    "tanh": ("tanh(y)", np.tanh(y)),
    "sigmoid": ("sigmoid(y)", sigmoid(y)),
    "pos": ("pos(y)", np.maximum(y, 0.0)),
    "min": ("min(x, y, z)", np.minimum(np.minimum(x, y), z)),
    "max": ("max(x, y)", np.maximum(x, y)),
    "hill": ("hill(c, c50, z)", c**z / (c50**z + c**z)),
    "hill_inh": ("hill_inh(c, c50, z)", c50**z / (c50**z + c**z)),
    "smoothstep": ("smoothstep(c, c50, w)", sigmoid((c - c50) / w)),
    "piecewise": ("piecewise(x > z, x, y)", np.where(x > z, x, y)),
    "if_else": ("if_else(y <= 0, x, z)", np.where(y <= 0, x, z)),
}


def test_every_whitelisted_function_has_a_case():
    assert set(FUNCTION_CASES) == set(E.FUNCTIONS)


@pytest.mark.parametrize("name", sorted(FUNCTION_CASES))
def test_function_values_match_numpy(name):
    text, expected = FUNCTION_CASES[name]
    b = built(text)
    assert U.is_dimensionless(b.unit)
    np.testing.assert_allclose(value(b), expected, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x + y * z - x / z", x + y * z - x / z),
        ("x ** 2", x**2),
        ("x ** 3", x**3),
        ("x ** 5", x**5),
        ("x ** -1", 1 / x),
        ("x ** 0.5", np.sqrt(x)),
        ("x ** y", x**y),
        ("2 ** y", 2.0**y),
        ("-x", -x),
        ("+x", x),
        ("pi * x", np.pi * x),
        ("exp(1) * x", np.e * x),
        ("1.5e-3 * x", 1.5e-3 * x),
        ("min(x, 0.5)", np.minimum(x, 0.5)),
    ],
)
def test_arithmetic_matches_numpy(text, expected):
    np.testing.assert_allclose(value(built(text)), expected, rtol=1e-12)


def test_hill_and_smoothstep_landmarks():
    env = {"c": 2.0, "c50": 2.0, "w": 0.5, "z": 3.0}
    hill = translate(built("hill(c, c50, z)").converted)
    hill_inh = translate(built("hill_inh(c, c50, z)").converted)
    smooth = translate(built("smoothstep(c, c50, w)").converted)
    assert float(hill(env)) == pytest.approx(0.5, abs=1e-15)
    assert float(hill_inh(env)) == pytest.approx(0.5, abs=1e-15)
    # at 3 x C50 with n = 2: 9 / 10
    assert float(hill({**env, "c": 6.0, "z": 2.0})) == pytest.approx(0.9, rel=1e-14)
    assert float(hill_inh({**env, "c": 6.0, "z": 2.0})) == pytest.approx(0.1, rel=1e-13)
    assert float(hill({**env, "c": 0.0})) == 0.0
    assert float(hill_inh({**env, "c": 0.0})) == 1.0
    # smoothstep: 1/2 at x0, 3/4 at x0 + width * log(3), monotone from 0 to 1
    assert float(smooth(env)) == pytest.approx(0.5, abs=1e-15)
    assert float(smooth({**env, "c": 2.0 + 0.5 * np.log(3.0)})) == pytest.approx(0.75, rel=1e-14)
    assert float(smooth({**env, "c": -100.0})) < 1e-80
    assert float(smooth({**env, "c": 100.0})) == 1.0


def test_hill_converts_c50_to_the_unit_of_x():
    # C50 in ng/mL, x in mg/L: half effect when c = c_ng / 1000
    b = built("hill(c, c_ng, 1)")
    f = translate(b.converted)
    assert float(f({"c": 1.5, "c_ng": 1500.0})) == pytest.approx(0.5, rel=1e-14)


@pytest.mark.parametrize(
    "text, env, expected",
    [
        ("piecewise(t > tau, 1, 2)", {"t": 2.0, "tau": 2.0}, 2.0),  # strict at the boundary
        ("piecewise(t >= tau, 1, 2)", {"t": 2.0, "tau": 2.0}, 1.0),
        ("piecewise(t < tau, 1, 2)", {"t": 1.0, "tau": 2.0}, 1.0),
        ("piecewise(t <= tau, 1, 2)", {"t": 2.5, "tau": 2.0}, 2.0),
        ("piecewise(t > tau and x < 1, 1, 2)", {"t": 3.0, "tau": 2.0, "x": 0.5}, 1.0),
        ("piecewise(t > tau and x < 1, 1, 2)", {"t": 3.0, "tau": 2.0, "x": 1.5}, 2.0),
        ("piecewise(t > tau or x < 1, 1, 2)", {"t": 1.0, "tau": 2.0, "x": 0.5}, 1.0),
        ("piecewise(t > tau or x < 1, 1, 2)", {"t": 1.0, "tau": 2.0, "x": 1.5}, 2.0),
        ("piecewise(x < 1 and (y > 0 or z > 2), 1, 2)", {"x": 0.5, "y": -1, "z": 3}, 1.0),
        ("if_else(t > 0, a, 0)", {"t": 1.0, "a": 4.0}, 4.0),
        ("if_else(t > 0, a, 0)", {"t": -1.0, "a": 4.0}, 0.0),
    ],
)
def test_piecewise_conditions(text, env, expected):
    assert float(translate(built(text).converted)(env)) == expected


def test_piecewise_condition_compares_converted_units():
    # t in days against tau in hours: t > tau means t * 24 > tau
    b = built("piecewise(t > tau, 1, 0)", time_unit=DAY)
    f = translate(b.converted)
    assert float(f({"t": 1.0, "tau": 23.0})) == 1.0
    assert float(f({"t": 1.0, "tau": 25.0})) == 0.0


# -- units --------------------------------------------------------------------------------


def test_sum_of_mass_rates_in_different_units_is_converted():
    b = built("a + b")  # mg/h + ug/h
    assert U.same_dimension(b.unit, "mg/h") and U.factor(b.unit, "mg/h") == 1.0
    assert b.converted.coeff(E.symbol("a")) == 1
    assert float(b.converted.coeff(E.symbol("b"))) == 0.001
    np.testing.assert_allclose(value(b), ENV["a"] + ENV["b"] / 1000, rtol=1e-14)
    assert b.raw == E.symbol("a") + E.symbol("b")  # rendering shows what was written


def test_dimensionless_ratio_of_days_and_hours_is_converted():
    b = built("exp(-t / tau)", time_unit=DAY)
    np.testing.assert_allclose(value(b), np.exp(-ENV["t"] * 24.0 / ENV["tau"]), rtol=1e-13)


def test_convert_to_the_unit_of_an_equation():
    # an amount rate in mg/h written into a model timed in days: d state / dt in mg/day
    b = built("a")
    conv = E.convert(b, U.parse_unit("mg") / DAY, "d x/dt")
    assert conv == 24 * E.symbol("a")
    conv = E.convert(built("b"), U.parse_unit("mg") / HOUR, "d x/dt")
    assert float(translate(conv)({"b": 500.0})) == pytest.approx(0.5, rel=1e-15)


def test_units_of_products_powers_and_roots():
    assert U.same_dimension(built("A / V").unit, "mg/L")
    assert U.factor(built("c * V").unit, "mg") == 1.0
    assert U.factor(built("V ** 2").unit, "L**2") == 1.0
    assert U.factor(built("sqrt(V ** 2)").unit, "L") == 1.0
    assert U.factor(built("abs(a)").unit, "mg/h") == 1.0
    assert U.factor(built("pos(a)").unit, "mg/h") == 1.0
    assert U.factor(built("max(a, b)").unit, "mg/h") == 1.0
    assert U.factor(built("piecewise(x > 1, a, b)").unit, "mg/h") == 1.0


def test_branches_and_min_max_are_converted_to_a_common_unit():
    f = translate(built("max(a, b)").converted)
    assert float(f({"a": 1.0, "b": 1500.0})) == pytest.approx(1.5, rel=1e-15)
    g = translate(built("piecewise(x > 1, a, b)").converted)
    assert float(g({"x": 0.0, "a": 1.0, "b": 1500.0})) == pytest.approx(1.5, rel=1e-15)


def test_literal_zero_takes_any_unit():
    for text in ("a + 0", "0 + a", "a - 0.0", "max(a, 0)", "piecewise(t > tau, a, 0)", "-0 + a"):
        b = built(text)
        assert U.factor(b.unit, "mg/h") == 1.0, text
    assert E.convert(built("0"), U.parse_unit("cells") / DAY, "x") == 0
    # a non-zero number is dimensionless and does not
    with pytest.raises(E.ExpressionError, match="cannot add or subtract"):
        built("a + 1")


@pytest.mark.parametrize(
    "text, words",
    [
        ("a + V", "cannot add or subtract: l is not compatible with mg / h"),
        ("exp(V)", "the argument of exp must be dimensionless"),
        ("log(c)", "the argument of log must be dimensionless"),
        ("sigmoid(tau)", "the argument of sigmoid must be dimensionless"),
        ("V ** x", "a quantity with units can only be raised to a number"),
        ("x ** V", "an exponent must be dimensionless"),
        ("hill(c, V, 2)", "x and c50 differ"),
        ("hill(c, c50, V)", "the exponent n must be dimensionless"),
        ("smoothstep(c, c50, x)", "smoothstep(x, x0, width): units differ"),
        ("min(a, V)", "the arguments of min differ in units"),
        ("piecewise(x > 1, a, V)", "the branches of piecewise differ in units"),
        ("piecewise(t > 2, 1, 0)", "cannot compare: 1 is not compatible with h"),
        ("unknown * 2", "unknown symbol 'unknown'"),
    ],
)
def test_unit_and_symbol_errors(text, words):
    with pytest.raises(E.ExpressionError) as exc:
        built(text)
    assert words in str(exc.value)


def test_convert_refuses_another_dimension():
    with pytest.raises(E.ExpressionError, match="has unit l, expected mg / h"):
        E.convert(built("V"), U.parse_unit("mg") / HOUR, "the equation")


# -- parsing and the whitelist -------------------------------------------------------------


def test_parse_collects_names_and_time():
    p = E.parse("ka * depot - CL / V * central + 0 * t + pi")
    assert p.names == frozenset({"ka", "depot", "CL", "V", "central"})
    assert p.uses_time
    assert not E.parse("exp(-k * x)").uses_time
    assert E.parse(2.5).text == "2.5"
    assert E.parse(3).names == frozenset()


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo hi')",
        "x.real",
        "x[0]",
        "lambda: 1",
        "(lambda: 1)()",
        "'a'",
        "b'a'",
        "[1]",
        "{1: 2}",
        "(1, 2)",
        "{1}",
        "x if y else z",
        "[i for i in x]",
        "(x := 1)",
        "x == y",
        "x != y",
        "x < y",  # comparisons only inside a condition
        "not x",
        "x and y",
        "x @ y",
        "x // y",
        "x % y",
        "~x",
        "x << 1",
        "exp(x=1)",
        "exp(*x)",
        "max(x)",
        "hill(x, y)",
        "exp",
        "_x",
        "True",
        "None",
        "1j",
        "...",
        "f'{x}'",
        "piecewise(x < y < z, 1, 2)",
        "piecewise(x == y, 1, 2)",
        "piecewise(x, 1, 2)",  # parses, refused when built: a condition must compare
        "sin(x)",
        "",
        "   ",
        "x; y",
        "import os",
        "x = 1",
    ],
)
def test_refused(text):
    with pytest.raises(E.ExpressionError):
        E.build(E.parse(text), UNITS, HOUR)


def test_refused_types_and_length():
    for bad in (True, None, [1], {"a": 1}):
        with pytest.raises(E.ExpressionError):
            E.parse(bad)
    with pytest.raises(E.ExpressionError, match="longer than"):
        E.parse("x + " * 3000 + "x")


def test_error_names_the_offending_text():
    with pytest.raises(E.ExpressionError) as exc:
        E.parse("ka * depot + depot.__class__")
    assert "'depot.__class__'" in str(exc.value)
    assert "Attribute is not allowed" in str(exc.value)


def test_raw_form_keeps_what_was_written():
    b = built("exp(-t / tau)", time_unit=DAY)
    t, tau = E.symbol("t"), E.symbol("tau")
    assert b.raw == sp.exp(-t / tau)
    assert b.converted == sp.exp(-24 * t / tau)
    assert b.raw.free_symbols == {t, tau}
    assert all(s.is_real for s in b.raw.free_symbols)
