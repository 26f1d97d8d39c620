"""Load model files (TOML) into a checked `ModelSpec`.

Loading reads the file and its includes (depth first, each file once, cycles refused), merges
their declarations, parses every equation with the whitelist of `pkpd.expr`, checks units with
`pkpd.units` and inserts the conversions. Every problem is a `~pkpd.errors.ModelError` naming the
file, the line and the name concerned; nothing from a model file is ever executed. The format is
described in ``docs/model-files.md``.
"""

from __future__ import annotations

import ast
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sympy as sp

from pkpd import expr as E
from pkpd import units as U
from pkpd.errors import ModelError, Problem
from pkpd.model.priors import PriorError, parse_prior
from pkpd.model.spec import (
    COVARIATE_FORMS,
    ERROR_MODELS,
    MAX_RECORD_SCALE,
    ORDINAL_OFFSETS,
    AnalyticRoles,
    CovariateEffect,
    CovariateSpec,
    DerivedSpec,
    DoseSpec,
    ModelSpec,
    ObservationSpec,
    ParameterSpec,
    StateSpec,
    Where,
)

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*(\"?)([A-Za-z0-9_\-]+)\1\s*=")
_SECTIONS = {
    "model",
    "states",
    "parameters",
    "covariates",
    "derived",
    "equations",
    "terms",
    "doses",
    "observations",
}


#: Keys each kind of entry accepts (parameters: `_PARAM_KEYS`); anything else is a typo to report,
#: never a setting to ignore silently (a misspelt ``bioavailability`` would mean F = 1).
_KEYS = {
    "model": {"name", "description", "time_unit", "include", "references", "analytic"},
    "state": {"unit", "initial", "description"},
    "covariate": {"unit", "default", "description"},
    "derived quantity": {"expression", "unit", "description"},
    "dose route": {"compartment", "unit", "per", "lag", "bioavailability", "description"},
    "observation": {
        "expression",
        "unit",
        "dvid",
        "error",
        "sigma",
        "sigma_prop",
        "cutpoints",
        "levels",
        "offset",
        "record_scale",
        "lloq",
        "description",
        "override",
    },
    "analytic": {"kind", "central", "depot", "peripheral", "CL", "V", "Q", "V2", "ka"},
}


#: Kinds of entries that an including file may replace with ``override = true``.
_OVERRIDABLE = ("parameter", "observation")


def _split_header(header: str) -> tuple[str, ...]:
    return tuple(part.strip().strip('"') for part in header.split("."))


