"""Doses and resets as events: the solver-facing event table.

This module is numpy-only (layer 1). It turns dose records as they appear in a dataset (with
ADDL/II repetition, infusions given by RATE or DUR, EVID 3/4 resets) into a flat, padded table of
*events* that the solver applies one after the other.

Ordering rule at equal times
----------------------------
Every event and every observation carries a sequence key ``seq``. At equal times, an observation
sees exactly the events whose key is smaller than its own. Records of a dataset use their line
number as key, so the dataset's record order decides (as in NONMEM): an observation record placed
*before* a dose record at the same time is a pre-dose (trough) sample, one placed after it sees
the dose. Doses implied by ADDL/II are placed after every record at their time (``seq`` is
shifted by `IMPLIED_OFFSET`), so a sample at the time of an implied dose is a pre-dose sample.
An EVID 4 record is a reset immediately followed by its dose.

Lag times and bioavailability are model parameters, so they are applied by the solver: a dose with
lag arrives at ``time + lag``; an infusion given by RATE lasts ``F * amount / rate``, one given by
DUR delivers ``F * amount`` over ``duration`` (NONMEM semantics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Event kinds.
PAD, BOLUS, INFUSION_START, INFUSION_END, RESET = 0, 1, 2, 3, 4

#: Key offset that places an ADDL-implied dose after every record at the same time.
IMPLIED_OFFSET = 1.0e9


@dataclass(frozen=True)
class EventTable:
    """Events of a cohort, one row per subject, padded to a common length.

    All arrays have shape ``(n_subjects, n_events)``. Padding rows have ``kind == PAD`` and
    ``mask == False``; they are no-ops placed at the end.

    Attributes
    ----------
    time : numpy.ndarray
        Nominal time of the event (before any lag). For ``INFUSION_END`` rows this is the start
        time of the infusion: the solver computes the end from ``rate``/``duration``, lag and F.
    kind : numpy.ndarray
        One of `PAD`, `BOLUS`, `INFUSION_START`, `INFUSION_END`, `RESET`.
    amount : numpy.ndarray
        Dose amount as recorded (before bioavailability and dose scaling); 0 for other kinds.
    cmt : numpy.ndarray
        0-based index of the state the dose enters; -1 for resets and padding.
    rate : numpy.ndarray
        Infusion rate as recorded (amount per time) when the infusion is given by RATE, else 0.
    duration : numpy.ndarray
        Infusion duration as recorded when the infusion is given by DUR, else 0.
    link : numpy.ndarray
        For an infusion start, the column of its end event; for an end, the column of its start;
        -1 otherwise.
    seq : numpy.ndarray
        Ordering key at equal times (see the module docstring).
    mask : numpy.ndarray
        True for real events.
    """

    time: np.ndarray
    kind: np.ndarray
    amount: np.ndarray
    cmt: np.ndarray
    rate: np.ndarray
    duration: np.ndarray
    link: np.ndarray
    seq: np.ndarray
    mask: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_subjects, n_events)``."""
        return self.time.shape  # type: ignore[return-value]


@dataclass(frozen=True)
class DoseRecords:
    """Dose and reset records of one subject as recorded (1-D arrays of equal length).

    Attributes
    ----------
    time, amount, rate, duration, ii : numpy.ndarray
        TIME, AMT, RATE, DUR, II columns (0 where absent).
    addl : numpy.ndarray
        ADDL column (integer, 0 where absent).
    cmt : numpy.ndarray
        0-based target state index (-1 for a pure reset).
    evid : numpy.ndarray
        1 (dose), 3 (reset) or 4 (reset and dose).
    seq : numpy.ndarray
        Ordering key of each record (its line number in the file).
    """

    time: np.ndarray
    amount: np.ndarray
    cmt: np.ndarray
    rate: np.ndarray
    duration: np.ndarray
    ii: np.ndarray
    addl: np.ndarray
    evid: np.ndarray
    seq: np.ndarray


