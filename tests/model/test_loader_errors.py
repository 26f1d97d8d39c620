"""Every kind of bad model file is refused at load time, naming the file, the line and the name.

Each test writes a small file that is valid except for one fault, loads it, and checks the first
problem of the `ModelError`: ``file`` (the file holding the fault, which may be an included one),
``row`` (the line of the fault, found in the written text rather than hard-coded) and ``column``
(the state, parameter, section or route concerned), plus the words of the message.
"""

import os

import pytest
from model_helpers import MINIMAL, line_of

from pkpd.errors import ModelError
from pkpd.model import load_model

STATE = 'central = { unit = "mg" }'


def assert_problem(err, path, needle, column, *fragments, start=1):
    """The first problem names ``path``, the line holding ``needle`` and ``column``."""
    problem = err.problems[0]
    assert problem.file == str(path.resolve())
    assert problem.row == line_of(path, needle, start)
    assert problem.column == column
    for fragment in fragments:
        assert fragment in problem.message
    # the exception's text carries the location too (what a user sees)
    assert f"{path.resolve()}, line {problem.row}, '{column}'" in str(err)


def test_minimal_model_loads(write):
    # the base of every fault below is valid: each failure is caused by the one change made
    spec = load_model(write("ok.toml", MINIMAL))
    assert list(spec.states) == ["central"]


# -- equations -------------------------------------------------------------------------------


def test_unknown_symbol(load_error):
    err, path = load_error(MINIMAL.replace('"-CL / V * central"', '"-CL / Vc * central"'))
    assert_problem(err, path, "-CL / Vc", "central", "unknown symbol 'Vc'")


def test_unknown_symbol_in_observation(load_error):
    err, path = load_error(MINIMAL.replace('"central / V"', '"central / V1"'))
    assert_problem(err, path, "[observations.conc]", "conc", "unknown symbol 'V1'")


def test_syntax_error(load_error):
    err, path = load_error(MINIMAL.replace('"-CL / V * central"', '"-CL / V * (central"'))
    assert_problem(err, path, "(central", "central", "syntax error", "never closed")


@pytest.mark.parametrize(
    "equation, words",
    [
        ("-CL / V * central + V", "cannot add or subtract"),  # mg/h + L
        ("-CL / V * central + CL", "cannot add or subtract"),  # mg/h + L/h
        ("-CL * central", "expected mg / h"),  # L*mg/h is not mg/h
        ("-CL / V * central * 2 + 1", "cannot add or subtract"),  # a bare 1 is dimensionless
        ("exp(CL) * central", "must be dimensionless"),
        ("-CL / V * central ** V", "exponent must be dimensionless"),
    ],
)
def test_unit_mismatch(load_error, equation, words):
    err, path = load_error(MINIMAL.replace('"-CL / V * central"', f'"{equation}"'))
    assert_problem(err, path, equation, "central", words)


def test_adding_mg_to_litres(load_error):
    text = MINIMAL.replace(
        'V = { unit = "L", value = 20.0, source = "test" }',
        'V = { unit = "L", value = 20.0, source = "test" }\nD = { unit = "mg", value = 1.0 }',
    ).replace('"central / V"', '"(central + V) / V"')
    err, path = load_error(text)
    assert_problem(err, path, "[observations.conc]", "conc", "cannot add or subtract")
    assert "mg" in err.problems[0].message and "l" in err.problems[0].message


def test_equation_unit_is_not_state_per_time(load_error):
    # d central / dt must be an amount per time: CL / V * central is mg/h, CL / V is 1/h
    err, path = load_error(MINIMAL.replace('"-CL / V * central"', '"-CL / V"'))
    assert_problem(err, path, '"-CL / V"', "central", "dcentral/dt has unit", "expected mg / h")


def test_observation_unit_mismatch(load_error):
    err, path = load_error(MINIMAL.replace('unit = "mg/L"\nerror', 'unit = "mg"\nerror'))
    assert_problem(err, path, "[observations.conc]", "conc", "observation conc has unit")