def _index_lines(text: str) -> dict[tuple[tuple[str, ...], str | None], int]:
    """Map (table path, key) to the line a key is written on; (path, None) to a header."""
    out: dict[tuple[tuple[str, ...], str | None], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_header(header.group(1))
            out.setdefault((table, None), number)
            continue
        key = _KEY.match(line)
        if key:
            out.setdefault((table, key.group(2)), number)
    return out


@dataclass
class _File:
    """One parsed model file."""

    path: str
    text: str
    data: dict[str, Any]
    lines: dict[tuple[tuple[str, ...], str | None], int] = field(default_factory=dict)

    def where(self, section: str, name: str | None = None, sub: str | None = None) -> Where:
        """Best line for ``[section] name`` / ``[section.name] sub``."""
        candidates = []
        if name is not None and sub is not None:
            candidates.append(((section, name), sub))
        if name is not None:
            candidates += [((section,), name), ((section, name), None)]
        candidates += [((section,), None), ((), section)]  # a header, or a top-level key
        for key in candidates:
            if key in self.lines:
                return Where(self.path, self.lines[key])
        return Where(self.path, None)


def _problem(where: Where, name: str | None, message: str) -> Problem:
    return Problem(message, file=where.file, row=where.line, column=name)


# -- reading files and includes ------------------------------------------------------------


def resolve(source: str | Path, relative_to: Path | None = None) -> Path:
    """Find a model file: a path (absolute, or relative to the including file) or a library name.

    Parameters
    ----------
    source : str or Path
        ``"pk_1cmt_oral"``, ``"models/pk_1cmt_oral.toml"``, ``"./il6.toml"``.
    relative_to : Path, optional
        Folder of the including file.

    Returns
    -------
    Path

    Raises
    ------
    FileNotFoundError
        Naming what was tried and the library's models.
    """
    from pkpd.model.library import library_path, list_models

    text = str(source)
    candidates = []
    if relative_to is not None:
        candidates.append(relative_to / text)
    candidates.append(Path(text))
    if not text.endswith(".toml"):
        if relative_to is not None:
            candidates.append(relative_to / f"{text}.toml")
        candidates.append(library_path() / f"{text}.toml")
    for c in candidates:
        if c.is_file():
            return c.resolve()
    names = ", ".join(n for n, _ in list_models())
    raise FileNotFoundError(f"no model file {text!r} (library models: {names})")


def _read(path: Path) -> _File:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelError(Problem("not a UTF-8 text file", file=str(path))) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        raise ModelError(Problem(f"not valid TOML: {exc}", file=str(path), row=line)) from None
    return _File(str(path), text, data, _index_lines(text))


def _collect(
    path: Path,
    chain: tuple[Path, ...],
    seen: dict[Path, _File],
    order: list[_File],
    parent: _File | None = None,
) -> None:
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain[chain.index(path) :], path))
        # The include that closes the cycle is in the file being read (``parent``), which is
        # not in ``seen`` yet: files enter it after their includes.
        where = parent.where("model", "include") if parent else Where(str(chain[-1]))
        raise ModelError(_problem(where, "include", f"include cycle: {cycle}"))
    if path in seen:
        return
    f = _read(path)
    unknown = sorted(set(f.data) - _SECTIONS)
    if unknown:
        raise ModelError(
            [
                _problem(
                    f.where(k), k, f"unknown section [{k}] (known: {', '.join(sorted(_SECTIONS))})"
                )
                for k in unknown
            ]
        )
    model = f.data.get("model", {})
    unknown = sorted(set(model) - _KEYS["model"]) if isinstance(model, dict) else []
    if unknown:
        raise ModelError(
            [
                _problem(
                    f.where("model", k),
                    k,
                    f"unknown key {k!r} in [model] (known: {', '.join(sorted(_KEYS['model']))})",
                )
                for k in unknown
            ]
        )
    includes = model.get("include", []) if isinstance(model, dict) else []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ModelError(
            _problem(f.where("model", "include"), "include", "include is a list of model files")
        )
    for inc in includes:
        try:
            target = resolve(inc, path.parent)
        except FileNotFoundError as exc:
            raise ModelError(_problem(f.where("model", "include"), inc, str(exc))) from None
        _collect(target, (*chain, path), seen, order, f)
    seen[path] = f
    order.append(f)


# -- small parsers -----------------------------------------------------------------------


def _table(f: _File, section: str) -> dict[str, Any]:
    value = f.data.get(section, {})
    if not isinstance(value, dict):
        raise ModelError(_problem(f.where(section), section, f"[{section}] must be a table"))
    return value


