"""Read and validate NONMEM-style event datasets into a `Cohort`.

Reading happens in three steps, each finishing before the next starts:

1. *parse*: the text is split into a header and records (every cell kept as text, with its line
   number);
2. *validate*: every rule is checked on whole columns at once and every problem is collected;
   if there is any, one `DatasetError` lists them all and nothing is built;
3. *build*: the records are sorted into the padded per-subject arrays of ``docs/contracts.md``.

The accepted columns, EVID codes, censoring and missing-value conventions and the list of errors
are documented in ``docs/datasets.md``.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from pkpd.data.cohort import Cohort
from pkpd.errors import DatasetError, Problem

#: Cell texts read as a missing value (compared case-insensitively). Files are written with ".".
MISSING_TEXT = ("", ".", "na", "nan")

#: Numeric columns with a fixed meaning.
NUMERIC_COLUMNS = (
    "TIME",
    "DV",
    "MDV",
    "EVID",
    "AMT",
    "RATE",
    "DUR",
    "II",
    "ADDL",
    "SS",
    "LLOQ",
    "BLQ",
    "CENS",
    "LIMIT",
)
#: Of those, the ones that must hold integers.
INTEGER_COLUMNS = ("MDV", "EVID", "ADDL", "SS", "BLQ", "CENS")
#: Columns that hold an integer code or a name.
CODE_COLUMNS = ("CMT", "DVID")
#: Every column with a fixed meaning; any other column is a covariate.
RESERVED_COLUMNS = ("ID", *NUMERIC_COLUMNS, *CODE_COLUMNS)

EVID_OBSERVATION, EVID_DOSE, EVID_OTHER, EVID_RESET, EVID_RESET_DOSE = 0, 1, 2, 3, 4

# Integers up to 2**53 are exact in float64, so an integer column survives the float storage.
_MAX_EXACT_INT = 2**53


@dataclass
class _Table:
    """The parsed text of a dataset: names and cells, nothing interpreted yet."""

    source: str
    names: list[str]  # original column names (stripped), file order
    cells: dict[str, np.ndarray]  # upper-case name -> object array of stripped cell texts
    line: np.ndarray  # 1-based line number of each record


@dataclass
class _Column:
    """One column, typed: what kind of values it holds and their numeric value."""

    kind: str  # "int", "float" or "str"
    text: np.ndarray  # cell texts, "" where missing
    value: np.ndarray  # float64, NaN where missing or not numeric
    missing: np.ndarray  # bool
    bad: np.ndarray  # bool: present but not a finite number


class _Problems:
    """Collects problems of one file; vectorised helpers add one problem per flagged row."""

    def __init__(self, source: str, line: np.ndarray | None = None):
        self.source = source
        self.line = line
        self.items: list[Problem] = []

    def add(self, message: str, row: int | None = None, column: str | None = None) -> None:
        self.items.append(Problem(message, file=self.source, row=row, column=column))

    def rows(self, flagged: np.ndarray, column: str | None, message) -> None:
        """Add one problem per True entry of ``flagged``; ``message(i)`` gets the record index."""
        for i in np.flatnonzero(flagged):
            self.add(message(i) if callable(message) else message, int(self.line[i]), column)

    def raise_if_any(self) -> None:
        if self.items:
            raise DatasetError(self.items)


# ---------------------------------------------------------------------------------------------
# public entry points


def read_dataset(
    path: str | os.PathLike,
    *,
    time_unit: str | None = None,
    covariates: list[str] | None = None,
) -> Cohort:
    """Read a NONMEM-style event dataset (CSV) into a `Cohort`.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file: a header line naming the columns, then one record per line. Column names
        may be upper or lower case; ``.``, an empty cell, ``NA`` and ``NaN`` are missing values;
        lines starting with ``#`` and blank lines are skipped (NONMEM's default ``IGNORE=#``).
    time_unit : str, optional
        Unit of the TIME column as a pint unit string (``"h"``, ``"day"``); None means "the same
        as the model's".
    covariates : list of str, optional
        The columns to read as covariates. By default every column without a fixed meaning is a
        covariate (and must be numeric); when given, other extra columns are only carried along
        for writing back and may hold text.

    Returns
    -------
    Cohort
        The validated dataset.

    Raises
    ------
    DatasetError
        Listing every problem found, each with the file, the line (header = line 1) and the
        column. Nothing is returned unless the whole file is valid.

    See Also
    --------
    from_dataframe : the same for a `pandas.DataFrame`.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(Problem(f"cannot read the file: {exc.strerror or exc}", source)) from exc
    return _read_bytes(data, source=source, time_unit=time_unit, covariates=covariates)


