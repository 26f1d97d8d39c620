"""Dosing strategies as data: regimens, reactive policies, triggers; read from TOML files.

A `Strategy` is a named set of fixed `Regimen` s (doses at planned times) and `ReactivePolicy` s
(doses given when a trigger fires at a clinical assessment). Every object is a small frozen
dataclass; nothing here simulates. `load_strategies` reads a TOML file, and `validate` checks a
strategy against a model before any simulation (unknown drug or route, negative dose, mg/kg dosing
without body weights, negative interval, trigger on an unknown quantity), raising
`~pkpd.errors.StrategyError` with the file, strategy and field.

Times are quantities with units (``"1 h"``, ``"12 h"``, ``"-1 h"``, ``"10 d"``); a bare number is
in days. Time zero is the CAR-T infusion.

A TOML file holds one ``[[strategy]]`` table per strategy::

    [[strategy]]
    name = "anakinra_plus_reactive_toc"
    description = "Anakinra 100 mg SC q12h day 0-10, tocilizumab when CRS grade >= 2"

    [[strategy.regimen]]
    drug = "anakinra"
    route = "sc"
    dose = 100
    dose_unit = "mg"
    start = "0 d"
    interval = "12 h"
    until = "10 d"

    [[strategy.reactive]]
    drug = "tocilizumab"
    route = "iv"
    dose = 8
    dose_unit = "mg/kg"
    cap = 800
    duration = "1 h"
    trigger = "crs_grade >= 2"
    assess_every = "12 h"
    max_doses = 4
    min_interval = "8 h"
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pkpd import units as U
from pkpd.errors import InputError, Problem

#: Bundled strategy files (``load_strategies("cart_default")``).
LIBRARY = Path(__file__).resolve().parent / "library"


class StrategyError(InputError):
    """An invalid strategy file or strategy; each problem names file, strategy and field."""


_TRIGGER = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


def parse_time(value: Any, what: str = "time") -> float:
    """Return a time in days from ``"12 h"``, ``"-1 h"``, ``"2 d"`` or a number (days).

    Parameters
    ----------
    value : str or float
        The time.
    what : str
        Words for the error message.

    Returns
    -------
    float
        Days.

    Raises
    ------
    ValueError
        Not a time.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a time like '12 h', got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        q = U.ureg.Quantity(text)
    except Exception:
        raise ValueError(f"{what}: {value!r} is not a time like '12 h' or '2 d'") from None
    if isinstance(q, int | float):
        return float(q)
    if not U.same_dimension(q.units, "day"):
        raise ValueError(f"{what}: {value!r} is not a time")
    return float(q.to("day").magnitude)


@dataclass(frozen=True)
class Trigger:
    """A condition on a model quantity: ``quantity op threshold``, optionally persisting.

    Attributes
    ----------
    quantity : str
        An endpoint (observation) or state of the model; ordinal endpoints are compared as grades.
    op : str
        ``">="``, ``">"``, ``"<="`` or ``"<"``.
    threshold : float
        In the quantity's unit (grades for ordinal endpoints).
    persist : float
        Days the condition must have held at every assessment before the policy acts (0: now).
    """

    quantity: str
    op: str
    threshold: float
    persist: float = 0.0

    @classmethod
    def parse(cls, text: str, persist: float = 0.0) -> Trigger:
        """Parse ``"crs_grade >= 2"``.

        Parameters
        ----------
        text : str
            The condition.
        persist : float, optional
            Days it must persist.

        Returns
        -------
        Trigger
        """
        match = _TRIGGER.match(str(text))
        if not match:
            raise ValueError(f"trigger {text!r} must look like 'crs_grade >= 2' or 'il6 > 1000'")
        return cls(match.group(1), match.group(2), float(match.group(3)), persist)

    def __str__(self) -> str:
        extra = f" for {self.persist * 24:g} h" if self.persist else ""
        return f"{self.quantity} {self.op} {self.threshold:g}{extra}"