def _entry(f: _File, section: str, name: str, value: Any, key: str = "expression") -> dict:
    """Accept ``name = "text"`` or ``name = { ... }`` / ``[section.name]``."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return {key: value}
    raise ModelError(
        _problem(f.where(section, name), name, f"[{section}] {name} must be text or a table")
    )


def _unit(where: Where, name: str, text: Any) -> Any:
    if text is None:
        raise ModelError(_problem(where, name, 'unit missing (write unit = "1" if dimensionless)'))
    try:
        return U.parse_unit(str(text))
    except U.UnitError as exc:
        raise ModelError(_problem(where, name, str(exc))) from None


def _covariate_effect(where: Where, pname: str, cov: str, text: Any) -> CovariateEffect:
    msg = (
        f"covariate effect of {cov} on {pname} must look like 'power(0.75, ref=70)' "
        f"(forms: {', '.join(COVARIATE_FORMS)}; the coefficient is a number or a parameter name)"
    )
    try:
        call = ast.parse(str(text).strip(), mode="eval").body
    except SyntaxError:
        raise ModelError(_problem(where, pname, msg)) from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise ModelError(_problem(where, pname, msg))
    form = call.func.id
    if form not in COVARIATE_FORMS or len(call.args) != 1:
        raise ModelError(_problem(where, pname, msg))
    node = call.args[0]
    coef: float | str
    if isinstance(node, ast.Name):
        coef = node.id
    else:
        try:
            coef = float(ast.literal_eval(node))
        except (ValueError, TypeError, SyntaxError):
            raise ModelError(_problem(where, pname, msg)) from None
    ref = 0.0 if form == "factor" else None
    for kw in call.keywords:
        if kw.arg != "ref":
            raise ModelError(_problem(where, pname, msg))
        try:
            ref = float(ast.literal_eval(kw.value))
        except (ValueError, TypeError, SyntaxError):
            raise ModelError(_problem(where, pname, msg)) from None
    if ref is None:
        raise ModelError(_problem(where, pname, f"{msg}: ref= is required for {form}"))
    if form == "power" and ref <= 0:
        raise ModelError(_problem(where, pname, "power covariate effects need ref > 0"))
    return CovariateEffect(cov, form, coef, ref)


def _prior(where: Where, name: str, text: Any, what: str) -> Any:
    if text is None:
        return None
    try:
        return parse_prior(str(text))
    except PriorError as exc:
        raise ModelError(_problem(where, name, f"{what}: {exc}")) from None


def _parse(where: Where, name: str, text: Any) -> E.Parsed:
    try:
        return E.parse(text)
    except E.ExpressionError as exc:
        raise ModelError(_problem(where, name, str(exc))) from None


def _parse_static(where: Where, name: str, text: Any, what: str, dynamic: set[str]) -> E.Parsed:
    """Parse an expression evaluated once per subject (initial value, lag, bioavailability)."""
    parsed = _parse(where, name, text)
    bad = sorted(parsed.names & dynamic) + (["t"] if parsed.uses_time else [])
    if bad:
        raise ModelError(
            _problem(
                where,
                name,
                f"{what} is fixed for a subject: it cannot use the time t, states or derived "
                f"quantities that change with them ({', '.join(bad)})",
            )
        )
    return parsed


def _build(where: Where, name: str, parsed: E.Parsed, units: dict, time_unit: Any) -> E.Built:
    try:
        return E.build(parsed, units, time_unit)
    except E.ExpressionError as exc:
        raise ModelError(_problem(where, name, str(exc))) from None


def _convert(where: Where, name: str, built: E.Built, unit: Any, what: str) -> sp.Expr:
    try:
        return E.convert(built, unit, what)
    except E.ExpressionError as exc:
        raise ModelError(_problem(where, name, str(exc))) from None


# -- the loader ----------------------------------------------------------------------------


class _Merged:
    """Declarations of all files, with where each came from."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[dict, Where]] = {}
        self.parameters: dict[str, tuple[dict, Where]] = {}
        self.covariates: dict[str, tuple[dict, Where]] = {}
        self.derived: dict[str, tuple[dict, Where]] = {}
        self.equations: dict[str, tuple[Any, Where]] = {}
        self.terms: list[tuple[str, Any, Where]] = []
        self.doses: dict[str, tuple[dict, Where]] = {}
        self.observations: dict[str, tuple[dict, Where]] = {}
        self.problems: list[Problem] = []

    def add(self, kind: str, table: dict, name: str, entry: Any, where: Where) -> None:
        unknown = sorted(set(entry) - _KEYS[kind]) if kind in _KEYS else []
        if unknown:
            self.problems.append(
                _problem(
                    where,
                    name,
                    f"unknown key(s) {unknown} for {kind} {name} (known: {sorted(_KEYS[kind])})",
                )
            )
            return
        if name in table:
            prev = table[name][1]
            if kind in _OVERRIDABLE and isinstance(entry, dict) and entry.get("override"):
                table[name] = (entry, where)
                return
            if kind == "covariate" and entry.get("unit") == table[name][0].get("unit"):
                return  # the same covariate used by two components
            hint = f" (set override = true to replace an included {kind})" * (kind in _OVERRIDABLE)
            self.problems.append(
                _problem(where, name, f"duplicate {kind} {name!r} (first defined at {prev}){hint}")
            )
            return
        table[name] = (entry, where)


