"""Aggregate-data likelihood (model-based meta-analysis): published rates from virtual patients.

A published summary such as "108 patients, 94% any CRS, 13% grade >= 3, median onset day 2" is
evaluated by simulating *virtual patients* inside the model, with a smooth (differentiable)
estimate of each cohort rate, and a binomial likelihood for each count with its denominator.

**The estimate.** The model's grades are ordered-logistic on a latent severity with one
logistic offset ``e`` per patient and endpoint (``models/outcomes.toml``): grade >= k at time t
iff ``latent(t) + e > c_k``. Hence, for one patient with no treatment that depends on ``e``,

    P(worst grade >= k) = P(max_t latent(t) + e > c_k) = sigmoid(max_t latent(t) - c_k)

exactly, and a cohort rate is the mean of this smooth function over virtual patients: no
indicator functions, so gradients exist. Virtual patients are a fixed set of between-subject
random effects ``z`` and covariates drawn by scrambled Sobol quasi-Monte Carlo on the normal
scale (`VirtualDesign`), the same for every parameter value (common random numbers).

**Noise per grading day.** An endpoint with a ``record_scale`` ``s`` (the model's grades carry
noise per record on top of the patient's offset) grades ``latent(t) + s d + e`` with ``d`` a
standard logistic per grading day (`pkpd.strategies.simulate.day_noise`, the strategies layer's
numbers). Each virtual patient gets its days' ``d`` fixed with its ``z`` and offset (common
random numbers), ``s d`` joins the latent course, and everything above holds conditionally on
``d``: the worst grade is ``sigmoid(max_t (latent(t) + s d_day(t)) - c_k)``, averaged over
virtual patients (Monte Carlo over ``d`` as over ``z``).

**Reactive treatment** (tocilizumab at grade >= 2, ...) depends on ``e`` (a patient with a high
offset reaches the trigger earlier). With a strategy, each virtual patient also gets an offset
``e_i`` (from the same Sobol points); the strategies layer's reactive policy finds the dose
times ``D_i`` (`pkpd.strategies.simulate_strategies`, a non-differentiable pass); the
differentiable solve then holds ``D_i`` fixed. Given ``D_i``, the set of offsets that produce
exactly ``D_i`` is an interval ``(lo_i, hi_i]`` (each assessment that fired says
``latent(a) + e > c``, each eligible one that did not says the opposite), and the patient's
contribution is the conditional probability ``P(e > c_k - max_t latent_D(t) | lo_i < e <= hi_i)``
(Rao-Blackwellised over the offset: unbiased for the treated rate, and smooth in the parameters
for fixed ``D``). The dose times themselves move with the parameters in jumps (their derivative
is zero almost everywhere), so they are refreshed between optimisation rounds (`calibrate`) and
held fixed inside a PyMC potential.

**Monte-Carlo error.** `AggregateLikelihood.mc_error` reports, per outcome, the standard error
of the virtual-patient mean (i.i.d. formula, conservative for QMC; and, with ``replicates``,
the spread over independently scrambled designs) against the binomial SE of the data, and warns
when it exceeds `MC_WARN_FRACTION` of it.

**Median times.** A reported median onset ``m`` among ``n`` patients with the event is used as
"half of them had onset by day m": a binomial term for ``n/2`` of ``n`` with probability
``F(m) = P(onset <= m | event)``, where ``F(m) = mean_i P(e > c_1 - max_{t<=m} latent_i(t)) /
mean_i P(e > c_1 - max_t latent_i(t))`` (running maximum linearly interpolated on the grid).

>>> from pkpd.data.trials import published_trials
>>> lik = AggregateLikelihood(model, published_trials("zuma1", "juliet"),
...                           ["rho_cd28", "c_crs1", "c_crs3"])
>>> lik.loglik(lik.initial), lik.rates(lik.initial)

Calibration to these summaries alone (MAP + Laplace or NUTS): `pkpd.inference.calibration`.
See ``docs/aggregate.md``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import special, stats

from pkpd.data.trials import Outcome, Timing, TrialSummary
from pkpd.data.virtual import PatientDistribution, cart_dose
from pkpd.inference.predict import dynamic_parameters
from pkpd.solve import Solver, event_arrays, solve_batch

jax.config.update("jax_enable_x64", True)

#: Outcome endpoint of a trial summary -> ordinal endpoint of the model (default mapping).
#: Neurologic events / NT are mapped to the ICANS grade: an approximation (NT is broader).
DEFAULT_ENDPOINTS: dict[str, str] = {
    "crs": "crs_grade",
    "icans": "icans_grade",
    "neuro": "icans_grade",
}

#: Warn when the Monte-Carlo SE of a predicted rate exceeds this fraction of the data's SE.
MC_WARN_FRACTION = 0.25

#: Default solver of the virtual-patient solves (rates are insensitive to rtol far below the
#: Monte-Carlo error; 1e-5 was 25% faster than 1e-6 on cart_crs with identical rates to 1e-9).
DEFAULT_SOLVER = Solver("tsit5", rtol=1e-5, atol=1e-9)

#: Cutpoints from this grade up are shifted for a non-reference grading scale (grade 1 = fever
#: in every scale; the scales differ in how hypotension, hypoxia and organ toxicity are graded).
SHIFT_FROM_GRADE = 2

#: Columns of normal deviates a covariate function receives (`VirtualDesign.covariates`).
N_COVARIATE_NORMALS = 4


class AggregateWarning(UserWarning):
    """The Monte-Carlo error of the aggregate likelihood is large against the data's error."""


# --------------------------------------------------------------------------------------------
# Virtual patients


def cart_covariates(
    trial: TrialSummary,
    normals: np.ndarray,
    model: Any,
    *,
    distribution: PatientDistribution | None = None,
    product: int | None = None,
) -> dict[str, np.ndarray]:
    """Covariates of CAR-T virtual patients for one trial (the default of `VirtualDesign`).

    Tumour burden, weight and baseline NET propensity are log-normal as in
    `pkpd.data.virtual.PatientDistribution` (assumptions listed there: no trial reports them);
    the product (``PRODUCT``: 1 = CD28, 0 = 4-1BB) is the trial's costimulation unless given.

    Parameters
    ----------
    trial : TrialSummary
    normals : numpy.ndarray
        ``(N, 4)`` standard normal deviates (quasi-random).
    model : CompiledModel
    distribution : PatientDistribution, optional
    product : int, optional
        ``PRODUCT`` value (overrides the trial's costimulation).

    Returns
    -------
    dict of str to numpy.ndarray
        ``TUMOR`` (mL), ``WT`` (kg), ``NETP`` (1), ``PRODUCT`` per patient.

    Raises
    ------
    ValueError
        The trial's costimulation is ``mixed`` or ``not stated`` and no ``product`` is given.
    """
    d = distribution or PatientDistribution()
    if product is None:
        product = {"CD28": 1, "4-1BB": 0}.get(trial.costimulation)
        if product is None:
            raise ValueError(
                f"trial {trial.id!r}: costimulation {trial.costimulation!r}; say which product "
                f"its virtual patients get: VirtualDesign(product={{{trial.id!r}: 0 or 1}})"
            )
    n = normals.shape[0]
    return {
        "TUMOR": d.tumour_median * np.exp(d.tumour_log_sd * normals[:, 0]),
        "WT": d.weight_median * np.exp(d.weight_log_sd * normals[:, 1]),
        "NETP": np.exp(d.netp_log_sd * normals[:, 2]),
        "PRODUCT": np.full(n, float(product)),
    }