@dataclass(frozen=True)
class Dose:
    """How much of a drug, by which route.

    Attributes
    ----------
    drug, route : str
        The model's dose route is ``f"{drug}_{route}"`` (or ``drug`` when route is empty).
    amount : float
        In ``unit``.
    unit : str
        ``"mg"`` or ``"mg/kg"`` (any mass, or mass per body mass).
    cap : float or None
        Maximum single dose in mg (e.g. tocilizumab 800 mg).
    duration : float
        Infusion duration in days (0: bolus, or first-order absorption for oral/SC routes).
    """

    drug: str
    route: str
    amount: float
    unit: str = "mg"
    cap: float | None = None
    duration: float = 0.0

    @property
    def route_name(self) -> str:
        """Name of the model's dose route."""
        return f"{self.drug}_{self.route}" if self.route else self.drug

    @property
    def per_kg(self) -> bool:
        """Whether the amount is per kg of body weight."""
        return U.same_dimension(U.parse_unit(self.unit), U.parse_unit("mg/kg"))

    def __str__(self) -> str:
        cap = f" (max {self.cap:g} mg)" if self.cap else ""
        inf = f" over {self.duration * 24:g} h" if self.duration else ""
        return f"{self.drug} {self.amount:g} {self.unit}{cap} {self.route}{inf}".strip()


@dataclass(frozen=True)
class Regimen:
    """Doses at planned times: ``start, start + interval, ...`` (``n_doses`` of them).

    Attributes
    ----------
    dose : Dose
    start : float
        Day of the first dose (negative: before the CAR-T infusion).
    interval : float
        Days between doses (0 with a single dose).
    n_doses : int
    """

    dose: Dose
    start: float
    interval: float = 0.0
    n_doses: int = 1

    def times(self) -> list[float]:
        """Dose times in days."""
        return [self.start + k * self.interval for k in range(self.n_doses)]

    def __str__(self) -> str:
        every = f" every {self.interval * 24:g} h x{self.n_doses}" if self.n_doses > 1 else ""
        start = f"{self.start * 24:g} h" if abs(self.start) < 1 else f"day {self.start:g}"
        return f"{self.dose} from {start}{every}"


@dataclass(frozen=True)
class ReactivePolicy:
    """Doses given when a trigger fires at a clinical assessment.

    Attributes
    ----------
    dose : Dose
    trigger : Trigger
    assess_every : float
        Days between assessments (from ``start``).
    start, stop : float
        Window of assessments in days.
    max_doses : int
        Cap on the number of doses.
    min_interval : float
        Minimum days between two doses of this policy.
    """

    dose: Dose
    trigger: Trigger
    assess_every: float = 0.5
    start: float = 0.0
    stop: float = 28.0
    max_doses: int = 1
    min_interval: float = 0.0

    def assessments(self) -> list[float]:
        """Assessment times in days."""
        n = int(math.floor((self.stop - self.start) / self.assess_every + 1e-9)) + 1
        return [self.start + k * self.assess_every for k in range(max(n, 0))]

    def __str__(self) -> str:
        return (
            f"{self.dose} when {self.trigger} (assessed every {self.assess_every * 24:g} h, "
            f"at most {self.max_doses}, >= {self.min_interval * 24:g} h apart)"
        )


@dataclass(frozen=True)
class Strategy:
    """A named combination of regimens and reactive policies.

    Attributes
    ----------
    name, description : str
    regimens : tuple of Regimen
    reactive : tuple of ReactivePolicy
    reference : bool
        Whether this is the reference strategy of a comparison.
    """

    name: str
    description: str = ""
    regimens: tuple[Regimen, ...] = ()
    reactive: tuple[ReactivePolicy, ...] = ()
    reference: bool = False
    source: str = field(default="", compare=False)

    def describe(self) -> str:
        """One line per component."""
        lines = [f"{self.name}: {self.description}".rstrip(": ")]
        lines += [f"  - {r}" for r in self.regimens]
        lines += [f"  - {p}" for p in self.reactive]
        if not self.regimens and not self.reactive:
            lines.append("  - no drug")
        return "\n".join(lines)


# -- reading TOML --------------------------------------------------------------------------

_DOSE_KEYS = {"drug", "route", "dose", "dose_unit", "cap", "duration"}
_REGIMEN_KEYS = _DOSE_KEYS | {"start", "interval", "n_doses", "until"}
_REACTIVE_KEYS = _DOSE_KEYS | {
    "trigger",
    "persist",
    "assess_every",
    "start",
    "stop",
    "max_doses",
    "min_interval",
}