def _merge(files: list[_File]) -> _Merged:
    m = _Merged()
    for f in files:
        for name, value in _table(f, "states").items():
            m.add(
                "state",
                m.states,
                name,
                _entry(f, "states", name, value, "unit"),
                f.where("states", name),
            )
        for name, value in _table(f, "parameters").items():
            m.add(
                "parameter",
                m.parameters,
                name,
                _entry(f, "parameters", name, value, "value"),
                f.where("parameters", name),
            )
        for name, value in _table(f, "covariates").items():
            m.add(
                "covariate",
                m.covariates,
                name,
                _entry(f, "covariates", name, value, "unit"),
                f.where("covariates", name),
            )
        for name, value in _table(f, "derived").items():
            m.add(
                "derived quantity",
                m.derived,
                name,
                _entry(f, "derived", name, value),
                f.where("derived", name),
            )
        for name, value in _table(f, "equations").items():
            m.add("equation for state", m.equations, name, value, f.where("equations", name))
        for name, value in _table(f, "terms").items():
            items = value if isinstance(value, list) else [value]
            for item in items:
                m.terms.append((name, item, f.where("terms", name)))
        for name, value in _table(f, "doses").items():
            m.add(
                "dose route",
                m.doses,
                name,
                _entry(f, "doses", name, value, "compartment"),
                f.where("doses", name),
            )
        for name, value in _table(f, "observations").items():
            m.add(
                "observation",
                m.observations,
                name,
                _entry(f, "observations", name, value),
                f.where("observations", name),
            )
    return m


def _check_names(m: _Merged) -> None:
    owners: dict[str, str] = {}
    for kind, table in (
        ("state", m.states),
        ("parameter", m.parameters),
        ("covariate", m.covariates),
        ("derived quantity", m.derived),
    ):
        for name, (_, where) in table.items():
            if not _NAME.match(name):
                m.problems.append(
                    _problem(
                        where,
                        name,
                        f"invalid {kind} name {name!r} (letters, digits, _; starts with a letter)",
                    )
                )
            elif name in E.RESERVED:
                m.problems.append(
                    _problem(where, name, f"{name!r} is reserved (time, pi or a function name)")
                )
            elif name in owners:
                m.problems.append(
                    _problem(where, name, f"{kind} {name!r} has the name of a {owners[name]}")
                )
            owners[name] = kind
    if m.problems:
        raise ModelError(m.problems)


def load_model_texts(files: Mapping[str, str]) -> ModelSpec:
    """Load a model from the texts of its files, as `ModelSpec.files` holds them.

    The texts are written to a temporary folder with their layout (main file first; includes
    resolve among them) and loaded there; the spec keeps the original paths, so its `hash` is
    that of ``files``. How saved fits and long runs' checkpoints get their model back when the
    files on disk have changed or are elsewhere.

    Parameters
    ----------
    files : mapping of str to str
        File path to text, the main file first.

    Returns
    -------
    ModelSpec

    Raises
    ------
    ValueError
        No files.
    ModelError
        As `load_model`.
    """
    import os
    import tempfile
    from dataclasses import replace

    if not files:
        raise ValueError("no model files given")
    paths = [Path(p) for p in files]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    with tempfile.TemporaryDirectory() as tmp:
        for p, text in zip(paths, files.values(), strict=True):
            target = Path(tmp) / (p.relative_to(root) if p.is_absolute() else p)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        main = Path(tmp) / (paths[0].relative_to(root) if paths[0].is_absolute() else paths[0])
        spec = load_model(main)
    return replace(spec, files=dict(files))


