"""Integrate compiled models over cohorts: exact dose handling, batched over subjects.

- `Solver`: how to integrate (method, tolerances, step budget, adjoint).
- `bind`: a `Cohort` in a model's terms (`BoundCohort`: event table, observation times/keys,
  endpoints, covariates).
- `solve` / `solve_dense`: the compiled, vmapped, differentiable engine on arrays.
- `solve_lanes`: the same method with subjects on the last axis (simulation, and forward-mode
  sensitivities for fitting; no reverse mode).
- `analytic_amounts`: closed-form 1-/2-compartment PK (also the solver's ``"analytic"`` path).
- `simulate`: the high-level API returning an `xarray.Dataset`.

See ``docs/solver.md``.
"""

import jax

jax.config.update("jax_enable_x64", True)

from pkpd.solve.analytic import analytic_amounts, analytic_supported  # noqa: E402
from pkpd.solve.bind import BoundCohort, bind  # noqa: E402
from pkpd.solve.config import Solver  # noqa: E402
from pkpd.solve.engine import (  # noqa: E402
    NONFINITE,
    OK,
    SOLVER_FAILURE,
    STATUS_MESSAGES,
    STEP_LIMIT,
    SolveResult,
    event_arrays,
    solve,
    solve_batch,
    solve_dense,
)
from pkpd.solve.lanes import solve_lanes  # noqa: E402
from pkpd.solve.simulate import simulate  # noqa: E402

__all__ = [
    "NONFINITE",
    "OK",
    "SOLVER_FAILURE",
    "STATUS_MESSAGES",
    "STEP_LIMIT",
    "BoundCohort",
    "SolveResult",
    "Solver",
    "analytic_amounts",
    "analytic_supported",
    "bind",
    "event_arrays",
    "simulate",
    "solve",
    "solve_batch",
    "solve_dense",
    "solve_lanes",
]
