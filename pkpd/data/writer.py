"""Write a Cohort's records back as a NONMEM-style CSV file.

Conventions (the reader accepts them, so a written file reads back to an identical Cohort):

* missing values are written as ``.`` (NONMEM style);
* integer columns as integers, other numeric columns with ``repr`` of the float: the shortest
  text that reads back to the same number (``0.1``, ``1.0``, ``1e-05``), so no digits drift;
* text columns as they were read (quoted only when they contain a comma or a quote);
* LF line endings, UTF-8, the original column names and order.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import xarray as xr

#: Text written for a missing value.
MISSING = "."


def format_column(values: np.ndarray, kind: str) -> list[str]:
    """Text of each value of one column, as written to the CSV file.

    Parameters
    ----------
    values : numpy.ndarray
        1-D values (int64, float64 with NaN for missing, or str with "" for missing).
    kind : str
        ``"int"``, ``"float"`` or ``"str"`` (the column kind found when reading).

    Returns
    -------
    list of str
        One text per value.
    """
    if kind == "str":
        return [v if v != "" else MISSING for v in values.tolist()]
    if values.dtype.kind in "iu":
        return [str(v) for v in values.tolist()]
    if kind == "int":
        return [MISSING if v != v else str(int(v)) for v in values.tolist()]
    # repr of a Python float is the shortest text that round-trips exactly.
    return [MISSING if v != v else repr(v) for v in values.tolist()]


def format_records(ds: xr.Dataset) -> tuple[list[str], list[list[str]]]:
    """Header and the text of every record of a Cohort dataset, in file order.

    Parameters
    ----------
    ds : xarray.Dataset
        A Cohort dataset (``Cohort.ds``).

    Returns
    -------
    header : list of str
        The original column names.
    columns : list of list of str
        The text of each column, one entry per record.
    """
    mask = ds["rec_mask"].values
    header = list(ds.attrs["columns"])
    columns = [
        format_column(ds[f"rec_{name.upper()}"].values[mask], kind)
        for name, kind in zip(header, ds.attrs["column_kinds"], strict=True)
    ]
    return header, columns


def write_csv(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write a Cohort dataset's records to a CSV file.

    Parameters
    ----------
    ds : xarray.Dataset
        A Cohort dataset (``Cohort.ds``).
    path : str or os.PathLike
        Output file (overwritten).
    """
    header, columns = format_records(ds)
    with Path(path).open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(zip(*columns, strict=True))