def load_model(source: str | Path) -> ModelSpec:
    """Load, check and unit-convert a model file and everything it includes.

    Parameters
    ----------
    source : str or Path
        A path to a ``.toml`` model file, or the name of a library model (`pkpd models`).

    Returns
    -------
    ModelSpec

    Raises
    ------
    ModelError
        Any problem, with file, line and name: invalid TOML, unknown section, unknown symbol,
        syntax error or a disallowed construct in an equation, duplicate state, include cycle,
        unit mismatch, missing unit, invalid prior.
    FileNotFoundError
        No such file or library model.
    """
    path = resolve(source)
    seen: dict[Path, _File] = {}
    order: list[_File] = []
    _collect(path, (), seen, order)
    main = order[-1]
    model = _table(main, "model")
    name = model.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ModelError(_problem(main.where("model"), "name", "[model] name is required"))
    time_text = model.get("time_unit", "day")
    time_unit = _unit(main.where("model", "time_unit"), "time_unit", time_text)
    if not U.same_dimension(time_unit, "h"):
        raise ModelError(
            _problem(
                main.where("model", "time_unit"),
                "time_unit",
                f"{time_text!r} is not a unit of time",
            )
        )

    m = _merge(order)
    if m.problems:
        raise ModelError(m.problems)
    _check_names(m)

    units: dict[str, Any] = {}
    states, parameters, covariates, derived = {}, {}, {}, {}

    # Covariates and states first: their units are needed by every expression.
    for cname, (entry, where) in m.covariates.items():
        unit = _unit(where, cname, entry.get("unit"))
        default = entry.get("default", math.nan)
        try:
            default = float(default)
        except (TypeError, ValueError):
            raise ModelError(
                _problem(where, cname, f"default of covariate {cname} must be a number")
            ) from None
        units[cname] = unit
        covariates[cname] = CovariateSpec(
            cname, str(entry.get("unit")), default, str(entry.get("description", "")), where
        )
    for sname, (entry, where) in m.states.items():
        units[sname] = _unit(where, sname, entry.get("unit"))

    # Parameters.
    for pname, (entry, where) in m.parameters.items():
        parameters[pname] = _parameter(pname, entry, where, covariates, m.parameters)
        units[pname] = U.parse_unit(parameters[pname].unit)

    # Derived quantities, in order: each may use the ones before it.
    state_dependent: set[str] = set()
    for dname, (entry, where) in m.derived.items():
        parsed = _parse(where, dname, entry.get("expression"))
        built = _build(where, dname, parsed, units, time_unit)
        unit = built.unit
        conv = built.converted
        if "unit" in entry:
            unit = _unit(where, dname, entry["unit"])
            conv = _convert(where, dname, built, unit, f"derived quantity {dname}")
        units[dname] = unit
        if parsed.uses_time or parsed.names & (set(m.states) | state_dependent):
            state_dependent.add(dname)
        derived[dname] = DerivedSpec(
            dname, conv, built.raw, U.pretty(unit), str(entry.get("description", "")), where
        )

    # States: initial values.
    for sname, (entry, where) in m.states.items():
        init = entry.get("initial", 0)
        dynamic = set(m.states) | state_dependent
        parsed = _parse_static(where, sname, init, f"the initial value of {sname}", dynamic)
        static = {k: v for k, v in units.items() if k not in m.states and k not in state_dependent}
        built = _build(where, sname, parsed, static, time_unit)
        conv = _convert(where, sname, built, units[sname], f"the initial value of {sname}")
        states[sname] = StateSpec(
            sname, str(entry.get("unit")), conv, built.raw, str(entry.get("description", "")), where
        )

    # Equations (and terms added by other components).
    equations = {}
    problems = []
    for sname in m.equations:
        if sname not in m.states:
            problems.append(
                _problem(m.equations[sname][1], sname, f"equation for unknown state {sname!r}")
            )
    for sname, term_where in ((s, w) for s, _, w in m.terms):
        if sname not in m.states:
            problems.append(_problem(term_where, sname, f"term added to unknown state {sname!r}"))
    for sname, (_, where) in m.states.items():
        if sname not in m.equations:
            problems.append(_problem(where, sname, f"state {sname!r} has no equation"))
    if problems:
        raise ModelError(problems)
    for sname, (text, where) in m.equations.items():
        target = units[sname] / time_unit
        pieces = [(text, where)] + [(t, w) for s, t, w in m.terms if s == sname]
        raw, conv = sp.Integer(0), sp.Integer(0)
        for piece, pwhere in pieces:
            parsed = _parse(pwhere, sname, piece)
            built = _build(pwhere, sname, parsed, units, time_unit)
            conv = conv + _convert(pwhere, sname, built, target, f"d{sname}/dt")
            raw = raw + built.raw
        equations[sname] = (conv, raw)

    static = {k: v for k, v in units.items() if k not in m.states and k not in state_dependent}
    doses = {
        d: _dose(d, entry, where, static, units, covariates, states, time_unit)
        for d, (entry, where) in m.doses.items()
    }
    observations = {}
    for k, (oname, (entry, where)) in enumerate(m.observations.items(), start=1):
        observations[oname] = _observation(oname, k, entry, where, units, parameters, time_unit)
    dvids = [o.dvid for o in observations.values()]
    if len(set(dvids)) != len(dvids):
        raise ModelError(
            _problem(
                main.where("observations"), "dvid", f"observation DVIDs must be unique, got {dvids}"
            )
        )
    for pname, p in parameters.items():
        for eff in p.covariates:
            if isinstance(eff.coef, str) and eff.coef not in parameters:
                raise ModelError(
                    _problem(
                        p.where, pname, f"covariate coefficient {eff.coef!r} is not a parameter"
                    )
                )

    analytic = _analytic(main, model.get("analytic"), parameters, states, time_unit)
    refs = model.get("references", [])
    return ModelSpec(
        name=name.strip(),
        description=str(model.get("description", "")).strip(),
        time_unit=str(time_text),
        states=states,
        parameters=parameters,
        covariates=covariates,
        derived=derived,
        equations=equations,
        doses=doses,
        observations=observations,
        analytic=analytic,
        files={f.path: f.text for f in reversed(order)},
        references=tuple(refs if isinstance(refs, list) else [refs]),
    )