def cart_base(
    trial: TrialSummary, covariates: Mapping[str, np.ndarray], model: Any
) -> list[tuple[str, float, np.ndarray]]:
    """CAR-T infusion at day 0 (`pkpd.data.virtual.cart_dose`: product and weight), if any.

    Returns
    -------
    list of (route, day, amounts)
        Empty when the model has no ``cart_iv`` route.
    """
    if "cart_iv" not in model.dose_targets:
        return []
    return [("cart_iv", 0.0, cart_dose(covariates["PRODUCT"], covariates["WT"]))]


@dataclass(frozen=True)
class VirtualDesign:
    """The virtual patients of the aggregate likelihood.

    Attributes
    ----------
    n_patients : int
        Virtual patients per arm (a power of 2: Sobol points). The same points serve every trial
        (common random numbers); trials with the same covariates and treatment share one solve.
    seed : int
        Scrambling seed of the Sobol sequence.
    step, horizon : float
        Output grid (days): the worst grade is the maximum over ``0, step, ..., horizon``, as in
        `pkpd.strategies.simulate_strategies` (default every 6 h to day 28).
    distribution : PatientDistribution
        Covariate distributions of the default `cart_covariates`.
    product : mapping of str to int
        ``PRODUCT`` by trial id, for trials whose costimulation is mixed or not stated.
    covariates : callable, optional
        ``covariates(trial, normals (N, 4), model) -> {name: (N,)}``; default `cart_covariates`.
        Covariates the model has but the function does not give take the model default.
    base : callable, optional
        ``base(trial, covariates, model) -> [(route, day, amounts (N,))]``: doses every patient
        gets; default `cart_base`.
    """

    n_patients: int = 512
    seed: int = 0
    step: float = 0.25
    horizon: float = 28.0
    distribution: PatientDistribution = field(default_factory=PatientDistribution)
    product: Mapping[str, int] = field(default_factory=dict)
    covariates: Callable | None = None
    base: Callable | None = None

    def __post_init__(self) -> None:
        n = int(self.n_patients)
        if n < 2 or n & (n - 1):
            raise ValueError(f"n_patients must be a power of 2 (Sobol points), got {n}")
        if not (self.step > 0 and self.horizon > 0):
            raise ValueError("step and horizon must be positive (days)")

    @property
    def grid(self) -> np.ndarray:
        """Output grid in days."""
        return np.arange(0.0, self.horizon + 1e-9, self.step)

    def points(self, dims: int, seed: int | None = None) -> np.ndarray:
        """``(n_patients, dims)`` scrambled Sobol points in (0, 1)."""
        from scipy.stats import qmc

        sob = qmc.Sobol(dims, scramble=True, seed=self.seed if seed is None else seed)
        u = sob.random(self.n_patients)
        return np.clip(u, 1e-12, 1.0 - 1e-12)

    def patient_covariates(
        self, trial: TrialSummary, normals: np.ndarray, model: Any
    ) -> dict[str, np.ndarray]:
        """Covariates of this trial's virtual patients (see `covariates`)."""
        if self.covariates is not None:
            return dict(self.covariates(trial, normals, model))
        return cart_covariates(
            trial,
            normals,
            model,
            distribution=self.distribution,
            product=self.product.get(trial.id),
        )

    def base_doses(
        self, trial: TrialSummary, covs: Mapping[str, np.ndarray], model: Any
    ) -> list[tuple[str, float, np.ndarray]]:
        """Doses every virtual patient of this trial gets (see `base`)."""
        if self.base is not None:
            return list(self.base(trial, covs, model))
        return cart_base(trial, covs, model)


# --------------------------------------------------------------------------------------------
# Likelihood terms


@dataclass(frozen=True)
class Row:
    """One predicted probability: a trial's share of patients between two grade counts.

    ``P(j_lo <= count < j_hi)`` where ``count = #{k: latent + e > c_k}`` (the model's grade
    index); ``j_hi = K + 1`` means no upper limit.
    """

    trial: str
    label: str
    arm: int
    q: int
    j_lo: int
    j_hi: int
    shift: int  # index into the shift parameters, -1: none
    count: float
    n: float
    term: int  # likelihood term (binomial: one row; multinomial: its categories)
    kind: str  # "binomial", "category", "onset", "report"
    median: float = np.nan
    derived: bool = False


def _grade_index(levels: Sequence[float], grade: int) -> int | None:
    """Grade count index ``j`` with ``levels[j] >= grade`` (None when above the top level)."""
    for j, level in enumerate(levels):
        if level >= grade:
            return j
    return None


# --------------------------------------------------------------------------------------------
# The likelihood


