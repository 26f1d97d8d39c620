"""Conformance harness: ODE engine vs closed form on NONMEM-style records, one file per feature.

Each case is a list of records in dataset order (their position gives the line number, hence the
ordering key). Shapes are padded to fixed sizes so that every case of a (model, solver) pair
shares one compilation.
"""

import sys
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).parents[1] / "solve"))

import handmodels  # noqa: E402

from pkpd.events import DoseRecords, build_event_table  # noqa: E402
from pkpd.solve import Solver, analytic_amounts, solve  # noqa: E402

#: Fixed padded sizes: events and observation columns per case.
N_EVENTS, N_OBS = 24, 40

#: Relative error allowed between the ODE and the closed form.
RTOL = 1e-6

MODELS = {"1cmt": handmodels.one_cmt(), "2cmt": handmodels.two_cmt()}
SOLVERS = {
    "tsit5": Solver("tsit5", rtol=1e-10, atol=1e-12),
    "kvaerno5": Solver.stiff("kvaerno5", rtol=1e-10, atol=1e-12),
}


def dose(time, amt, cmt="central", rate=0.0, dur=0.0, ii=0.0, addl=0, evid=1):
    return dict(evid=evid, time=time, amt=amt, cmt=cmt, rate=rate, dur=dur, ii=ii, addl=addl)


def reset(time):
    return dict(evid=3, time=time, amt=0.0, cmt=None, rate=0.0, dur=0.0, ii=0.0, addl=0)


def obs(*times):
    return [dict(evid=0, time=t) for t in times]


def flatten(rows):
    out = []
    for r in rows:
        out.extend(r if isinstance(r, list) else [r])
    return out


def arrays(model, rows):
    """Records (dataset order) -> (EventTable, obs_time (1, O), obs_seq (1, O), n_obs)."""
    rows = flatten(rows)
    doses = [(i + 2, r) for i, r in enumerate(rows) if r["evid"] != 0]
    obss = [(i + 2, r) for i, r in enumerate(rows) if r["evid"] == 0]
    rec = DoseRecords(
        time=np.array([r["time"] for _, r in doses], float),
        amount=np.array([r["amt"] for _, r in doses], float),
        cmt=np.array([-1 if r["cmt"] is None else model.state_index(r["cmt"]) for _, r in doses]),
        rate=np.array([r["rate"] for _, r in doses], float),
        duration=np.array([r["dur"] for _, r in doses], float),
        ii=np.array([r["ii"] for _, r in doses], float),
        addl=np.array([r["addl"] for _, r in doses], int),
        evid=np.array([r["evid"] for _, r in doses], int),
        seq=np.array([line for line, _ in doses], float),
    )
    ev = build_event_table([rec], min_events=N_EVENTS)
    assert ev.shape[1] == N_EVENTS, "case has too many events for the fixed padding"
    n = len(obss)
    assert n <= N_OBS
    t = np.full((1, N_OBS), min(r["time"] for r in rows))
    s = np.full((1, N_OBS), -np.inf)
    t[0, :n] = [r["time"] for _, r in obss]
    s[0, :n] = [line for line, _ in obss]
    return ev, t, s, n


def params(model, **values):
    return handmodels.individual_vector(model, **values)[None, :]


def run(model, rows, solver, **values):
    """Return (ode, analytic) states (O, S) at the case's observations."""
    ev, t, s, n = arrays(model, rows)
    p = params(model, **values)
    res = solve(model, ev, t, s, p, solver)
    assert bool(res.ok[0]), f"solve failed: status {int(res.status[0])}"
    ref = analytic_amounts(model, ev, t, s, p)
    return np.asarray(res.y[0, :n]), np.asarray(ref[0, :n])


def assert_close(actual, expected, rtol=RTOL):
    """Elementwise relative error <= rtol.

    Amounts below 1e-4 of the case's largest amount are compared on that floor instead: they are
    governed by the absolute tolerance (1e-12), not the relative one.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = np.abs(expected) + 1e-4 * np.max(np.abs(expected))
    err = np.abs(actual - expected) / scale
    assert np.all(err <= rtol), f"max relative error {err.max():.3g}"


def check(model, rows, solver, **values):
    """ODE == closed form for a case; returns the closed form for explicit checks."""
    ode, ref = run(model, rows, solver, **values)
    assert_close(ode, ref)
    return ode, ref