_PARAM_KEYS = {
    "unit",
    "value",
    "prior",
    "fixed",
    "iiv",
    "iiv_scale",
    "covariates",
    "source",
    "description",
    "override",
}


def _parameter(
    name: str, entry: dict, where: Where, covariates: dict, all_params: dict
) -> ParameterSpec:
    unknown = sorted(set(entry) - _PARAM_KEYS)
    if unknown:
        raise ModelError(
            _problem(
                where,
                name,
                f"unknown key(s) {unknown} for parameter {name} (known: {sorted(_PARAM_KEYS)})",
            )
        )
    unit = _unit(where, name, entry.get("unit"))
    value = entry.get("value")
    if value is not None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ModelError(_problem(where, name, f"value of {name} must be a finite number"))
        value = float(value)
    prior = _prior(where, name, entry.get("prior"), "prior")
    if value is None and prior is None:
        raise ModelError(_problem(where, name, f"parameter {name} needs a value or a prior"))
    fixed = bool(entry.get("fixed", prior is None))
    if not fixed and prior is None:
        raise ModelError(
            _problem(where, name, f"parameter {name} is estimated (fixed = false) but has no prior")
        )
    iiv = _prior(where, name, entry.get("iiv"), "iiv")
    if iiv is not None and iiv.support != "positive":
        raise ModelError(
            _problem(
                where,
                name,
                "iiv is a prior for a standard deviation: use HalfNormal, HalfCauchy, "
                "Exponential, Gamma or LogNormal",
            )
        )
    scale = str(entry.get("iiv_scale", "log"))
    if scale not in ("log", "logit"):
        raise ModelError(_problem(where, name, "iiv_scale must be 'log' or 'logit'"))
    effects = []
    covs = entry.get("covariates", {}) or {}
    if not isinstance(covs, dict):
        raise ModelError(
            _problem(where, name, 'covariates is a table: { WT = "power(0.75, ref=70)" }')
        )
    for cov, text in covs.items():
        if cov not in covariates:
            raise ModelError(
                _problem(
                    where,
                    name,
                    f"unknown covariate {cov!r}: declare it in [covariates] with its unit",
                )
            )
        effects.append(_covariate_effect(where, name, cov, text))
    return ParameterSpec(
        name=name,
        unit=U.pretty(unit) if str(entry["unit"]).strip() in ("1", "") else str(entry["unit"]),
        value=value,
        prior=prior,
        fixed=fixed,
        iiv=iiv,
        iiv_scale=scale,
        covariates=tuple(effects),
        source=str(entry.get("source", "")).strip(),
        description=str(entry.get("description", "")).strip(),
        where=where,
    )


