"""What sets the step count of cart_crs: Jacobian eigenvalues and steps per solver and tolerance.

One typical patient (typical values, covariate defaults, weight 70 kg), CAR-T 1e8 cells at day 0,
untreated, days 0-28 saved every 6 h. Prints (1) the three most negative real parts of the
Jacobian's eigenvalues along a reference trajectory and the states that dominate the fastest
eigenvector, and (2) for explicit and implicit methods at several tolerances: steps taken and
accepted, the largest error in log B, I6, Vl, CRP and N against a reference solution (Kvaerno5,
rtol 1e-10), and the wall time of one solve (best of 5, after compiling); (3) the steps that
scipy's implicit Radau (order 5) and BDF take at rtol 1e-6 and 1e-4 (atol = rtol / 1000), with the
exact Jacobian: what a stiff method would save in steps (accuracy-bound, not stability-bound).

    python benchmarks/stiffness.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pkpd  # noqa: E402
from pkpd.solve.erk import UnrolledTsit5  # noqa: E402

jax.config.update("jax_enable_x64", True)


def main() -> None:
    m = pkpd.load_model("cart_crs").compile()
    cov = np.array([d if np.isfinite(d) else 70.0 for d in m.covariate_defaults])
    p = m.individual(jnp.asarray(m.typical_values), jnp.zeros(len(m.iiv)), jnp.asarray(cov))
    y0 = np.asarray(m.initial(p)).copy()
    target = m.dose_targets["cart_iv"]
    y0[target] += 1e8 * float(m.dose_scale(p)[target])
    y0 = jnp.asarray(y0)
    term = diffrax.ODETerm(lambda t, y, a: m.rhs(t, y, a))
    grid = jnp.linspace(0.0, 28.0, 113)

    def run(solver, rtol, atol):
        return diffrax.diffeqsolve(
            term,
            solver,
            0.0,
            28.0,
            1e-3,
            y0,
            args=p,
            saveat=diffrax.SaveAt(ts=grid),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=100_000,
        )

    ref = run(diffrax.Kvaerno5(), 1e-10, 1e-12)
    jac = jax.jit(jax.jacfwd(lambda y, t: m.rhs(t, y, p)))
    print("day | three most negative Re(eigenvalue) (1/day) | states of the fastest mode")
    for day in (0.5, 2, 5, 10, 28):
        k = int(np.argmin(np.abs(np.asarray(grid) - day)))
        w, v = np.linalg.eig(np.asarray(jac(ref.ys[k], grid[k])))
        order = np.argsort(w.real)[:3]
        top = np.argsort(-np.abs(v[:, order[0]]))[:3]
        print(f"{day:>4} | {np.round(w.real[order], 1)} | {[m.states[i] for i in top]}")
    watch = [m.states.index(s) for s in ("B", "I6", "Vl", "CRP", "N")]
    print("\nmethod | rtol | steps | accepted | max |log error| | ms per solve")
    for solver, rtol, atol in [
        (UnrolledTsit5(), 1e-6, 1e-9),
        (UnrolledTsit5(), 1e-4, 1e-7),
        (UnrolledTsit5(), 1e-3, 1e-6),
        (diffrax.Kvaerno5(), 1e-6, 1e-9),
        (diffrax.Kvaerno5(), 1e-4, 1e-7),
        (diffrax.Kvaerno3(), 1e-4, 1e-7),
    ]:
        f = jax.jit(lambda s=solver, r=rtol, a=atol: run(s, r, a))
        sol = f()
        logs = np.log(np.maximum(np.asarray(sol.ys), 1e-12))[:, watch]
        err = np.max(np.abs(logs - np.log(np.maximum(np.asarray(ref.ys), 1e-12))[:, watch]))
        best = np.inf
        for _ in range(5):
            t0 = time.perf_counter()
            f().ys.block_until_ready()
            best = min(best, time.perf_counter() - t0)
        print(
            f"{type(solver).__name__} | {rtol:g} | {int(sol.stats['num_steps'])} | "
            f"{int(sol.stats['num_accepted_steps'])} | {err:.1e} | {1e3 * best:.1f}"
        )

    from scipy.integrate import solve_ivp

    f = jax.jit(lambda t, y: m.rhs(t, y, p))
    jac_t = jax.jit(jax.jacfwd(lambda t, y: m.rhs(t, y, p), argnums=1))
    print("\nscipy method | rtol | steps | right-hand side evaluations")
    for method in ("Radau", "BDF"):
        for rtol in (1e-6, 1e-4):
            sol = solve_ivp(
                lambda t, y: np.asarray(f(t, y)),
                (0.0, 28.0),
                np.asarray(y0),
                method=method,
                rtol=rtol,
                atol=rtol * 1e-3,
                jac=lambda t, y: np.asarray(jac_t(t, y)),
            )
            print(f"{method} | {rtol:g} | {sol.t.size - 1} | {sol.nfev}")


if __name__ == "__main__":
    main()
