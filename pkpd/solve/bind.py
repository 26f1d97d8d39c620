"""Bind a cohort to a model: dataset records to the arrays the engine integrates.

`bind` resolves everything that depends on both the dataset and the model, once, in numpy:
compartment and endpoint codes, covariates (with the model's defaults), the time unit, and the
event table. Problems are reported as `~pkpd.errors.DatasetError` with file, line and column.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from pkpd.errors import DatasetError, Problem
from pkpd.events import DoseRecords, EventTable, build_event_table


@dataclass(frozen=True)
class BoundCohort:
    """A cohort expressed in a model's terms (numpy arrays, model time unit).

    Attributes
    ----------
    events : EventTable
        ``(N, E)`` padded event table (doses, infusions, resets).
    obs_time : numpy.ndarray
        ``(N, O)`` observation times in the model's time unit; padding holds the subject's
        first record time.
    obs_seq : numpy.ndarray
        ``(N, O)`` ordering keys (line numbers); ``-inf`` for padding.
    obs_endpoint : numpy.ndarray
        ``(N, O)`` int index into ``model.endpoints`` (0 for padding).
    obs_mask : numpy.ndarray
        ``(N, O)`` bool, True for real observations.
    covariates : numpy.ndarray
        ``(N, C)`` covariate values in the order of ``model.covariates``.
    subjects : numpy.ndarray
        ``(N,)`` subject IDs.
    time_factor : float
        Factor from the dataset's time unit to the model's (1 when they are the same).
    source : str
        The dataset's file or name.
    """

    events: EventTable
    obs_time: np.ndarray
    obs_seq: np.ndarray
    obs_endpoint: np.ndarray
    obs_mask: np.ndarray
    covariates: np.ndarray
    subjects: np.ndarray
    time_factor: float
    source: str

    @property
    def n_subjects(self) -> int:
        """Number of subjects."""
        return int(self.obs_time.shape[0])


@lru_cache(maxsize=64)
def time_factor(from_unit: str | None, to_unit: str) -> float:
    """Factor converting times in ``from_unit`` to ``to_unit`` (pint syntax).

    Parameters
    ----------
    from_unit : str or None
        The dataset's time unit; None means "same as the model".
    to_unit : str
        The model's time unit.

    Returns
    -------
    float
        Multiply dataset times by this to get model times.
    """
    if from_unit is None or str(from_unit).strip() == str(to_unit).strip():
        return 1.0
    import pint

    ureg = pint.get_application_registry()
    return float(ureg.Quantity(1.0, str(from_unit)).to(str(to_unit)).magnitude)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(np.isnan(value)) or int(value) == -1
    except (TypeError, ValueError):
        return False


def _as_int(value: Any) -> int | None:
    """Return the integer a CMT/DVID value stands for, or None for a name."""
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return None
        return int(number) if number == int(number) else None
    number = float(value)
    return int(number) if number == int(number) else None


def resolve_compartment(model: Any, value: Any) -> int | None:
    """State index a dataset CMT value refers to, or None when unknown.

    Integers are 1-based state indices (NONMEM); names are state names or dose-route names
    (``model.dose_targets``); a missing CMT means the model's first dose route.

    Parameters
    ----------
    model : CompiledModel
        The model.
    value : int, float or str
        CMT as recorded (-1 / "" when absent).

    Returns
    -------
    int or None
        0-based state index.
    """
    if _is_missing(value):
        targets = list(model.dose_targets.values())
        return int(targets[0]) if targets else None
    number = _as_int(value)
    if number is not None:
        return number - 1 if 1 <= number <= model.n_states else None
    name = str(value).strip()
    if name in model.states:
        return model.state_index(name)
    if name in model.dose_targets:
        return int(model.dose_targets[name])
    lowered = {s.lower(): i for i, s in enumerate(model.states)}
    lowered.update({k.lower(): int(v) for k, v in model.dose_targets.items()})
    return lowered.get(name.lower())


def resolve_endpoint(model: Any, value: Any, has_dvid: bool, dvid_names: dict | None) -> int | None:
    """Endpoint index a dataset DVID value refers to, or None when unknown.

    Parameters
    ----------
    model : CompiledModel
        The model.
    value : int, float or str
        DVID as recorded.
    has_dvid : bool
        Whether the dataset has a DVID column.
    dvid_names : dict or None
        Optional mapping from DVID codes to endpoint names (the cohort's ``dvid_names``).

    Returns
    -------
    int or None
        Index into ``model.endpoints``.
    """
    if not has_dvid and len(model.endpoints) == 1:
        return 0
    number = _as_int(value)
    if number is not None:
        if number in model.endpoint_dvid:
            return model.endpoint_dvid.index(number)
        if dvid_names:
            name = dvid_names.get(number, dvid_names.get(str(number)))
            if name in model.endpoints:
                return model.endpoints.index(name)
        return None
    name = str(value).strip()
    if name in model.endpoints:
        return model.endpoints.index(name)
    lowered = {e.lower(): i for i, e in enumerate(model.endpoints)}
    return lowered.get(name.lower())


def _line(value: Any) -> int | None:
    try:
        line = int(value)
    except (TypeError, ValueError):
        return None
    return line if line >= 0 else None


def _covariates(model: Any, cohort: Any, source: str) -> np.ndarray:
    ds = cohort.ds
    n = cohort.n_subjects
    out = np.zeros((n, len(model.covariates)))
    problems = []
    names = {v.lower(): v for v in ds.data_vars if str(v).startswith("cov_")}
    for j, (name, default) in enumerate(
        zip(model.covariates, model.covariate_defaults, strict=True)
    ):
        var = names.get(f"cov_{name}".lower())
        values = np.asarray(ds[var].values, dtype=float) if var is not None else np.full(n, np.nan)
        missing = ~np.isfinite(values)
        if missing.any():
            if np.isnan(default):
                ids = cohort.subjects[missing].tolist()
                what = "column missing" if var is None else f"missing for subject(s) {ids[:10]}"
                problems.append(
                    Problem(
                        f"covariate {name} is required by model {model.name!r} ({what})",
                        file=source,
                        column=name,
                    )
                )
                continue
            values = np.where(missing, default, values)
        out[:, j] = values
    if problems:
        raise DatasetError(problems)
    return out


def bind(model: Any, cohort: Any) -> BoundCohort:
    """Express a cohort in a model's terms.

    Parameters
    ----------
    model : CompiledModel
        The model.
    cohort : Cohort
        The dataset (anything with ``ds``, ``subjects``, ``n_subjects``, ``source``,
        ``time_unit`` and ``covariate_names`` in the layout of ``docs/contracts.md``).

    Returns
    -------
    BoundCohort
        Events, observation times/keys/endpoints, covariates and subject IDs.

    Raises
    ------
    DatasetError
        A dose into an unknown compartment (column CMT), an observation of an endpoint the model
        does not have (column DVID), or a required covariate missing; every problem names the
        file and line.
    """
    ds = cohort.ds
    source = cohort.source
    factor = time_factor(cohort.time_unit, model.time_unit)
    columns = [str(c).strip().upper() for c in ds.attrs.get("columns", [])]
    has_dvid = "DVID" in columns if columns else len(model.endpoints) != 1
    dvid_names = ds.attrs.get("dvid_names") or None
    problems: list[Problem] = []

    # Doses.
    dose_mask = np.asarray(ds["dose_mask"].values, dtype=bool)
    d_time = np.asarray(ds["dose_time"].values, dtype=float) * factor
    d_amt = np.asarray(ds["dose_amt"].values, dtype=float)
    d_rate = np.asarray(ds["dose_rate"].values, dtype=float) / factor
    d_dur = np.asarray(ds["dose_dur"].values, dtype=float) * factor
    d_ii = np.asarray(ds["dose_ii"].values, dtype=float) * factor
    d_addl = np.asarray(ds["dose_addl"].values)
    d_cmt = ds["dose_cmt"].values
    d_evid = np.asarray(ds["dose_evid"].values)
    d_line = np.asarray(ds["dose_line"].values)
    records = []
    for i in range(cohort.n_subjects):
        idx = np.flatnonzero(dose_mask[i])
        cmt = np.full(len(idx), -1, dtype=np.int32)
        for k, j in enumerate(idx):
            evid = int(d_evid[i, j])
            if evid == 3:
                continue
            target = resolve_compartment(model, d_cmt[i, j])
            if target is None:
                known = ", ".join(
                    [f"{n + 1}={s}" for n, s in enumerate(model.states)] + list(model.dose_targets)
                )
                problems.append(
                    Problem(
                        f"dose into unknown compartment {d_cmt[i, j]!r} (model {model.name!r} "
                        f"has {known})",
                        file=source,
                        row=_line(d_line[i, j]),
                        column="CMT",
                    )
                )
                continue
            cmt[k] = target

        def clean(a: np.ndarray, idx: np.ndarray = idx, i: int = i) -> np.ndarray:
            return np.nan_to_num(np.asarray(a[i, idx], dtype=float))

        records.append(
            DoseRecords(
                time=clean(d_time),
                amount=clean(d_amt),
                cmt=cmt,
                rate=clean(d_rate),
                duration=clean(d_dur),
                ii=clean(d_ii),
                addl=np.nan_to_num(np.asarray(d_addl[i, idx], dtype=float)).astype(int),
                evid=np.asarray(d_evid[i, idx], dtype=int),
                seq=np.asarray(d_line[i, idx], dtype=float),
            )
        )

    # Observations.
    obs_mask = np.asarray(ds["obs_mask"].values, dtype=bool)
    o_time = np.asarray(ds["obs_time"].values, dtype=float) * factor
    o_line = np.asarray(ds["obs_line"].values, dtype=float)
    o_dvid = ds["obs_dvid"].values
    endpoint = np.zeros(obs_mask.shape, dtype=np.int32)
    cache: dict[Any, int | None] = {}
    for i, j in zip(*np.nonzero(obs_mask), strict=True):
        code = o_dvid[i, j]
        key = code.item() if hasattr(code, "item") else code
        if key not in cache:
            cache[key] = resolve_endpoint(model, key, has_dvid, dvid_names)
        e = cache[key]
        if e is None:
            problems.append(
                Problem(
                    f"observation of unknown endpoint {key!r} (model {model.name!r} has "
                    + ", ".join(
                        f"{d}={n}"
                        for d, n in zip(model.endpoint_dvid, model.endpoints, strict=True)
                    )
                    + ")",
                    file=source,
                    row=_line(o_line[i, j]),
                    column="DVID",
                )
            )
            continue
        endpoint[i, j] = e
    if problems:
        raise DatasetError(problems)

    covariates = _covariates(model, cohort, source)
    events = build_event_table(records)

    # Padding observations sit at the subject's first record, before everything (key -inf).
    first = np.full(cohort.n_subjects, np.inf)
    for i in range(cohort.n_subjects):
        candidates = [o_time[i][obs_mask[i]], d_time[i][dose_mask[i]]]
        values = np.concatenate([c[np.isfinite(c)] for c in candidates])
        first[i] = values.min() if values.size else 0.0
    obs_time = np.where(obs_mask, o_time, first[:, None])
    obs_seq = np.where(obs_mask, o_line, -np.inf)
    return BoundCohort(
        events=events,
        obs_time=obs_time,
        obs_seq=obs_seq,
        obs_endpoint=endpoint,
        obs_mask=obs_mask,
        covariates=covariates,
        subjects=np.asarray(cohort.subjects),
        time_factor=factor,
        source=source,
    )