def from_dataframe(
    df: pd.DataFrame,
    *,
    source: str = "<DataFrame>",
    time_unit: str | None = None,
    covariates: list[str] | None = None,
) -> Cohort:
    """Read an event dataset held in a `pandas.DataFrame`, with the rules of `read_dataset`.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per record, columns as in a NONMEM-style CSV file. NaN / None / NA are missing.
    source : str, optional
        Name used in error messages and stored as the cohort's source.
    time_unit : str, optional
        Unit of TIME (see `read_dataset`).
    covariates : list of str, optional
        Columns to read as covariates (see `read_dataset`).

    Returns
    -------
    Cohort
        The validated dataset. Row ``i`` (0-based) is reported as line ``i + 2``, its line in the
        CSV file `Cohort.to_csv` would write.

    Raises
    ------
    DatasetError
        As `read_dataset`.
    """
    if len(df) == 0:
        raise DatasetError(Problem("the DataFrame has no records", file=source))
    names = [str(c).strip() for c in df.columns]
    cells = [_cells_from_series(df.iloc[:, j]) for j in range(df.shape[1])]
    line = np.arange(2, len(df) + 2, dtype=np.int64)
    table = _make_table(source, names, cells, line)
    return _validate_and_build(table, time_unit=time_unit, covariates=covariates)


def _read_bytes(
    data: bytes, *, source: str, time_unit: str | None, covariates: list[str] | None
) -> Cohort:
    """Parse, validate and build from the raw bytes of a file."""
    table = _parse_csv(data, source)
    return _validate_and_build(table, time_unit=time_unit, covariates=covariates)


# ---------------------------------------------------------------------------------------------
# step 1: parse


def _parse_csv(data: bytes, source: str) -> _Table:
    """Split CSV bytes into header and cells; raise for anything that is not a CSV table."""
    problems = _Problems(source)
    if not data.strip():
        problems.add("the file is empty (a header line and at least one record are needed)")
        problems.raise_if_any()
    if b"\x00" in data[:65536]:
        problems.add("not a CSV text file (it contains binary data)")
        problems.raise_if_any()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1
        problems.add(f"not a UTF-8 text file (undecodable byte at offset {exc.start})", row)
        problems.raise_if_any()

    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    try:
        parsed = list(reader)
    except csv.Error as exc:
        problems.add(f"not a valid CSV file: {exc}", reader.line_num)
        problems.raise_if_any()
    if reader.line_num == len(parsed):
        starts = range(1, len(parsed) + 1)  # one record per physical line (the usual case)
    else:
        starts = _record_start_lines(text)  # a quoted field spans lines
    # Skip blank lines and NONMEM comment lines (IGNORE=#, NONMEM's default).
    kept = [
        (fields, start)
        for fields, start in zip(parsed, starts, strict=True)
        if fields
        and (len(fields) > 1 or fields[0].strip())
        and not fields[0].lstrip().startswith("#")
    ]
    records = [fields for fields, _ in kept]
    lines = [start for _, start in kept]

    if not records:
        problems.add("the file is empty (a header line and at least one record are needed)")
        problems.raise_if_any()
    header, rows, line = records[0], records[1:], np.asarray(lines[1:], dtype=np.int64)
    names = [h.strip() for h in header]
    if len(names) == 1 and any(sep in names[0] for sep in (";", "\t", " ")):
        problems.add("the header has a single column: the file must be comma-separated", lines[0])
        problems.raise_if_any()
    if not rows:
        problems.add("the file has a header but no records", lines[0])
        problems.raise_if_any()

    n_fields = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    problems.line = line
    problems.rows(
        n_fields != len(names),
        None,
        lambda i: (
            f"{n_fields[i]} fields where the header (line {lines[0]}) has {len(names)}: "
            "not a consistent CSV table"
        ),
    )
    problems.raise_if_any()
    columns = [np.array(c, dtype=object) for c in zip(*rows, strict=True)]
    return _make_table(source, names, columns, line, header_line=lines[0])


