"""The compiled form of a model: pure JAX functions plus the metadata the solver needs.

This is the contract between `pkpd.model` (which builds it from a model file) and `pkpd.solve`
(which integrates it). Every function is pure and jittable, takes float64 arrays and returns
float64 arrays; none closes over mutable state.

The *individual vector* ``p`` has length ``len(parameters) + len(covariates)``: the values of the
model's parameters for one subject (in their declared units, after covariate effects and
between-subject variability), followed by that subject's covariate values (declared units).
Unit conversions between declared units and the model's time unit and state units are compiled
into the functions, so callers never convert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AnalyticSpec:
    """Closed-form solution available for a linear compartmental model.

    Parameters
    ----------
    kind : str
        One of ``"1cmt"``, ``"2cmt"`` (first-order absorption is used when ``depot`` is set).
    parameters : dict of str to str
        Maps the closed form's parameter roles (``CL``, ``V``, ``ka``, ``Q``, ``V2``) to the
        model's parameter names. Values are taken in model time and state units.
    central, depot, peripheral : str or None
        Names of the states playing these roles.
    """

    kind: str
    parameters: dict[str, str]
    central: str
    depot: str | None = None
    peripheral: str | None = None


@dataclass(frozen=True, eq=False)
class CompiledModel:
    """A model ready to integrate.

    Attributes
    ----------
    name : str
        Model name.
    time_unit : str
        Unit of the time variable ``t`` of every function (pint syntax, e.g. ``"h"``, ``"day"``).
    states, state_units : tuple of str
        State names in vector order, and the unit of each (amounts or counts).
    parameters : tuple of str
        Model parameter names in vector order (first part of ``p``).
    parameter_units : tuple of str
        Declared unit of each parameter.
    covariates : tuple of str
        Covariate names in vector order (second part of ``p``).
    covariate_units : tuple of str
        Declared unit of each covariate.
    covariate_defaults : tuple of float
        Value used when a dataset lacks the covariate (NaN means the covariate is required).
    endpoints : tuple of str
        Observation model names in vector order.
    endpoint_units : tuple of str
        Unit of each endpoint's prediction.
    endpoint_dvid : tuple of int
        The DVID code matching each endpoint in datasets.
    typical_values : numpy.ndarray
        Shape ``(n_parameters,)``: the typical value of each parameter (``value`` or prior median).
    iiv : tuple of str
        Parameters with between-subject variability, in the order of the ``eta`` vector.
    rhs : callable
        ``rhs(t, y, p) -> dy/dt``, shapes ``() , (S,), (P+C,) -> (S,)``, in state units per
        model time unit. Infusion inputs are *not* included: the solver adds them.
    initial : callable
        ``initial(p) -> y0`` of shape ``(S,)``, the state at the first record and after a reset.
    observe : callable
        ``observe(t, y, p) -> (E,)``: the prediction of every endpoint, in endpoint units.
    individual : callable
        ``individual(theta, eta, cov) -> p``: typical values ``(P,)``, random effects ``(K,)``
        and covariate values ``(C,)`` to the individual vector ``(P+C,)``.
    dose_lag : callable
        ``dose_lag(p) -> (S,)``: lag time (model time unit) for doses into each state.
    dose_bioavailability : callable
        ``dose_bioavailability(p) -> (S,)``: fraction of each dose into each state that arrives.
    dose_scale : callable
        ``dose_scale(p) -> (S,)``: factor from the dataset's AMT to the state's unit for each
        state: unit conversion (e.g. dataset mg into a state in ug) times per-kg scaling
        (AMT in mg/kg times body weight).
    dose_targets : dict of str to int
        Dose route name to state index.
    analytic : AnalyticSpec or None
        Closed form available for this model, used by the solver's fast path.
    spec : Any
        The model specification this was compiled from (``pkpd.model.ModelSpec``).
    rhs_rows : callable or None
        ``rhs_rows(t, y, p) -> list``: the right-hand side on rows of a batch of subjects:
        ``y`` a sequence of S arrays, ``p`` of P+C, ``t`` one array, all broadcasting to one
        shape; gives S arrays of that shape. Elementwise, so its reverse-mode derivative has
        no gathers or scatters (the discrete adjoint of `pkpd.solve.lanes` uses it; None: the
        vmapped ``rhs`` is used: correct, but its reverse pass gathers and scatters (1.5x
        slower on ``cart_crs``).
    """

    name: str
    time_unit: str
    states: tuple[str, ...]
    state_units: tuple[str, ...]
    parameters: tuple[str, ...]
    parameter_units: tuple[str, ...]
    covariates: tuple[str, ...]
    covariate_units: tuple[str, ...]
    covariate_defaults: tuple[float, ...]
    endpoints: tuple[str, ...]
    endpoint_units: tuple[str, ...]
    endpoint_dvid: tuple[int, ...]
    typical_values: np.ndarray
    iiv: tuple[str, ...]
    rhs: Callable
    initial: Callable
    observe: Callable
    individual: Callable
    dose_lag: Callable
    dose_bioavailability: Callable
    dose_scale: Callable
    dose_targets: dict[str, int] = field(default_factory=dict)
    analytic: AnalyticSpec | None = None
    spec: Any = None
    rhs_rows: Callable | None = None

    @property
    def n_states(self) -> int:
        """Number of ODE states."""
        return len(self.states)

    @property
    def n_parameters(self) -> int:
        """Number of model parameters (first part of the individual vector)."""
        return len(self.parameters)

    def state_index(self, name: str) -> int:
        """Index of a state by name."""
        return self.states.index(name)

    def parameter_index(self, name: str) -> int:
        """Index of a parameter by name."""
        return self.parameters.index(name)