def _dose(
    name: str,
    entry: dict,
    where: Where,
    static: dict,
    units: dict,
    covariates: dict,
    states: dict,
    time_unit: Any,
) -> DoseSpec:
    cmt = entry.get("compartment")
    if cmt not in states:
        raise ModelError(
            _problem(where, name, f"dose route {name!r}: compartment {cmt!r} is not a state")
        )
    state_unit = units[cmt]
    amount_text = entry.get("unit", states[cmt].unit)
    amount_unit = _unit(where, name, amount_text)
    per = entry.get("per")
    incoming = amount_unit
    scale_sym: sp.Expr = sp.Integer(1)
    if per is not None:
        if per not in covariates:
            raise ModelError(
                _problem(where, name, f"dose route {name!r}: per = {per!r} is not a covariate")
            )
        incoming = amount_unit * units[per]
        scale_sym = E.symbol(per)
    if not U.same_dimension(incoming, state_unit):
        raise ModelError(
            _problem(
                where,
                name,
                f"dose route {name!r}: doses in {U.pretty(incoming)} cannot enter {cmt} "
                f"({U.pretty(state_unit)})",
            )
        )
    f = U.factor(incoming, state_unit)
    scale = scale_sym if f == 1.0 else sp.Float(f, 17) * scale_sym
    dynamic = set(units) - set(static)
    lag_what = f"the lag of dose route {name}"
    lag_p = _parse_static(where, name, entry.get("lag", 0), lag_what, dynamic)
    lag_b = _build(where, name, lag_p, static, time_unit)
    lag = _convert(where, name, lag_b, time_unit, lag_what)
    bio_text = entry.get("bioavailability", 1)
    bio_p = _parse_static(
        where, name, bio_text, f"the bioavailability of dose route {name}", dynamic
    )
    bio_b = _build(where, name, bio_p, static, time_unit)
    bio = _convert(where, name, bio_b, U.DIMENSIONLESS, f"the bioavailability of dose route {name}")
    return DoseSpec(name, cmt, str(amount_text), per, lag, lag_b.raw, bio, bio_b.raw, scale, where)


def _observation(
    name: str, k: int, entry: dict, where: Where, units: dict, parameters: dict, time_unit: Any
) -> ObservationSpec:
    error = str(entry.get("error", "additive"))
    if error not in ERROR_MODELS:
        raise ModelError(
            _problem(
                where, name, f"unknown error model {error!r} (known: {', '.join(ERROR_MODELS)})"
            )
        )
    built = _build(where, name, _parse(where, name, entry.get("expression")), units, time_unit)
    unit_text = entry.get("unit", "1")
    unit = _unit(where, name, unit_text)
    conv = _convert(where, name, built, unit, f"observation {name}")
    sigma = {}
    for role in ERROR_MODELS[error]:
        pname = entry.get(role)
        if pname is None:
            raise ModelError(
                _problem(where, name, f"error = {error!r} needs {role} = <parameter name>")
            )
        if pname not in parameters:
            raise ModelError(_problem(where, name, f"{role} = {pname!r} is not a parameter"))
        want = unit if role == "sigma" and error != "lognormal" else U.DIMENSIONLESS
        if not U.same_dimension(U.parse_unit(parameters[pname].unit), want):
            raise ModelError(
                _problem(where, name, f"{role} parameter {pname!r} must have unit {U.pretty(want)}")
            )
        sigma[role] = pname
    cutpoints: tuple[str, ...] = ()
    levels: tuple[int, ...] = ()
    offset = entry.get("offset", "record")
    if "offset" in entry and error != "ordinal":
        raise ModelError(_problem(where, name, "offset applies to ordinal endpoints only"))
    if offset not in ORDINAL_OFFSETS:
        raise ModelError(
            _problem(
                where,
                name,
                f"unknown offset {offset!r} (known: {', '.join(map(repr, ORDINAL_OFFSETS))})",
            )
        )
    record_scale = entry.get("record_scale")
    if record_scale is not None:
        if error != "ordinal" or offset != "subject":
            raise ModelError(
                _problem(
                    where, name, 'record_scale applies to ordinal endpoints with offset = "subject"'
                )
            )
        if record_scale not in parameters:
            raise ModelError(
                _problem(where, name, f"record_scale = {record_scale!r} is not a parameter")
            )
        if not U.same_dimension(U.parse_unit(parameters[record_scale].unit), U.DIMENSIONLESS):
            raise ModelError(
                _problem(
                    where, name, f"record_scale parameter {record_scale!r} must be dimensionless"
                )
            )
        if not parameters[record_scale].fixed:
            # The likelihood's quadrature is checked for scales up to MAX_RECORD_SCALE only.
            raise ModelError(
                _problem(
                    where, name, f"record_scale parameter {record_scale!r} must be fixed (a value)"
                )
            )
        fixed = parameters[record_scale].value
        if not 0.0 < float(fixed) <= MAX_RECORD_SCALE:
            raise ModelError(
                _problem(
                    where,
                    name,
                    f"record_scale {record_scale!r} = {fixed} must lie in (0, {MAX_RECORD_SCALE}]",
                )
            )
    if error == "ordinal":
        cutpoints = tuple(entry.get("cutpoints", ()))
        levels = tuple(int(v) for v in entry.get("levels", range(len(cutpoints) + 1)))
        missing = [c for c in cutpoints if c not in parameters]
        if not cutpoints or missing:
            raise ModelError(
                _problem(
                    where,
                    name,
                    f"ordinal observation needs cutpoints = [parameter names]; unknown: {missing}",
                )
            )
        if len(levels) != len(cutpoints) + 1:
            raise ModelError(
                _problem(
                    where, name, f"{len(cutpoints)} cutpoints need {len(cutpoints) + 1} levels"
                )
            )
    lloq = entry.get("lloq")
    return ObservationSpec(
        name=name,
        expr=conv,
        raw=built.raw,
        unit=str(unit_text),
        dvid=int(entry.get("dvid", k)),
        error=error,
        sigma=sigma,
        cutpoints=cutpoints,
        levels=levels,
        lloq=None if lloq is None else float(lloq),
        description=str(entry.get("description", "")),
        where=where,
        offset=str(offset),
        record_scale=None if record_scale is None else str(record_scale),
    )


