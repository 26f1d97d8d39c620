"""Units of model quantities, with pint.

One registry for pkpd, extended with the counting units of the field (``cells``, ``copies``),
so that ``cells/uL``, ``copies/ug`` and ``pg/mL`` convert like any other unit. Unit strings use
pint syntax: ``"mg"``, ``"L/h"``, ``"1/day"``, ``"pg/mL"``, ``"cells"``, ``"1"`` (dimensionless).

Conversion factors are rounded to 15 significant digits, so that exact conversions (``1/h`` to
``1/day`` is 24) come out exact rather than as 23.999999999999996; a factor whose inverse is a
short number (``h`` to ``day`` is 1/24) is computed as that inverse's reciprocal, so it is the
float nearest 1/24 rather than 0.0416666666666667.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pint

_REGISTRY = pint.UnitRegistry(autoconvert_offset_to_baseunit=True)
# Counting units: their own dimensions, so cells never silently convert to copies.
_REGISTRY.define("cell = [cell_count] = cells")
_REGISTRY.define("copies = [transgene_copies] = copy")
_REGISTRY.define("IU = [international_unit]")
_REGISTRY.define("score = [] = grade")

#: The unit registry of pkpd.
ureg = _REGISTRY

#: The dimensionless unit.
DIMENSIONLESS = ureg.dimensionless


class UnitError(ValueError):
    """A unit string that pint cannot read, or an incompatible conversion."""


@lru_cache(maxsize=1024)
def parse_unit(text: str) -> pint.Unit:
    """Parse a unit string.

    Parameters
    ----------
    text : str
        Pint syntax; ``"1"``, ``""`` and ``"dimensionless"`` are dimensionless.

    Returns
    -------
    pint.Unit

    Raises
    ------
    UnitError
        If pint does not know the unit.
    """
    cleaned = str(text).strip()
    if cleaned in ("", "1", "dimensionless", "-"):
        return DIMENSIONLESS
    try:
        quantity = ureg.Quantity(1.0, cleaned)
    except Exception as exc:  # pint raises several types (UndefinedUnitError, syntax errors)
        raise UnitError(f"unknown unit {text!r} ({exc})") from None
    if quantity.magnitude != 1.0:
        raise UnitError(f"unit {text!r} has a numeric factor; write the number in the value")
    return quantity.units


def _significant_digits(value: float) -> int:
    mantissa = f"{value:.14e}".split("e")[0]
    return len(mantissa.replace("-", "").replace(".", "").rstrip("0"))


def _round(value: float) -> float:
    rounded = float(f"{value:.15g}")
    if value != 0 and _significant_digits(rounded) > 12:
        inverse = float(f"{1.0 / value:.15g}")
        if _significant_digits(inverse) <= 12:
            return 1.0 / inverse
    return rounded


def factor(from_unit: Any, to_unit: Any) -> float:
    """Return the number that converts a value in ``from_unit`` to ``to_unit``.

    Parameters
    ----------
    from_unit, to_unit : str or pint.Unit
        Units of the same dimensionality.

    Returns
    -------
    float

    Raises
    ------
    UnitError
        If the dimensionalities differ.
    """
    src = parse_unit(from_unit) if isinstance(from_unit, str) else from_unit
    dst = parse_unit(to_unit) if isinstance(to_unit, str) else to_unit
    try:
        return _round(ureg.Quantity(1.0, src).to(dst).magnitude)
    except pint.DimensionalityError:
        raise UnitError(f"cannot convert {pretty(src)} to {pretty(dst)}") from None


def same_dimension(a: Any, b: Any) -> bool:
    """Whether two units measure the same kind of quantity."""
    ua = parse_unit(a) if isinstance(a, str) else a
    ub = parse_unit(b) if isinstance(b, str) else b
    return ureg.Quantity(1.0, ua).dimensionality == ureg.Quantity(1.0, ub).dimensionality


def is_dimensionless(unit: Any) -> bool:
    """Whether a unit is dimensionless (possibly with a scale, like ``mg/g``)."""
    return same_dimension(unit, DIMENSIONLESS)


def pretty(unit: Any) -> str:
    """Short human-readable form of a unit (``"mg / L"``, ``"1"`` for dimensionless)."""
    u = parse_unit(unit) if isinstance(unit, str) else unit
    if u == DIMENSIONLESS:
        return "1"
    return f"{u:~}"