def _dose(entry: dict, fail: Any) -> Dose:
    drug = entry.get("drug")
    if not isinstance(drug, str) or not drug.strip():
        raise fail("drug", "drug is required (e.g. 'tocilizumab')")
    amount = entry.get("dose")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise fail("dose", f"dose must be a number, got {amount!r}")
    if not amount >= 0 or not math.isfinite(amount):
        raise fail("dose", f"dose must be zero or positive, got {amount}")
    unit = str(entry.get("dose_unit", "mg"))
    try:
        parsed = U.parse_unit(unit)
    except U.UnitError as exc:
        raise fail("dose_unit", str(exc)) from None
    if not (U.same_dimension(parsed, "mg") or U.same_dimension(parsed, "mg/kg")):
        raise fail("dose_unit", f"dose_unit must be a mass (mg) or mass per kg (mg/kg), not {unit}")
    cap = entry.get("cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or cap <= 0):
        raise fail("cap", f"cap must be a positive number of mg, got {cap!r}")
    try:
        duration = parse_time(entry.get("duration", 0), "duration")
    except ValueError as exc:
        raise fail("duration", str(exc)) from None
    if duration < 0:
        raise fail("duration", "duration must not be negative")
    return Dose(
        drug.strip(),
        str(entry.get("route", "")).strip(),
        float(amount),
        unit,
        None if cap is None else float(cap),
        duration,
    )


def _time(entry: dict, key: str, default: Any, fail: Any) -> float:
    try:
        return parse_time(entry.get(key, default), key)
    except ValueError as exc:
        raise fail(key, str(exc)) from None


def _count(entry: dict, key: str, default: int, fail: Any) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(key, f"{key} must be a whole number >= 1, got {value!r}")
    return value


def strategy_from_dict(data: dict, source: str = "<dict>") -> Strategy:
    """Build a `Strategy` from a parsed TOML table.

    Parameters
    ----------
    data : dict
        One ``[[strategy]]`` table.
    source : str
        File name for error messages.

    Returns
    -------
    Strategy

    Raises
    ------
    StrategyError
    """
    name = data.get("name")
    label = name if isinstance(name, str) and name else "<unnamed>"

    def fail_for(part: str) -> Any:
        def fail(key: str, message: str) -> StrategyError:
            return StrategyError(
                Problem(f"strategy {label!r}, {part}: {message}", file=source, column=key)
            )

        return fail

    if not isinstance(name, str) or not name.strip():
        raise fail_for("strategy")("name", "every strategy needs a name")
    unknown = sorted(set(data) - {"name", "description", "regimen", "reactive", "reference"})
    if unknown:
        raise fail_for("strategy")(unknown[0], f"unknown key(s) {unknown}")
    regimens = []
    for k, entry in enumerate(data.get("regimen", []) or [], start=1):
        fail = fail_for(f"regimen {k}")
        extra = sorted(set(entry) - _REGIMEN_KEYS)
        if extra:
            raise fail(extra[0], f"unknown key(s) {extra} (known: {sorted(_REGIMEN_KEYS)})")
        dose = _dose(entry, fail)
        start = _time(entry, "start", 0.0, fail)
        interval = _time(entry, "interval", 0.0, fail)
        if interval < 0:
            raise fail("interval", f"interval must not be negative, got {interval * 24:g} h")
        if "until" in entry:
            if "n_doses" in entry:
                raise fail("until", "give n_doses or until, not both")
            if interval <= 0:
                raise fail("interval", "until needs a positive interval")
            until = _time(entry, "until", 0.0, fail)
            if until < start:
                raise fail("until", "until is before start")
            n_doses = int(math.floor((until - start) / interval + 1e-9)) + 1
        else:
            n_doses = _count(entry, "n_doses", 1, fail)
            if n_doses > 1 and interval <= 0:
                raise fail("interval", "several doses need a positive interval")
        regimens.append(Regimen(dose, start, interval, n_doses))
    policies = []
    for k, entry in enumerate(data.get("reactive", []) or [], start=1):
        fail = fail_for(f"reactive policy {k}")
        extra = sorted(set(entry) - _REACTIVE_KEYS)
        if extra:
            raise fail(extra[0], f"unknown key(s) {extra} (known: {sorted(_REACTIVE_KEYS)})")
        dose = _dose(entry, fail)
        persist = _time(entry, "persist", 0.0, fail)
        try:
            trigger = Trigger.parse(entry.get("trigger", ""), persist)
        except ValueError as exc:
            raise fail("trigger", str(exc)) from None
        every = _time(entry, "assess_every", "12 h", fail)
        if every <= 0:
            raise fail("assess_every", "assess_every must be positive")
        start = _time(entry, "start", 0.0, fail)
        stop = _time(entry, "stop", 28.0, fail)
        if stop < start:
            raise fail("stop", "stop is before start")
        min_interval = _time(entry, "min_interval", 0.0, fail)
        if min_interval < 0:
            raise fail("min_interval", "min_interval must not be negative")
        if persist < 0:
            raise fail("persist", "persist must not be negative")
        policies.append(
            ReactivePolicy(
                dose, trigger, every, start, stop, _count(entry, "max_doses", 1, fail), min_interval
            )
        )
    return Strategy(
        name=name.strip(),
        description=str(data.get("description", "")).strip(),
        regimens=tuple(regimens),
        reactive=tuple(policies),
        reference=bool(data.get("reference", False)),
        source=source,
    )


def load_strategies(path: str | Path) -> list[Strategy]:
    """Read every ``[[strategy]]`` of a TOML file.

    Parameters
    ----------
    path : str or Path
        The file, or the name of a bundled set (``"cart_default"``).

    Returns
    -------
    list of Strategy

    Raises
    ------
    StrategyError
        Invalid TOML, a strategy with an invalid field, or duplicate names.
    FileNotFoundError
    """
    path = Path(path)
    if not path.exists() and path.suffix == "" and (LIBRARY / f"{path}.toml").is_file():
        path = LIBRARY / f"{path}.toml"
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StrategyError(Problem(f"not valid TOML: {exc}", file=str(path))) from None
    entries = data.get("strategy")
    if not isinstance(entries, list) or not entries:
        raise StrategyError(Problem("no [[strategy]] tables in the file", file=str(path)))
    out = [strategy_from_dict(e, str(path)) for e in entries]
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise StrategyError(Problem(f"duplicate strategy name(s) {dup}", file=str(path)))
    return out


def validate(strategy: Strategy, model: Any, *, has_weight: bool) -> None:
    """Check a strategy against a model before simulating.

    Parameters
    ----------
    strategy : Strategy
    model : CompiledModel
        The model the strategy will be simulated with.
    has_weight : bool
        Whether the patients have body weights (covariate ``WT``).

    Raises
    ------
    StrategyError
        Unknown drug/route, mg/kg dosing without weights, trigger on an unknown quantity.
    """
    problems = []
    routes = list(model.dose_targets)
    spec = model.spec
    quantities = set(model.endpoints) | set(model.states)
    for part, dose in [("regimen", r.dose) for r in strategy.regimens] + [
        ("reactive policy", p.dose) for p in strategy.reactive
    ]:
        where = dict(file=strategy.source or None, column="drug")
        if dose.route_name not in routes:
            drugs = sorted({r.rsplit("_", 1)[0] for r in routes})
            problems.append(
                Problem(
                    f"strategy {strategy.name!r}, {part}: unknown drug/route "
                    f"{dose.route_name!r} for model {model.name!r} (dose routes: "
                    f"{', '.join(routes)}; "
                    f"drugs: {', '.join(drugs)})",
                    **where,
                )
            )
            continue
        if dose.per_kg and not has_weight:
            problems.append(
                Problem(
                    f"strategy {strategy.name!r}, {part}: {dose} is dosed per kg but the patients "
                    "have no body weight (covariate WT)",
                    file=strategy.source or None,
                    column="dose_unit",
                )
            )
        if spec is not None:
            route = spec.doses[dose.route_name]
            if route.per is None and not U.same_dimension(
                U.parse_unit(route.amount_unit), U.parse_unit("mg")
            ):
                problems.append(
                    Problem(
                        f"strategy {strategy.name!r}: route {route.name!r} takes doses in "
                        f"{route.amount_unit}, not a mass",
                        file=strategy.source or None,
                        column="route",
                    )
                )
    for policy in strategy.reactive:
        if policy.trigger.quantity not in quantities:
            problems.append(
                Problem(
                    f"strategy {strategy.name!r}: trigger on unknown quantity "
                    f"{policy.trigger.quantity!r} (endpoints: {', '.join(model.endpoints)}; "
                    f"states: {', '.join(model.states)})",
                    file=strategy.source or None,
                    column="trigger",
                )
            )
    if problems:
        raise StrategyError(problems)