class AggregateLikelihood:
    """Log-likelihood of published trial summaries under a model, from virtual patients.

    Parameters
    ----------
    model : CompiledModel or ModelSpec or str
        The model (compiled, a spec, or a library name / file).
    trials : sequence of TrialSummary
        The summaries (`pkpd.data.trials.published_trials`).
    parameters : sequence of str
        What the likelihood is a function of, in order: model parameters, ``omega_<name>`` (IIV
        SD of a parameter), grading-scale shifts ``shift_<scale>`` (see ``grading_shifts``) and
        definition shifts ``shift_<definition>`` (see ``definition_shifts``).
        Everything else stays at ``values`` / ``omega``.
    design : VirtualDesign, optional
        Virtual patients (default 512 per arm, seed 0).
    values : mapping, optional
        Fixed values of the other parameters (default: typical values of the model file).
    omega : mapping, optional
        IIV SDs by parameter name (default: prior medians of the ``iiv`` priors).
    treatment : Strategy or mapping of str to Strategy, optional
        Management in the trials (one strategy for all, or by trial id; a missing id means
        untreated). Default: none, i.e. rates of the natural (untreated) course.
    endpoints : mapping, optional
        Summary endpoint -> ordinal endpoint of the model (`DEFAULT_ENDPOINTS`). Outcomes whose
        endpoint is not mapped (or maps to an endpoint the model lacks) are left out.
    use : sequence of str, optional
        Summary endpoints whose outcomes enter the likelihood (default all mapped).
    onset : bool, optional
        Include median onset times (default True).
    grading_shifts : mapping of str to str, optional
        Grading scale -> prior of its shift (e.g. ``{"Penn": "Normal(0, 1)"}``): for trials
        graded on that scale, CRS cutpoints from grade `SHIFT_FROM_GRADE` up are lowered by the
        parameter ``shift_<scale>`` (a positive shift grades the same course higher). Other
        scales (and "not stated") are taken as the model's (ASTCT) scale.
    definition_shifts : mapping of str to str, optional
        Outcome definition (`pkpd.data.trials.Outcome.definition`, e.g. ``"label_nt"``) -> prior
        of its shift: outcomes and onset medians counted under that definition have all the
        endpoint's cutpoints lowered by the parameter ``shift_<definition>`` (a positive shift
        counts more patients at every grade). Outcomes of other definitions are taken as the
        model's endpoint. An outcome cannot take a grading-scale and a definition shift at once.
    solver : Solver, optional
        Default `DEFAULT_SOLVER`.
    priors : mapping of str to str or Prior, optional
        Replacement priors of ``parameters`` (used by `calibrate` and `add_to_model`).
    """

    def __init__(
        self,
        model: Any,
        trials: Sequence[TrialSummary],
        parameters: Sequence[str] = (),
        *,
        design: VirtualDesign | None = None,
        values: Mapping[str, float] | None = None,
        omega: Mapping[str, float] | None = None,
        treatment: Any = None,
        endpoints: Mapping[str, str] | None = None,
        use: Sequence[str] | None = None,
        onset: bool = True,
        grading_shifts: Mapping[str, Any] | None = None,
        definition_shifts: Mapping[str, Any] | None = None,
        solver: Solver | None = None,
        priors: Mapping[str, Any] | None = None,
    ):
        from pkpd.model.priors import parse_prior

        model = _as_model(model)
        self.model = model
        self.spec = model.spec
        self.trials = list(trials)
        if not self.trials:
            raise ValueError("no trials")
        self.design = design or VirtualDesign()
        self.solver = solver or DEFAULT_SOLVER
        self.endpoints = dict(DEFAULT_ENDPOINTS if endpoints is None else endpoints)
        self.use = tuple(use) if use is not None else tuple(self.endpoints)
        self.onset = bool(onset)
        self.grading_shifts = {
            k: (parse_prior(v) if isinstance(v, str) else v)
            for k, v in (grading_shifts or {}).items()
        }
        self.definition_shifts = {
            k: (parse_prior(v) if isinstance(v, str) else v)
            for k, v in (definition_shifts or {}).items()
        }
        # One vector of shifts: the grading scales', then the definitions'.
        self.shift_names = [f"shift_{s.lower().replace(' ', '_')}" for s in self.grading_shifts]
        self.shift_names += [f"shift_{d}" for d in self.definition_shifts]
        if len(set(self.shift_names)) != len(self.shift_names):
            raise ValueError(f"grading and definition shifts share a name: {self.shift_names}")
        self.treatment = treatment
        self.parameters = tuple(parameters)
        if len(set(self.parameters)) != len(self.parameters):
            raise ValueError(f"duplicate parameters in {self.parameters}")

        # Ordinal endpoints of the model (the Q axis), their cutpoints and levels.
        self.ordinal = [o for o in self.spec.observations.values() if o.error == "ordinal"]
        if not self.ordinal:
            raise ValueError(f"model {model.name!r} has no ordinal endpoint")
        per_record = [o.name for o in self.ordinal if o.offset != "subject"]
        if per_record:
            # The estimate below (worst grade from the peak latent) needs one offset per patient.
            raise ValueError(
                f"aggregate likelihood needs one grade offset per patient: set offset = "
                f'"subject" on ordinal endpoint(s) {per_record} of model {model.name!r}'
            )
        # Noise per grading day on top of the offset (``record_scale``): its parameter index.
        self.scale_index = np.array(
            [model.parameter_index(o.record_scale) if o.record_scale else -1 for o in self.ordinal]
        )
        self.ord_names = [o.name for o in self.ordinal]
        self.ord_endpoint = np.array([model.endpoints.index(o.name) for o in self.ordinal])
        k_max = max(len(o.cutpoints) for o in self.ordinal)
        if any(len(o.cutpoints) != k_max for o in self.ordinal):
            raise ValueError("ordinal endpoints with different numbers of cutpoints")
        self.n_cut = k_max
        self.cut_index = np.array(
            [[model.parameter_index(c) for c in o.cutpoints] for o in self.ordinal]
        )

        # Fixed values.
        theta0 = np.asarray(model.typical_values, float).copy()
        for name, v in (values or {}).items():
            theta0[model.parameter_index(name)] = float(v)
        self.theta0 = theta0
        omega0 = np.array([self.spec.parameters[n].iiv.median() for n in model.iiv], float)
        for name, v in (omega or {}).items():
            omega0[list(model.iiv).index(name)] = float(v)
        self.omega0 = omega0

        # Classify the parameters.
        used = dynamic_parameters(self.spec) | {
            e.coef
            for p in self.spec.parameters.values()
            for e in p.covariates
            if isinstance(e.coef, str)
        }
        # Cutpoints and noise scales act on the grades directly (no solve).
        cut_names = {c for o in self.ordinal for c in o.cutpoints}
        cut_names |= {o.record_scale for o in self.ordinal if o.record_scale}
        self._theta_pos, self._theta_idx = [], []
        self._omega_pos, self._omega_idx = [], []
        self._shift_pos, self._shift_idx = [], []
        self.structural: list[str] = []
        for pos, name in enumerate(self.parameters):
            if name in self.shift_names:
                self._shift_pos.append(pos)
                self._shift_idx.append(self.shift_names.index(name))
            elif name.startswith("omega_") and name[6:] in model.iiv:
                self._omega_pos.append(pos)
                self._omega_idx.append(list(model.iiv).index(name[6:]))
                self.structural.append(name)
            elif name in model.parameters:
                if name not in cut_names and name not in used:
                    raise ValueError(f"parameter {name!r} does not change the predicted grades")
                self._theta_pos.append(pos)
                self._theta_idx.append(model.parameter_index(name))
                if name not in cut_names:
                    self.structural.append(name)
            else:
                raise ValueError(
                    f"unknown parameter {name!r}: not a parameter of {model.name!r}, an "
                    f"omega_<name> of its IIV parameters {list(model.iiv)}, or a shift "
                    f"{self.shift_names}"
                )
        self._struct_pos = np.array([self.parameters.index(n) for n in self.structural], int)
        self.priors = self._priors(priors or {})

        self._build_rows()
        self._qmc_seed = self.design.seed
        self._compile()
        self.data: dict[str, Any] | None = None
        self._data_at: np.ndarray | None = None

    # ---------------------------------------------------------------- set-up

    def _priors(self, override: Mapping[str, Any]) -> dict[str, Any]:
        from pkpd.model.priors import parse_prior

        out = {}
        for name in self.parameters:
            if name in override:
                p = override[name]
                out[name] = parse_prior(p) if isinstance(p, str) else p
            elif name in self.shift_names:
                shift_priors = [*self.grading_shifts.values(), *self.definition_shifts.values()]
                out[name] = shift_priors[self.shift_names.index(name)]
            elif name.startswith("omega_") and name[6:] in self.model.iiv:
                out[name] = self.spec.parameters[name[6:]].iiv
            else:
                par = self.spec.parameters[name]
                out[name] = par.prior if par.estimated else None
        return out

    @property
    def initial(self) -> np.ndarray:
        """The parameter vector at the fixed values (typical values, prior-median omegas, 0)."""
        out = np.zeros(len(self.parameters))
        out[self._theta_pos] = self.theta0[self._theta_idx]
        out[self._omega_pos] = self.omega0[self._omega_idx]
        return out

    def _strategy_of(self, trial: TrialSummary) -> Any:
        t = self.treatment
        if t is None:
            return None
        if isinstance(t, Mapping):
            return t.get(trial.id)
        return t

    def _build_arms(self, seed: int) -> None:
        """Covariates, base doses and treatment of each distinct arm; trial -> arm."""
        model = self.model
        k = len(model.iiv)
        q = len(self.ordinal)
        u = self.design.points(k + N_COVARIATE_NORMALS + q, seed=seed)
        z = stats.norm.ppf(u[:, :k])
        normals = stats.norm.ppf(u[:, k : k + N_COVARIATE_NORMALS])
        self._z = z
        self._u = u[:, k + N_COVARIATE_NORMALS :]
        arms: list[dict[str, Any]] = []
        keys: list[Any] = []
        self._trial_arm: dict[str, int] = {}
        n = self.design.n_patients
        for trial in self.trials:
            covs = self.design.patient_covariates(trial, normals, model)
            unknown = set(covs) - set(model.covariates)
            cov = np.empty((n, len(model.covariates)))
            for j, (name, default) in enumerate(
                zip(model.covariates, model.covariate_defaults, strict=True)
            ):
                value = np.asarray(covs.get(name, default), float)
                if np.any(np.isnan(value)):
                    raise ValueError(f"covariate {name} is required by model {model.name!r}")
                cov[:, j] = np.broadcast_to(value, (n,))
            base = self.design.base_doses(trial, {**covs}, model)
            for route, _, _ in base:
                if route not in model.dose_targets:
                    raise ValueError(f"base dose: model {model.name!r} has no route {route!r}")
            strategy = self._strategy_of(trial)
            key = (
                cov.tobytes(),
                tuple((r, float(d), np.asarray(a, float).tobytes()) for r, d, a in base),
                None if strategy is None else strategy.describe(),
            )
            if key in keys:
                self._trial_arm[trial.id] = keys.index(key)
                continue
            keys.append(key)
            self._trial_arm[trial.id] = len(arms)
            if unknown:
                raise ValueError(f"model {model.name!r} has no covariate(s) {sorted(unknown)}")
            arms.append(
                {
                    "cov": cov,
                    "base": base,
                    "strategy": strategy,
                    "provided": tuple(c for c in model.covariates if c in covs),
                }
            )
        self.arms = arms

    def _build_rows(self) -> None:
        """Likelihood rows from the trials' outcomes and onset medians."""
        self._build_arms(self.design.seed)
        rows: list[Row] = []
        skipped: list[str] = []
        term = 0
        for trial in self.trials:
            arm = self._trial_arm[trial.id]
            by_endpoint: dict[tuple[str, str], list[Outcome]] = {}
            for o in trial.outcomes:
                by_endpoint.setdefault((o.endpoint, o.definition), []).append(o)
            for (endpoint, definition), outcomes in by_endpoint.items():
                target = self.endpoints.get(endpoint)
                if target not in self.ord_names or endpoint not in self.use:
                    skipped.extend(f"{trial.id}:{o.label}" for o in outcomes)
                    continue
                qi = self.ord_names.index(target)
                levels = list(self.ordinal[qi].levels)
                sh = self._shift_of(trial, endpoint, definition)
                new, term = self._outcome_rows(trial, arm, qi, levels, sh, outcomes, term)
                rows.extend(new)
            if not self.onset:
                continue
            for t in trial.timing:
                row = self._onset_row(trial, arm, t, term)
                if row is not None:
                    rows.append(row)
                    term += 1
        if not rows:
            raise ValueError("no outcome of these trials maps to an ordinal endpoint of the model")
        self.rows = rows
        self.skipped = skipped
        self._times_days, self._grid_cols = self._times()

    def _shift_of(self, trial: TrialSummary, endpoint: str, definition: str) -> int:
        """Index of the shift of a trial's outcomes (-1: none)."""
        scale = endpoint == "crs" and trial.scale in self.grading_shifts
        defined = definition in self.definition_shifts
        if scale and defined:
            raise ValueError(
                f"{trial.id}: {endpoint} outcomes of definition {definition!r} graded on the "
                f"{trial.scale} scale would take two shifts; give one of them"
            )
        if scale:
            return list(self.grading_shifts).index(trial.scale)
        if defined:
            return len(self.grading_shifts) + list(self.definition_shifts).index(definition)
        return -1

    def _outcome_rows(self, trial, arm, qi, levels, shift, outcomes, term):
        k = self.n_cut
        exact = sorted((o for o in outcomes if o.exact), key=lambda o: o.grade)
        complete = exact and [o.grade for o in exact] == list(range(1, exact[-1].grade + 1))
        complete = complete and _grade_index(levels, exact[-1].grade) in (None, k)
        rows = []
        if complete:
            # A whole grade distribution: one multinomial term over the model's categories
            # (grades above the model's top level, e.g. grade 5 = death, join the top one).
            counts = np.zeros(k + 1)
            n = exact[0].n
            for o in exact:
                j = _grade_index(levels, o.grade)
                counts[k if j is None else j] += o.count
            counts[0] = n - counts[1:].sum()
            for j in range(k + 1):
                label = f"{outcomes[0].endpoint}=" + (
                    f"{levels[j]:g}" if j < k else f"{levels[k]:g}+"
                )
                rows.append(
                    Row(
                        trial.id,
                        label,
                        arm,
                        qi,
                        j,
                        j + 1 if j < k else k + 1,
                        shift,
                        float(counts[j]),
                        float(n),
                        term,
                        "category",
                        derived=any(o.derived for o in exact),
                    )
                )
            term += 1
            singles = [o for o in outcomes if not o.exact]
            for o in singles:  # implied by the distribution: reported, not in the likelihood
                j = _grade_index(levels, o.grade)
                if j is not None:
                    rows.append(
                        Row(
                            trial.id,
                            o.label,
                            arm,
                            qi,
                            j,
                            k + 1,
                            shift,
                            o.count,
                            o.n,
                            -1,
                            "report",
                            derived=o.derived,
                        )
                    )
            return rows, term
        for o in outcomes:
            j = _grade_index(levels, o.grade)
            if j is None:
                warnings.warn(
                    f"{trial.id}: {o.label} is above the model's top grade; left out", stacklevel=3
                )
                continue
            j_hi = (j + 1 if j < k else k + 1) if o.exact else k + 1
            rows.append(
                Row(
                    trial.id,
                    o.label,
                    arm,
                    qi,
                    j,
                    j_hi,
                    shift,
                    o.count,
                    o.n,
                    term,
                    "binomial",
                    derived=o.derived,
                )
            )
            term += 1
        return rows, term

    def _onset_row(self, trial: TrialSummary, arm: int, t: Timing, term: int) -> Row | None:
        if t.what != "onset" or t.endpoint not in self.use:
            return None
        target = self.endpoints.get(t.endpoint)
        if target not in self.ord_names:
            return None
        qi = self.ord_names.index(target)
        n_event = t.n
        if n_event is None:
            any_ = trial.outcome(t.endpoint, min_grade=1)
            if any_ is None or any_.n != trial.n or any_.definition != t.definition:
                return None  # how many patients the median is over is unknown
            n_event = any_.count
        if not 0 <= t.median_days <= self.design.horizon:
            return None
        return Row(
            trial.id,
            f"{t.endpoint} onset <= {t.median_days:g} d"
            + (f" ({t.definition})" if t.definition else ""),
            arm,
            qi,
            1,
            self.n_cut + 1,
            self._shift_of(trial, t.endpoint, t.definition),
            n_event / 2.0,
            float(n_event),
            term,
            "onset",
            median=t.median_days,
        )

    # ---------------------------------------------------------------- data (solves' inputs)

    def _times(self) -> tuple[np.ndarray, np.ndarray]:
        """Solve times (days): the grid, every assessment of a reactive policy, the start."""
        grid = self.design.grid
        assess: set[float] = set()
        first = [grid[0], 0.0]
        for arm in self.arms:
            s = arm["strategy"]
            first += [float(d) for _, d, _ in arm["base"]]
            if s is None:
                continue
            for p in s.reactive:
                assess.update(p.assessments())
            first += [t for r in s.regimens for t in r.times()]
        times = np.union1d(np.union1d(grid, np.asarray(sorted(assess), float)), [min(first)])
        return times, np.searchsorted(times, grid)

    def _find_doses(self, vecs: np.ndarray, chunk: int = 16) -> list[np.ndarray | None]:
        """Reactive dose times of each arm at each of ``vecs`` (non-differentiable pass).

        Parameters
        ----------
        vecs : numpy.ndarray
            ``(S, P)`` parameter vectors.
        chunk : int, optional
            Parameter vectors simulated together (`pkpd.strategies.simulate_strategies` runs
            draws x patients in one batched solve per reactive pass).

        Returns
        -------
        list
            Per arm: None (no reactive policy) or ``(S, N, slots)`` dose days (NaN: not given),
            slots in policy order.
        """
        from pkpd.strategies.population import BaseDose, Population
        from pkpd.strategies.simulate import simulate_strategies

        vecs = np.atleast_2d(np.asarray(vecs, float))
        thetas, omegas = [], []
        for vec in vecs:
            theta, omega, _ = self._assemble_np(vec)
            thetas.append(theta)
            omegas.append(omega)
        thetas, omegas = np.asarray(thetas), np.asarray(omegas)
        out = []
        n = self.design.n_patients
        for arm in self.arms:
            s = arm["strategy"]
            if s is None or not s.reactive:
                out.append(None)
                continue
            base = tuple(
                BaseDose(
                    r, np.full(n, float(d)), np.broadcast_to(np.asarray(a, float), (n,)).copy()
                )
                for r, d, a in arm["base"]
            )
            width = sum(p.max_doses for p in s.reactive)
            slots = np.full((len(vecs), n, width), np.nan)
            for start in range(0, len(vecs), chunk):
                sel = slice(start, min(start + chunk, len(vecs)))
                d = thetas[sel].shape[0]
                pop = Population(
                    thetas[sel],
                    omegas[sel],
                    self._z,
                    self._u,
                    arm["cov"],
                    base,
                    "aggregate design",
                    np.arange(1, n + 1),
                    arm["provided"],
                )
                sim = simulate_strategies(
                    self.model,
                    pop,
                    [s],
                    grid=self.design.grid,
                    solver=self.solver,
                    keep_trajectories=d * n,
                )
                got = np.asarray(sim["reactive_time"].values[0])[:, :width]
                pair_d = np.asarray(sim["pair_draw"].values)
                pair_p = np.asarray(sim["pair_patient"].values)
                slots[start + pair_d, pair_p] = got
            out.append(slots)
        return out

    def _make_data(self, vec: np.ndarray) -> dict[str, Any]:
        """Event tables, times and treatment constraints for the solves at ``vec``."""
        found = self._find_doses(np.asarray(vec, float)[None])
        return self._data_from_slots([None if f is None else f[0] for f in found])

    def _data_from_slots(self, slots_per_arm: list[np.ndarray | None]) -> dict[str, Any]:
        """Event tables, times and treatment constraints for given reactive dose times."""
        from pkpd import units as U
        from pkpd.strategies.simulate import _Column, _event_table, _Resolver

        model = self.model
        n = self.design.n_patients
        times = self._times_days
        tf = U.factor("day", model.time_unit)
        tables = []
        widths = []
        columns_per_arm = []
        for arm, slots in zip(self.arms, slots_per_arm, strict=True):
            idx = np.arange(n)
            resolver = _Resolver(model, arm["cov"], idx)
            cols = [
                _Column(
                    np.full(n, float(d) * tf),
                    np.broadcast_to(np.asarray(a, float), (n,)),
                    int(model.dose_targets[r]),
                    0.0,
                    np.broadcast_to(np.asarray(a) > 0, (n,)),
                )
                for r, d, a in arm["base"]
            ]
            s = arm["strategy"]
            if s is not None:
                for reg in s.regimens:
                    for day in reg.times():
                        cols.append(resolver.column(reg.dose, day, np.ones(n, bool)))
                k0 = 0
                for pol in s.reactive:
                    for k in range(pol.max_doses):
                        st = slots[:, k0 + k]
                        on = np.isfinite(st)
                        cols.append(resolver.column(pol.dose, np.where(on, st, 0.0), on))
                    k0 += pol.max_doses
            columns_per_arm.append(cols)
            widths.append(sum(2 if c.duration > 0 else 1 for c in cols))
        width = max(widths + [1])
        for cols in columns_per_arm:
            tables.append(_event_table(cols, width, n))
        ev = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
        a = len(self.arms)
        t_arr = np.broadcast_to(times * tf, (a * n, times.size)).copy()
        seq = np.full(t_arr.shape, 0.5)
        cov = np.concatenate([arm["cov"] for arm in self.arms])
        gt, le = self._constraints(slots_per_arm, times)
        u = np.tile(self._u, (a, 1))
        noise = {}
        if (self.scale_index >= 0).any():
            from pkpd.strategies.simulate import day_noise, grading_days

            days = grading_days(times)
            per_q = [  # the same patients' days in every arm: drawn once, tiled
                np.asarray(day_noise(jnp.asarray(self._u[:, q]), days))
                if self.scale_index[q] >= 0
                else np.zeros((n, times.size))
                for q in range(self._u.shape[1])
            ]
            noise = {"noise": jnp.asarray(np.tile(np.stack(per_q, axis=-1), (a, 1, 1)))}
        data = {
            "ev": event_arrays(ev),
            "t": jnp.asarray(t_arr),
            "seq": jnp.asarray(seq),
            "cov": jnp.asarray(cov),
            "z": jnp.asarray(np.tile(self._z, (a, 1))),
            "gt": jnp.asarray(gt),
            "le": jnp.asarray(le),
            "e": jnp.asarray(np.log(u) - np.log1p(-u)),
            **noise,
        }
        self._slots = slots_per_arm
        return data

    def _constraints(self, slots_per_arm: list, times: np.ndarray) -> tuple[np.ndarray, ...]:
        """Masks ``(A*N, Q, K, T)``: ``gt``: ``e > c_k - latent(t)``; ``le``: ``e <= ...``."""
        n = self.design.n_patients
        a = len(self.arms)
        shape = (a * n, len(self.ordinal), self.n_cut, times.size)
        gt = np.zeros(shape, bool)
        le = np.zeros(shape, bool)
        for ai, (arm, slots) in enumerate(zip(self.arms, slots_per_arm, strict=True)):
            s = arm["strategy"]
            if s is None or slots is None:
                continue
            rows = slice(ai * n, (ai + 1) * n)
            k0 = 0
            for pol in s.reactive:
                st = slots[:, k0 : k0 + pol.max_doses]
                k0 += pol.max_doses
                trig = pol.trigger
                if trig.quantity not in self.ord_names:
                    continue  # a continuous trigger does not depend on the offsets
                if trig.persist > 0:
                    raise NotImplementedError(
                        "aggregate likelihood: reactive triggers with 'persist' are not supported"
                    )
                qi = self.ord_names.index(trig.quantity)
                levels = np.asarray(self.ordinal[qi].levels, float)
                ok = {
                    ">=": levels >= trig.threshold,
                    ">": levels > trig.threshold,
                    "<=": levels <= trig.threshold,
                    "<": levels < trig.threshold,
                }[trig.op]
                upper = trig.op in (">=", ">")
                # grade >= levels[j] <=> count >= j <=> latent + e > c_{j-1} (count index j).
                if upper:
                    if not ok.any() or ok[0]:
                        continue  # never / always true: no information on e
                    j = int(np.argmax(ok))
                else:
                    if not ok.any() or ok[-1]:
                        continue
                    j = int(np.argmin(ok))  # first level where it stops holding
                a_times = np.asarray(pol.assessments(), float)
                cols = np.searchsorted(times, a_times)
                fin = np.isfinite(st)
                for ti, (at, col) in enumerate(zip(a_times, cols, strict=True)):
                    del ti
                    before = fin & (st < at - 1e-9)
                    given = before.sum(axis=1)
                    last = np.max(np.where(before, st, -np.inf), axis=1)
                    fired = (fin & (np.abs(st - at) <= 1e-9)).any(axis=1)
                    eligible = (given < pol.max_doses) & (at >= last + pol.min_interval - 1e-9)
                    cond_true = fired
                    cond_false = eligible & ~fired
                    # cond: count >= j (upper) i.e. e > c_{j-1} - L; or count < j.
                    if upper:
                        gt[rows, qi, j - 1, col] |= cond_true
                        le[rows, qi, j - 1, col] |= cond_false
                    else:
                        le[rows, qi, j - 1, col] |= cond_true
                        gt[rows, qi, j - 1, col] |= cond_false
        return gt, le

    def refresh(self, vec: Any = None) -> int:
        """(Re)build the solves' inputs at ``vec``: reactive dose times found at these values.

        Parameters
        ----------
        vec : array_like, optional
            Parameter vector (default `initial`).

        Returns
        -------
        int
            Virtual patients whose reactive dose times changed (0 the first time, and always
            0 without treatment).
        """
        vec = self.initial if vec is None else np.asarray(vec, float)
        old = getattr(self, "_slots", None)
        self.data = self._make_data(vec)
        self._data_at = vec.copy()
        if self._latent_const is not None:
            self.data["latent"] = self._latent_const(self.data)
        if old is None:
            return 0
        changed = 0
        for a, b in zip(old, self._slots, strict=True):
            if a is None:
                continue
            same = (np.isnan(a) & np.isnan(b)) | (
                np.abs(np.nan_to_num(a) - np.nan_to_num(b)) < 1e-9
            )
            changed += int((~same.all(axis=1)).sum())
        return changed

    def _ensure_data(self) -> dict[str, Any]:
        if self.data is None:
            self.refresh()
        return self.data

    # ---------------------------------------------------------------- the JAX core

    def _assemble_np(self, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        theta = self.theta0.copy()
        theta[self._theta_idx] = np.asarray(vec)[self._theta_pos]
        omega = self.omega0.copy()
        omega[self._omega_idx] = np.asarray(vec)[self._omega_pos]
        shifts = np.zeros(len(self.shift_names))
        shifts[self._shift_idx] = np.asarray(vec)[self._shift_pos]
        return theta, omega, shifts

    def _compile(self) -> None:
        model = self.model
        solver = dataclasses.replace(self.solver, adjoint=diffrax.ForwardMode())
        ord_endpoint = jnp.asarray(self.ord_endpoint)
        theta0 = jnp.asarray(self.theta0)
        omega0 = jnp.asarray(self.omega0)
        theta_pos = jnp.asarray(self._theta_pos, int)
        theta_idx = jnp.asarray(self._theta_idx, int)
        omega_pos = jnp.asarray(self._omega_pos, int)
        omega_idx = jnp.asarray(self._omega_idx, int)
        shift_pos = jnp.asarray(self._shift_pos, int)
        shift_idx = jnp.asarray(self._shift_idx, int)
        n_shift = len(self.shift_names)
        struct_pos = jnp.asarray(self._struct_pos, int)
        observe = jax.vmap(jax.vmap(model.observe, in_axes=(0, 0, None)), in_axes=(0, 0, 0))

        def assemble(vec):
            theta = theta0.at[theta_idx].set(vec[theta_pos])
            omega = omega0.at[omega_idx].set(vec[omega_pos])
            shifts = jnp.zeros(n_shift).at[shift_idx].set(vec[shift_pos])
            return theta, omega, shifts

        def latent_at(theta, omega, data):
            eta = data["z"] * omega[None, :]
            p = jax.vmap(model.individual, in_axes=(None, 0, 0))(theta, eta, data["cov"])
            res = solve_batch(model, solver, data["ev"], data["t"], data["seq"], p)
            return observe(data["t"], res.y, p)[:, :, ord_endpoint]  # (AN, T, Q)

        vec0 = jnp.asarray(self.initial)

        def latent_of_struct(s, data):
            vec = vec0.at[struct_pos].set(s)
            theta, omega, _ = assemble(vec)
            return latent_at(theta, omega, data)

        @jax.custom_vjp
        def latent_s(s, data):
            return latent_of_struct(s, data)

        def latent_fwd(s, data):
            # Forward sensitivities: one tangent per structural parameter (a handful), pushed
            # through the solve with diffrax.ForwardMode, as in pkpd.inference.predict.
            def along(k):
                tangent = jnp.zeros_like(s).at[k].set(1.0)
                return jax.jvp(lambda x: latent_of_struct(x, data), (s,), (tangent,))

            primal, jac = jax.vmap(along)(jnp.arange(s.shape[0]))
            return primal[0], jac

        def latent_bwd(jac, g):
            return jnp.einsum("k...,...->k", jac, g), None

        latent_s.defvjp(latent_fwd, latent_bwd)
        has_struct = self._struct_pos.size > 0

        def latent_fn(vec, data):
            if not has_struct:
                return data["latent"]
            return latent_s(vec[struct_pos], data)

        self._latent_const = None
        if not has_struct:
            self._latent_const = jax.jit(lambda data: latent_at(theta0, omega0, data))

        rows = self.rows
        r_arm = jnp.asarray([r.arm for r in rows], int)
        r_q = jnp.asarray([r.q for r in rows], int)
        r_lo = jnp.asarray([r.j_lo for r in rows], int)
        r_hi = jnp.asarray([r.j_hi for r in rows], int)
        r_shift = jnp.asarray([r.shift for r in rows], int)
        r_onset = np.array([r.kind == "onset" for r in rows])
        medians = np.array([r.median if r.kind == "onset" else 0.0 for r in rows])
        grid = self.design.grid
        pos = np.clip(np.searchsorted(grid, medians, side="right") - 1, 0, grid.size - 2)
        w = np.clip((medians - grid[pos]) / (grid[pos + 1] - grid[pos]), 0.0, 1.0)
        r_pos = jnp.asarray(pos, int)
        r_w = jnp.asarray(w)
        r_onset_j = jnp.asarray(r_onset)
        n_arm = len(self.arms)
        n_pat = self.design.n_patients
        k_cut = self.n_cut
        cut_index = jnp.asarray(self.cut_index, int)
        # First grade count each shift lowers the cutpoints from: a grading scale's from
        # SHIFT_FROM_GRADE, a definition's from grade 1; the last row (index -1) is no shift.
        scale_from = [_grade_index(o.levels, SHIFT_FROM_GRADE) or k_cut for o in self.ordinal]
        from_grade = jnp.asarray(
            [scale_from] * len(self.grading_shifts)
            + [[1] * len(self.ordinal)] * (len(self.definition_shifts) + 1),
            int,
        )

        reactive = any(a["strategy"] is not None and a["strategy"].reactive for a in self.arms)
        noisy = bool((self.scale_index >= 0).any())
        has_scale = jnp.asarray(self.scale_index >= 0)
        scale_index = jnp.asarray(np.maximum(self.scale_index, 0), int)

        def per_patient(vec, data):
            """``(R, N)`` per-patient probabilities of every row, and onset denominators."""
            theta, _, shifts = assemble(vec)
            lat = latent_fn(vec, data)  # (AN, T, Q)
            if noisy:  # the grading day's noise, fixed per virtual patient (as z and e)
                scale = jnp.where(has_scale, theta[scale_index], 0.0)
                lat = lat + scale[None, None, :] * data["noise"]
            grid_cols = jnp.asarray(self._grid_cols, int)
            lg = lat[:, grid_cols, :]  # (AN, G, Q)
            peak = jnp.max(lg, axis=1)  # (AN, Q)
            running = jax.lax.cummax(lg, axis=1)
            cuts = theta[cut_index]  # (Q, K)
            # Offset intervals from the treatment decisions (-inf, inf without treatment).
            if reactive:
                thr = cuts[None, :, :, None] - jnp.transpose(lat, (0, 2, 1))[:, :, None, :]
                lo = jnp.max(jnp.where(data["gt"], thr, -jnp.inf), axis=(2, 3))  # (AN, Q)
                hi = jnp.min(jnp.where(data["le"], thr, jnp.inf), axis=(2, 3))
            else:
                lo = jnp.full(peak.shape, -jnp.inf)
                hi = jnp.full(peak.shape, jnp.inf)
            e = data["e"]
            peak = peak.reshape(n_arm, n_pat, -1)
            running = running.reshape(n_arm, n_pat, grid.size, -1)
            lo = lo.reshape(n_arm, n_pat, -1)
            hi = hi.reshape(n_arm, n_pat, -1)
            e = e.reshape(n_arm, n_pat, -1)

            def sf(j, q, arm, value, shift):
                """P(count >= j) per patient: e > c_{j-1} - value."""
                jj = jnp.clip(j - 1, 0, k_cut - 1)
                padded = jnp.concatenate([shifts, jnp.zeros(1)])  # index -1: no shift
                c = cuts[q, jj] - jnp.where(j >= from_grade[shift, q], padded[shift], 0.0)
                p = _cond_sf(c - value, lo[arm, :, q], hi[arm, :, q], e[arm, :, q])
                return jnp.where(j <= 0, 1.0, jnp.where(j > k_cut, 0.0, p))

            def one(arm, q, j_lo, j_hi, shift, onset, p0, w0):
                value = peak[arm, :, q]
                at_m = (1 - w0) * running[arm, :, p0, q] + w0 * running[arm, :, p0 + 1, q]
                value_num = jnp.where(onset, at_m, value)
                num = sf(j_lo, q, arm, value_num, shift) - sf(j_hi, q, arm, value_num, shift)
                den = sf(1, q, arm, value, shift)
                return num, den

            return jax.vmap(one)(r_arm, r_q, r_lo, r_hi, r_shift, r_onset_j, r_pos, r_w)

        def probabilities(vec, data):
            num, den = per_patient(vec, data)
            p = jnp.mean(num, axis=1)
            ratio = p / jnp.mean(den, axis=1)
            return jnp.where(r_onset_j, ratio, p)

        term = np.array([r.term for r in rows])
        kind = np.array([r.kind for r in rows])
        count = np.array([r.count for r in rows])
        n_obs = np.array([r.n for r in rows])
        use_row = term >= 0
        binom = np.isin(kind, ("binomial", "onset"))
        # Normalising constants (log binomial / multinomial coefficients, real-valued counts).
        const = 0.0
        for t in np.unique(term[use_row]):
            sel = term == t
            nn = n_obs[sel][0]
            if binom[sel][0]:
                c = count[sel][0]
                const += (
                    special.gammaln(nn + 1) - special.gammaln(c + 1) - special.gammaln(nn - c + 1)
                )
            else:
                const += special.gammaln(nn + 1) - special.gammaln(count[sel] + 1).sum()
        w_pos = jnp.asarray(np.where(use_row, count, 0.0))
        w_neg = jnp.asarray(np.where(use_row & binom, n_obs - count, 0.0))
        tiny = 1e-300

        def loglik(vec, data):
            p = probabilities(vec, data)
            p = jnp.clip(p, tiny, 1.0 - 1e-16)
            ll = jnp.sum(w_pos * jnp.log(p)) + jnp.sum(w_neg * jnp.log1p(-p)) + const
            return jnp.where(jnp.isfinite(ll), ll, jnp.nan)

        self._per_patient = jax.jit(per_patient)
        self._probabilities = jax.jit(probabilities)
        self._loglik = loglik
        self._loglik_jit = jax.jit(loglik)
        self._value_and_grad = jax.jit(jax.value_and_grad(loglik))

    # ---------------------------------------------------------------- public evaluation

    def _vec(self, vec: Any) -> jax.Array:
        vec = self.initial if vec is None else np.asarray(vec, float)
        if vec.shape != (len(self.parameters),):
            raise ValueError(
                f"expected {len(self.parameters)} values ({self.parameters}), got shape {vec.shape}"
            )
        return jnp.asarray(vec)

    def loglik(self, vec: Any = None) -> float:
        """Log-likelihood (natural log; binomial / multinomial with normalising constants).

        Parameters
        ----------
        vec : array_like, optional
            Values of `parameters` (default `initial`). Reactive dose times are those of the
            last `refresh` (found at `initial` the first time).

        Returns
        -------
        float
            NaN when a solve failed.
        """
        return float(self._loglik_jit(self._vec(vec), self._ensure_data()))

    def value_and_grad(self, vec: Any = None) -> tuple[float, np.ndarray]:
        """Log-likelihood and its gradient with respect to `parameters`."""
        v, g = self._value_and_grad(self._vec(vec), self._ensure_data())
        return float(v), np.asarray(g, float)

    def jax_loglik(self) -> Callable[[jax.Array], jax.Array]:
        """Return a pure JAX function ``vec -> log-likelihood`` (current dose times held fixed).

        Returns
        -------
        callable
            Jittable and differentiable in reverse mode (what `pytensor.wrap_jax` needs).
        """
        data = self._ensure_data()
        fn = self._loglik

        def loglik(vec: jax.Array) -> jax.Array:
            # The data are constants of whatever program this ends up in; the barrier keeps XLA
            # from constant-folding the event sorting of thousands of virtual patients.
            return fn(vec, jax.lax.optimization_barrier(data))

        return loglik

    def probabilities(self, vec: Any = None) -> np.ndarray:
        """Predicted probability of every row (`rows`) at ``vec``."""
        return np.asarray(self._probabilities(self._vec(vec), self._ensure_data()))

    def probabilities_many(self, vecs: np.ndarray, chunk: int = 16) -> np.ndarray:
        """Predicted probabilities at many parameter vectors (e.g. posterior draws).

        Reactive dose times are found anew for every vector (in batches of ``chunk``); the
        dose times of the last `refresh` are restored afterwards.

        Parameters
        ----------
        vecs : numpy.ndarray
            ``(S, P)``.
        chunk : int, optional

        Returns
        -------
        numpy.ndarray
            ``(S, R)``, rows as in `rows`.
        """
        vecs = np.atleast_2d(np.asarray(vecs, float))
        saved = (self.data, self._data_at, getattr(self, "_slots", None))
        out = []
        try:
            for start in range(0, len(vecs), chunk):
                part = vecs[start : start + chunk]
                found = self._find_doses(part, chunk=chunk)
                for i, vec in enumerate(part):
                    self.data = self._data_from_slots([None if f is None else f[i] for f in found])
                    if self._latent_const is not None:
                        self.data["latent"] = self._latent_const(self.data)
                    out.append(np.asarray(self._probabilities(jnp.asarray(vec), self.data)))
        finally:
            self.data, self._data_at, self._slots = saved
        return np.asarray(out)

    def rates(self, vec: Any = None) -> pd.DataFrame:
        """Observed and predicted rates of every outcome row, with their standard errors.

        Returns
        -------
        pandas.DataFrame
            One row per likelihood row: ``trial``, ``outcome``, ``kind`` (``binomial``,
            ``category`` of a grade distribution, ``onset`` or ``report``: shown, implied by a
            distribution), ``n``, ``observed`` (fraction), ``predicted``, ``mc_se`` (i.i.d. SE
            of the virtual-patient mean; delta method for onset ratios), ``data_se``
            (binomial SE at the study's n), ``mc_ratio`` = mc_se / data_se, ``derived``.
        """
        vec = self._vec(vec)
        data = self._ensure_data()
        num, den = (np.asarray(x) for x in self._per_patient(vec, data))
        p = num.mean(axis=1)
        d = den.mean(axis=1)
        n_v = num.shape[1]
        out = []
        for r, row in enumerate(self.rows):
            if row.kind == "onset":
                f = p[r] / d[r] if d[r] > 0 else np.nan
                pred = f
                mc = (
                    np.std(num[r] - f * den[r], ddof=1) / (np.sqrt(n_v) * d[r])
                    if d[r] > 0
                    else np.nan
                )
            else:
                pred = p[r]
                mc = np.std(num[r], ddof=1) / np.sqrt(n_v)
            obs = row.count / row.n
            data_se = np.sqrt(max(obs * (1 - obs), pred * (1 - pred), 1e-12) / row.n)
            out.append(
                {
                    "trial": row.trial,
                    "outcome": row.label,
                    "kind": row.kind,
                    "n": row.n,
                    "observed": obs,
                    "predicted": pred,
                    "mc_se": mc,
                    "data_se": data_se,
                    "mc_ratio": mc / data_se,
                    "derived": row.derived,
                }
            )
        return pd.DataFrame(out)

    def mc_error(
        self,
        vec: Any = None,
        *,
        replicates: int = 0,
        warn: bool = True,
        fraction: float = MC_WARN_FRACTION,
    ) -> pd.DataFrame:
        """Monte-Carlo error of every predicted rate against the data's binomial SE.

        Parameters
        ----------
        vec : array_like, optional
            Where (e.g. the posterior median); default `initial`.
        replicates : int, optional
            Also evaluate this many independently scrambled Sobol designs (same size, new
            seeds; reactive doses re-found) and report the SD of their estimates (``rqmc_se``:
            the error of one randomised-QMC design, usually well below the i.i.d. ``mc_se``).
        warn : bool, optional
            Warn (`AggregateWarning`) when an error exceeds ``fraction`` of the data SE.
        fraction : float, optional

        Returns
        -------
        pandas.DataFrame
            `rates` plus ``rqmc_se`` and ``rqmc_ratio`` when ``replicates >= 2``, and ``flag``.
        """
        vec = self._vec(vec)
        table = self.rates(vec)
        err = table["mc_se"].to_numpy()
        if replicates >= 2:
            saved = (
                self._z,
                self._u,
                self.arms,
                self._trial_arm,
                self.data,
                self._data_at,
                getattr(self, "_slots", None),
            )
            estimates = []
            try:
                for r in range(replicates):
                    self._build_arms(self.design.seed + 1000 * (r + 1))
                    self._slots = None
                    self.refresh(np.asarray(vec))
                    estimates.append(self.probabilities(vec))
            finally:
                (
                    self._z,
                    self._u,
                    self.arms,
                    self._trial_arm,
                    self.data,
                    self._data_at,
                    self._slots,
                ) = saved
            table["rqmc_se"] = np.std(np.asarray(estimates), axis=0, ddof=1)
            table["rqmc_ratio"] = table["rqmc_se"] / table["data_se"]
            err = table["rqmc_se"].to_numpy()
        table["flag"] = err > fraction * table["data_se"].to_numpy()
        if warn and table["flag"].any():
            bad = table[table["flag"]]
            lines = ", ".join(f"{t}:{o}" for t, o in zip(bad["trial"], bad["outcome"], strict=True))
            warnings.warn(
                f"Monte-Carlo error of the aggregate likelihood exceeds {fraction:.0%} of the "
                f"data's binomial SE for {lines}: use more virtual patients "
                f"(VirtualDesign(n_patients=...), now {self.design.n_patients})",
                AggregateWarning,
                stacklevel=2,
            )
        return table

    def ordered(self, vecs: np.ndarray) -> np.ndarray:
        """Whether every ordinal endpoint's cutpoints increase at each of ``vecs`` (S, P)."""
        vecs = np.atleast_2d(np.asarray(vecs, float))
        ok = np.ones(vecs.shape[0], bool)
        for vec_i, vec in enumerate(vecs):
            theta, _, _ = self._assemble_np(vec)
            cuts = theta[self.cut_index]
            ok[vec_i] = bool(np.all(np.diff(cuts, axis=1) > 0))
        return ok

    def treated_fraction(self) -> pd.DataFrame:
        """Share of virtual patients who got each reactive drug (dose times of the last refresh).

        Returns
        -------
        pandas.DataFrame
            ``trial``, ``drug``, ``fraction`` (of all virtual patients of the trial's arm).
        """
        self._ensure_data()
        out = []
        for trial in self.trials:
            arm = self._trial_arm[trial.id]
            s = self.arms[arm]["strategy"]
            slots = self._slots[arm]
            if s is None or slots is None:
                continue
            k0 = 0
            for pol in s.reactive:
                got = np.isfinite(slots[:, k0 : k0 + pol.max_doses]).any(axis=1)
                k0 += pol.max_doses
                out.append(
                    {"trial": trial.id, "drug": pol.dose.drug, "fraction": float(got.mean())}
                )
        return pd.DataFrame(out, columns=["trial", "drug", "fraction"])

    # ---------------------------------------------------------------- PyMC

    def potential(self, vec: Any) -> Any:
        """Return the log-likelihood as a PyTensor expression of a vector of `parameters`.

        One `pytensor.wrap_jax` op around `jax_loglik` (reactive dose times held fixed at the
        last `refresh`), with its JAX gradient, as the prediction op of `build_model`.
        """
        from pytensor import wrap_jax

        return wrap_jax(self.jax_loglik())(vec)

    def add_to_model(self, values: Mapping[str, Any] | None = None, name: str = "aggregate") -> Any:
        """Add the log-likelihood to the PyMC model in context as ``pm.Potential(name)``.

        Parameters
        ----------
        values : mapping, optional
            Tensors of parameters that already exist (e.g. ``build_model``'s); other
            `parameters` are looked up by name in the model, else created from `priors`.
        name : str, optional

        Returns
        -------
        TensorVariable
            The potential.
        """
        import pymc as pm
        import pytensor.tensor as pt

        from pkpd.inference.builder import prior_variable

        pm_model = pm.modelcontext(None)
        parts = []
        for p in self.parameters:
            if values is not None and p in values:
                parts.append(values[p])
            elif p in pm_model.named_vars:
                parts.append(pm_model[p])
            else:
                prior = self.priors.get(p)
                if prior is None:
                    raise ValueError(f"parameter {p!r} has no prior: give priors={{...}}")
                parts.append(prior_variable(p, prior))
        vec = pt.stack([pt.as_tensor(x, dtype="float64").reshape(()) for x in parts])
        return pm.Potential(name, self.potential(vec))


def _cond_sf(t: jax.Array, lo: jax.Array, hi: jax.Array, e: jax.Array) -> jax.Array:
    """``P(e > t | lo < e <= hi)`` for a standard logistic ``e`` (elementwise).

    Differences of the CDF are taken on the side where they are accurate; if the interval has
    numerically no mass, the indicator of the drawn offset ``e`` is used.
    """
    x = jnp.maximum(t, lo)

    def mass(a, b):  # P(a < e <= b), a <= b
        upper = jax.nn.sigmoid(-a) - jax.nn.sigmoid(-b)  # accurate for a, b > 0
        lower = jax.nn.sigmoid(b) - jax.nn.sigmoid(a)  # accurate for a, b < 0
        return jnp.where(a > 0, upper, lower)

    num = jnp.where(x < hi, mass(x, hi), 0.0)
    den = mass(lo, hi)
    ok = den > 1e-12
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), (e > t).astype(t.dtype))


def _as_model(model: Any) -> Any:
    from pathlib import Path

    if isinstance(model, str | Path):
        from pkpd.model import load_model

        return load_model(model).compile()
    if hasattr(model, "compile") and not hasattr(model, "rhs"):
        return model.compile()
    return model