def _record_start_lines(text: str) -> list[int]:
    """First physical line of each CSV record (slow path, for quoted fields spanning lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    starts, start = [], 1
    for _ in reader:
        starts.append(start)
        start = reader.line_num + 1
    return starts


def _make_table(
    source: str,
    names: list[str],
    columns: list[np.ndarray],
    line: np.ndarray,
    header_line: int = 1,
) -> _Table:
    """Check the header and key the columns by upper-case name."""
    problems = _Problems(source)
    columns = [np.char.strip(c.astype(str)).astype(object) for c in columns]
    # Spreadsheets often export trailing separators: drop unnamed columns with no values.
    keep = [bool(n) or bool(np.any(c != "")) for n, c in zip(names, columns, strict=True)]
    names = [n for n, k in zip(names, keep, strict=True) if k]
    columns = [c for c, k in zip(columns, keep, strict=True) if k]
    seen: dict[str, str] = {}
    for name in names:
        upper = name.upper()
        if not name:
            problems.add("a column has no name in the header", header_line)
        elif upper in seen:
            problems.add(
                f"column {name!r} appears twice in the header (names ignore case)",
                header_line,
                name,
            )
        seen[upper] = name
    if not problems.items and all(_is_number(n) for n in names):
        problems.add("the first line looks like data: the file needs a header", header_line)
    problems.raise_if_any()
    cells = {n.upper(): c for n, c in zip(names, columns, strict=True)}
    return _Table(source, names, cells, line)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _cells_from_series(s: pd.Series) -> np.ndarray:
    """Text of each cell of a DataFrame column, exactly as `Cohort.to_csv` would write it."""
    missing = s.isna().to_numpy()
    if pd.api.types.is_bool_dtype(s.dtype):
        text = [str(int(v)) for v in s.fillna(False).tolist()]
    elif pd.api.types.is_integer_dtype(s.dtype):
        text = [str(v) for v in s.fillna(0).astype("int64").tolist()]
    elif pd.api.types.is_float_dtype(s.dtype):
        text = [repr(v) for v in s.astype("float64").tolist()]
    else:
        text = [str(v) for v in s.tolist()]
    out = np.array(text, dtype=object)
    out[missing] = ""
    return out


def _type_column(text: np.ndarray) -> _Column:
    """Classify a column as int / float / str and read its numeric values."""
    s = pd.Series(text, dtype="str")  # Arrow-backed where available: vectorised string ops
    missing = s.str.lower().isin(MISSING_TEXT).to_numpy()
    filled = np.where(missing, "nan", text)
    try:
        value = filled.astype(np.float64)  # fast C path when every cell is a number
    except ValueError:
        value = np.asarray(pd.to_numeric(pd.Series(filled), errors="coerce"), dtype=np.float64)
    bad = ~missing & ~np.isfinite(value)
    value = np.where(bad, np.nan, value)
    present = ~missing
    if bad.any():
        kind = "str"
    elif not present.any():
        kind = "float"  # an all-missing column is written back as all ".", read as float again
    elif (
        s[present].str.fullmatch(r"[+-]?\d+").all()
        and np.abs(value[present]).max() < _MAX_EXACT_INT
    ):
        kind = "int"
    else:
        kind = "float"
    clean = np.where(missing, "", text).astype(object)
    return _Column(kind, clean, value, missing, bad)


# ---------------------------------------------------------------------------------------------
# step 2: validate


def _validate_and_build(
    table: _Table, *, time_unit: str | None, covariates: list[str] | None
) -> Cohort:
    src, line = table.source, table.line
    problems = _Problems(src, line)
    names = list(table.cells)
    n = len(line)

    for required in ("ID", "TIME"):
        if required not in table.cells:
            problems.add(f"required column {required} is missing", column=required)
    if "DV" not in table.cells and "AMT" not in table.cells:
        problems.add("the file has neither a DV nor an AMT column; one is required", column="DV")
    if {"LLOQ", "BLQ"} & set(names) and {"CENS", "LIMIT"} & set(names):
        problems.add(
            "two censoring conventions in one file: use either LLOQ (+ BLQ) or CENS + LIMIT",
            column="CENS" if "CENS" in names else "LIMIT",
        )

    extra = [c for c in names if c not in RESERVED_COLUMNS]
    if covariates is None:
        cov_names = extra
    else:
        cov_names = []
        for c in covariates:
            upper = str(c).strip().upper()
            if upper in RESERVED_COLUMNS:
                problems.add(f"{c!r} has a fixed meaning and cannot be a covariate", column=c)
            elif upper not in table.cells:
                problems.add(f"covariate column {c!r} is not in the file", column=c)
            elif upper not in cov_names:
                cov_names.append(upper)

    cols = {name: _type_column(text) for name, text in table.cells.items()}
    original = {name.upper(): name for name in table.names}

    # Cells that must be numbers.
    for name in [c for c in NUMERIC_COLUMNS if c in cols] + cov_names:
        col = cols[name]
        hint = (
            "; covariates must be numeric (pass covariates=[...] to choose the covariate columns)"
            if name in cov_names
            else ""
        )
        problems.rows(
            col.bad,
            original[name],
            lambda i, col=col, hint=hint: f"{col.text[i]!r} is not a number{hint}",
        )
    for name in [c for c in INTEGER_COLUMNS if c in cols]:
        col = cols[name]
        problems.rows(
            np.isfinite(col.value) & (col.value != np.round(col.value)),
            original[name],
            lambda i, col=col: f"{col.text[i]!r} is not an integer",
        )
    for name in [c for c in CODE_COLUMNS if c in cols]:
        col = cols[name]
        if col.kind == "float":
            problems.rows(
                np.isfinite(col.value) & (col.value != np.round(col.value)),
                original[name],
                lambda i, col=col: f"{col.text[i]!r} is neither an integer code nor a name",
            )

    def num(name: str, default: float = np.nan) -> np.ndarray:
        """Numeric values of a column; ``default`` where missing or where the column is absent."""
        if name not in cols:
            return np.full(n, default)
        v = cols[name].value
        return np.where(np.isnan(v), default, v) if not np.isnan(default) else v

    # ID and TIME
    if "ID" in cols:
        problems.rows(cols["ID"].missing, original["ID"], "ID is missing")
    time = num("TIME")
    if "TIME" in cols:
        problems.rows(cols["TIME"].missing, original["TIME"], "TIME is missing")
        problems.rows(time < 0, original["TIME"], lambda i: f"negative TIME {time[i]:g}")

    # EVID (given, or derived as NONMEM does: AMT > 0 is a dose, anything else an observation)
    amt = num("AMT")
    derived = np.where(amt > 0, EVID_DOSE, EVID_OBSERVATION)
    evid = np.where(np.isnan(num("EVID")), derived, num("EVID"))
    valid_evid = np.isin(evid, (0, 1, 2, 3, 4))
    if "EVID" in cols:
        problems.rows(
            ~valid_evid & (evid == np.round(evid)),
            original["EVID"],
            lambda i: _evid_message(evid[i]),
        )
    is_obs = np.isin(evid, (EVID_OBSERVATION, EVID_OTHER))
    is_dose = np.isin(evid, (EVID_DOSE, EVID_RESET_DOSE))

    # MDV
    mdv = num("MDV", 0.0)
    if "MDV" in cols:
        problems.rows(
            ~np.isin(mdv, (0, 1)) & (mdv == np.round(mdv)),
            original["MDV"],
            lambda i: f"MDV must be 0 or 1, not {mdv[i]:g}",
        )

    # Doses
    if "AMT" in cols:
        problems.rows(amt < 0, original["AMT"], lambda i: f"negative AMT {amt[i]:g}")
    problems.rows(
        is_dose & np.isnan(amt),
        original.get("AMT", "AMT"),
        lambda i: f"dose record (EVID {int(evid[i])}) without an amount (AMT)",
    )
    rate, dur = num("RATE", 0.0), num("DUR", 0.0)
    ii, addl, ss = num("II", 0.0), num("ADDL", 0.0), num("SS", 0.0)
    if "RATE" in cols:
        modelled = np.isin(rate, (-1, -2))
        problems.rows(
            modelled,
            original["RATE"],
            lambda i: f"modelled infusion rate/duration (RATE={rate[i]:g}) is not supported yet",
        )
        problems.rows(
            (rate < 0) & ~modelled, original["RATE"], lambda i: f"negative RATE {rate[i]:g}"
        )
    for name, values in (("DUR", dur), ("II", ii), ("ADDL", addl)):
        if name in cols:
            problems.rows(
                values < 0, original[name], lambda i, v=values, c=name: f"negative {c} {v[i]:g}"
            )
    problems.rows(
        is_dose & (addl > 0) & ~(ii > 0),
        original.get("ADDL", "ADDL"),
        lambda i: f"ADDL={addl[i]:g} additional doses need a dosing interval II > 0",
    )
    problems.rows(
        is_dose & (ii > 0) & ~(addl > 0),
        original.get("II", "II"),
        lambda i: f"II={ii[i]:g} without ADDL: give the number of additional doses (ADDL > 0)",
    )
    both = is_dose & (rate > 0) & (dur > 0) & np.isfinite(amt)
    mismatch = both & (np.abs(rate * dur - amt) > 1e-9 * np.abs(amt))
    problems.rows(
        mismatch,
        original.get("DUR", "DUR"),
        lambda i: (
            f"RATE x DUR = {rate[i]:g} x {dur[i]:g} = {rate[i] * dur[i]:g} "
            f"differs from AMT = {amt[i]:g}"
        ),
    )
    if "SS" in cols:
        problems.rows(
            ss != 0,
            original["SS"],
            "steady-state dosing (SS) is not supported yet (SS must be 0 or missing)",
        )

    # Censoring
    cens, limit = _censoring(cols, original, is_obs, num, problems)

    # Observations: DV must be there unless MDV=1 or the observation is censored.
    if "DV" in cols:
        problems.rows(
            (evid == EVID_OBSERVATION) & cols["DV"].missing & (mdv != 1) & (cens == 0),
            original["DV"],
            "DV is missing on an observation record (EVID 0) with MDV=0; set MDV=1 to keep "
            "the record without a value",
        )
    dvid_col = cols.get("DVID")
    if dvid_col is not None and dvid_col.kind == "str":
        problems.rows(
            is_obs & dvid_col.missing,
            original["DVID"],
            "DVID is missing on an observation record (the endpoints are named)",
        )

    # Subjects: records of a subject contiguous, time non-decreasing (except after a reset).
    if "ID" in cols and "TIME" in cols:
        # Compare IDs as the subjects will be keyed ("1" and "01" are the same integer subject).
        id_text = cols["ID"].text
        ids = cols["ID"].value if cols["ID"].kind == "int" else id_text
        new_block = np.r_[True, ids[1:] != ids[:-1]]
        block_ids = ids[new_block]
        repeated = pd.Series(block_ids).duplicated().to_numpy()
        first_line = dict(zip(block_ids[::-1], line[new_block][::-1], strict=True))
        problems.rows(
            _scatter(new_block, repeated),
            original["ID"],
            lambda i: (
                f"records of subject {id_text[i]} are split (also at line {first_line[ids[i]]}):"
                " a subject's records must be contiguous"
            ),
        )
        back = np.r_[False, (time[1:] < time[:-1]) & ~new_block[1:]]
        back &= ~np.isin(evid, (EVID_RESET, EVID_RESET_DOSE))  # NONMEM: time may restart there
        problems.rows(
            back,
            original["TIME"],
            lambda i: (
                f"time goes back within subject {id_text[i]} (from {time[i - 1]:g} at line "
                f"{line[i - 1]} to {time[i]:g})"
            ),
        )

    # Duplicated records (same value in every column).
    frame = pd.DataFrame(
        {k: (c.value if c.kind != "str" else c.text) for k, c in cols.items()}, copy=False
    )
    dup = frame.duplicated(keep="first").to_numpy()
    if dup.any():
        group = frame.groupby(list(frame.columns), sort=False, dropna=False).ngroup().to_numpy()
        first = pd.Series(line).groupby(group).transform("first").to_numpy()
        problems.rows(dup, None, lambda i: f"duplicated record: identical to line {first[i]}")

    if time_unit is not None:
        _check_time_unit(time_unit, src, problems)

    problems.raise_if_any()
    fields = {
        "time": time,
        "amt": amt,
        "evid": evid.astype(np.int64),
        "mdv": mdv,
        "rate": rate,
        "dur": dur,
        "ii": ii,
        "addl": addl,
        "cens": cens,
        "limit": limit,
    }
    return _build(table, cols, fields, cov_names, time_unit)


def _scatter(where: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bool array of ``where``'s length with ``values`` at its True positions."""
    out = np.zeros(len(where), dtype=bool)
    out[where] = values
    return out