# -- code in equations is refused, and nothing runs -----------------------------------------


@pytest.fixture
def no_system(monkeypatch):
    """Record every os.system call (there must be none)."""
    calls = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(a) or 0)
    return calls


def _attacks(marker):
    return [
        f'__import__(\\"os\\").system(\\"touch {marker}\\")',
        f"__import__('os').system('touch {marker}')",
        "().__class__.__bases__[0]",
        "().__class__.__bases__[0].__subclasses__()",
        "central.real",
        "(lambda: 1)()",
        "central[0]",
        f"open('{marker}', 'w')",
        f"exec('open(\\\\'{marker}\\\\', \\\\'w\\\\')')",
        "eval('1')",
        "globals()",
        "[x for x in (1, 2)]",
        "(x := 1)",
        "'text'",
        "central if CL else V",
        "exp(x=1)",
        "exp(*V)",
        "_secret",
        "exp",
        "central == V",
        "not central",
    ]


@pytest.mark.parametrize("k", range(len(_attacks("m"))))
def test_code_in_equation_is_refused_and_not_run(load_error, tmp_path, no_system, k):
    marker = tmp_path / "pwned_XYZ"
    attack = _attacks(marker)[k]
    err, path = load_error(MINIMAL.replace('"-CL / V * central"', f'"{attack}"'))
    problem = err.problems[0]
    assert problem.file == str(path.resolve())
    assert problem.row == line_of(path, "central = ", line_of(path, "[equations]"))
    assert problem.column == "central"
    assert any(
        words in problem.message
        for words in (
            "is not allowed",
            "only these functions",
            "only numbers",
            "underscore",
            "is a function",
            "keyword",
            "* arguments",
            "conditions compare",
        )
    ), problem.message
    assert not marker.exists()
    assert no_system == []


def test_code_in_prior_or_covariate_effect_is_refused(write, tmp_path, no_system):
    marker = tmp_path / "pwned_XYZ"
    code = f"__import__('os').system('touch {marker}')"
    prior = MINIMAL.replace('value = 2.0, source = "test"', f'prior = "{code}"')
    with pytest.raises(ModelError, match=r"must look like Family\(parameters\)"):
        load_model(write("prior.toml", prior))
    effect = MINIMAL.replace(
        'value = 2.0, source = "test"',
        f'value = 2.0, covariates = {{ WT = "power({code}, ref=70)" }}',
    ).replace("[equations]", '[covariates]\nWT = { unit = "kg", default = 70 }\n\n[equations]')
    with pytest.raises(ModelError, match="covariate effect of WT on CL"):
        load_model(write("effect.toml", effect))
    assert not marker.exists()
    assert no_system == []


# -- states, includes ------------------------------------------------------------------------


def test_duplicate_state_in_one_file_is_a_toml_error(load_error):
    err, path = load_error(MINIMAL.replace("[parameters]", STATE + "\n\n[parameters]"))
    problem = err.problems[0]
    assert problem.file == str(path.resolve())
    assert problem.row == line_of(path, 'central = { unit = "mg" }', line_of(path, "[states]") + 2)
    assert "not valid TOML" in problem.message


def test_duplicate_state_across_include(write):
    base = write("base.toml", MINIMAL)
    main = write(
        "main.toml",
        """
        [model]
        name = "main"
        time_unit = "h"
        include = ["base.toml"]

        [states]
        central = { unit = "mg" }
        """,
    )
    with pytest.raises(ModelError) as exc:
        load_model(main)
    assert_problem(exc.value, main, 'central = { unit = "mg" }', "central", "duplicate state")
    # and it says where the first one is
    assert f"first defined at {base.resolve()}, line {line_of(base, 'central = {')}" in str(
        exc.value
    )


def test_name_used_twice_for_different_things(load_error):
    text = MINIMAL.replace("V = {", 'central = { unit = "L", value = 1.0 }\nV = {')
    err, path = load_error(text)
    words = "parameter 'central' has the name of a state"
    assert_problem(err, path, 'central = { unit = "L"', "central", words)


