"""Would an IMEX method with the diagonal of the Jacobian implicit cut the fit's solver steps?

The subjects-last solve of a ``cart_crs_core`` fit spends ~60% of its steps after day 28, where
Tsit5's step is bounded by stability (``docs/cart-fitting.md``, "Where the time goes"). This
script measures what a cheap stiff method would save there: an additive Runge-Kutta method
(Kennedy and Carpenter's ARK4(3)6L or ARK5(4)8L, diffrax's ``KenCarp4``/``KenCarp5`` tableaus)
whose implicit part is ``L * y``, ``L`` the diagonal of the Jacobian clipped at 0 (the
explicit part is ``f(y) - L * y``). With a diagonal ``L`` each implicit stage is a division, so
a step costs about as much as an explicit one. ``L`` is taken at each step's start
(``--diagonal step``, 23 Jacobian-vector products: a prototype, not a cheap implementation) or
once at each subject's initial state (``--diagonal start``).

The method is a prototype written here, not a solver of `pkpd.solve`: the subjects-last loop
(`pkpd.solve.lanes`) is run with its stage function and method swapped for the measurement.
For each method it prints, on the fit's cohort at the typical values and the fitting
tolerances, the loop iterations (the slowest subject sets them: every subject computes every
iteration), accepted and rejected steps per subject, those after day ``--after``, and the
largest relative difference of the recorded states from Tsit5's; then, for the subject with the
most steps after day ``--after``, the states with the largest scaled error at a few of its late
steps (what limits its step).

    python benchmarks/imex_tail.py --patients 60
    python benchmarks/imex_tail.py --patients 5 --methods tsit5 kencarp5 --diagonal start
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pkpd.solve.lanes as lanes  # noqa: E402

jax.config.update("jax_enable_x64", True)

METHODS = {"kencarp4": (diffrax.KenCarp4, 4), "kencarp5": (diffrax.KenCarp5, 5)}


def _diagonal(field, t: jax.Array, y: jax.Array) -> jax.Array:
    """Diagonal of the Jacobian of ``field(t, .)`` at ``y`` (shape ``(S, N)``), per subject."""
    rows = []
    for i in range(y.shape[0]):
        e = jnp.zeros_like(y).at[i].set(1.0)
        rows.append(jax.jvp(lambda yy: field(t, yy), (y,), (e,))[1][i])
    return jnp.stack(rows)


def imex_stages(tableaus, fixed: jax.Array | None = None):
    """A `pkpd.solve.lanes._stages` replacement: one ARK step, implicit part ``L * y``.

    ``fixed`` (``(S, N)``) is ``L``; without it ``L`` is the diagonal at the step's start.
    Returns ``f`` at the new point as the last stage value (the loop reuses it as the next
    step's first stage, as for Tsit5's first-same-as-last stage).
    """
    explicit, implicit = tableaus

    def stages(field, tab, t, he, y, f0):
        lam = (
            fixed
            if fixed is not None
            else jnp.minimum(jax.lax.stop_gradient(_diagonal(field, t, y)), 0.0)
        )
        fe, fi = [f0 - lam * y], [lam * y]
        for i, (c, ae, ai) in enumerate(
            zip(explicit.c, explicit.a_lower, implicit.a_lower, strict=True)
        ):
            rhs = y + he * (lanes._combine(ae, fe) + lanes._combine(ai, fi))
            stage = rhs / (1.0 - he * float(implicit.a_diagonal[i + 1]) * lam)
            f = field(t + float(c) * he, stage)
            fe.append(f - lam * stage)
            fi.append(lam * stage)
        total = [a + b for a, b in zip(fe, fi, strict=True)]
        y1 = y + he * lanes._combine(explicit.b_sol, total)
        err = he * lanes._combine(explicit.b_error, total)
        return y1, err, [field(t + he, y1)]

    return stages


@contextmanager
def method_in_loop(name: str, fixed: jax.Array | None = None):
    """Run `pkpd.solve.lanes` with method ``name`` (``tsit5`` leaves it alone)."""
    if name == "tsit5":
        yield
        return
    cls, order = METHODS[name]
    # The loop takes its tableau's first-same-as-last flag and order from `_method`.
    fake = SimpleNamespace(tableau=diffrax.Tsit5.tableau, method_order=order)
    with (
        mock.patch.object(lanes, "_stages", imex_stages(cls.tableau.tableaus, fixed)),
        mock.patch.object(lanes, "_method", lambda model, solver: fake),
    ):
        yield


def problem(n_patients: int, profile: str, seed: int | None = None):
    """The fit's cohort, model, solver and typical-value parameters (as ``--steps``)."""
    import cart_recovery as cr

    info, args, p = cr.typical_problem(n_patients, profile, seed)
    return info.model, info.solver, args, p


