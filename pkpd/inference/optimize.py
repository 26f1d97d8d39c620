"""L-BFGS for log-densities whose evaluation can fail or become very slow far from the start.

scipy's L-BFGS-B is the usual choice, but two things about an ODE model's log-density defeat it:

* a failed solve (step limit, non-finite state) has no value: returning ``inf`` to L-BFGS-B makes
  its line search give up and report convergence where the gradient is still large;
* a long quasi-Newton step early on (24 units on the unconstrained scale, measured on the CAR-T
  core profile: a random-effect SD multiplied by 300) lands where the model is so stiff that one
  evaluation takes minutes without failing.

`lbfgs` is the textbook method (Nocedal & Wright 2006, Algorithms 7.4 and 3.1: two-loop
recursion, backtracking line search with the Armijo condition) with a trust cap on the step
(`max_step`, max-norm) and failed evaluations treated as "too far": the step is shortened.
Curvature pairs with ``s.y <= 0`` are skipped (the line search does not enforce Wolfe's curvature
condition), so the inverse-Hessian approximation stays positive definite.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Minimum", "descend_negative_curvature", "lbfgs"]


@dataclass
class Minimum:
    """Result of `lbfgs`.

    Attributes
    ----------
    x : numpy.ndarray
        The best point found.
    fun : float
        The objective there.
    grad : numpy.ndarray
        Its gradient there.
    success : bool
        Whether a convergence criterion was met (not an iteration or evaluation limit, not a
        failed line search).
    message : str
        Why it stopped.
    nit : int
        Iterations (accepted steps).
    nfev : int
        Objective-and-gradient evaluations.
    failed : int
        Evaluations whose value or gradient was not finite.
    capped : int
        Iterations whose step was shortened to `max_step`.
    """

    x: np.ndarray
    fun: float
    grad: np.ndarray
    success: bool
    message: str
    nit: int
    nfev: int
    failed: int
    capped: int


def _direction(g: np.ndarray, pairs: deque) -> np.ndarray:
    """Return ``-H g`` by the two-loop recursion (H: the L-BFGS inverse-Hessian estimate)."""
    q = g.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * (s @ q)
        q -= a * y
        alphas.append(a)
    if pairs:
        s, y, _ = pairs[-1]
        q *= (s @ y) / (y @ y)
    else:
        q /= max(np.linalg.norm(g), 1e-300)  # first step: unit length, as L-BFGS-B does
    for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
        b = rho * (y @ q)
        q += (a - b) * s
    return -q


def lbfgs(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    *,
    maxiter: int = 2000,
    maxfev: int | None = None,
    history: int = 10,
    max_step: float = 2.0,
    gtol: float = 1e-5,
    ftol: float = 2.2e-9,
    fatol: float = 0.0,
    c1: float = 1e-4,
    max_backtracks: int = 40,
    callback: Callable[[np.ndarray, float, int, int], None] | None = None,
) -> Minimum:
    """Minimise a smooth function whose evaluation may fail (L-BFGS with a capped step).

    Parameters
    ----------
    fun : callable
        ``fun(x) -> (value, gradient)``. A non-finite value or gradient marks a failed
        evaluation: the step is shortened.
    x0 : numpy.ndarray
        Start (1-D); the objective must be finite there.
    maxiter : int, optional
        Iteration limit.
    maxfev : int, optional
        Evaluation limit (default ``4 * maxiter``).
    history : int, optional
        Curvature pairs kept.
    max_step : float, optional
        Largest change of any coordinate in one step (max-norm trust cap).
    gtol : float, optional
        Stop when the largest absolute gradient component is at most this.
    ftol : float, optional
        Stop when the relative reduction ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1)`` is at most
        this (scipy's L-BFGS-B default ``factr * eps``).
    fatol : float, optional
        Stop when one iteration lowers the objective by at most this (absolute). For objectives
        whose gradient jumps (a Monte-Carlo mean of piecewise-smooth terms) the gradient never
        gets small and the line search creeps on by ever smaller decreases: a decrease that
        no longer matters on the objective's own scale (e.g. a log-density) is the stop.
    c1 : float, optional
        Armijo sufficient-decrease constant.
    max_backtracks : int, optional
        Step shortenings per line search before giving up.
    callback : callable, optional
        ``callback(x, value, nit, nfev)`` after each accepted step.

    Returns
    -------
    Minimum

    Raises
    ------
    ValueError
        When the objective is not finite at `x0`, or for invalid settings.
    """
    if max_step <= 0 or history < 1 or maxiter < 0 or fatol < 0:
        raise ValueError(
            "max_step must be positive, history at least 1, maxiter >= 0 and fatol >= 0"
        )
    maxfev = 4 * maxiter if maxfev is None else int(maxfev)
    count = {"nfev": 0, "failed": 0}

    def evaluate(x: np.ndarray) -> tuple[float, np.ndarray, bool]:
        value, grad = fun(x)
        count["nfev"] += 1
        value = float(value)
        grad = np.asarray(grad, dtype=float)
        ok = bool(np.isfinite(value) and np.all(np.isfinite(grad)))
        count["failed"] += not ok
        return value, grad, ok

    x = np.array(x0, dtype=float)
    f, g, ok = evaluate(x)
    if not ok:
        raise ValueError("the objective or its gradient is not finite at the start point")
    pairs: deque = deque(maxlen=history)
    nit = capped = 0
    retried = False  # the last iteration was a retry along the gradient after a blocked step

    def done(ok_: bool, why: str) -> Minimum:
        return Minimum(
            x=x,
            fun=f,
            grad=g,
            success=ok_,
            message=why,
            nit=nit,
            nfev=count["nfev"],
            failed=count["failed"],
            capped=capped,
        )

    while nit < maxiter:
        if np.max(np.abs(g)) <= gtol:
            return done(True, "gradient below gtol")
        d = _direction(g, pairs)
        slope = float(g @ d)
        if not slope < 0:  # not a descent direction: forget the curvature estimate
            pairs.clear()
            d = _direction(g, pairs)
            slope = float(g @ d)
        t = 1.0
        biggest = float(np.max(np.abs(d)))
        if biggest > max_step:
            t = max_step / biggest
            capped += 1
        hit_failure = False
        for _ in range(max_backtracks):
            if count["nfev"] >= maxfev:
                return done(False, "evaluation limit reached")
            x_new = x + t * d
            f_new, g_new, ok = evaluate(x_new)
            if ok and f_new <= f + c1 * t * slope:
                break
            if ok:  # minimiser of the quadratic through f, slope and f_new, kept in [0.1t, 0.5t]
                curv = f_new - f - slope * t
                t_q = -slope * t * t / (2.0 * curv) if curv > 0 else 0.5 * t
                t = float(np.clip(t_q, 0.1 * t, 0.5 * t))
            else:
                hit_failure = True
                t *= 0.25
        else:
            return done(False, "line search failed: no sufficient decrease along the direction")
        s, y = x_new - x, g_new - g
        sy = float(s @ y)
        if sy > 1e-10 * np.linalg.norm(s) * np.linalg.norm(y):
            pairs.append((s, y, 1.0 / sy))
        decrease = f - f_new
        reduction = decrease / max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        nit += 1
        if callback is not None:
            callback(x, f, nit, count["nfev"])
        if reduction <= ftol or decrease <= fatol:
            if not hit_failure:
                if reduction <= ftol:
                    return done(True, "relative reduction of the objective below ftol")
                return done(True, "decrease of the objective below fatol")
            # A step shrunk by failed evaluations says nothing about convergence: try again
            # along the gradient; if that is blocked too, the optimum is not interior.
            if retried or not pairs:
                return done(
                    False, "stopped at the edge of the region where the objective can be evaluated"
                )
            pairs.clear()
            retried = True
        else:
            retried = False
    return done(False, "iteration limit reached")


def descend_negative_curvature(
    fun: Callable[[np.ndarray], float],
    x: np.ndarray,
    hess: np.ndarray,
    *,
    steps: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0, 2.0),
    tol: float = 1e-6,
) -> tuple[np.ndarray, float] | None:
    """Look for a lower objective along the Hessian's directions of negative curvature.

    A quasi-Newton method stops wherever the gradient vanishes, a saddle point included (from
    there every step it tries is along the gradient, so it cannot see the curvature). At a
    point whose Hessian has negative eigenvalues, this tries ``x +- t v`` for each such
    eigenvector ``v`` (unit length, most negative first) and each step ``t`` (units of the
    optimisation's scale), and returns the lowest point found below ``fun(x) - tol``: a place
    to restart the optimisation from (Nocedal & Wright 2006, section 4.3: directions of
    negative curvature).

    Parameters
    ----------
    fun : callable
        The objective (to minimise); non-finite values count as no decrease.
    x : numpy.ndarray
        Where the optimisation stopped.
    hess : numpy.ndarray
        The objective's Hessian there (symmetric).
    steps : tuple of float, optional
        Step lengths tried along each direction.
    tol : float, optional
        Decrease that counts.

    Returns
    -------
    tuple of (numpy.ndarray, float) or None
        The lower point and its objective, from the first direction that gives one; None when
        the Hessian has no negative eigenvalue or no step lowers the objective (a kink, or a
        finite-difference Hessian's error, rather than a saddle).
    """
    w, v = np.linalg.eigh(np.asarray(hess, dtype=float))
    f0 = float(fun(x))
    for k in np.flatnonzero(w < 0):  # eigh sorts ascending: the most negative first
        best: tuple[np.ndarray, float] | None = None
        for t in steps:
            for sign in (1.0, -1.0):
                y = x + sign * t * v[:, k]
                fy = float(fun(y))
                if np.isfinite(fy) and fy < f0 - tol and (best is None or fy < best[1]):
                    best = (y, fy)
        if best is not None:
            return best
    return None
