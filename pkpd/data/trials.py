"""Published trial summaries (aggregate data): CRS / neurotoxicity rates, timing, treatment use.

The bundled file ``pkpd/data/trials/published.toml`` holds the CAR-T trial and registry summaries
of ``science.md`` section E (ZUMA-1, JULIET, ELIANA/ENSIGN, Hay 2017, real-world tisa-cel, ...),
each with its source, grading scale and reactive-treatment rates. Values the evidence base marks
NOT FOUND are absent, never invented. They are the data of the aggregate-data likelihood
(`pkpd.inference.aggregate`).

>>> trials = load_trials()                      # dict id -> TrialSummary, file order
>>> zuma = trials["zuma1"]
>>> zuma.outcome("crs", min_grade=3).count, zuma.n
(14.0, 108)

File format: one ``[[trial]]`` table per study::

    [[trial]]
    id = "zuma1"                      # unique, [a-z0-9_]
    study = "ZUMA-1 (axi-cel, LBCL)"
    product = "axicabtagene ciloleucel"
    costimulation = "CD28"            # CD28 | 4-1BB | mixed | not stated
    disease = "LBCL"
    n = 108                           # patients (denominator unless an entry says otherwise)
    scale = "Lee"                     # Lee | Penn | ASTCT | not stated
    source = "Yescarta ISI (...)"
    outcomes = [
        { endpoint = "crs", min_grade = 1, count = 101, rate = 0.94 },    # grade >= 1
        { endpoint = "crs", grade = 5, rate = 0.038 },                    # exactly grade 5
    ]
    timing = [{ endpoint = "crs", what = "onset", median_days = 2, range_days = [1, 12] }]
    treatment = [{ drug = "tocilizumab", rate = 0.43, indication = "CRS and/or NE" }]

Optional trial keys: ``setting``, ``management`` (prophylaxis or a non-standard algorithm),
``notes``, ``n_approximate``. An outcome has ``endpoint`` (``crs``, ``icans`` or ``neuro``),
``min_grade`` or ``grade`` (1-5), ``count`` and/or ``rate``, and optionally ``n``, ``derived``,
``note``, ``source`` and ``definition``: an identifier ([a-z0-9_]) for a source that counts the
endpoint differently from the other sources (e.g. ``"label_nt"``: a drug label's "neurologic
toxicities", which may count more adverse reactions than a trial's neurologic events), which an
aggregate likelihood can give its own shift (``definition_shifts``); timing entries take it too.
A count given only as a percentage is derived as ``rate x n`` (unrounded) and marked
``derived``. Errors (unknown keys, a count above its denominator, a rate outside
[0, 1], a count that disagrees with its rate, ...) raise `TrialFileError` naming the file, the
trial and the key.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pkpd.errors import InputError, Problem

#: Grading scales a summary may state.
SCALES = ("Lee", "Penn", "ASTCT", "not stated")
#: Costimulation domains of CAR-T products.
COSTIMULATION = ("CD28", "4-1BB", "mixed", "not stated")
#: Outcome endpoints: CRS, ICANS (as named by the source), neurologic events / NT.
ENDPOINTS = ("crs", "icans", "neuro")
#: Timing quantities.
TIMING_KINDS = ("onset", "duration")
#: Highest grade (5: death).
MAX_GRADE = 5
#: A count and a rate given together must agree to within this (percentages are rounded).
RATE_TOLERANCE = 0.0051

_TRIAL_KEYS = {
    "id": True,
    "study": True,
    "product": True,
    "costimulation": True,
    "disease": True,
    "n": True,
    "scale": True,
    "source": True,
    "setting": False,
    "management": False,
    "notes": False,
    "n_approximate": False,
    "outcomes": False,
    "timing": False,
    "treatment": False,
}
_OUTCOME_KEYS = {
    "endpoint",
    "min_grade",
    "grade",
    "count",
    "rate",
    "n",
    "derived",
    "note",
    "source",
    "definition",
}
_TIMING_KEYS = {
    "endpoint",
    "what",
    "median_days",
    "range_days",
    "iqr_days",
    "n",
    "derived",
    "note",
    "source",
    "definition",
}
_TREATMENT_KEYS = {
    "drug",
    "rate",
    "count",
    "n",
    "denominator",
    "indication",
    "derived",
    "note",
    "source",
}
_ID = re.compile(r"^[a-z0-9_]+$")


class TrialFileError(InputError):
    """An invalid trial-summary file; each problem names the file, the trial and the key."""


@dataclass(frozen=True)
class Outcome:
    """A rate with its denominator: patients reaching a grade of an endpoint.

    Attributes
    ----------
    endpoint : str
        ``"crs"``, ``"icans"`` or ``"neuro"`` (neurologic events / NT as the source names them).
    grade : int
        The grade (1-5).
    exact : bool
        True: exactly ``grade``; False: ``grade`` or worse (``min_grade``).
    count : float
        Patients with the outcome; ``rate x n`` (unrounded) when `derived`.
    n : int
        Denominator (patients).
    derived : bool
        The count is not printed in the source (computed from a percentage, or marked derived).
    reported_rate : float or None
        The percentage as printed (fraction), if any.
    note, source : str
        Free text; the source of this number (the trial's when not given).
    definition : str
        ``""``: the endpoint as the sources usually count it; otherwise the identifier of this
        source's own definition (see the module's file format).
    """

    endpoint: str
    grade: int
    exact: bool
    count: float
    n: int
    derived: bool
    reported_rate: float | None
    note: str
    source: str
    definition: str = ""

    @property
    def rate(self) -> float:
        """Observed fraction ``count / n``."""
        return self.count / self.n

    @property
    def label(self) -> str:
        """Short label, e.g. ``"crs>=3"``, ``"crs=5"`` or ``"neuro>=1 (label_nt)"``."""
        named = f" ({self.definition})" if self.definition else ""
        return f"{self.endpoint}{'=' if self.exact else '>='}{self.grade}{named}"


@dataclass(frozen=True)
class Timing:
    """A median time (days after the infusion), with its range or IQR when given.

    Attributes
    ----------
    endpoint : str
    what : str
        ``"onset"`` or ``"duration"``.
    median_days : float
    range_days, iqr_days : tuple of float or None
    n : int or None
        Patients the median is over (e.g. those with CRS), when stated.
    derived : bool
    note, source : str
    definition : str
        As `Outcome.definition`.
    """

    endpoint: str
    what: str
    median_days: float
    range_days: tuple[float, float] | None
    iqr_days: tuple[float, float] | None
    n: int | None
    derived: bool
    note: str
    source: str
    definition: str = ""


@dataclass(frozen=True)
class TreatmentUse:
    """Share of patients who received a drug (reactive treatment or rescue).

    Attributes
    ----------
    drug : str
        E.g. ``"tocilizumab"``, ``"corticosteroids"``, ``"tocilizumab+corticosteroids"``.
    rate : float
        Fraction of the denominator.
    n : int or None
        Denominator when stated (else the trial's ``n`` with ``denominator`` saying what it is).
    denominator : str
        What the rate is a fraction of (``"all patients"`` unless stated).
    indication, note, source : str
    derived : bool
    """

    drug: str
    rate: float
    n: int | None
    denominator: str
    indication: str
    derived: bool
    note: str
    source: str


@dataclass(frozen=True)
class TrialSummary:
    """One published trial or registry summary.

    Attributes
    ----------
    id, study, product, costimulation, disease : str
    n : int
        Patients (infused).
    scale : str
        CRS grading scale (`SCALES`).
    source : str
        Where the numbers come from (as in science.md section E).
    setting, management, notes : str
    n_approximate : bool
        The source gives N only approximately.
    outcomes : tuple of Outcome
    timing : tuple of Timing
    treatment : tuple of TreatmentUse
    """

    id: str
    study: str
    product: str
    costimulation: str
    disease: str
    n: int
    scale: str
    source: str
    setting: str = ""
    management: str = ""
    notes: str = ""
    n_approximate: bool = False
    outcomes: tuple[Outcome, ...] = ()
    timing: tuple[Timing, ...] = ()
    treatment: tuple[TreatmentUse, ...] = ()

    def outcome(
        self, endpoint: str, *, min_grade: int | None = None, grade: int | None = None
    ) -> Outcome | None:
        """Return the outcome row for ``endpoint`` at ``min_grade`` (or exact ``grade``), if any.

        Parameters
        ----------
        endpoint : str
        min_grade, grade : int, optional
            Exactly one of them.

        Returns
        -------
        Outcome or None
        """
        if (min_grade is None) == (grade is None):
            raise ValueError("give exactly one of min_grade and grade")
        exact = grade is not None
        k = grade if exact else min_grade
        for o in self.outcomes:
            if o.endpoint == endpoint and o.grade == k and o.exact == exact:
                return o
        return None

    def timing_of(self, endpoint: str, what: str = "onset") -> Timing | None:
        """Return the timing row of an endpoint (``"onset"`` or ``"duration"``), if any."""
        for t in self.timing:
            if t.endpoint == endpoint and t.what == what:
                return t
        return None

    def treated(self, drug: str) -> TreatmentUse | None:
        """Return the treatment-use row of a drug, if any."""
        for t in self.treatment:
            if t.drug == drug:
                return t
        return None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


class _Checker:
    """Collects problems of one file, each located by trial and key."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(Problem(message, file=self.file, column=where))

    def keys(self, entry: Any, allowed: Mapping[str, bool] | set[str], where: str) -> bool:
        if not isinstance(entry, dict):
            self.fail(where, f"expected a table, got {type(entry).__name__}")
            return False
        for key in entry:
            if key not in allowed:
                self.fail(
                    f"{where}.{key}", f"unknown key {key!r}; allowed: {', '.join(sorted(allowed))}"
                )
        if isinstance(allowed, Mapping):
            for key, required in allowed.items():
                if required and key not in entry:
                    self.fail(f"{where}.{key}", "missing required key")
        return True

    def text(self, entry: dict, key: str, where: str, default: str = "") -> str:
        value = entry.get(key, default)
        if not isinstance(value, str):
            self.fail(f"{where}.{key}", f"expected text, got {value!r}")
            return default
        return value

    def definition(self, entry: dict, where: str) -> str:
        value = self.text(entry, "definition", where)
        if value and not _ID.match(value):
            self.fail(
                f"{where}.definition", f"a definition is an identifier [a-z0-9_], got {value!r}"
            )
            return ""
        return value

    def flag(self, entry: dict, key: str, where: str) -> bool:
        value = entry.get(key, False)
        if not isinstance(value, bool):
            self.fail(f"{where}.{key}", f"expected true or false, got {value!r}")
            return False
        return value

    def rate(self, entry: dict, where: str) -> float | None:
        if "rate" not in entry:
            return None
        r = entry["rate"]
        if not _is_number(r) or not 0.0 <= r <= 1.0:
            self.fail(f"{where}.rate", f"a rate must be a fraction in [0, 1], got {r!r}")
            return None
        return float(r)

    def denominator(self, entry: dict, where: str, default: int | None) -> int | None:
        if "n" not in entry:
            return default
        n = entry["n"]
        if not _is_int(n) or n < 1:
            self.fail(f"{where}.n", f"n must be a positive integer, got {n!r}")
            return default
        return n

    def pair(self, entry: dict, key: str, where: str) -> tuple[float, float] | None:
        if key not in entry:
            return None
        v = entry[key]
        if (
            not isinstance(v, list)
            or len(v) != 2
            or not all(_is_number(x) for x in v)
            or v[0] > v[1]
            or v[0] < 0
        ):
            self.fail(
                f"{where}.{key}", f"expected [low, high] in days with 0 <= low <= high, got {v!r}"
            )
            return None
        return float(v[0]), float(v[1])


def _outcome(
    c: _Checker, entry: Any, where: str, trial_n: int, trial_source: str
) -> Outcome | None:
    if not c.keys(entry, _OUTCOME_KEYS, where):
        return None
    before = len(c.problems)
    endpoint = entry.get("endpoint")
    if endpoint not in ENDPOINTS:
        c.fail(f"{where}.endpoint", f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
    has_min, has_exact = "min_grade" in entry, "grade" in entry
    if has_min == has_exact:
        c.fail(where, "give exactly one of 'min_grade' (grade >= k) and 'grade' (exactly k)")
        grade = 1
    else:
        grade = entry["min_grade"] if has_min else entry["grade"]
        if not _is_int(grade) or not 1 <= grade <= MAX_GRADE:
            c.fail(
                f"{where}.{'min_grade' if has_min else 'grade'}",
                f"grade must be an integer 1-{MAX_GRADE}, got {grade!r}",
            )
            grade = 1
    n = c.denominator(entry, where, trial_n)
    rate = c.rate(entry, where)
    derived = c.flag(entry, "derived", where)
    definition = c.definition(entry, where)
    count = entry.get("count")
    if count is None and "rate" not in entry:
        c.fail(where, "an outcome needs a 'count' or a 'rate'")
    if count is not None:
        if not _is_number(count) or count < 0:
            c.fail(f"{where}.count", f"count must be a non-negative number, got {count!r}")
            count = None
        elif n is not None and count > n:
            c.fail(f"{where}.count", f"count {count} exceeds its denominator n = {n}")
            count = None
        elif rate is not None and n is not None and abs(count / n - rate) > RATE_TOLERANCE:
            c.fail(
                f"{where}.count", f"count {count}/{n} = {count / n:.4f} disagrees with rate {rate}"
            )
    if len(c.problems) > before or n is None:
        return None
    if count is None:
        count, derived = rate * n, True
    return Outcome(
        endpoint=endpoint,
        grade=int(grade),
        exact=has_exact,
        count=float(count),
        n=int(n),
        derived=derived,
        reported_rate=rate,
        note=c.text(entry, "note", where),
        source=c.text(entry, "source", where, trial_source),
        definition=definition,
    )


def _timing(c: _Checker, entry: Any, where: str, trial_source: str) -> Timing | None:
    if not c.keys(entry, _TIMING_KEYS, where):
        return None
    before = len(c.problems)
    endpoint = entry.get("endpoint")
    if endpoint not in ENDPOINTS:
        c.fail(f"{where}.endpoint", f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
    what = entry.get("what")
    if what not in TIMING_KINDS:
        c.fail(f"{where}.what", f"'what' must be one of {TIMING_KINDS}, got {what!r}")
    median = entry.get("median_days")
    if not _is_number(median) or median < 0:
        c.fail(f"{where}.median_days", f"median_days must be a number >= 0, got {median!r}")
        median = None
    rng = c.pair(entry, "range_days", where)
    iqr = c.pair(entry, "iqr_days", where)
    for name, interval in (("range_days", rng), ("iqr_days", iqr)):
        if (
            interval is not None
            and median is not None
            and not (interval[0] <= median <= interval[1])
        ):
            c.fail(f"{where}.{name}", f"median {median} lies outside {list(interval)}")
    n = c.denominator(entry, where, None)
    derived = c.flag(entry, "derived", where)
    definition = c.definition(entry, where)
    if len(c.problems) > before:
        return None
    return Timing(
        endpoint=endpoint,
        what=what,
        median_days=float(median),
        range_days=rng,
        iqr_days=iqr,
        n=n,
        derived=derived,
        note=c.text(entry, "note", where),
        source=c.text(entry, "source", where, trial_source),
        definition=definition,
    )


def _treatment(c: _Checker, entry: Any, where: str, trial_source: str) -> TreatmentUse | None:
    if not c.keys(entry, _TREATMENT_KEYS, where):
        return None
    before = len(c.problems)
    drug = entry.get("drug")
    if not isinstance(drug, str) or not drug:
        c.fail(f"{where}.drug", f"drug must be a name, got {drug!r}")
    n = c.denominator(entry, where, None)
    rate = c.rate(entry, where)
    derived = c.flag(entry, "derived", where)
    count = entry.get("count")
    if count is not None:
        if not _is_number(count) or count < 0:
            c.fail(f"{where}.count", f"count must be a non-negative number, got {count!r}")
        elif n is None:
            c.fail(f"{where}.n", "a treatment count needs its denominator n")
        elif count > n:
            c.fail(f"{where}.count", f"count {count} exceeds its denominator n = {n}")
        elif rate is not None and abs(count / n - rate) > RATE_TOLERANCE:
            c.fail(f"{where}.count", f"count {count}/{n} disagrees with rate {rate}")
        elif rate is None:
            rate = count / n
    elif rate is None and "rate" not in entry:
        c.fail(where, "a treatment entry needs a 'rate' (or a 'count' with 'n')")
    if len(c.problems) > before or rate is None:
        return None
    return TreatmentUse(
        drug=drug,
        rate=rate,
        n=n,
        denominator=c.text(entry, "denominator", where, "all patients"),
        indication=c.text(entry, "indication", where),
        derived=derived,
        note=c.text(entry, "note", where),
        source=c.text(entry, "source", where, trial_source),
    )


def parse_trials(data: Mapping[str, Any], file: str = "<dict>") -> dict[str, TrialSummary]:
    """Validate parsed TOML data and return the trial summaries.

    Parameters
    ----------
    data : mapping
        The parsed file (``{"trial": [ ... ]}``).
    file : str, optional
        File name for error messages.

    Returns
    -------
    dict of str to TrialSummary
        By id, in file order.

    Raises
    ------
    TrialFileError
        Listing every problem found.
    """
    c = _Checker(file)
    extra = set(data) - {"trial"}
    for key in sorted(extra):
        c.fail(key, "unknown top-level key; the file holds [[trial]] tables only")
    entries = data.get("trial", [])
    if not isinstance(entries, list) or not entries:
        c.fail("trial", "no [[trial]] tables")
        raise TrialFileError(c.problems)
    out: dict[str, TrialSummary] = {}
    for k, entry in enumerate(entries):
        tid = entry.get("id") if isinstance(entry, dict) else None
        where = f"trial {tid!r}" if isinstance(tid, str) else f"trial #{k + 1}"
        if not c.keys(entry, _TRIAL_KEYS, where):
            continue
        before = len(c.problems)
        if not isinstance(tid, str) or not _ID.match(tid):
            c.fail(f"{where}.id", "id must be lower-case letters, digits and '_'")
        elif tid in out:
            c.fail(f"{where}.id", "duplicate id")
        n = entry.get("n")
        if not _is_int(n) or n < 1:
            c.fail(f"{where}.n", f"n must be a positive integer, got {n!r}")
            n = None
        scale = entry.get("scale")
        if scale not in SCALES:
            c.fail(f"{where}.scale", f"scale must be one of {SCALES}, got {scale!r}")
        costim = entry.get("costimulation")
        if costim not in COSTIMULATION:
            c.fail(
                f"{where}.costimulation",
                f"costimulation must be one of {COSTIMULATION}, got {costim!r}",
            )
        texts = {
            key: c.text(entry, key, where)
            for key in ("study", "product", "disease", "source", "setting", "management", "notes")
        }
        if "source" in entry and not texts["source"].strip():
            c.fail(f"{where}.source", "every trial needs its source")
        lists = {}
        for key in ("outcomes", "timing", "treatment"):
            value = entry.get(key, [])
            if not isinstance(value, list):
                c.fail(f"{where}.{key}", "expected an array of tables")
                value = []
            lists[key] = value
        outcomes, timing, treatment = [], [], []
        if n is not None:
            for j, o in enumerate(lists["outcomes"]):
                parsed = _outcome(c, o, f"{where}.outcomes[{j}]", n, texts["source"])
                if parsed is not None:
                    if any(p.label == parsed.label and p.n == parsed.n for p in outcomes):
                        c.fail(f"{where}.outcomes[{j}]", f"duplicate outcome {parsed.label}")
                    outcomes.append(parsed)
        for j, t in enumerate(lists["timing"]):
            parsed_t = _timing(c, t, f"{where}.timing[{j}]", texts["source"])
            if parsed_t is not None:
                timing.append(parsed_t)
        for j, t in enumerate(lists["treatment"]):
            parsed_u = _treatment(c, t, f"{where}.treatment[{j}]", texts["source"])
            if parsed_u is not None:
                treatment.append(parsed_u)
        _check_distribution(c, where, outcomes)
        if len(c.problems) > before:
            continue
        out[tid] = TrialSummary(
            id=tid,
            n=n,
            scale=scale,
            costimulation=costim,
            n_approximate=c.flag(entry, "n_approximate", where),
            outcomes=tuple(outcomes),
            timing=tuple(timing),
            treatment=tuple(treatment),
            **texts,
        )
    if c.problems:
        raise TrialFileError(c.problems)
    return out


def _check_distribution(c: _Checker, where: str, outcomes: list[Outcome]) -> None:
    """Exact-grade shares of an endpoint may not exceed 1, nor the stated share with the event."""
    for endpoint in ENDPOINTS:
        exact = [o for o in outcomes if o.endpoint == endpoint and o.exact]
        if not exact:
            continue
        total = sum(o.rate for o in exact)
        if total > 1.0 + RATE_TOLERANCE:
            c.fail(where, f"exact {endpoint} grades add up to {total:.3f} > 1")
        any_ = next(
            (o for o in outcomes if o.endpoint == endpoint and not o.exact and o.grade == 1), None
        )
        if any_ is not None and abs(total - any_.rate) > RATE_TOLERANCE * len(exact):
            c.fail(
                where,
                f"exact {endpoint} grades add up to {total:.3f}, but grade >= 1 is {any_.rate:.3f}",
            )


def load_trials(path: str | Path | None = None) -> dict[str, TrialSummary]:
    """Load trial summaries: the bundled file (default) or a TOML file in the same format.

    Parameters
    ----------
    path : str or Path, optional
        A file; default ``pkpd/data/trials/published.toml`` (shipped inside the package).

    Returns
    -------
    dict of str to TrialSummary
        By id, in file order.

    Raises
    ------
    TrialFileError
        For an invalid file (every problem listed) or TOML syntax errors.
    """
    if path is None:
        name = "pkpd/data/trials/published.toml"
        text = (resources.files("pkpd.data") / "trials" / "published.toml").read_text("utf-8")
    else:
        name = str(path)
        text = Path(path).read_text("utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TrialFileError(Problem(f"not valid TOML: {exc}", file=name)) from None
    return parse_trials(data, file=name)


def published_trials(*ids: str) -> list[TrialSummary]:
    """Return bundled trial summaries by id (all of them when no id is given).

    Parameters
    ----------
    *ids : str
        Trial ids (e.g. ``"zuma1"``, ``"juliet"``).

    Returns
    -------
    list of TrialSummary

    Raises
    ------
    KeyError
        For an unknown id (the message lists the known ones).
    """
    trials = load_trials()
    if not ids:
        return list(trials.values())
    missing = [i for i in ids if i not in trials]
    if missing:
        raise KeyError(f"no bundled trial {missing}; known: {', '.join(trials)}")
    return [trials[i] for i in ids]