def _evid_message(evid: float) -> str:
    code = int(evid)
    if code >= 100:
        return (
            f"EVID {code} is an rxode2 event code, not a NONMEM one: use EVID 1 for a dose (with "
            "CMT for the compartment, RATE or DUR for an infusion)"
        )
    return (
        f"EVID must be 0 (observation), 1 (dose), 2 (other), 3 (reset) or 4 (reset and dose), "
        f"not {code}"
    )


def _censoring(cols, original, is_obs, num, problems: _Problems):
    """Censoring flag (int8) and limit of every record, checking the flag/limit columns."""
    n = len(is_obs)
    cens = np.zeros(n, dtype=np.int8)
    limit = np.full(n, np.nan)
    if "CENS" in cols or "LIMIT" in cols:
        flag, limit = num("CENS", 0.0), num("LIMIT")
        if "CENS" in cols:
            col = original["CENS"]
            problems.rows(
                ~np.isin(flag, (-1, 0, 1)) & (flag == np.round(flag)),
                col,
                lambda i: f"CENS must be 1 (below the limit), -1 (above) or 0, not {flag[i]:g}",
            )
            problems.rows(
                is_obs & (flag != 0) & np.isnan(limit),
                col,
                "censored record (CENS != 0) without a LIMIT value"
                + ("" if "LIMIT" in cols else " (the file has no LIMIT column)"),
            )
        cens = np.where(is_obs & np.isin(flag, (-1, 1)), flag, 0).astype(np.int8)
    elif "LLOQ" in cols or "BLQ" in cols:
        limit = num("LLOQ")
        if "BLQ" in cols:
            flag = num("BLQ", 0.0)
            col = original["BLQ"]
            problems.rows(
                ~np.isin(flag, (0, 1)) & (flag == np.round(flag)),
                col,
                lambda i: f"BLQ must be 1 (below LLOQ) or 0, not {flag[i]:g}",
            )
            problems.rows(
                is_obs & (flag == 1) & np.isnan(limit),
                col,
                "record flagged below LLOQ (BLQ=1) without an LLOQ value"
                + ("" if "LLOQ" in cols else " (the file has no LLOQ column)"),
            )
            below = flag == 1
        else:
            # Without a flag, an observation below its LLOQ is censored.
            below = num("DV") < limit
        cens = (is_obs & below).astype(np.int8)
    limit = np.where(is_obs, limit, np.nan)
    return cens, limit


