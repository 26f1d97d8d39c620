"""The `Cohort`: an event dataset as a padded, per-subject `xarray.Dataset`.

The layout of ``Cohort.ds`` is the contract with the solver (``docs/contracts.md``). A Cohort is
only ever made by the reader (`pkpd.data.read_dataset`, `pkpd.data.from_dataframe`,
`pkpd.data.load_dataset`) or derived from another Cohort (`Cohort.subset`); it has no method that
changes it in place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from pkpd.errors import DatasetError, Problem

#: Variables every Cohort dataset has (besides ``cov_*``, ``tvcov_*`` and ``rec_<COLUMN>``).
REQUIRED_VARIABLES = (
    "obs_time",
    "obs_dv",
    "obs_mdv",
    "obs_dvid",
    "obs_cmt",
    "obs_cens",
    "obs_limit",
    "obs_line",
    "obs_mask",
    "dose_time",
    "dose_amt",
    "dose_rate",
    "dose_dur",
    "dose_ii",
    "dose_addl",
    "dose_cmt",
    "dose_evid",
    "dose_line",
    "dose_mask",
    "rec_line",
    "rec_mask",
)

#: attrs stored as JSON text in NetCDF files (NetCDF has no list or None attributes).
_JSON_ATTRS = ("columns", "covariates", "column_kinds", "dvid_names", "time_unit")


class Cohort:
    """Subjects, observations, doses and covariates of an event dataset.

    Parameters
    ----------
    ds : xarray.Dataset
        A dataset in the layout of ``docs/contracts.md``. Use `pkpd.data.read_dataset` rather than
        building one by hand.

    Notes
    -----
    ``ds`` has the dimensions ``subject``, ``obs``, ``dose`` and ``record``; per-subject arrays are
    padded to a common length and carry a ``*_mask`` saying which entries are real. Every column
    of every record is kept in ``rec_<COLUMN>`` so the file can be written back exactly
    (`to_csv`).
    """

    __slots__ = ("_ds",)

    def __init__(self, ds: xr.Dataset):
        missing = [name for name in REQUIRED_VARIABLES if name not in ds.variables]
        if "subject" not in ds.coords:
            missing.insert(0, "subject")
        if missing:
            raise ValueError(f"not a Cohort dataset: missing variable(s) {', '.join(missing)}")
        self._ds = ds

    # -- solver-facing API (docs/contracts.md) -------------------------------------------------

    @property
    def ds(self) -> xr.Dataset:
        """The underlying `xarray.Dataset` (treat it as read-only)."""
        return self._ds

    @property
    def subjects(self) -> np.ndarray:
        """Subject IDs in file order (int if all IDs are integers, else str)."""
        return self._ds["subject"].values.copy()

    @property
    def n_subjects(self) -> int:
        """Number of subjects."""
        return int(self._ds.sizes["subject"])

    @property
    def source(self) -> str:
        """The file path or bundled dataset name the cohort was read from."""
        return str(self._ds.attrs.get("source", ""))

    @property
    def time_unit(self) -> str | None:
        """Time unit of TIME (a pint unit string), or None for "same as the model"."""
        return self._ds.attrs.get("time_unit")

    @property
    def covariate_names(self) -> list[str]:
        """Covariate names (upper case), in file order."""
        return list(self._ds.attrs.get("covariates", []))

    @property
    def columns(self) -> list[str]:
        """The original column names, in file order."""
        return list(self._ds.attrs["columns"])

    @property
    def endpoints(self) -> list:
        """Distinct endpoint codes (DVID) of the observation records, sorted."""
        mask = self._ds["obs_mask"].values
        values = self._ds["obs_dvid"].values[mask]
        return [v.item() if hasattr(v, "item") else v for v in np.unique(values)]

    @property
    def n_observations(self) -> int:
        """Number of observation records (EVID 0 and 2, including those with MDV=1)."""
        return int(self._ds["obs_mask"].values.sum())

    @property
    def n_doses(self) -> int:
        """Number of dose and reset records (EVID 1, 3, 4), before ADDL expansion."""
        return int(self._ds["dose_mask"].values.sum())

    def __repr__(self) -> str:
        covs = ", ".join(self.covariate_names) or "none"
        unit = self.time_unit if self.time_unit is not None else "unspecified"
        return (
            f"<Cohort {self.source!r}: {self.n_subjects} subjects, {self.n_observations} "
            f"observations, {self.n_doses} doses, covariates: {covs}, time unit: {unit}>"
        )

    def __len__(self) -> int:
        return self.n_subjects

    # -- derived cohorts -----------------------------------------------------------------------

    def subset(self, ids: Iterable) -> Cohort:
        """Return a Cohort with only the given subjects, in the given order.

        Parameters
        ----------
        ids : iterable
            Subject IDs (as in `subjects`).

        Returns
        -------
        Cohort
            The selected subjects; padded dimensions are trimmed to the longest selected subject.
            Line numbers still refer to the source file.

        Raises
        ------
        DatasetError
            If an ID is not in the cohort, or is given twice.
        """
        ids = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
        known = {s: i for i, s in enumerate(self._ds["subject"].values.tolist())}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise DatasetError(
                Problem(f"unknown subject id(s) {unknown}", file=self.source, column="ID")
            )
        if len(set(ids)) != len(ids):
            raise DatasetError(
                Problem(f"subject ids given twice in {ids}", file=self.source, column="ID")
            )
        sub = self._ds.isel(subject=[known[i] for i in ids])
        # Trim padding that only the dropped subjects needed.
        trim = {}
        for dim in ("obs", "dose", "record"):
            prefix = "rec" if dim == "record" else dim
            mask = sub[f"{prefix}_mask"].values
            trim[dim] = slice(0, int(mask.sum(axis=1).max(initial=0)))
        return Cohort(sub.isel(trim))

    def worst_per_day(self, endpoints: Iterable, *, time_unit: str | None = None) -> Cohort:
        """Return a Cohort with one grade per subject, endpoint and day: the day's worst.

        Grades are recorded once a day in the field; a model whose grades carry noise per
        grading day (``record_scale``) takes one noise term per record when fitted and one per
        day when it simulates new patients, so data with several grades a day (e.g. every
        assessment) should keep the day's worst (building a fit warns otherwise).

        Parameters
        ----------
        endpoints : iterable
            DVID codes of the ordinal endpoints, as in the file (`endpoints`).
        time_unit : str, optional
            Unit of TIME, needed when the cohort has none (`time_unit`); a day is
            ``floor(TIME in days)``.

        Returns
        -------
        Cohort
            The other records unchanged, in file order; of a subject's observations of one of
            ``endpoints`` on one day (EVID 0, MDV 0, not censored) the first with the highest DV
            stays. Line numbers are those of the CSV file `to_csv` would write.

        Raises
        ------
        DatasetError
            An endpoint the cohort does not have, or no time unit.
        """
        from pkpd import units as U
        from pkpd.data.reader import from_dataframe

        codes = list(endpoints)
        unknown = [c for c in codes if c not in self.endpoints]
        if unknown or not codes:
            raise DatasetError(
                Problem(
                    f"no observations with DVID {unknown or codes} (endpoints: {self.endpoints})",
                    file=self.source,
                    column="DVID",
                )
            )
        unit = self.time_unit or time_unit
        if unit is None:
            raise DatasetError(
                Problem("the cohort has no time unit: give time_unit=", file=self.source)
            )
        ds = self._ds
        mask = ds["obs_mask"].values & ~ds["obs_mdv"].values.astype(bool)
        mask &= ds["obs_cens"].values == 0
        mask &= np.isin(ds["obs_dvid"].values, codes)
        subject = np.nonzero(mask)[0]
        day = np.floor(ds["obs_time"].values[mask] * U.factor(unit, "day") + 1e-9)
        dvid = ds["obs_dvid"].values[mask]
        dv = ds["obs_dv"].values[mask]
        line = ds["obs_line"].values[mask]
        # Within each (subject, endpoint, day), the highest DV first, then file order.
        _, dvid_code = np.unique(dvid, return_inverse=True)
        order = np.lexsort((line, -dv, day, dvid_code, subject))
        key = np.stack([subject, dvid_code, day], axis=1)[order]
        first = np.ones(order.size, bool)
        first[1:] = np.any(key[1:] != key[:-1], axis=1)
        drop = set(line[order[~first]].tolist())
        df = self.to_dataframe()
        lines = ds["rec_line"].values[ds["rec_mask"].values]
        kept = df[~np.isin(lines, list(drop))].reset_index(drop=True)
        return from_dataframe(
            kept,
            source=f"{self.source} (worst grade per day of DVID {codes})",
            time_unit=self.time_unit,
            covariates=self.covariate_names,
        )

    # -- output --------------------------------------------------------------------------------

    def to_dataframe(self) -> pd.DataFrame:
        """Return the records as a `pandas.DataFrame`, as they were in the file.

        Returns
        -------
        pandas.DataFrame
            One row per record (file order within each subject, subjects in cohort order), the
            original column names in file order. Integer columns are ``int64`` (``Int64`` when
            they have missing values), numeric ones ``float64``, text ones ``str``.
        """
        ds = self._ds
        mask = ds["rec_mask"].values
        data = {}
        for name, kind in zip(ds.attrs["columns"], ds.attrs["column_kinds"], strict=True):
            values = ds[f"rec_{name.strip().upper()}"].values[mask]
            if kind == "int" and values.dtype.kind == "f":
                data[name] = pd.array(values, dtype="Int64")
            elif kind == "str":
                data[name] = pd.Series(values, dtype="str").mask(values == "")
            else:
                data[name] = values
        return pd.DataFrame(data)

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the records back as a NONMEM-style CSV file.

        Parameters
        ----------
        path : str or os.PathLike
            Output file. Missing values are written as ``.``, floats with the shortest text that
            reads back to the same number, integers as integers.
        """
        from pkpd.data.writer import write_csv

        write_csv(self._ds, path)

    def to_netcdf(
        self, path: str | os.PathLike, *, mode: str = "w", group: str | None = None
    ) -> None:
        """Save the cohort as a NetCDF file (read it back with `Cohort.from_netcdf`).

        Parameters
        ----------
        path : str or os.PathLike
            Output file.
        mode : {"w", "a"}, optional
            Overwrite the file, or add to it (with ``group``, e.g. inside a saved fit).
        group : str, optional
            NetCDF group to write to (default: the root).
        """
        ds = self._ds.copy()
        ds.attrs = {k: json.dumps(v) if k in _JSON_ATTRS else v for k, v in self._ds.attrs.items()}
        ds.to_netcdf(Path(path), mode=mode, group=group)

    @classmethod
    def from_netcdf(cls, path: str | os.PathLike, *, group: str | None = None) -> Cohort:
        """Load a cohort saved by `to_netcdf`.

        Parameters
        ----------
        path : str or os.PathLike
            A file written by `to_netcdf`.
        group : str, optional
            NetCDF group it was written to.

        Returns
        -------
        Cohort
            The cohort, identical to the one saved.
        """
        with xr.open_dataset(Path(path), group=group) as opened:
            ds = opened.load()
        ds.attrs = {k: json.loads(v) if k in _JSON_ATTRS else v for k, v in ds.attrs.items()}
        for name in list(ds.variables):
            var = ds[name]
            if var.dtype == object:  # NetCDF strings come back as objects
                values = var.values.astype(str)
                if name == "subject":
                    ds = ds.assign_coords(subject=values)
                else:
                    ds[name] = (var.dims, values)
        for name in ds.variables:
            ds[name].encoding = {}
        return cls(ds)