def expand_subject(rec: DoseRecords) -> dict[str, np.ndarray]:
    """Expand one subject's dose records into events.

    ADDL/II become individual doses at ``time + k * II`` (k = 1..ADDL); EVID 4 becomes a reset
    followed by a dose; an infusion gets a start and a linked end event.

    Parameters
    ----------
    rec : DoseRecords
        The subject's dose and reset records.

    Returns
    -------
    dict of str to numpy.ndarray
        Columns ``time, kind, amount, cmt, rate, duration, link, seq`` (1-D, unpadded), sorted by
        ``(time, seq)`` with each infusion end placed right after its start.
    """
    rows: list[tuple[float, int, float, int, float, float, float]] = []
    for i in range(len(rec.time)):
        t, evid = float(rec.time[i]), int(rec.evid[i])
        seq = float(rec.seq[i])
        if evid in (3, 4):
            rows.append((t, RESET, 0.0, -1, 0.0, 0.0, seq - 0.5))
        if evid in (1, 4):
            n_add = int(rec.addl[i])
            for k in range(n_add + 1):
                tk = t + k * float(rec.ii[i])
                sk = seq if k == 0 else seq + IMPLIED_OFFSET
                infusion = rec.rate[i] > 0 or rec.duration[i] > 0
                kind = INFUSION_START if infusion else BOLUS
                rows.append(
                    (
                        tk,
                        kind,
                        float(rec.amount[i]),
                        int(rec.cmt[i]),
                        float(rec.rate[i]),
                        float(rec.duration[i]),
                        sk,
                    )
                )
    rows.sort(key=lambda r: (r[0], r[6]))
    out: dict[str, list] = {
        k: [] for k in ("time", "kind", "amount", "cmt", "rate", "duration", "link", "seq")
    }
    for r in rows:
        t, kind, amt, cmt, rate, dur, seq = r
        idx = len(out["time"])
        for key, val in zip(
            ("time", "kind", "amount", "cmt", "rate", "duration", "seq"),
            (t, kind, amt, cmt, rate, dur, seq),
            strict=True,
        ):
            out[key].append(val)
        out["link"].append(-1)
        if kind == INFUSION_START:
            # The end event's real time is computed by the solver (it depends on lag and F).
            out["link"][idx] = idx + 1
            for key, val in zip(
                ("time", "kind", "amount", "cmt", "rate", "duration", "seq"),
                (t, INFUSION_END, amt, cmt, rate, dur, seq),
                strict=True,
            ):
                out[key].append(val)
            out["link"].append(idx)
    dtypes = {"kind": np.int8, "cmt": np.int32, "link": np.int32}
    return {k: np.asarray(v, dtype=dtypes.get(k, np.float64)) for k, v in out.items()}


def build_event_table(subjects: list[DoseRecords], min_events: int = 1) -> EventTable:
    """Expand every subject's records and pad them into one `EventTable`.

    Parameters
    ----------
    subjects : list of DoseRecords
        One entry per subject, in cohort order.
    min_events : int, optional
        Minimum number of event columns (a subject with no dose still gets padding).

    Returns
    -------
    EventTable
        Padded table; padding rows sit at the end with ``kind == PAD``.
    """
    expanded = [expand_subject(s) for s in subjects]
    n = len(expanded)
    m = max([min_events] + [len(e["time"]) for e in expanded])
    time = np.zeros((n, m))
    kind = np.full((n, m), PAD, dtype=np.int8)
    amount = np.zeros((n, m))
    cmt = np.full((n, m), -1, dtype=np.int32)
    rate = np.zeros((n, m))
    duration = np.zeros((n, m))
    link = np.full((n, m), -1, dtype=np.int32)
    seq = np.full((n, m), np.inf)
    mask = np.zeros((n, m), dtype=bool)
    for i, e in enumerate(expanded):
        k = len(e["time"])
        time[i, :k] = e["time"]
        # Padding sits at the subject's last event time so it never opens a new interval.
        time[i, k:] = e["time"][-1] if k else 0.0
        kind[i, :k] = e["kind"]
        amount[i, :k] = e["amount"]
        cmt[i, :k] = e["cmt"]
        rate[i, :k] = e["rate"]
        duration[i, :k] = e["duration"]
        link[i, :k] = e["link"]
        seq[i, :k] = e["seq"]
        mask[i, :k] = True
    return EventTable(time, kind, amount, cmt, rate, duration, link, seq, mask)