def _check_time_unit(time_unit: str, source: str, problems: _Problems) -> None:
    import pint

    ureg = pint.get_application_registry()
    try:
        unit = ureg.Unit(time_unit)
    except Exception:  # pint raises several error types for unparsable units
        problems.add(f"time_unit {time_unit!r} is not a unit", column="TIME")
        return
    if unit.dimensionality != ureg.Unit("s").dimensionality:
        problems.add(f"time_unit {time_unit!r} is not a unit of time", column="TIME")


# ---------------------------------------------------------------------------------------------
# step 3: build


def _build(
    table: _Table,
    cols: dict[str, _Column],
    f: dict[str, np.ndarray],
    cov_names: list[str],
    time_unit: str | None,
) -> Cohort:
    """Sort the validated records into the padded arrays of the Cohort schema."""
    line = table.line
    id_col = cols["ID"]
    ids = id_col.value.astype(np.int64) if id_col.kind == "int" else id_col.text.astype(str)
    # Subjects are contiguous (validated), so codes are non-decreasing in file order.
    sidx, subjects = pd.factorize(ids, sort=False)
    subjects = np.asarray(subjects)
    n_sub = len(subjects)
    evid = f["evid"]
    is_obs = np.isin(evid, (EVID_OBSERVATION, EVID_OTHER))
    is_dose = np.isin(evid, (EVID_DOSE, EVID_RESET, EVID_RESET_DOSE))
    gives_dose = np.isin(evid, (EVID_DOSE, EVID_RESET_DOSE))

    data: dict[str, tuple] = {}

    def padded(prefix, dim, rows, arrays: dict[str, tuple[np.ndarray, object]]):
        s = sidx[rows]
        pos = _positions(s)
        width = int(pos.max()) + 1 if len(pos) else 0
        for name, (values, fill) in arrays.items():
            out = np.full((n_sub, width), fill, dtype=values.dtype)
            out[s, pos] = values[rows]
            data[f"{prefix}_{name}"] = (("subject", dim), out)
        mask = np.zeros((n_sub, width), dtype=bool)
        mask[s, pos] = True
        data[f"{prefix}_mask"] = (("subject", dim), mask)
        return s, pos, width

    # Observations (EVID 0 and 2).
    n = len(line)
    dv = cols["DV"].value if "DV" in cols else np.full(n, np.nan)
    obs_mdv = (f["mdv"] == 1) | (evid == EVID_OTHER) | (np.isnan(dv) & (f["cens"] == 0))
    obs_dv = np.where(obs_mdv, np.nan, dv)
    obs_rows = np.flatnonzero(is_obs)
    s_obs, p_obs, w_obs = padded(
        "obs",
        "obs",
        obs_rows,
        {
            "time": (f["time"], np.nan),
            "dv": (obs_dv, np.nan),
            "mdv": (obs_mdv, True),
            "dvid": _codes(cols.get("DVID"), n, default=1),
            "cmt": _codes(cols.get("CMT"), n, default=-1),
            "cens": (f["cens"], np.int8(0)),
            "limit": (f["limit"], np.nan),
            "line": (line, -1),
        },
    )

    # Doses and resets (EVID 1, 3, 4); a reset carries no amount.
    def dose_value(v):
        return (np.where(gives_dose, v, 0.0), 0.0)

    padded(
        "dose",
        "dose",
        np.flatnonzero(is_dose),
        {
            "time": (f["time"], np.nan),
            "amt": dose_value(f["amt"]),
            "rate": dose_value(f["rate"]),
            "dur": dose_value(f["dur"]),
            "ii": dose_value(f["ii"]),
            "addl": (np.where(gives_dose, f["addl"], 0).astype(np.int64), 0),
            "cmt": _codes(cols.get("CMT"), n, default=-1),
            "evid": (evid, 0),
            "line": (line, -1),
        },
    )

    # Every record, every column, for the exact round trip.
    kinds = []
    rec_arrays = {}
    for name in table.names:
        upper = name.upper()
        col = cols[upper]
        kind = "str" if (upper == "ID" and col.kind == "float") else col.kind
        kinds.append(kind)
        if kind == "str":
            rec_arrays[upper] = (col.text.astype(str), "")
        elif kind == "int" and not col.missing.any():
            rec_arrays[upper] = (col.value.astype(np.int64), 0)
        else:
            rec_arrays[upper] = (col.value, np.nan)
    rec_arrays["line"] = (line, -1)
    padded("rec", "record", np.arange(len(line)), rec_arrays)

    # Covariates: baseline = first non-missing value; time-varying ones also at each observation.
    for name in cov_names:
        values = pd.Series(cols[name].value)
        filled = values.groupby(sidx).ffill().groupby(sidx).bfill().to_numpy()
        baseline = values.groupby(sidx).first().reindex(range(n_sub)).to_numpy()
        data[f"cov_{name}"] = (("subject",), baseline.astype(np.float64))
        if (pd.Series(filled).groupby(sidx).nunique() > 1).any():
            out = np.full((n_sub, w_obs), np.nan)
            out[s_obs, p_obs] = filled[obs_rows]
            data[f"tvcov_{name}"] = (("subject", "obs"), out)

    attrs = {
        "source": table.source,
        "time_unit": time_unit,
        "columns": list(table.names),
        "covariates": list(cov_names),
        "column_kinds": kinds,
    }
    ds = xr.Dataset(data, coords={"subject": subjects}, attrs=attrs)
    return Cohort(ds)


def _positions(s: np.ndarray) -> np.ndarray:
    """Position of each entry within its run of equal (sorted) subject codes."""
    n = len(s)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    return np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))


def _codes(col: _Column | None, n: int, default: int) -> tuple[np.ndarray, object]:
    """CMT / DVID of every record: integer codes, or names when any value is a name.

    Returns the values and the padding value (-1, or "" for names).
    """
    if col is None:
        return np.full(n, default, dtype=np.int64), -1
    if col.kind == "str":
        return col.text.astype(str), ""
    return np.where(col.missing, default, col.value).astype(np.int64), -1
