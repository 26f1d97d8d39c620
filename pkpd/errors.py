"""Exceptions raised by pkpd, each naming where the problem is.

Every error a user can cause by bad input says *where*: the file, the row or line, the column or
name. Errors are raised before anything is computed, so nothing is ever half-loaded.
"""

from __future__ import annotations

from dataclasses import dataclass


class PkpdError(Exception):
    """Base class of all pkpd errors."""


@dataclass(frozen=True)
class Problem:
    """One problem found in an input file.

    Parameters
    ----------
    message : str
        What is wrong, in words a user can act on.
    file : str or None
        The file the problem is in.
    row : int or None
        1-based line number in the file (the header of a CSV file is line 1).
    column : str or None
        The column (datasets) or the name (model files: state, parameter, equation) concerned.
    """

    message: str
    file: str | None = None
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"line {self.row}")
        if self.column is not None:
            where.append(f"'{self.column}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class InputError(PkpdError, ValueError):
    """Bad input with one or more located problems.

    Parameters
    ----------
    problems : list of Problem
        Every problem found; the message lists them all (the first ones if there are many).
    """

    max_listed = 20

    def __init__(self, problems: list[Problem] | Problem):
        if isinstance(problems, Problem):
            problems = [problems]
        if not problems:
            raise ValueError("an InputError needs at least one problem")
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[: self.max_listed]]
        extra = len(self.problems) - self.max_listed
        if extra > 0:
            lines.append(f"... and {extra} more problem(s)")
        super().__init__("\n".join(lines) if len(lines) > 1 else lines[0])

    @property
    def first(self) -> Problem:
        """The first problem found."""
        return self.problems[0]


class DatasetError(InputError):
    """An event dataset (CSV) is invalid; each problem names file, line and column."""


class ModelError(InputError):
    """A model file is invalid; each problem names file, line and the offending name."""


class SolverError(PkpdError, RuntimeError):
    """The ODE solver failed for some subjects.

    Parameters
    ----------
    message : str
        Description of the failure.
    subjects : list
        The ids of the subjects whose solve failed.
    reasons : list of str
        One reason per failed subject (step limit reached, non-finite state, ...).
    """

    def __init__(self, message: str, subjects: list, reasons: list[str]):
        self.subjects = list(subjects)
        self.reasons = list(reasons)
        pairs = zip(subjects[:20], reasons[:20], strict=False)
        detail = "; ".join(f"subject {s}: {r}" for s, r in pairs)
        more = f" (and {len(subjects) - 20} more)" if len(subjects) > 20 else ""
        super().__init__(f"{message}: {detail}{more}")
