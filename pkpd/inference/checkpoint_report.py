"""Read a checkpoint folder of NUTS in pieces without resuming it.

A fit run in pieces (`pkpd.inference.resumable`) can take several sessions; between them the
folder is all there is. This module reads it alone (no model, no data, no compilation): where
each chain stands (`checkpoint_progress`) and how the draws kept so far mix
(`interim_diagnostics`), so that a run that will not converge can be stopped early.

The interim diagnostics are computed on the sampler's unconstrained coordinates (e.g.
``log_omega_FB``, ``omega_CL_log__``, ``z[3,2]``). Bulk and tail ESS (Vehtari et al. 2021,
ArviZ's defaults) are rank-based, so a monotone transform does not change them: for a parameter
whose transform acts element by element (log, logit, interval) they are the constrained
parameter's. ArviZ's R-hat is the larger of the rank-normalised split R-hat (also invariant)
and the same on the values folded about their median (not invariant), so on a transformed
coordinate it can differ a little from the constrained parameter's (1.118 against 1.112 for
``sigma_add`` in the tests' short theophylline run); on untransformed coordinates (``log_CL``)
it is the same. For ordered cutpoints the coordinates are the unconstrained increments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pkpd.inference.resumable import _load, _read_run, coordinate_names

#: Draws per chain below which the interim diagnostics are not computed (split R-hat halves
#: each chain).
MIN_INTERIM_DRAWS = 4


def checkpoint_progress(directory: str | Path, recent: int = 50) -> Any:
    """Where each chain of a checkpoint folder stands.

    Parameters
    ----------
    directory : str or Path
        A checkpoint folder (`sample_resumable`, ``fit(checkpoint=...)``), finished or not.
    recent : int, optional
        Iterations (the last recorded, warm-up and draws together) over which ``recent_steps``
        is taken.

    Returns
    -------
    pandas.DataFrame
        A row per chain: ``iteration`` (done) of ``total`` (warm-up plus the last call's
        draws), ``phase`` ("not started", "warm-up", "sampling" or "done"), ``draws`` (kept),
        ``seconds`` (spent on the chain over all calls), ``s_per_iteration``,
        ``recent_steps`` (median leapfrog steps per iteration over the last ``recent``
        recorded iterations), ``warmup_divergent`` of ``warmup_recorded`` (iterations whose
        statistics were kept: folders written before 2026-12-05 evening lack the earlier
        ones), ``draws_divergent``, ``step_size`` (the adapted one the chain goes on with;
        NaN before its first save) and ``remaining_s``: an estimate of the sampling seconds
        the chain still needs, its remaining iterations times ``recent_steps`` times its
        seconds per leapfrog step so far (wall time: with more chains than cores it shrinks
        as other chains finish; the recent steps, not the average, because the adapted step
        size, hence the cost of an iteration, settles late in warm-up).

    Raises
    ------
    FileNotFoundError
        ``directory`` has no ``run.json``.
    """
    import pandas as pd

    directory = Path(directory)
    run = _read_run(directory)
    tune, total = int(run["tune"]), int(run["tune"]) + int(run["draws"])
    rows = []
    for c in range(int(run["chains"])):
        path = directory / f"chain{c}.pkl"
        if not path.is_file():
            rows.append(
                {"chain": c, "iteration": 0, "total": total, "phase": "not started", "seconds": 0.0}
            )
            continue
        rec = _load(path)
        it = int(rec["iteration"])
        warm = rec.get("warmup", {})
        steps = list(warm.get("n_steps", [])) + list(rec["stats"]["n_steps"])
        state = rec.get("state")
        seconds = float(rec.get("seconds", 0.0))
        recent_steps = float(np.median(steps[-recent:])) if steps else np.nan
        # Total steps from the recorded mean: older folders lack the early warm-up's statistics.
        s_per_step = seconds / (np.mean(steps) * it) if steps and it else np.nan
        rows.append(
            {
                "chain": c,
                "iteration": it,
                "total": total,
                "phase": "done" if it >= total else "sampling" if it > tune else "warm-up",
                "draws": len(rec["draws"]),
                "seconds": round(seconds, 1),
                "s_per_iteration": seconds / it if it else np.nan,
                "recent_steps": recent_steps,
                "warmup_divergent": int(np.sum(warm.get("diverging", []))),
                "warmup_recorded": len(warm.get("lp", [])),
                "draws_divergent": int(np.sum(rec["stats"]["diverging"])),
                "step_size": (
                    np.nan if state is None else float(np.asarray(state.adapt_state.step_size))
                ),
                "remaining_s": (
                    0.0 if it >= total else round(max(total - it, 0) * recent_steps * s_per_step, 1)
                ),
            }
        )
    columns = [
        "chain",
        "iteration",
        "total",
        "phase",
        "draws",
        "seconds",
        "s_per_iteration",
        "recent_steps",
        "warmup_divergent",
        "warmup_recorded",
        "draws_divergent",
        "step_size",
        "remaining_s",
    ]
    table = pd.DataFrame(rows, columns=columns).set_index("chain")
    ints = ["draws", "warmup_divergent", "warmup_recorded", "draws_divergent"]
    table[ints] = table[ints].fillna(0).astype(int)
    return table


def interim_diagnostics(directory: str | Path) -> Any:
    """R-hat and ESS of the draws a checkpoint folder has kept so far, per coordinate.

    Every chain contributes its first ``n`` draws, ``n`` being the fewest any chain has kept,
    so the chains are compared over the same stretch. The values are ArviZ's rank-normalised
    split R-hat and bulk and tail ESS on the sampler's unconstrained coordinates (see the
    module's note on transforms).

    Parameters
    ----------
    directory : str or Path
        A checkpoint folder, finished or not.

    Returns
    -------
    pandas.DataFrame
        Indexed by coordinate (`pkpd.inference.resumable.coordinate_names`), columns
        ``rhat``, ``ess_bulk``, ``ess_tail``, worst R-hat first; ``attrs`` holds ``chains``
        and ``draws`` (per chain) and ``divergent`` (among those draws).

    Raises
    ------
    FileNotFoundError
        ``directory`` has no ``run.json``.
    ValueError
        Some chain has not started or has fewer than `MIN_INTERIM_DRAWS` draws.
    """
    import arviz as az
    import pandas as pd
    import xarray as xr

    directory = Path(directory)
    run = _read_run(directory)
    names = coordinate_names(run)
    records = []
    for c in range(int(run["chains"])):
        path = directory / f"chain{c}.pkl"
        records.append(_load(path) if path.is_file() else {"draws": [], "stats": {}})
    n = min(len(rec["draws"]) for rec in records)
    if n < MIN_INTERIM_DRAWS:
        raise ValueError(
            f"{directory}: the chains have kept {[len(r['draws']) for r in records]} draws; "
            f"interim diagnostics need at least {MIN_INTERIM_DRAWS} in every chain"
        )
    z = np.stack([np.stack(rec["draws"][:n]) for rec in records])  # (chain, draw, coordinate)
    data = xr.Dataset({"z": (("chain", "draw", "coordinate"), z)}, coords={"coordinate": names})
    table = pd.DataFrame(
        {
            "rhat": az.rhat(data)["z"].values,
            "ess_bulk": az.ess(data, method="bulk")["z"].values,
            "ess_tail": az.ess(data, method="tail")["z"].values,
        },
        index=pd.Index(names, name="coordinate"),
    ).sort_values("rhat", ascending=False)
    divergent = sum(int(np.sum(rec["stats"]["diverging"][:n])) for rec in records)
    table.attrs.update({"chains": len(records), "draws": n, "divergent": divergent})
    return table


__all__ = ["checkpoint_progress", "interim_diagnostics"]