def test_include_cycle(write):
    a = write("a.toml", '[model]\nname = "a"\ntime_unit = "h"\ninclude = ["b.toml"]\n')
    b = write("b.toml", '[model]\nname = "b"\ntime_unit = "h"\n\n\ninclude = ["a.toml"]\n')
    with pytest.raises(ModelError) as exc:
        load_model(a)
    # reported in the file whose include closes the cycle, at the include line
    words = "include cycle: a.toml -> b.toml -> a.toml"
    assert_problem(exc.value, b, "include =", "include", words)


def test_file_including_itself(write):
    s = write("self.toml", '[model]\nname = "s"\n\ninclude = ["self"]\n')
    with pytest.raises(ModelError) as exc:
        load_model(s)
    assert_problem(exc.value, s, "include =", "include", "include cycle: self.toml -> self.toml")


def test_missing_include(load_error):
    err, path = load_error(MINIMAL.replace("[states]", 'include = ["nope"]\n[states]'))
    assert_problem(err, path, "include =", "nope", "no model file 'nope'")


def test_include_must_be_a_list_of_names(load_error):
    err, path = load_error(MINIMAL.replace('time_unit = "h"', 'time_unit = "h"\ninclude = [1]'))
    assert_problem(err, path, "include =", "include", "include is a list of model files")


# -- units and priors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, new, needle, column",
    [
        (STATE, "central = { initial = 0 }", "central = { initial", "central"),
        ('CL = { unit = "L/h", ', "CL = { ", "CL = {", "CL"),
    ],
)
def test_missing_unit(load_error, old, new, needle, column):
    err, path = load_error(MINIMAL.replace(old, new))
    assert_problem(err, path, needle, column, "unit missing")


def test_unknown_unit(load_error):
    err, path = load_error(MINIMAL.replace('unit = "L/h"', 'unit = "litre_per_fortnight"'))
    assert_problem(err, path, "CL = {", "CL", "unknown unit 'litre_per_fortnight'")


def test_time_unit_must_be_time(load_error):
    err, path = load_error(MINIMAL.replace('time_unit = "h"', 'time_unit = "mg"'))
    assert_problem(err, path, "time_unit", "time_unit", "not a unit of time")


@pytest.mark.parametrize(
    "prior, words",
    [
        ("LogNormal(median=-1, cv=0.5)", "must be positive"),
        ("HalfNormal(-1)", "sigma must be positive"),
        ("Gamma(2)", "missing parameter"),
        ("Normal(0, 1, 2)", "takes 2 parameter"),
        ("Uniform(2, 1)", "upper must exceed lower"),
        ("Weibull(1, 2)", "unknown prior family 'Weibull'"),
        ("Normal(mu=0, scale=1)", "has no parameter 'scale'"),
        ("LogNormal(median=1)", "LogNormal takes (median=, cv=)"),
        ("Normal(0, sigma=one)", "plain numbers"),
        ("Normal(0, 1", "not valid syntax"),
    ],
)
def test_invalid_prior(load_error, prior, words):
    err, path = load_error(MINIMAL.replace('value = 2.0, source = "test"', f'prior = "{prior}"'))
    assert_problem(err, path, "CL = {", "CL", "prior", words)


def test_iiv_must_be_a_prior_for_a_standard_deviation(load_error):
    err, path = load_error(MINIMAL.replace('source = "test" }', 'iiv = "Normal(0, 1)" }', 1))
    assert_problem(err, path, "CL = {", "CL", "iiv is a prior for a standard deviation")


@pytest.mark.parametrize(
    "old, new, words",
    [
        ('value = 2.0, source = "test"', 'source = "no value"', "needs a value or a prior"),
        ("value = 2.0", 'value = "two"', "must be a finite number"),
        ('value = 2.0, source = "test"', "value = 2.0, fixed = false", "has no prior"),
        ('value = 2.0, source = "test"', 'value = 2.0, iiv_scale = "probit"', "iiv_scale"),
        ('value = 2.0, source = "test"', "value = 2.0, bogus = 1", "unknown key(s) ['bogus']"),
        (
            'value = 2.0, source = "test"',
            'value = 2.0, covariates = { AGE = "exp(0.1, ref=40)" }',
            "unknown covariate 'AGE'",
        ),
    ],
)
def test_invalid_parameter(load_error, old, new, words):
    err, path = load_error(MINIMAL.replace(old, new, 1))
    assert_problem(err, path, "CL = {", "CL", words)


