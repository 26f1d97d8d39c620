"""Build the hierarchical PyMC model of a model file and a cohort.

>>> model, info = build_model(spec, cohort)                  # pymc.Model, ModelInfo
>>> model, info = build_model(spec, cohort, correlated_iiv=True)

The model, in the terms of the field:

- **typical values** (THETA): every estimated parameter gets the prior written in the model
  file. ``LogNormal`` priors are sampled on the log scale (``log_CL ~ Normal(mu, sigma)``,
  ``CL = exp(log_CL)``), ``LogitNormal`` on the logit scale; bounded families (``HalfNormal``,
  ``Beta``, ...) through PyMC's usual log / logit transforms. Fixed parameters stay at their
  value. The posterior has one variable per parameter, named as in the model file.
- **between-subject variability** (OMEGA), non-centred by default: ``z ~ Normal(0, 1)`` of
  shape ``(subject, iiv)``, ``eta = z * omega`` with ``omega_<name>`` drawn from the parameter's
  ``iiv`` prior; with ``correlated_iiv=True`` an LKJ prior on the correlation
  (``eta_i = L z_i`` with ``L`` the Cholesky factor of the covariance). Centred
  (``iiv_parameterization``): ``eta ~ Normal(0, omega)`` itself, for random effects that each
  subject's data pin down (the non-centred form then ties ``z`` and ``omega`` together and NUTS
  takes small steps; the centred one funnels when the data say little). How ``eta`` enters a
  parameter (``p = theta * exp(eta)``, or on the logit scale) and covariate effects (power,
  exponential, ... with fixed or estimated coefficients) are the model's own
  ``individual(theta, eta, cov)``.
- **predictions**: one PyTensor op wrapping one jitted JAX function for the whole cohort
  (`pkpd.inference.predict.make_predictor`, via `pytensor.wrap_jax`), with its JAX gradient.
- **likelihood** (SIGMA): one observed variable ``y`` with one log-likelihood term per
  observation (`pkpd.inference.likelihood`): additive / proportional / combined / log-normal
  residual errors, censoring by Beal's M3, ordinal grades by an ordered logistic, several
  endpoints at once. Missing observations are not in ``y``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pkpd.inference.likelihood import (
    Observations,
    collect_observations,
    observation_logp,
    residual_parameters,
)
from pkpd.inference.predict import make_predictor, resolve_gradient, resolve_integrator
from pkpd.inference.ratios import ratio_variable, resolve_ratios
from pkpd.solve import BoundCohort, Solver, bind

#: Solver used for fitting when none is given: the closed form when the model declares one,
#: else Tsit5. rtol 1e-6 is ample for likelihoods whose residual errors are percent-sized. atol
#: (state units) is far below any value an observation could have, so that error control stays
#: relative wherever warm-up takes the predictions: log-normal and proportional errors need the
#: relative accuracy of predictions at every scale, and with atol 1e-9 a T/B/I benchmark chain
#: (docs/inference.md, "Speed") met predictions of 1e-11 that were 10% wrong, a log-density 840
#: off and a gradient inconsistent with it, and stayed stuck for the whole warm-up.
FIT_RTOL = 1.0e-6
FIT_ATOL = 1.0e-14
#: Step budget of each integration interval when fitting: a proposal that needs more (a stiff
#: corner visited during warm-up) is rejected after at most this many steps instead of taking
#: seconds (up to 25 s for one gradient at 100,000 steps on the T/B/I benchmark).
FIT_MAX_STEPS = 4096

#: Names the builder gives its own variables (a model parameter may not use them).
RESERVED = ("z", "eta", "phi", "y", "chol_iiv", "corr_iiv", "theta")

#: How a random effect can be written (`build_model`'s ``iiv_parameterization``).
PARAMETERIZATIONS = ("noncentered", "centered")


def resolve_parameterization(option: str | Mapping[str, str], iiv: Sequence[str]) -> dict[str, str]:
    """One of `PARAMETERIZATIONS` per parameter with IIV.

    Parameters
    ----------
    option : str or mapping
        One choice for every random effect, or ``{parameter: choice}`` (parameters left out
        are non-centred).
    iiv : sequence of str
        The parameters with IIV, in ``eta`` order.

    Returns
    -------
    dict of str to str

    Raises
    ------
    ValueError
        For an unknown choice, or a parameter of the mapping that has no IIV.
    """
    if isinstance(option, str):
        chosen = {name: option for name in iiv}
    else:
        unknown = sorted(set(option) - set(iiv))
        if unknown:
            raise ValueError(
                f"iiv_parameterization names parameters without IIV: "
                f"{', '.join(unknown)} (IIV on: {', '.join(iiv) or 'none'})"
            )
        chosen = {name: option.get(name, "noncentered") for name in iiv}
    bad = sorted({c for c in chosen.values() if c not in PARAMETERIZATIONS})
    if bad or (isinstance(option, str) and option not in PARAMETERIZATIONS):
        raise ValueError(
            f"unknown IIV parameterization {bad[0] if bad else option!r}; choose "
            f"from {', '.join(PARAMETERIZATIONS)}"
        )
    return chosen


@dataclass
class ModelInfo:
    """Everything about a built model besides the `pymc.Model` itself.

    Attributes
    ----------
    spec : ModelSpec
        The model specification.
    model : CompiledModel
        Its compiled form.
    cohort : Cohort
        The dataset.
    bound : BoundCohort
        The dataset in the model's terms.
    solver : Solver
        How the ODE is integrated in the likelihood.
    observations : Observations
        The observations in the likelihood (``y``), flat.
    estimated : list of str
        Parameters whose typical values are estimated, in model order.
    fixed : dict of str to float
        Parameters kept at their value.
    iiv : tuple of str
        Parameters with between-subject variability (order of the ``iiv`` dimension).
    roles : dict of str to str
        Role of every estimated parameter: ``"structural"``, ``"residual"``, ``"cutpoint"`` or
        ``"covariate"`` (an estimated covariate-effect coefficient).
    correlated_iiv : bool
        Whether an LKJ prior correlates the random effects.
    censoring : str
        ``"m3"`` or ``"drop"``.
    gradient : str
        ``"forward"``, ``"reverse"`` or ``"adjoint"`` (``"auto"`` resolved,
        `pkpd.inference.predict.resolve_gradient`).
    integrator : str
        The integrator the predictions use, ``"lanes"`` or ``"engine"`` (``"auto"`` resolved,
        `pkpd.inference.predict.resolve_integrator`).
    predict : callable
        The JAX function ``(theta (P,), eta (N, K)) -> (n_obs,)`` inside the model.
    coords : dict
        The model's coordinates (``subject``, ``iiv``, ``obs_id``).
    """

    spec: Any
    model: Any
    cohort: Any
    bound: BoundCohort
    solver: Solver
    observations: Observations
    estimated: list[str]
    fixed: dict[str, float]
    iiv: tuple[str, ...]
    roles: dict[str, str]
    correlated_iiv: bool
    censoring: str
    gradient: str
    predict: Any
    integrator: str = "engine"
    coords: dict[str, Any] = field(default_factory=dict)

    @property
    def n_subjects(self) -> int:
        """Number of subjects."""
        return self.bound.n_subjects

    def theta_from(self, values: dict[str, Any]) -> np.ndarray:
        """Assemble the typical-value vector (model order) from estimated values.

        Parameters
        ----------
        values : dict of str to array_like
            Estimated parameter values by name, each of the same (possibly batched) shape.

        Returns
        -------
        numpy.ndarray
            ``(..., P)``: estimated values where given, fixed values elsewhere.
        """
        shape = np.shape(next(iter(values.values()))) if values else ()
        out = np.empty((*shape, len(self.model.parameters)))
        for j, name in enumerate(self.model.parameters):
            if name in self.fixed:
                out[..., j] = self.fixed[name]
            else:
                out[..., j] = np.asarray(values[name], dtype=float)
        return out


def parameter_roles(spec: Any) -> dict[str, str]:
    """Role of each estimated parameter (structural, residual, cutpoint or covariate).

    Parameters
    ----------
    spec : ModelSpec
        The model.

    Returns
    -------
    dict of str to str
    """
    residual, cutpoint, coefficient = set(), set(), set()
    for ospec in spec.observations.values():
        residual.update(ospec.sigma.values())
        residual.update([ospec.record_scale] if ospec.record_scale else [])
        cutpoint.update(ospec.cutpoints)
    for par in spec.parameters.values():
        coefficient.update(e.coef for e in par.covariates if isinstance(e.coef, str))
    roles = {}
    for name in spec.estimated():
        if name in residual:
            roles[name] = "residual"
        elif name in cutpoint:
            roles[name] = "cutpoint"
        elif name in coefficient:
            roles[name] = "covariate"
        else:
            roles[name] = "structural"
    return roles


def default_solver(model: Any, observations: Observations | None = None) -> Solver:
    """Return the fitting solver: closed form when available, else Tsit5 (rtol 1e-6, atol 1e-14).

    At most `FIT_MAX_STEPS` steps per integration interval (a failed solve rejects the proposal).

    Parameters
    ----------
    model : CompiledModel
        The model.
    observations : Observations, optional
        When given, warns if ``atol`` is not well below the smallest positive observation.

    Returns
    -------
    Solver
    """
    solver = Solver("auto", rtol=FIT_RTOL, atol=FIT_ATOL, max_steps=FIT_MAX_STEPS)
    if observations is not None and not solver.uses_analytic(model):
        check_atol(solver, observations)
    return solver


def check_atol(solver: Solver, observations: Observations) -> None:
    """Warn when ``atol`` is not at least 1000 times below the smallest positive observation.

    ``atol`` is in state units and observations in endpoint units, so this is a heuristic for
    models whose observations are amounts or amount-per-volume with volumes of order one or more.
    """
    values = observations.value[np.isfinite(observations.value) & (observations.value > 0)]
    if values.size and solver.atol > 1e-3 * values.min():
        warnings.warn(
            f"solver atol={solver.atol:g} is not well below the smallest observation "
            f"({values.min():g}); predictions near it are integration noise",
            stacklevel=3,
        )


def _as_spec(spec: Any) -> Any:
    if isinstance(spec, str | Path):
        from pkpd.model import load_model

        return load_model(spec)
    return spec


def _as_cohort(cohort: Any) -> Any:
    if isinstance(cohort, str | Path):
        from pkpd.data import list_datasets, load_dataset, read_dataset

        if not Path(cohort).exists() and str(cohort) in list_datasets():
            return load_dataset(str(cohort))
        return read_dataset(cohort)
    return cohort


def prior_variable(name: str, prior: Any) -> Any:
    """Create the PyMC variable of a prior (inside a model context).

    Parameters
    ----------
    name : str
        Variable name (the parameter's).
    prior : Prior
        Family and parameters from the model file.

    Returns
    -------
    TensorVariable
        The parameter on its natural scale. ``LogNormal`` and ``LogitNormal`` priors create a
        free ``log_<name>`` / ``logit_<name>`` normal variable and a deterministic ``<name>``.
    """
    import pymc as pm

    f, p = prior.family, prior.params
    if f == "LogNormal":
        log_x = pm.Normal(f"log_{name}", mu=p["mu"], sigma=p["sigma"])
        return pm.Deterministic(name, pm.math.exp(log_x))
    if f == "LogitNormal":
        logit_x = pm.Normal(f"logit_{name}", mu=p["mu"], sigma=p["sigma"])
        return pm.Deterministic(name, pm.math.invlogit(logit_x))
    if f == "Normal":
        return pm.Normal(name, mu=p["mu"], sigma=p["sigma"])
    if f == "HalfNormal":
        return pm.HalfNormal(name, sigma=p["sigma"])
    if f == "HalfCauchy":
        return pm.HalfCauchy(name, beta=p["beta"])
    if f == "Exponential":
        return pm.Exponential(name, lam=p["lam"])
    if f == "Gamma":
        return pm.Gamma(name, alpha=p["alpha"], beta=p["beta"])
    if f == "Uniform":
        return pm.Uniform(name, lower=p["lower"], upper=p["upper"])
    if f == "Beta":
        return pm.Beta(name, alpha=p["alpha"], beta=p["beta"])
    raise ValueError(f"no PyMC mapping for prior family {f!r}")  # pragma: no cover


def _sd_dist(priors: list[Any]) -> Any:
    """One vector distribution for the LKJ standard deviations (all priors of one family)."""
    import pymc as pm

    families = {p.family for p in priors}
    if len(families) != 1:
        raise ValueError(
            "correlated_iiv needs the iiv priors of every parameter to be of one family, got "
            + ", ".join(sorted(families))
        )
    family = families.pop()
    k = len(priors)

    def vec(key: str) -> np.ndarray:
        return np.array([p.params[key] for p in priors])

    if family == "HalfNormal":
        return pm.HalfNormal.dist(sigma=vec("sigma"), shape=k)
    if family == "HalfCauchy":
        return pm.HalfCauchy.dist(beta=vec("beta"), shape=k)
    if family == "Exponential":
        return pm.Exponential.dist(lam=vec("lam"), shape=k)
    if family == "Gamma":
        return pm.Gamma.dist(alpha=vec("alpha"), beta=vec("beta"), shape=k)
    if family == "LogNormal":
        return pm.LogNormal.dist(mu=vec("mu"), sigma=vec("sigma"), shape=k)
    raise ValueError(f"correlated_iiv: no vector form for iiv priors of family {family!r}")


def ordered_cutpoints(name: str, mu: np.ndarray, sigma: np.ndarray) -> Any:
    """One PyMC vector of Normal cutpoints with the ordered transform (inside a model context).

    Parameters
    ----------
    name : str
    mu, sigma : numpy.ndarray
        The cutpoints' Normal prior means and SDs, in grade order.

    Returns
    -------
    pytensor.tensor.TensorVariable
    """
    import pymc as pm

    # An explicit initial value only where the prior means are not increasing: nutpie refuses
    # models with non-default initial values ("Cannot convert models with non-default
    # initial_values"), and increasing means are a valid start as they are.
    extra = {}
    if not np.all(np.diff(mu) > 0):
        extra["initval"] = np.sort(mu) + np.arange(mu.size) * 1e-3 * (1 + np.abs(mu).max())
    return pm.Normal(
        name,
        mu=mu,
        sigma=sigma,
        shape=mu.size,
        transform=pm.distributions.transforms.ordered,
        **extra,
    )


def _cutpoint_variables(spec: Any, values: dict[str, Any]) -> None:
    """Ordered cutpoints: one vector with PyMC's ordered transform per ordinal endpoint.

    Used when every cutpoint of the endpoint is estimated with a Normal prior (the usual case);
    otherwise the cutpoints are independent variables and a potential rejects unordered ones.
    """
    import pymc as pm
    import pytensor.tensor as pt

    for ospec in spec.observations.values():
        if ospec.error != "ordinal":
            continue
        pars = [spec.parameters[c] for c in ospec.cutpoints]
        if len(pars) > 1 and all(p.estimated and p.prior.family == "Normal" for p in pars):
            mu = np.array([p.prior.params["mu"] for p in pars])
            sigma = np.array([p.prior.params["sigma"] for p in pars])
            vec = ordered_cutpoints(f"cutpoints_{ospec.name}", mu, sigma)
            for k, c in enumerate(ospec.cutpoints):
                values[c] = pm.Deterministic(c, vec[k])
        else:
            for c in ospec.cutpoints:
                par = spec.parameters[c]
                if c not in values:
                    values[c] = (
                        prior_variable(c, par.prior) if par.estimated else pt.constant(par.value)
                    )
            cut = pt.stack([values[c] for c in ospec.cutpoints])
            if len(ospec.cutpoints) > 1:
                ordered = pt.all(pt.gt(cut[1:], cut[:-1]))
                pm.Potential(f"ordered_{ospec.name}", pt.switch(ordered, 0.0, -np.inf))


def prepare_model(
    spec: Any,
    cohort: Any,
    *,
    solver: Solver | None = None,
    correlated_iiv: bool = False,
    censoring: str = "m3",
    gradient: str = "auto",
    integrator: str = "auto",
) -> ModelInfo:
    """Everything `build_model` needs except PyMC: compiled model, bound data, predictions.

    Also used to predict from saved fits without building the PyMC model. Parameters as in
    `build_model`.

    Returns
    -------
    ModelInfo
    """
    spec = _as_spec(spec)
    cohort = _as_cohort(cohort)
    compiled = spec.compile()
    clash = sorted(set(compiled.parameters) & set(RESERVED))
    clash += [
        n
        for n in compiled.parameters
        for other in compiled.parameters
        if n in (f"log_{other}", f"logit_{other}", f"omega_{other}")
    ]
    if clash:
        raise ValueError(f"parameter name(s) {clash} clash with names the fit uses")
    bound = bind(compiled, cohort)
    obs = collect_observations(spec, compiled, cohort, bound, censoring)
    if len(obs) == 0:
        raise ValueError(
            f"cohort {cohort.source!r} has no observations model {spec.name!r} can fit"
        )
    if solver is None:
        solver = default_solver(compiled, obs)
    elif not solver.uses_analytic(compiled):
        check_atol(solver, obs)
    gradient = resolve_gradient(gradient, integrator, spec, compiled, bound, solver)
    integrator = resolve_integrator(integrator, spec, compiled, bound, solver, gradient)
    predict = make_predictor(
        spec,
        compiled,
        bound,
        solver,
        obs.subject,
        obs.column,
        gradient=gradient,
        integrator=integrator,
    )
    iiv = tuple(compiled.iiv)
    if correlated_iiv and len(iiv) < 2:
        raise ValueError("correlated_iiv needs at least two parameters with IIV")
    coords = {
        "subject": np.asarray(bound.subjects),
        "iiv": list(iiv),
        "obs_id": np.arange(len(obs)),
    }
    if correlated_iiv:
        coords["iiv_bis"] = list(iiv)
    fixed = {n: float(p.value) for n, p in spec.parameters.items() if not p.estimated}
    return ModelInfo(
        spec=spec,
        model=compiled,
        cohort=cohort,
        bound=bound,
        solver=solver,
        observations=obs,
        estimated=[n for n in compiled.parameters if n not in fixed],
        fixed=fixed,
        iiv=iiv,
        roles=parameter_roles(spec),
        correlated_iiv=correlated_iiv,
        censoring=censoring,
        gradient=gradient,
        predict=predict,
        integrator=integrator,
        coords=coords,
    )


def build_model(
    spec: Any,
    cohort: Any,
    *,
    solver: Solver | None = None,
    correlated_iiv: bool = False,
    censoring: str = "m3",
    gradient: str = "auto",
    integrator: str = "auto",
    lkj_eta: float = 2.0,
    aggregate: Any = None,
    iiv_parameterization: str | Mapping[str, str] = "noncentered",
    ratio_parameterization: Mapping[str, Sequence[str]] | None = None,
) -> tuple[Any, ModelInfo]:
    """Build the hierarchical Bayesian model of a model file fitted to a cohort.

    Parameters
    ----------
    spec : ModelSpec or str or Path
        The model (a loaded spec, a library name or a file).
    cohort : Cohort or str or Path
        The dataset (a Cohort, a bundled dataset name or a CSV file).
    solver : Solver, optional
        How to integrate in the likelihood. Default: the closed form when the model declares
        one, else Tsit5 with rtol 1e-6, atol 1e-14 and 4096 steps per interval
        (`default_solver`).
    correlated_iiv : bool, optional
        Correlate the random effects with an LKJ(``lkj_eta``) prior on their correlation
        matrix (needs two or more parameters with IIV whose iiv priors share one family).
    censoring : {"m3", "drop"}, optional
        Censored records (``obs_cens != 0``) enter through the M3 likelihood, or are dropped.
    gradient : {"auto", "forward", "reverse", "adjoint"}, optional
        How the prediction op differentiates the solve (see `pkpd.inference.predict`):
        ``"auto"`` (default) takes the discrete adjoint of the subjects-last loop when at least
        `pkpd.inference.predict.ADJOINT_MIN_TANGENTS` parameters go through the solve and lanes
        applies (below), else forward sensitivities (`pkpd.inference.predict.resolve_gradient`).
    integrator : {"auto", "engine", "lanes"}, optional
        Which integrator the predictions use: ``"auto"`` (default) takes the subjects-last
        loop of `pkpd.solve.lanes` for forward gradients with an explicit method when no
        estimated parameter moves an event time and the cohort has at least
        `pkpd.inference.predict.LANES_MIN_SIZE` (100) states x subjects, else the engine
        (`pkpd.inference.predict.resolve_integrator`).
    lkj_eta : float, optional
        Shape of the LKJ prior (2 favours weak correlations).
    aggregate : AggregateLikelihood, optional
        Published summary data fitted jointly (`pkpd.inference.aggregate`): its log-likelihood
        is added as ``pm.Potential("aggregate")``, a function of its ``parameters`` taken from
        this model's variables (typical values, ``omega_<name>``); the others stay at its fixed
        values.
    iiv_parameterization : str or mapping, optional
        ``"noncentered"`` (default): ``eta = omega * z`` with ``z ~ Normal(0, 1)``, right when a
        subject's data say little about its random effect; ``"centered"``: the subject's
        parameter on its IIV scale (log or logit, without covariate effects) is sampled,
        ``phi ~ Normal(typical, omega)`` (``MvNormal`` with ``correlated_iiv``), and ``eta =
        phi - typical``, right when the data pin it down (`iiv_shift`, `_random_effects`); or
        ``{parameter: choice}`` per random effect (the others non-centred; not with
        ``correlated_iiv``). Mixed, the free variables are ``z`` (coordinate
        ``iiv_noncentered``) and ``phi`` (``iiv_centered``); ``eta`` is always the
        ``(subject, iiv)`` random effects. The choice changes how NUTS sees the posterior,
        not the posterior.
    ratio_parameterization : mapping of str to sequence of str, optional
        ``{parameter: divisors}``: sample ``log_<parameter>_ratio``, the log of the parameter
        over the product of the divisors, in place of ``log_<parameter>`` (all log-normal,
        estimated), with the parameter's centred random effect centred on it
        (`pkpd.inference.ratios`). For a combination the data pin down better than its parts;
        like ``iiv_parameterization`` it changes the coordinates, not the posterior.

    Returns
    -------
    model : pymc.Model
        Coordinates ``subject``, ``iiv``, ``obs_id``; variables named after the parameters,
        ``omega_<name>``, ``z`` (non-centred), ``eta``, and the observed ``y``.
    info : ModelInfo
        The compiled model, bound cohort, observations, solver and prediction function.

    Raises
    ------
    DatasetError
        If the cohort does not fit the model (see `pkpd.solve.bind`,
        `pkpd.inference.likelihood.collect_observations`).
    ValueError
        For a parameter named like one of the builder's variables (`RESERVED`), an unknown
        option, ``correlated_iiv`` with fewer than two random effects, or with a mixed
        parameterization, or a ratio that `pkpd.inference.ratios.resolve_ratios` refuses.
    """
    import pymc as pm
    import pytensor.tensor as pt
    from pytensor import wrap_jax

    info = prepare_model(
        spec,
        cohort,
        solver=solver,
        correlated_iiv=correlated_iiv,
        censoring=censoring,
        gradient=gradient,
        integrator=integrator,
    )
    spec, compiled, obs, predict = info.spec, info.model, info.observations, info.predict
    iiv, fixed, coords = info.iiv, info.fixed, info.coords
    n_sub, k_iiv = info.n_subjects, len(iiv)
    chosen = resolve_parameterization(iiv_parameterization, iiv)
    ratios = resolve_ratios(ratio_parameterization, spec, info.estimated)
    centered = [k for k, n in enumerate(iiv) if chosen[n] == "centered"]
    if correlated_iiv and 0 < len(centered) < k_iiv:
        raise ValueError(
            f"correlated_iiv needs one parameterization for all random effects, got {chosen}"
        )

    with pm.Model(coords=coords) as pm_model:
        values: dict[str, Any] = {n: pt.constant(v, dtype="float64") for n, v in fixed.items()}
        _cutpoint_variables(spec, values)
        for name in compiled.parameters:
            if name not in values and name not in ratios:
                values[name] = prior_variable(name, spec.parameters[name].prior)
        log_ratios: dict[str, Any] = {}
        for name, divisors in ratios.items():
            values[name], log_ratios[name] = ratio_variable(
                name, spec.parameters[name].prior, [values[d] for d in divisors]
            )
        theta = pt.stack([pt.as_tensor(values[n], dtype="float64") for n in compiled.parameters])

        if k_iiv == 0:
            eta = pt.zeros((n_sub, 0), dtype="float64")
        elif correlated_iiv:
            chol, corr, stds = pm.LKJCholeskyCov(
                "chol_iiv",
                n=k_iiv,
                eta=lkj_eta,
                sd_dist=_sd_dist([spec.parameters[n].iiv for n in iiv]),
                compute_corr=True,
            )
            for k, name in enumerate(iiv):
                pm.Deterministic(f"omega_{name}", stds[k])
            pm.Deterministic("corr_iiv", corr, dims=("iiv", "iiv_bis"))
            if centered:
                shift = iiv_shift(spec, values, iiv, log_ratios)
                phi = pm.MvNormal(
                    "phi", mu=shift, chol=chol, shape=(n_sub, k_iiv), dims=("subject", "iiv")
                )
                eta = pm.Deterministic("eta", phi - shift[None, :], dims=("subject", "iiv"))
            else:
                z = pm.Normal("z", 0.0, 1.0, shape=(n_sub, k_iiv), dims=("subject", "iiv"))
                eta = pm.Deterministic("eta", z @ chol.T, dims=("subject", "iiv"))
        else:
            omega = pt.stack([prior_variable(f"omega_{n}", spec.parameters[n].iiv) for n in iiv])
            eta = _random_effects(
                pm_model,
                omega,
                iiv,
                centered,
                n_sub,
                iiv_shift(spec, values, iiv, log_ratios) if centered else None,
            )
        eta = pt.specify_shape(pt.as_tensor(eta, dtype="float64"), (n_sub, k_iiv))
        theta = pt.specify_shape(theta, (len(compiled.parameters),))

        if aggregate is not None:  # after the omegas exist: it may use them
            aggregate.add_to_model(values)
        pred = wrap_jax(predict)(theta, eta)
        resid_names = residual_parameters(spec, compiled)

        def logp(value: Any, pred: Any, *resid: Any) -> Any:
            # CustomDist may hand scalar parameters over as shape (1,): make them scalars.
            params = {
                n: pt.as_tensor(r).reshape((-1,))[0]
                for n, r in zip(resid_names, resid, strict=True)
            }
            return observation_logp(value, pred, params, obs, spec, compiled)

        pm.CustomDist(
            "y",
            pred,
            *[pt.as_tensor(values[n], dtype="float64") for n in resid_names],
            logp=logp,
            observed=obs.value,
            dims="obs_id",
        )

    return pm_model, info


def iiv_shift(
    spec: Any,
    values: Mapping[str, Any],
    iiv: Sequence[str],
    log_ratios: Mapping[str, Any] | None = None,
) -> Any:
    """Return the typical values of the random-effect parameters on their IIV scale.

    Log or logit, as each parameter's ``iiv_scale``; for a parameter sampled as a ratio
    (``log_ratios``, `pkpd.inference.ratios`), that log ratio.

    What a centred random effect is centred on: ``phi = iiv_shift + eta``.
    """
    import pytensor.tensor as pt

    out = []
    for name in iiv:
        if log_ratios and name in log_ratios:
            out.append(log_ratios[name])
            continue
        x = pt.as_tensor(values[name], dtype="float64")
        out.append(
            pt.log(x) if spec.parameters[name].iiv_scale == "log" else pt.log(x) - pt.log1p(-x)
        )
    return pt.stack(out)


def _random_effects(
    pm_model: Any,
    omega: Any,
    iiv: Sequence[str],
    centered: Sequence[int],
    n_sub: int,
    shift: Any = None,
) -> Any:
    """``eta (subject, iiv)`` of uncorrelated random effects, centred where asked.

    A centred random effect is sampled as the subject's parameter on its IIV scale, without
    covariate effects, ``phi ~ Normal(shift, omega)`` with ``shift`` the typical value on that
    scale (`iiv_shift`), and ``eta = phi - shift`` (hierarchical centring, Gelfand, Sahu &
    Carlin 1995, Biometrika 82:479). Centring ``eta ~ Normal(0, omega)`` instead would leave
    the typical value and every subject's ``eta`` tied along one direction (the data fix their
    sum), which a diagonal mass matrix cannot follow.
    """
    import pymc as pm
    import pytensor.tensor as pt

    k_iiv = len(iiv)
    if not centered:
        z = pm.Normal("z", 0.0, 1.0, shape=(n_sub, k_iiv), dims=("subject", "iiv"))
        return pm.Deterministic("eta", z * omega[None, :], dims=("subject", "iiv"))
    if len(centered) == k_iiv:
        phi = pm.Normal(
            "phi", shift[None, :], omega[None, :], shape=(n_sub, k_iiv), dims=("subject", "iiv")
        )
        return pm.Deterministic("eta", phi - shift[None, :], dims=("subject", "iiv"))
    rest = [k for k in range(k_iiv) if k not in centered]
    pm_model.add_coord("iiv_noncentered", [iiv[k] for k in rest])
    pm_model.add_coord("iiv_centered", [iiv[k] for k in centered])
    z = pm.Normal("z", 0.0, 1.0, shape=(n_sub, len(rest)), dims=("subject", "iiv_noncentered"))
    phi = pm.Normal(
        "phi",
        shift[centered][None, :],
        omega[centered][None, :],
        shape=(n_sub, len(centered)),
        dims=("subject", "iiv_centered"),
    )
    columns = {k: z[:, j] * omega[k] for j, k in enumerate(rest)}
    columns.update({k: phi[:, j] - shift[k] for j, k in enumerate(centered)})
    return pm.Deterministic(
        "eta", pt.stack([columns[k] for k in range(k_iiv)], axis=1), dims=("subject", "iiv")
    )