_ANALYTIC_ROLES = {"1cmt": ("CL", "V", "ka"), "2cmt": ("CL", "V", "Q", "V2", "ka")}
# Rate constants the closed form forms from the roles; each must come out per model time unit
# with no conversion factor (the closed form reads the parameters as they are).
_ANALYTIC_RATES = (("ka", None), ("CL", "V"), ("Q", "V"), ("Q", "V2"))


def _analytic(main: _File, entry: Any, parameters: dict, states: dict, time_unit: Any):
    if entry is None:
        return None
    where = main.where("model", "analytic")
    if not isinstance(entry, dict):
        raise ModelError(_problem(where, "analytic", "analytic is a table: { kind = ..., ... }"))
    unknown = sorted(set(entry) - _KEYS["analytic"])
    if unknown:
        raise ModelError(
            _problem(
                where,
                "analytic",
                f"unknown key(s) {unknown} in analytic (known: {sorted(_KEYS['analytic'])})",
            )
        )
    kind = entry.get("kind")
    if kind not in _ANALYTIC_ROLES:
        raise ModelError(
            _problem(where, "analytic", f"analytic kind must be one of {list(_ANALYTIC_ROLES)}")
        )
    roles = {}
    for role in _ANALYTIC_ROLES[kind]:
        pname = entry.get(role)
        if pname is None:
            if role == "ka" and entry.get("depot") is None:
                continue
            raise ModelError(
                _problem(where, "analytic", f"analytic {kind} needs {role} = <parameter>")
            )
        if pname not in parameters:
            raise ModelError(
                _problem(where, "analytic", f"analytic role {role}: {pname!r} is not a parameter")
            )
        roles[role] = pname
    for num, den in _ANALYTIC_RATES:
        if num not in roles or (den is not None and den not in roles):
            continue
        unit = U.parse_unit(parameters[roles[num]].unit)
        if den is not None:
            unit = unit / U.parse_unit(parameters[roles[den]].unit)
        rate = num if den is None else f"{num}/{den}"
        ok = U.same_dimension(unit, 1 / time_unit) and U.factor(unit, 1 / time_unit) == 1.0
        if not ok:
            raise ModelError(
                _problem(
                    where,
                    "analytic",
                    f"analytic rate {rate} is in {U.pretty(unit)}; the closed form needs "
                    f"1/{U.pretty(time_unit)} (the model's time unit)",
                )
            )
    for key in ("central", "depot", "peripheral"):
        if entry.get(key) is not None and entry[key] not in states:
            raise ModelError(
                _problem(where, "analytic", f"analytic {key} {entry[key]!r} is not a state")
            )
    return AnalyticRoles(
        kind, roles, entry.get("central"), entry.get("depot"), entry.get("peripheral")
    )