@pytest.mark.parametrize(
    "effect, words",
    [
        ("power(0.75)", "ref= is required for power"),
        ("power(0.75, ref=0)", "need ref > 0"),
        ("cubic(1, ref=70)", "must look like"),
        ("power(0.75, ref=WT)", "must look like"),
        ("power(0.75, 70)", "must look like"),
        ("power(k_missing, ref=70)", "covariate coefficient 'k_missing' is not a parameter"),
    ],
)
def test_invalid_covariate_effect(load_error, effect, words):
    text = MINIMAL.replace(
        'value = 2.0, source = "test"', f'value = 2.0, covariates = {{ WT = "{effect}" }}'
    ).replace("[equations]", '[covariates]\nWT = { unit = "kg", default = 70 }\n\n[equations]')
    err, path = load_error(text)
    assert_problem(err, path, "CL = {", "CL", words)


@pytest.mark.parametrize("name", ["t", "exp", "hill", "pi"])
def test_reserved_names(load_error, name):
    text = MINIMAL.replace("V = {", f'{name} = {{ unit = "1", value = 1.0 }}\nV = {{')
    err, path = load_error(text)
    assert_problem(err, path, f"{name} = {{", name, "is reserved")


def test_invalid_name(load_error):
    err, path = load_error(MINIMAL.replace("V = {", '"2V" = { unit = "1", value = 1.0 }\nV = {'))
    assert_problem(err, path, '"2V" = {', "2V", "invalid parameter name")


# -- file structure --------------------------------------------------------------------------


def test_invalid_toml_reports_the_parser_line(load_error):
    err, path = load_error(MINIMAL.replace("[equations]", "[equations]\nfoo = = 1"))
    problem = err.problems[0]
    assert problem.file == str(path.resolve())
    assert problem.row == line_of(path, "foo = = 1")
    assert "not valid TOML" in problem.message


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[model]\nname = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ModelError, match="not a UTF-8 text file"):
        load_model(path)


def test_unknown_section(load_error):
    err, path = load_error(MINIMAL + '\n[stats]\nmean = "1"\n')
    assert_problem(err, path, "[stats]", "stats", "unknown section [stats]")


def test_section_must_be_a_table(load_error):
    text = MINIMAL.replace('[states]\ncentral = { unit = "mg" }\n', "")
    err, path = load_error('states = "central"\n' + text)
    assert_problem(err, path, "states =", "states", "[states] must be a table")


def test_model_name_required(load_error):
    err, path = load_error(MINIMAL.replace('name = "mini"\n', ""))
    assert_problem(err, path, "[model]", "name", "[model] name is required")


def test_equation_for_unknown_state(load_error):
    err, path = load_error(MINIMAL.replace("[doses.iv]", 'periph = "0"\n\n[doses.iv]'))
    assert_problem(err, path, 'periph = "0"', "periph", "equation for unknown state 'periph'")


def test_state_without_equation(load_error):
    err, path = load_error(MINIMAL.replace(STATE, STATE + '\nperiph = { unit = "mg" }'))
    assert_problem(err, path, "periph = {", "periph", "state 'periph' has no equation")


def test_term_for_unknown_state(load_error):
    err, path = load_error(MINIMAL + '\n[terms]\nperiph = "CL / V * central"\n')
    assert_problem(err, path, 'periph = "CL', "periph", "term added to unknown state 'periph'")


def test_dose_into_a_non_state(load_error):
    err, path = load_error(MINIMAL.replace('compartment = "central"', 'compartment = "V"'))
    assert_problem(err, path, "[doses.iv]", "iv", "compartment 'V' is not a state")


