"""pkpd.units: the registry (with cells and copies), parsing, conversion factors."""

import pytest

from pkpd import units as U


@pytest.mark.parametrize("text", ["1", "", "dimensionless", "-", "  1 "])
def test_dimensionless_spellings(text):
    assert U.parse_unit(text) == U.DIMENSIONLESS
    assert U.pretty(text) == "1"


@pytest.mark.parametrize(
    "src, dst, expected",
    [
        ("1/h", "1/day", 24.0),
        ("day", "h", 24.0),
        ("h", "day", 1 / 24),  # regression: was 0.0416666666666667, 4 ulp from 1/24
        ("1/day", "1/h", 1 / 24),
        ("min", "h", 1 / 60),
        ("week", "day", 7.0),
        ("ug", "mg", 0.001),
        ("mg", "ug", 1000.0),
        ("ng/mL", "mg/L", 0.001),
        ("ug/mL", "mg/L", 1.0),
        ("pg/mL", "ng/L", 1.0),
        ("L/h", "mL/min", 1000 / 60),
        ("cells/uL", "cells/L", 1e6),
        ("cells/uL", "cell/mL", 1e3),
        ("copies/ug", "copies/mg", 1000.0),
        ("IU/mL", "IU/L", 1000.0),
        ("mg/g", "1", 0.001),
        ("percent", "1", 0.01),
    ],
)
def test_conversion_factors_are_exact(src, dst, expected):
    # exact: the float nearest the true factor, not a product of rounding errors
    assert U.factor(src, dst) == expected
    assert U.factor(src, dst) * U.factor(dst, src) == 1.0


def test_factor_accepts_parsed_units():
    assert U.factor(U.parse_unit("mg"), U.parse_unit("ug")) == 1000.0


@pytest.mark.parametrize(
    "a, b",
    [("cells", "copies"), ("cells", "1"), ("copies", "mg"), ("IU", "mg"), ("mg", "L"), ("h", "1")],
)
def test_different_dimensions_do_not_convert(a, b):
    assert not U.same_dimension(a, b)
    with pytest.raises(U.UnitError, match="cannot convert"):
        U.factor(a, b)


def test_counting_units_and_grades():
    assert U.parse_unit("cells") == U.parse_unit("cell")
    assert U.parse_unit("copies") == U.parse_unit("copy")
    assert U.same_dimension("cells/uL", "cells/L")
    assert U.is_dimensionless("grade") and U.is_dimensionless("score")
    assert U.is_dimensionless("mg/g")  # a scaled dimensionless unit
    assert not U.is_dimensionless("cells")


@pytest.mark.parametrize("text", ["furlong_per_fortnight_squared", "mg/", "10 mg", "mg +"])
def test_unknown_units(text):
    with pytest.raises(U.UnitError, match="unknown unit"):
        U.parse_unit(text)


def test_pretty():
    assert U.pretty("mg/L") == "mg / l"
    assert U.pretty("1/day") == "1 / d"
    assert U.pretty("cells/uL") == "cells / µl"
