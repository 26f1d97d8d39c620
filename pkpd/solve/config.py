"""Solver configuration: small immutable objects, in the style of diffrax.

A `Solver` says *how* to integrate (method, tolerances, step budget, adjoint); it never changes
*what* is integrated. It is hashable, so it is a static argument of the compiled solve and a key of
its compilation cache.

>>> Solver()                                   # Tsit5, rtol 1e-8, atol 1e-10
>>> Solver.stiff(rtol=1e-6)                    # Kvaerno5
>>> Solver("auto")                             # closed form when the model has one, else Tsit5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import diffrax
import jax

from pkpd.solve.erk import UnrolledDopri5, UnrolledDopri8, UnrolledTsit5

#: Explicit (non-stiff) Runge-Kutta methods by name: diffrax's tableaus with the stages written
#: out (`pkpd.solve.erk`), the same arithmetic as `diffrax.Tsit5` etc. and several times faster
#: for small systems on CPU.
NONSTIFF_METHODS: dict[str, type] = {
    "tsit5": UnrolledTsit5,
    "dopri5": UnrolledDopri5,
    "dopri8": UnrolledDopri8,
}

#: Implicit (stiff) methods by name.
STIFF_METHODS: dict[str, type] = {
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno5": diffrax.Kvaerno5,
}

#: Chunk size of ``batch_size="auto"`` on a CPU (see `Solver`).
CPU_BATCH_SIZE = 512

#: Every accepted method name.
METHOD_NAMES: tuple[str, ...] = (*NONSTIFF_METHODS, *STIFF_METHODS, "analytic", "auto")


@dataclass(frozen=True)
class Solver:
    """How to integrate a model.

    Parameters
    ----------
    method : str or diffrax.AbstractSolver, optional
        ``"tsit5"`` (default), ``"dopri5"``, ``"dopri8"`` (explicit, non-stiff), ``"kvaerno3"``,
        ``"kvaerno5"`` (implicit, stiff), ``"analytic"`` (closed-form linear PK; the model must
        declare an `~pkpd.model.compiled.AnalyticSpec`), ``"auto"`` (analytic when the model
        allows it, else Tsit5), or a diffrax solver instance.
    rtol, atol : float, optional
        Relative and absolute tolerances of the adaptive step-size controller
        (`diffrax.PIDController`). ``atol`` is in state units: keep it below the smallest amounts
        you observe.
    max_steps : int, optional
        Step budget of *each* integration interval (between two events). A subject that runs out
        is reported as failed, never silently truncated.
    dt0 : float or None, optional
        Initial step size of the first integration interval; None means 1e-3 of the subject's
        time span. Later intervals start from the mean accepted step of the previous one.
    adjoint : diffrax.AbstractAdjoint or None, optional
        How gradients are computed. None means `diffrax.RecursiveCheckpointAdjoint` (reverse mode,
        `jax.grad`); use `diffrax.ForwardMode` for `jax.jacfwd`.
    batch_size : int, None or "auto", optional
        Subjects are integrated in vmapped chunks of this size, one chunk after the other
        (`jax.lax.map`); None integrates all at once. ``"auto"`` (default) means chunks of
        `CPU_BATCH_SIZE` on a CPU and one batch on an accelerator. Large vmapped adaptive solves
        get slower per subject on a CPU (on 2 cores: 4,000 subjects took 2.5x longer in one
        batch than in chunks of 512), whereas a GPU runs chunks one after the other at the same
        cost as one batch of all of them (on an H100, 65,536 ``cart_crs`` patients in chunks of
        512 took 26 s, kernel-launch bound).

    Raises
    ------
    ValueError
        For an unknown method name or non-positive tolerances.
    """

    method: Any = "tsit5"
    rtol: float = 1e-8
    atol: float = 1e-10
    max_steps: int = 100_000
    dt0: float | None = None
    adjoint: Any = None
    batch_size: int | str | None = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.method, str):
            if self.method not in METHOD_NAMES:
                raise ValueError(
                    f"unknown solver method {self.method!r}; choose one of "
                    f"{', '.join(METHOD_NAMES)} or pass a diffrax solver instance"
                )
        elif not isinstance(self.method, diffrax.AbstractSolver):
            raise ValueError(
                f"solver method must be a name or a diffrax solver, got {self.method!r}"
            )
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"tolerances must be positive, got rtol={self.rtol}, atol={self.atol}")
        if (
            self.batch_size is not None
            and self.batch_size != "auto"
            and (isinstance(self.batch_size, str) or int(self.batch_size) < 1)
        ):
            raise ValueError(
                f"batch_size must be at least 1, None or 'auto', got {self.batch_size!r}"
            )
        if int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")

    @classmethod
    def stiff(cls, method: str = "kvaerno5", **kwargs: Any) -> Solver:
        """Return an implicit solver for stiff models (default Kvaerno5).

        Parameters
        ----------
        method : str, optional
            ``"kvaerno5"`` or ``"kvaerno3"``.
        **kwargs
            Other `Solver` fields (``rtol``, ``atol``, ``max_steps``, ...).

        Returns
        -------
        Solver
        """
        if method not in STIFF_METHODS:
            raise ValueError(f"{method!r} is not a stiff method ({', '.join(STIFF_METHODS)})")
        return cls(method=method, **kwargs)

    @classmethod
    def nonstiff(cls, method: str = "tsit5", **kwargs: Any) -> Solver:
        """Return an explicit Runge-Kutta solver (default Tsit5).

        Parameters
        ----------
        method : str, optional
            ``"tsit5"``, ``"dopri5"`` or ``"dopri8"``.
        **kwargs
            Other `Solver` fields.

        Returns
        -------
        Solver
        """
        if method not in NONSTIFF_METHODS:
            raise ValueError(
                f"{method!r} is not a non-stiff method ({', '.join(NONSTIFF_METHODS)})"
            )
        return cls(method=method, **kwargs)

    def resolved_batch_size(self, platform: str | None = None) -> int | None:
        """Return the chunk size used on ``platform`` (default: JAX's default backend).

        Parameters
        ----------
        platform : str, optional
            ``"cpu"``, ``"gpu"``, ``"cuda"``, ``"tpu"``...

        Returns
        -------
        int or None
            `batch_size`, with ``"auto"`` resolved: `CPU_BATCH_SIZE` on a CPU, None elsewhere.
        """
        if self.batch_size != "auto":
            return None if self.batch_size is None else int(self.batch_size)
        platform = platform or jax.default_backend()
        return CPU_BATCH_SIZE if platform == "cpu" else None

    def uses_analytic(self, model: Any) -> bool:
        """Whether this configuration integrates ``model`` with the closed form.

        Parameters
        ----------
        model : CompiledModel
            The model to integrate.

        Returns
        -------
        bool
            True for ``"analytic"`` (raises if the model has no closed form) and for ``"auto"``
            when the model has one.

        Raises
        ------
        ValueError
            If ``"analytic"`` is asked for a model without a usable closed form.
        """
        from pkpd.solve.analytic import analytic_supported

        if self.method == "analytic":
            ok, why = analytic_supported(model)
            if not ok:
                raise ValueError(f"model {model.name!r} has no analytic solution: {why}")
            return True
        if self.method == "auto":
            return analytic_supported(model)[0]
        return False

    def diffrax_solver(self) -> diffrax.AbstractSolver:
        """Return the diffrax solver instance (``"auto"`` means Tsit5 here).

        Returns
        -------
        diffrax.AbstractSolver
        """
        if isinstance(self.method, diffrax.AbstractSolver):
            return self.method
        if self.method in STIFF_METHODS:
            return STIFF_METHODS[self.method]()
        if self.method in NONSTIFF_METHODS:
            return NONSTIFF_METHODS[self.method]()
        if self.method == "auto":
            return UnrolledTsit5()
        raise ValueError(f"method {self.method!r} is not an ODE method")

    def diffrax_adjoint(self) -> diffrax.AbstractAdjoint:
        """Return the diffrax adjoint (default `diffrax.RecursiveCheckpointAdjoint`).

        Returns
        -------
        diffrax.AbstractAdjoint
        """
        return diffrax.RecursiveCheckpointAdjoint() if self.adjoint is None else self.adjoint