@pytest.mark.parametrize(
    "old, new, words",
    [
        ('unit = "mg"\n\n[obs', 'unit = "L"\n\n[obs', "doses in l cannot enter central"),
        ('unit = "mg"\n\n[obs', 'unit = "mg/kg"\nper = "WT"\n\n[obs', "'WT' is not a covariate"),
        ('unit = "mg"\n\n[obs', 'unit = "mg"\nlag = "CL"\n\n[obs', "the lag of dose route iv"),
        ('unit = "mg"\n\n[obs', 'unit = "mg"\nbioavailability = "V"\n\n[obs', "bioavailability"),
    ],
)
def test_invalid_dose_route(load_error, old, new, words):
    err, path = load_error(MINIMAL.replace(old, new))
    assert_problem(err, path, "[doses.iv]", "iv", words)


def test_lag_cannot_depend_on_time_or_states(load_error):
    # regression: these were accepted and failed at compile time with KeyError 't'
    for lag in ("0 * CL / V * t", "central / CL"):
        text = MINIMAL.replace('unit = "mg"\n\n[obs', f'unit = "mg"\nlag = "{lag}"\n\n[obs')
        err, path = load_error(text)
        assert_problem(err, path, "[doses.iv]", "iv", "is fixed for a subject")


def test_initial_value_cannot_depend_on_time(load_error):
    # regression: an initial value using t loaded, then compile() raised KeyError 't'
    text = MINIMAL.replace(STATE, 'central = { unit = "mg", initial = "CL * t" }')
    err, path = load_error(text)
    assert_problem(err, path, "central = {", "central", "initial value of central is fixed", "(t)")


def test_initial_value_cannot_use_a_time_dependent_derived_quantity(load_error):
    text = MINIMAL.replace(
        'central = { unit = "mg" }', 'central = { unit = "mg", initial = "CL * ramp" }'
    ).replace("[equations]", '[derived]\nramp = "t"\n\n[equations]')
    err, path = load_error(text)
    assert_problem(err, path, "central = {", "central", "is fixed for a subject", "(ramp)")


@pytest.mark.parametrize(
    "old, new, words",
    [
        ('error = "none"', 'error = "poisson"', "unknown error model 'poisson'"),
        ('error = "none"', 'error = "additive"', "error = 'additive' needs sigma"),
        ('error = "none"', 'error = "additive"\nsigma = "s"', "sigma = 's' is not a parameter"),
        ('error = "none"', 'error = "additive"\nsigma = "CL"', "'CL' must have unit mg / l"),
        ('error = "none"', 'error = "proportional"\nsigma_prop = "V"', "'V' must have unit 1"),
        ('error = "none"', 'error = "ordinal"', "ordinal observation needs cutpoints"),
        ('error = "none"', 'error = "ordinal"\ncutpoints = ["c1"]', "unknown: ['c1']"),
        ('error = "none"', 'error = "ordinal"\ncutpoints = ["CL"]\nlevels = [0, 1, 2]', "2 levels"),
    ],
)
def test_invalid_observation(load_error, old, new, words):
    err, path = load_error(MINIMAL.replace(old, new))
    assert_problem(err, path, "[observations.conc]", "conc", words)


def test_duplicate_dvid(load_error):
    text = MINIMAL + '\n[observations.amount]\nexpression = "central"\nunit = "mg"\n'
    text += 'dvid = 1\nerror = "none"\n'
    err, path = load_error(text)
    assert err.problems[0].column == "dvid"
    assert "observation DVIDs must be unique, got [1, 1]" in err.problems[0].message


@pytest.mark.parametrize(
    "analytic, words",
    [
        ('{ kind = "3cmt", central = "central", CL = "CL", V = "V" }', "kind must be one of"),
        ('{ kind = "1cmt", central = "central", CL = "CL" }', "analytic 1cmt needs V"),
        ('{ kind = "1cmt", central = "central", CL = "CLx", V = "V" }', "'CLx' is not a parameter"),
        ('{ kind = "1cmt", central = "blood", CL = "CL", V = "V" }', "'blood' is not a state"),
    ],
)
def test_invalid_analytic_declaration(load_error, analytic, words):
    text = MINIMAL.replace('time_unit = "h"', f'time_unit = "h"\nanalytic = {analytic}')
    err, path = load_error(text)
    assert_problem(err, path, "analytic =", "analytic", words)