def count(
    model,
    solver,
    args,
    p,
    name: str,
    diagonal: str = "step",
    after: float = 28.0,
    detail: bool = True,
) -> dict:
    """Steps of one method on the problem; with ``detail`` what limits the busiest subject."""
    fixed = None
    if name != "tsit5" and diagonal == "start":
        field = lanes._rhs(model)
        y_init = jax.vmap(model.initial, in_axes=1, out_axes=1)(p.T)
        u0 = jnp.zeros_like(y_init)
        t0 = jnp.zeros(p.shape[0])
        fixed = jnp.minimum(_diagonal(lambda t, y: field(t, y, u0, p.T), t0, y_init), 0.0)
    with method_in_loop(name, fixed):
        res, st = jax.jit(
            lambda q: lanes.solve_lanes(model, solver, *args, q, with_stats=True, count_after=after)
        )(p)
        tape = None
        acc, rej, late = (np.asarray(a) for a in (st.accepted, st.rejected, st.accepted_after))
        if detail:
            _, _, tape = jax.jit(
                lambda q: lanes._run(model, solver, *args, q, capacity=int(st.iterations) + 1)
            )(p)
    out = {
        "method": name,
        "diagonal": diagonal if name != "tsit5" else "-",
        "patients": int(p.shape[0]),
        "iterations": int(st.iterations),
        "accepted_mean": round(float(acc.mean()), 1),
        "accepted_min": int(acc.min()),
        "accepted_max": int(acc.max()),
        "rejected_mean": round(float(rej.mean()), 1),
        f"after_day_{after:g}_mean": round(float(late.mean()), 1),
        f"after_day_{after:g}_min": int(late.min()),
        f"after_day_{after:g}_max": int(late.max()),
        f"after_day_{after:g}_quartiles": [float(q) for q in np.percentile(late, [25, 50, 75])],
        "ok": bool(np.all(res.ok)),
    }
    # Late steps of the subjects dosed into each state against the others (rescue drugs).
    ev = args[0]
    mask = np.asarray(ev["mask"]).astype(bool)
    cmt = np.asarray(ev["cmt"])
    by_dose = {}
    for s in sorted(set(cmt[mask].tolist())):
        dosed = ((cmt == s) & mask).any(axis=1)
        if 0 < dosed.sum() < len(dosed):
            by_dose[model.states[s]] = {
                "subjects": int(dosed.sum()),
                "range_dosed": [int(late[dosed].min()), int(late[dosed].max())],
                "range_not": [int(late[~dosed].min()), int(late[~dosed].max())],
            }
    out[f"after_day_{after:g}_by_dosed_state"] = by_dose
    if detail:
        out["limiting"] = _limiting(model, solver, p, name, fixed, tape, late, after)
    return out, np.asarray(res.y)


def _limiting(model, solver, p, name, fixed, tape, late, after) -> dict:
    """The states with the largest scaled errors at late steps of the busiest subject."""
    k = int(np.argmax(late))
    it = int(tape["iterations"])
    t, he = np.asarray(tape["t"])[:it, k], np.asarray(tape["he"])[:it, k]
    ok = np.asarray(tape["accept"])[:it, k] & (t >= after) & (he > 0)
    y = np.asarray(tape["y"])[:it, :, k]
    rhs = lanes._rhs(model)
    p_k = p[k : k + 1].T

    def field(ts, ys):
        return rhs(ts, ys, jnp.zeros_like(ys), p_k)

    if name == "tsit5":
        stages = lanes._stages
    else:
        cls, _ = METHODS[name]
        stages = imex_stages(cls.tableau.tableaus, None if fixed is None else fixed[:, k : k + 1])
    steps = np.where(ok)[0]
    rows = []
    for j in steps[:: max(1, len(steps) // 5)]:
        yj = jnp.asarray(y[j])[:, None]
        tj, hj = jnp.asarray([t[j]]), jnp.asarray([he[j]])
        y1, err, _ = stages(field, diffrax.Tsit5.tableau, tj, hj, yj, field(tj, yj))
        scale = solver.atol + solver.rtol * np.maximum(np.abs(yj), np.abs(y1))
        r = np.asarray(err / scale)[:, 0]
        top = np.argsort(-np.abs(r))[:3]
        rows.append(
            {
                "day": round(float(t[j]), 2),
                "step": round(float(he[j]), 3),
                "states": {model.states[i]: round(float(r[i]), 2) for i in top},
            }
        )
    return {"subject": k, "steps_after": int(late[k]), "at": rows}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--profile", default="cart_crs_core")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["tsit5", "kencarp4", "kencarp5"],
        choices=["tsit5", *METHODS],
    )
    parser.add_argument("--diagonal", choices=["step", "start"], default="step")
    parser.add_argument("--after", type=float, default=28.0)
    parser.add_argument("--no-detail", action="store_true")
    args = parser.parse_args(argv)
    model, solver, solve_args, p = problem(args.patients, args.profile)
    ref, results = None, []
    for name in dict.fromkeys(["tsit5", *args.methods]):
        out, y = count(
            model, solver, solve_args, p, name, args.diagonal, args.after, detail=not args.no_detail
        )
        if ref is None:
            ref = y
        else:
            rel = np.abs(y - ref) / (1e-6 + np.abs(ref))
            out["max_rel_diff_from_tsit5"] = float(f"{np.nanmax(rel):.2g}")
        if name in args.methods:
            print(json.dumps(out), flush=True)
            results.append(out)
    return results


if __name__ == "__main__":
    main()
