"""Who is simulated: parameter draws (prior or posterior) and virtual patients.

A `Population` fixes everything random that strategies share, so that comparisons use common
random numbers: typical values and IIV SDs per draw, standard-normal patient effects ``z`` and
uniform numbers ``u`` for ordinal outcomes per patient, covariates per patient and the base dosing
(the CAR-T infusion). Patient random effects are ``eta = z * omega_draw``: the same patient in
every strategy and every draw, scaled by each draw's population variability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BaseDose:
    """A dose every patient gets whatever the strategy (e.g. the CAR-T infusion).

    Attributes
    ----------
    route : str
        The model's dose route.
    time : numpy.ndarray
        ``(N,)`` day of the dose per patient.
    amount : numpy.ndarray
        ``(N,)`` amount per patient in the route's unit.
    """

    route: str
    time: np.ndarray
    amount: np.ndarray


@dataclass(frozen=True)
class Population:
    """Parameter draws x virtual patients, with the common random numbers.

    Attributes
    ----------
    theta : numpy.ndarray
        ``(D, P)`` typical values per draw (model parameter order).
    omega : numpy.ndarray
        ``(D, K)`` between-subject SDs per draw (``model.iiv`` order).
    z : numpy.ndarray
        ``(N, K)`` standard-normal patient effects.
    u : numpy.ndarray
        ``(N, Q)`` uniform numbers for the Q ordinal endpoints (one per patient and endpoint:
        a patient's grade follows their latent severity through time).
    covariates : numpy.ndarray
        ``(N, C)`` covariates (model covariate order).
    base : tuple of BaseDose
    source : str
        ``"prior"`` or ``"posterior"`` (and where from).
    patient_ids : numpy.ndarray
        ``(N,)`` identifiers (the cohort subject each virtual patient was resampled from).
    provided : tuple of str
        Covariates that were given (the others are model defaults): mg/kg dosing needs ``WT``
        here, not a default weight.
    corr_chol : numpy.ndarray or None
        ``(D, K, K)`` lower Cholesky factor of the random effects' correlation per draw (a fit
        with correlated IIV); None: independent random effects.
    """

    theta: np.ndarray
    omega: np.ndarray
    z: np.ndarray
    u: np.ndarray
    covariates: np.ndarray
    base: tuple[BaseDose, ...]
    source: str
    patient_ids: np.ndarray
    provided: tuple[str, ...] = ()
    corr_chol: np.ndarray | None = None

    def eta(self, draws: np.ndarray, patients: np.ndarray) -> np.ndarray:
        """Random effects of patients under draws (paired index arrays of equal length).

        Parameters
        ----------
        draws, patients : numpy.ndarray
            ``(M,)`` draw and patient indices.

        Returns
        -------
        numpy.ndarray
            ``(M, K)``: ``omega * z`` or, with correlated IIV, ``omega * (L z)`` where ``L`` is
            the draw's correlation Cholesky factor; the same ``z`` either way (common random
            numbers across strategies and draws).
        """
        z = self.z[patients]
        if self.corr_chol is not None:
            z = np.einsum("mjk,mk->mj", self.corr_chol[draws], z)
        return z * self.omega[draws]

    @property
    def n_draws(self) -> int:
        """Number of parameter draws D."""
        return int(self.theta.shape[0])

    @property
    def n_patients(self) -> int:
        """Number of virtual patients N."""
        return int(self.covariates.shape[0])

    def check(self, model: Any) -> None:
        """Raise if the population was not made for ``model``'s parameters and endpoints.

        Parameters
        ----------
        model : CompiledModel

        Raises
        ------
        ValueError
            A width that is not the model's: typical values (one per model parameter), IIV SDs
            and patient effects (one per random effect), uniform numbers (one per ordinal
            endpoint) or covariates. (A compiled function would index past the end of a
            narrower array without an error, reading another parameter's value.)
        """
        n_ord = sum(1 for o in model.spec.observations.values() if o.error == "ordinal")
        widths = {
            "typical values (model parameters)": (self.theta.shape[1], len(model.parameters)),
            "IIV SDs (random effects)": (self.omega.shape[1], len(model.iiv)),
            "patient effects (random effects)": (self.z.shape[1], len(model.iiv)),
            "uniform numbers (ordinal endpoints)": (self.u.shape[1], max(n_ord, 1)),
            "covariates": (self.covariates.shape[1], len(model.covariates)),
        }
        bad = [
            f"{what}: {have}, model {want}" for what, (have, want) in widths.items() if have != want
        ]
        if bad:
            raise ValueError(
                f"the population was not made for model {model.name!r} ({'; '.join(bad)}): "
                "make it with make_population(model, ...)"
            )

    def with_theta(self, theta: np.ndarray, source: str) -> Population:
        """Return the same patients under other parameter draws."""
        return replace(self, theta=np.asarray(theta, float), source=source)


def prior_draws(
    spec: Any, n_draws: int, rng: np.random.Generator, priors: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw typical values and IIV SDs from the model file's priors.

    Parameters
    ----------
    spec : ModelSpec
        The model.
    n_draws : int
        Number of draws D.
    rng : numpy.random.Generator
        Seeded generator.
    priors : mapping, optional
        Replacement priors by parameter name (sensitivity analyses).

    Returns
    -------
    theta : numpy.ndarray
        ``(D, P)``; fixed parameters at their value.
    omega : numpy.ndarray
        ``(D, K)`` for the parameters with IIV, in model order.
    """
    priors = dict(priors or {})
    cols = []
    for name, p in spec.parameters.items():
        prior = priors.get(name, p.prior)
        if p.fixed and name not in priors:
            cols.append(np.full(n_draws, p.typical))
        else:
            cols.append(prior.sample(rng, n_draws))
    theta = np.stack(cols, axis=1) if cols else np.zeros((n_draws, 0))
    iiv = [p for p in spec.parameters.values() if p.iiv is not None]
    omega = (
        np.stack([p.iiv.sample(rng, n_draws) for p in iiv], axis=1)
        if iiv
        else np.zeros((n_draws, 0))
    )
    return theta, omega


def typical_draws(spec: Any, n_draws: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Typical values (prior medians or values) and IIV SDs at their prior medians, repeated."""
    theta = np.tile([p.typical for p in spec.parameters.values()], (n_draws, 1))
    omega = np.tile(
        [p.iiv.median() for p in spec.parameters.values() if p.iiv is not None], (n_draws, 1)
    )
    return theta, omega.reshape(n_draws, -1)


def posterior_draws(
    fit: Any, n_draws: int, rng: np.random.Generator, *, with_correlation: bool = False
) -> tuple[np.ndarray, ...]:
    """Draw typical values and IIV SDs (and IIV correlations) from a fit's posterior.

    Parameters
    ----------
    fit : Fit
        A fitted model (``fit.idata.posterior`` holds one variable per estimated parameter,
        named as the parameter, ``omega_<name>`` per IIV SD and, for correlated IIV,
        ``corr_iiv`` with dims ``(iiv, iiv_bis)``).
    n_draws : int
        Draws to take (without replacement when the posterior has enough).
    rng : numpy.random.Generator
    with_correlation : bool, optional
        Also return the Cholesky factors of the IIV correlation of the same draws.

    Returns
    -------
    theta, omega : numpy.ndarray
        ``(D, P)`` and ``(D, K)``.
    corr_chol : numpy.ndarray or None
        Only with ``with_correlation``: ``(D, K, K)`` in the model's IIV order, or None when
        the fit has independent random effects.
    """
    spec = fit.spec
    post = fit.idata.posterior.stack(sample=("chain", "draw"))
    total = post.sizes["sample"]
    pick = rng.choice(total, size=n_draws, replace=n_draws > total)
    theta = np.empty((n_draws, len(spec.parameters)))
    for j, (name, p) in enumerate(spec.parameters.items()):
        if name in post:
            theta[:, j] = np.asarray(post[name].values)[pick]
        else:
            theta[:, j] = p.typical
    names = [n for n, p in spec.parameters.items() if p.iiv is not None]
    omega = np.empty((n_draws, len(names)))
    for k, name in enumerate(names):
        var = f"omega_{name}"
        fallback = spec.parameters[name].iiv.median()
        omega[:, k] = np.asarray(post[var].values)[pick] if var in post else fallback
    if not with_correlation:
        return theta, omega
    if "corr_iiv" not in post:
        return theta, omega, None
    corr = post["corr_iiv"]
    fitted = [str(v) for v in corr.coords[corr.dims[0]].values]
    if fitted == [str(k) for k in range(len(names))]:  # unnamed dims: the model's IIV order
        fitted = list(names)
    if set(fitted) != set(names):
        raise ValueError(
            f"the fit correlates the random effects of {fitted}, the model has IIV "
            f"on {names}: simulate with the fitted model"
        )
    order = [fitted.index(name) for name in names]
    corr = np.asarray(corr.transpose(corr.dims[0], corr.dims[1], "sample").values)
    corr = np.moveaxis(corr, -1, 0)[pick][:, order][:, :, order]  # (D, K, K), model order
    # A jitter keeps a numerically semi-definite draw factorizable; it changes nothing else.
    chol = np.linalg.cholesky(corr + 1e-12 * np.eye(len(names)))
    return theta, omega, chol


def covariates_from_cohort(
    model: Any, cohort: Any, n_patients: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Resample patients' covariates (whole rows, with replacement) from a cohort.

    Returns
    -------
    covariates : numpy.ndarray
        ``(N, C)`` in model order (model defaults where the cohort lacks a covariate).
    ids : numpy.ndarray
        ``(N,)`` the subject each virtual patient was drawn from.
    pick : numpy.ndarray
        ``(N,)`` their index in the cohort.
    """
    from pkpd.solve import bind

    bound = bind(model, cohort)
    pick = rng.choice(bound.n_subjects, size=n_patients, replace=True)
    return bound.covariates[pick], bound.subjects[pick], pick


def covariates_from_table(
    model: Any, values: Mapping[str, Sequence[float]] | None, n_patients: int
) -> np.ndarray:
    """Covariates given per patient (arrays of length N) or as one value each.

    Missing covariates take the model default; a required one (no default) raises.
    """
    values = dict(values or {})
    out = np.empty((n_patients, len(model.covariates)))
    for k, (name, default) in enumerate(
        zip(model.covariates, model.covariate_defaults, strict=True)
    ):
        v = np.asarray(values.pop(name, default), dtype=float)
        if np.any(np.isnan(v)):
            raise ValueError(f"covariate {name} is required by model {model.name!r}")
        out[:, k] = np.broadcast_to(v, (n_patients,))
    if values:
        raise ValueError(f"model {model.name!r} has no covariate(s) {sorted(values)}")
    return out


def make_population(
    model: Any,
    *,
    n_patients: int,
    n_draws: int,
    seed: int,
    fit: Any = None,
    cohort: Any = None,
    covariates: Mapping[str, Sequence[float]] | None = None,
    base: Sequence[tuple[str, float, Any]] = (),
    base_routes: Sequence[str] = (),
    typical: bool = False,
) -> Population:
    """Draw a population for strategy comparisons.

    Parameters
    ----------
    model : CompiledModel
        The model (its ``spec`` supplies priors when ``fit`` is None).
    n_patients, n_draws : int
        Virtual patients N and parameter draws D.
    seed : int
        Seed of every random number (same seed, same population).
    fit : Fit, optional
        Draw parameters from this posterior instead of the priors.
    cohort : Cohort, optional
        Resample patients' covariates from this cohort.
    covariates : mapping, optional
        Covariates given directly (per patient arrays or single values); used when no cohort.
    base : sequence of (route, day, amount)
        Doses every patient gets (amount: a number or a function ``covariates (N, C) -> (N,)``).
    base_routes : sequence of str
        Routes whose recorded doses (the first of each resampled cohort patient, e.g. the CAR-T
        infusion) every strategy keeps; needs ``cohort``.
    typical : bool
        Use typical values (prior medians) for every draw instead of random draws.

    Returns
    -------
    Population
    """
    rng = np.random.default_rng(seed)
    # Separate streams so that changing n_draws does not change the patients, and vice versa.
    rng_theta, rng_pat, rng_cov = (np.random.default_rng(s) for s in rng.integers(0, 2**63, 3))
    corr_chol = None
    if typical:
        theta, omega = typical_draws(model.spec, n_draws)
        source = "typical values"
    elif fit is not None:
        theta, omega, corr_chol = posterior_draws(fit, n_draws, rng_theta, with_correlation=True)
        source = "posterior"
    else:
        theta, omega = prior_draws(model.spec, n_draws, rng_theta)
        source = "prior"
    n_iiv = len(model.iiv)
    z = rng_pat.standard_normal((n_patients, n_iiv))
    n_ord = sum(1 for o in model.spec.observations.values() if o.error == "ordinal")
    u = rng_pat.uniform(size=(n_patients, max(n_ord, 1)))
    doses = []
    if cohort is not None:
        cov, ids, pick = covariates_from_cohort(model, cohort, n_patients, rng_cov)
        present = {str(v)[4:].lower() for v in cohort.ds.data_vars if str(v).startswith("cov_")}
        provided = tuple(c for c in model.covariates if c.lower() in present)
        for route in base_routes:
            doses.append(base_from_cohort(model, cohort, route, pick))
    else:
        if base_routes:
            raise ValueError("base_routes needs a cohort to take the doses from")
        cov = covariates_from_table(model, covariates, n_patients)
        ids = np.arange(1, n_patients + 1)
        provided = tuple(c for c in model.covariates if c in (covariates or {}))
    for route, day, amount in base:
        if route not in model.dose_targets:
            raise ValueError(f"base dose: model {model.name!r} has no dose route {route!r}")
        amt = amount(cov) if callable(amount) else amount
        doses.append(
            BaseDose(
                route,
                np.full(n_patients, float(day)),
                np.broadcast_to(np.asarray(amt, float), (n_patients,)).copy(),
            )
        )
    return Population(
        theta, omega, z, u, cov, tuple(doses), source, np.asarray(ids), provided, corr_chol
    )


def base_from_cohort(model: Any, cohort: Any, route: str, pick: np.ndarray) -> BaseDose:
    """Each resampled patient's first recorded dose into a route (e.g. the CAR-T infusion).

    Parameters
    ----------
    model : CompiledModel
    cohort : Cohort
    route : str
        A dose route of the model.
    pick : numpy.ndarray
        ``(N,)`` index of the cohort subject of each virtual patient.

    Returns
    -------
    BaseDose
        Times in days (converted from the model's time unit); patients without such a dose get
        amount 0 (no event).
    """
    from pkpd import units as U
    from pkpd.events import BOLUS, INFUSION_START
    from pkpd.solve import bind

    if route not in model.dose_targets:
        raise ValueError(f"model {model.name!r} has no dose route {route!r}")
    target = model.dose_targets[route]
    ev = bind(model, cohort).events
    is_dose = ev.mask & ((ev.kind == BOLUS) | (ev.kind == INFUSION_START)) & (ev.cmt == target)
    first = np.argmax(is_dose, axis=1)
    rows = np.arange(ev.time.shape[0])
    has = is_dose.any(axis=1)
    to_days = U.factor(model.time_unit, "day")
    time = np.where(has, ev.time[rows, first], 0.0) * to_days
    amount = np.where(has, ev.amount[rows, first], 0.0)
    return BaseDose(route, time[pick], amount[pick])