def test_analytic_rates_must_be_in_model_time_units(load_error):
    # CL/V in 1/h in a model timed in days: the closed form would read the wrong numbers
    text = MINIMAL.replace(
        'time_unit = "h"',
        'time_unit = "day"\nanalytic = { kind = "1cmt", central = "central", CL = "CL", V = "V" }',
    )
    err, path = load_error(text)
    words = ("analytic rate CL/V is in 1 / h", "needs 1/d")
    assert_problem(err, path, "analytic =", "analytic", *words)


def test_every_duplicate_is_listed(write):
    base = write("base.toml", MINIMAL)
    main = write(
        "main.toml",
        """
        [model]
        name = "main"
        time_unit = "h"
        include = ["base.toml"]

        [states]
        central = { unit = "mg" }

        [parameters]
        CL = { unit = "L/h", value = 3.0 }
        V = { unit = "L", value = 30.0 }
        """,
    )
    with pytest.raises(ModelError) as exc:
        load_model(main)
    assert [p.column for p in exc.value.problems] == ["central", "CL", "V"]
    assert [p.row for p in exc.value.problems] == [
        line_of(main, "central ="),
        line_of(main, "CL ="),
        line_of(main, "V ="),
    ]
    assert all(p.file == str(main.resolve()) for p in exc.value.problems)
    assert "override = true" in exc.value.problems[1].message
    assert base.exists()


def test_missing_model_file():
    with pytest.raises(FileNotFoundError, match="library models: .*pk_1cmt_oral"):
        load_model("no_such_model_anywhere")


def test_unknown_top_level_key_has_its_line(load_error):
    # regression: a top-level key (not a [table]) was reported without a line
    err, path = load_error("# a comment\nversion = 2\n" + MINIMAL)
    assert_problem(err, path, "version = 2", "version", "unknown section [version]")


@pytest.mark.parametrize(
    "old, new, needle, column, words",
    [
        # regression: unknown keys were ignored, so a misspelt setting silently had no effect
        (
            'unit = "mg"\n\n[obs',
            'unit = "mg"\nbioavailabilty = "0.5"\n\n[obs',
            "[doses.iv]",
            "iv",
            "unknown key(s) ['bioavailabilty'] for dose route iv",
        ),
        (
            STATE,
            'central = { unit = "mg", inital = 1 }',
            "central = {",
            "central",
            "unknown key(s) ['inital'] for state central",
        ),
        (
            'error = "none"',
            'error = "none"\nlloq_ = 0.1',
            "[observations.conc]",
            "conc",
            "unknown key(s) ['lloq_'] for observation conc",
        ),
        (
            "[equations]",
            '[covariates]\nWT = { unit = "kg", defualt = 70 }\n\n[equations]',
            "WT = {",
            "WT",
            "unknown key(s) ['defualt'] for covariate WT",
        ),
        (
            "[equations]",
            '[derived]\nk = { expresion = "CL / V" }\n\n[equations]',
            "k = {",
            "k",
            "unknown key(s) ['expresion'] for derived quantity k",
        ),
        (
            'time_unit = "h"',
            'time_unit = "h"\ntimeunit = "day"',
            "timeunit",
            "timeunit",
            "unknown key 'timeunit' in [model]",
        ),
        (
            'time_unit = "h"',
            'time_unit = "h"\nanalytic = { kind = "1cmt", central = "central", CL = "CL", V = "V", '
            'k = "CL" }',
            "analytic =",
            "analytic",
            "unknown key(s) ['k'] in analytic",
        ),
    ],
)
def test_unknown_keys(load_error, old, new, needle, column, words):
    err, path = load_error(MINIMAL.replace(old, new))
    assert_problem(err, path, needle, column, words)
