"""Shared helpers of the model-layer tests (imported by the test modules)."""

#: A small valid model; tests replace pieces of it.
MINIMAL = """
[model]
name = "mini"
time_unit = "h"

[states]
central = { unit = "mg" }

[parameters]
CL = { unit = "L/h", value = 2.0, source = "test" }
V = { unit = "L", value = 20.0, source = "test" }

[equations]
central = "-CL / V * central"

[doses.iv]
compartment = "central"
unit = "mg"

[observations.conc]
expression = "central / V"
unit = "mg/L"
error = "none"
"""


def line_of(path, needle, start=1):
    """1-based number of the first line of ``path`` (from line ``start``) containing ``needle``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if number >= start and needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")
