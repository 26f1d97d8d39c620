"""The model specification: what a model file says, checked and in symbolic form.

A `ModelSpec` is built by `pkpd.model.load_model` from one or more TOML files (see
``docs/model-files.md``). Every equation has already been parsed, unit-checked and converted to
the model's units; every item remembers the file and line it came from. `ModelSpec.compile`
gives the JAX functions the solver integrates; `ModelSpec.describe` and `ModelSpec.to_latex`
render it for people.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import sympy as sp

from pkpd.model.priors import Prior

#: Residual error models of continuous observations and the sigma roles each needs.
ERROR_MODELS: dict[str, tuple[str, ...]] = {
    "additive": ("sigma",),
    "proportional": ("sigma_prop",),
    "combined": ("sigma", "sigma_prop"),
    "lognormal": ("sigma",),
    "ordinal": (),
    "none": (),
}

#: How the logistic noise of an ordinal endpoint's grades is shared across a subject's records:
#: ``"record"``, independent per record; ``"subject"``, one offset per subject for all records.
ORDINAL_OFFSETS = ("record", "subject")

#: Largest per-record noise scale (relative to the subject's logistic offset) of an ordinal
#: endpoint with ``offset = "subject"``: the likelihood's quadrature is checked up to it.
MAX_RECORD_SCALE = 0.5

#: Covariate effect forms: p *= f(cov).
COVARIATE_FORMS = ("power", "exp", "linear", "factor")


@dataclass(frozen=True)
class Where:
    """Where an item of a model file was written."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}, line {self.line}" if self.line else self.file


@dataclass(frozen=True)
class StateSpec:
    """An ODE state.

    Attributes
    ----------
    name, unit : str
        Name and unit (an amount or count, e.g. ``mg``, ``cells``; or a concentration).
    initial : sympy.Expr
        Initial value (converted to ``unit``), may use parameters and covariates.
    initial_raw : sympy.Expr
        The initial value as written.
    description : str
        What the state is.
    where : Where
        File and line.
    """

    name: str
    unit: str
    initial: sp.Expr
    initial_raw: sp.Expr
    description: str
    where: Where


@dataclass(frozen=True)
class CovariateSpec:
    """A subject covariate the model uses (baseline value).

    Attributes
    ----------
    name, unit : str
        Column name in datasets (without the ``cov_`` prefix) and unit.
    default : float
        Value used when a dataset lacks it; NaN means the dataset must provide it.
    description : str
    where : Where
    """

    name: str
    unit: str
    default: float
    description: str
    where: Where


@dataclass(frozen=True)
class CovariateEffect:
    """A covariate effect on a parameter: ``p = p * f(cov)``.

    ``power``: ``(cov / ref) ** coef``; ``exp``: ``exp(coef * (cov - ref))``;
    ``linear``: ``1 + coef * (cov - ref)``; ``factor``: ``coef ** (cov - ref)`` (a categorical
    0/1 covariate with ``ref=0`` multiplies by ``coef`` when the covariate is 1).

    Attributes
    ----------
    covariate : str
        Covariate name.
    form : str
        One of `COVARIATE_FORMS`.
    coef : float or str
        A fixed number, or the name of a parameter (estimated, with its own prior).
    ref : float
        Reference value of the covariate (in its declared unit).
    """

    covariate: str
    form: str
    coef: float | str
    ref: float

    def __str__(self) -> str:
        coef = self.coef if isinstance(self.coef, str) else f"{self.coef:g}"
        return f"{self.form}({coef}, ref={self.ref:g}) of {self.covariate}"


@dataclass(frozen=True)
class ParameterSpec:
    """A model parameter.

    Attributes
    ----------
    name, unit : str
        Name and unit.
    value : float or None
        Fixed value (not estimated) when given.
    prior : Prior or None
        Prior of the typical value (estimated) when given. A parameter has a value, a prior, or
        both (then the value is the typical value used for simulation and the starting point,
        and ``fixed`` says whether fits estimate it).
    fixed : bool
        True when fits keep it at ``value``.
    iiv : Prior or None
        Prior of the between-subject standard deviation (log scale for ``iiv_scale="log"``, logit
        scale for ``"logit"``); None means no between-subject variability.
    iiv_scale : str
        ``"log"`` (log-normal, positive parameters) or ``"logit"`` (fractions in (0, 1)).
    covariates : tuple of CovariateEffect
        Covariate effects, applied in order.
    source : str
        Literature source, or ``"assumption: <reason>"``.
    description : str
    where : Where
    """

    name: str
    unit: str
    value: float | None
    prior: Prior | None
    fixed: bool
    iiv: Prior | None
    iiv_scale: str
    covariates: tuple[CovariateEffect, ...]
    source: str
    description: str
    where: Where

    @property
    def typical(self) -> float:
        """Typical value: ``value`` if given, else the prior median."""
        if self.value is not None:
            return float(self.value)
        assert self.prior is not None
        return self.prior.median()

    @property
    def estimated(self) -> bool:
        """Whether a fit estimates this parameter's typical value."""
        return not self.fixed

    @property
    def is_assumption(self) -> bool:
        """Whether the source is an explicit unsourced assumption."""
        return self.source.strip().lower().startswith("assumption")


@dataclass(frozen=True)
class DerivedSpec:
    """A named intermediate expression (algebraic, evaluated in file order)."""

    name: str
    expr: sp.Expr
    raw: sp.Expr
    unit: str
    description: str
    where: Where


@dataclass(frozen=True)
class DoseSpec:
    """A dose route: which state a dataset's dose enters and how.

    Attributes
    ----------
    name : str
        Route name (usable as CMT in datasets).
    compartment : str
        Target state.
    amount_unit : str
        Unit of AMT in datasets for this route (per unit of ``per`` when given).
    per : str or None
        Covariate that AMT is per (``"WT"`` for mg/kg dosing), else None.
    lag, bioavailability : sympy.Expr
        Lag time (model time unit) and fraction absorbed, converted; may use parameters.
    lag_raw, bioavailability_raw : sympy.Expr
        As written.
    scale : sympy.Expr
        Factor from AMT to the state's unit (unit conversion, times the ``per`` covariate).
    where : Where
    """

    name: str
    compartment: str
    amount_unit: str
    per: str | None
    lag: sp.Expr
    lag_raw: sp.Expr
    bioavailability: sp.Expr
    bioavailability_raw: sp.Expr
    scale: sp.Expr
    where: Where


@dataclass(frozen=True)
class ObservationSpec:
    """An observation model (endpoint).

    Attributes
    ----------
    name : str
        Endpoint name (usable as DVID in datasets).
    expr, raw : sympy.Expr
        Prediction (converted to ``unit``) and as written. For ``error="ordinal"`` it is the
        latent severity (dimensionless).
    unit : str
        Unit of observations.
    dvid : int
        DVID code in datasets.
    error : str
        One of `ERROR_MODELS`.
    sigma : dict of str to str
        Residual-error role (``sigma``, ``sigma_prop``) to parameter name.
    cutpoints : tuple of str
        For ordinal endpoints: parameters holding the increasing cutpoints (K-1 for K levels).
    levels : tuple of int
        For ordinal endpoints: the observed values (e.g. grades 0..4).
    offset : str
        For ordinal endpoints: one of `ORDINAL_OFFSETS`, how the logistic noise is shared across
        a subject's records (``"record"`` for other endpoints, where it has no meaning).
    record_scale : str or None
        With ``offset = "subject"``: the parameter holding the scale ``s`` of an independent
        logistic noise per record on top of the subject's offset (latent ``f_t + e + s d_t``);
        None for none (the grades then follow the latent course exactly).
    lloq : float or None
        Default lower limit of quantification (endpoint unit), used when a dataset gives none.
    description : str
    where : Where
    """

    name: str
    expr: sp.Expr
    raw: sp.Expr
    unit: str
    dvid: int
    error: str
    sigma: dict[str, str]
    cutpoints: tuple[str, ...]
    levels: tuple[int, ...]
    lloq: float | None
    description: str
    where: Where
    offset: str = "record"
    record_scale: str | None = None


@dataclass(frozen=True)
class AnalyticRoles:
    """Closed-form solution roles declared in ``[model.analytic]``."""

    kind: str
    parameters: dict[str, str]
    central: str
    depot: str | None
    peripheral: str | None


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A loaded, checked model.

    Attributes
    ----------
    name, description : str
    time_unit : str
        Unit of time inside the model.
    states, parameters, covariates, derived, doses, observations : dict
        By name, in file order (included components first).
    equations : dict of str to (sympy.Expr, sympy.Expr)
        ``d state / dt`` per state: ``(converted, raw)``; the converted form is in state unit
        per model time unit.
    analytic : AnalyticRoles or None
    files : dict of str to str
        Every file read (path -> text), the main file first: for provenance and hashing.
    references : tuple of str
        Literature the file cites (``[model] references``).
    """

    name: str
    description: str
    time_unit: str
    states: dict[str, StateSpec]
    parameters: dict[str, ParameterSpec]
    covariates: dict[str, CovariateSpec]
    derived: dict[str, DerivedSpec]
    equations: dict[str, tuple[sp.Expr, sp.Expr]]
    doses: dict[str, DoseSpec]
    observations: dict[str, ObservationSpec]
    analytic: AnalyticRoles | None = None
    files: dict[str, str] = field(default_factory=dict)
    references: tuple[str, ...] = ()

    @cached_property
    def hash(self) -> str:
        """SHA-256 of the model's files (content and order): identifies the model in saved fits."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.files.values())).encode())
        return h.hexdigest()

    @property
    def main_file(self) -> str:
        """Path of the main model file."""
        return next(iter(self.files), "")

    @property
    def text(self) -> str:
        """Text of the main model file."""
        return next(iter(self.files.values()), "")

    def typical_values(self) -> dict[str, float]:
        """Typical value of every parameter (``value`` or prior median), by name."""
        return {n: p.typical for n, p in self.parameters.items()}

    def estimated(self) -> list[str]:
        """Names of the parameters whose typical values a fit estimates."""
        return [n for n, p in self.parameters.items() if p.estimated]

    def assumptions(self) -> list[str]:
        """Names of the parameters whose source is an explicit assumption."""
        return [n for n, p in self.parameters.items() if p.is_assumption]

    def compile(self) -> Any:
        """Compile to JAX (cached per spec object).

        Returns
        -------
        CompiledModel
        """
        from pkpd.model.compile import compile_spec

        cached = self.__dict__.get("_compiled")
        if cached is None:
            cached = compile_spec(self)
            object.__setattr__(self, "_compiled", cached)
        return cached

    def with_priors(self, priors: dict[str, Prior], suffix: str = "modified") -> ModelSpec:
        """Return a copy with some typical-value priors replaced (e.g. for sensitivity runs).

        Parameters
        ----------
        priors : dict of str to Prior
            New priors by parameter name.
        suffix : str
            Appended to the name.

        Returns
        -------
        ModelSpec
        """
        from dataclasses import replace

        params = dict(self.parameters)
        for name, prior in priors.items():
            if name not in params:
                raise KeyError(f"model {self.name!r} has no parameter {name!r}")
            old = params[name]
            params[name] = replace(old, prior=prior, value=None if not old.fixed else old.value)
        name = f"{self.name}[{suffix}]"
        files = self._derived_files(suffix, name, params, list(priors), "with_priors")
        return replace(self, name=name, parameters=params, files=files)

    def record_scales(self) -> dict[str, float]:
        """Return the fixed ``record_scale`` of each ordinal endpoint that has one.

        Returns
        -------
        dict
            Endpoint name -> scale of its noise per record (dimensionless; endpoints without
            such noise are left out).
        """
        return {
            n: float(self.parameters[o.record_scale].value)
            for n, o in self.observations.items()
            if o.record_scale
        }

    def with_record_scale(
        self,
        scale: float,
        endpoints: Iterable[str] | None = None,
        *,
        parameter: str = "s_record",
        source: str = "assumption: day-to-day grading noise on top of the patient's offset",
    ) -> ModelSpec:
        """Return a copy whose grades carry noise per record on top of the patient's offset.

        The programmatic form of a model file's ``record_scale`` key: a fixed, dimensionless
        parameter ``parameter`` of value ``scale`` becomes the ``record_scale`` of the ordinal
        endpoints (``latent + e + scale * d`` with ``d`` standard logistic per record;
        docs/model-files.md), replacing the one they have (the library's grades have
        ``s_grade_day``; that parameter stays, unused by them). Cutpoints calibrated on
        worst-grade rates for one scale sit too low for a larger one
        (``scripts/prior_predictive.py --calibrate --record-scale``).

        Parameters
        ----------
        scale : float
            In ``(0, MAX_RECORD_SCALE]``.
        endpoints : iterable of str, optional
            Ordinal endpoints with ``offset = "subject"`` (default: all of them).
        parameter : str, optional
            Name of the new parameter (one scale shared by the endpoints).
        source : str, optional
            Its source.

        Returns
        -------
        ModelSpec
            Same name (the noise is part of the model's likelihood, not a profile of it).

        Raises
        ------
        ValueError
            A scale out of range, an endpoint that is not ordinal with one offset per subject,
            or no such endpoint, or a parameter name already taken.
        """
        from dataclasses import replace

        if not 0.0 < float(scale) <= MAX_RECORD_SCALE:
            raise ValueError(f"record scale {scale} must lie in (0, {MAX_RECORD_SCALE}]")
        eligible = [
            n
            for n, o in self.observations.items()
            if o.error == "ordinal" and o.offset == "subject"
        ]
        chosen = _chosen(
            eligible,
            endpoints,
            f"record_scale applies to ordinal endpoints with offset = 'subject' "
            f"({eligible} in model {self.name!r});",
        )
        if parameter in self.parameters:
            raise ValueError(f"model {self.name!r} already has a parameter {parameter!r}")
        par = ParameterSpec(
            name=parameter,
            unit="1",
            value=float(scale),
            prior=None,
            fixed=True,
            iiv=None,
            iiv_scale="log",
            covariates=(),
            source=source,
            description="scale of the per-record grading noise (record_scale)",
            where=Where("with_record_scale"),
        )
        observations = {
            n: replace(o, record_scale=parameter) if n in chosen else o
            for n, o in self.observations.items()
        }
        params = {**self.parameters, parameter: par}
        # The observations' entries as their files wrote them, plus the new key: the generated
        # file replaces them (override = true), so a saved fit reloads this model, not the one
        # without noise.
        raw = {n: {**self._observation_entry(n), "record_scale": parameter} for n in chosen}
        files = self._derived_files(
            "record_scale", self.name, params, [parameter], "with_record_scale", raw
        )
        return replace(self, parameters=params, observations=observations, files=files)

    def at_record_scale(self, scale: float | None, **kwargs: Any) -> ModelSpec:
        """Return the model with grades of noise per record ``scale``, in one call.

        The choice scripts and benchmarks offer as one option (``--record-scale``,
        ``--grade-noise``).

        Parameters
        ----------
        scale : float or None
            None: this model as it is; 0: `without_record_scale` (only the patient's offset;
            this model if no grade has noise per record); otherwise `with_record_scale`.
        **kwargs
            Passed to `with_record_scale` (``endpoints``, ``parameter``, ``source``).

        Returns
        -------
        ModelSpec
        """
        if scale is None:
            return self
        if scale == 0.0:
            return self.without_record_scale() if self.record_scales() else self
        return self.with_record_scale(scale, **kwargs)

    def without_record_scale(self, endpoints: Iterable[str] | None = None) -> ModelSpec:
        """Return a copy whose grades have no noise per record (only the patient's offset).

        The inverse of `with_record_scale`: the endpoints' ``record_scale`` is dropped, so each
        grade is ``latent + e`` cut at the cutpoints (docs/model-files.md). The scale's
        parameter stays, unused. Cutpoints calibrated with the noise sit too high without it
        (``scripts/prior_predictive.py --calibrate --record-scale 0``), and a course the latent
        cannot order has likelihood zero (NUTS diverges on the walls).

        Parameters
        ----------
        endpoints : iterable of str, optional
            Ordinal endpoints that have a ``record_scale`` (default: all of them).

        Returns
        -------
        ModelSpec
            Same name; its files say what changed, so a saved fit reloads this model.

        Raises
        ------
        ValueError
            An endpoint without noise per record, or no such endpoint.
        """
        from dataclasses import replace

        noisy = [n for n, o in self.observations.items() if o.record_scale]
        chosen = _chosen(
            noisy,
            endpoints,
            f"only endpoints with a record_scale ({noisy} in model {self.name!r}) can drop it;",
        )
        observations = {
            n: replace(o, record_scale=None) if n in chosen else o
            for n, o in self.observations.items()
        }
        raw = {
            n: {k: v for k, v in self._observation_entry(n).items() if k != "record_scale"}
            for n in chosen
        }
        files = self._derived_files(
            "no_record_scale", self.name, self.parameters, [], "without_record_scale", raw
        )
        return replace(self, observations=observations, files=files)

    def _observation_entry(self, name: str) -> dict:
        """Return the table of observation ``name`` as its model file wrote it."""
        import tomllib

        where = self.observations[name].where.file
        if where not in self.files:
            raise ValueError(f"model {self.name!r}: no file text for observation {name!r}")
        entry = dict(tomllib.loads(self.files[where])["observations"][name])
        entry.pop("override", None)
        return entry

    def _derived_files(
        self,
        label: str,
        name: str,
        params: Mapping[str, ParameterSpec],
        changed: list[str],
        written_by: str,
        observations: Mapping[str, dict] | None = None,
    ) -> dict[str, str]:
        """Return the files of a copy of this model.

        A generated main file (``<stem>.<label>.toml``, next to the main file) that includes the
        current main file and overrides the ``changed`` parameters and the ``observations``
        entries, then the current files. The copy's `hash` changes with it, and
        `pkpd.inference.load_fit` rebuilds the copy from the texts.
        """
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "profile"
        main = Path(self.main_file) if self.main_file else Path(f"{self.name}.toml")
        path = str(main.with_name(f"{main.stem}.{label}.toml"))
        text = _profile_text(self, params, changed, main.name, name, written_by, observations or {})
        return {path: text, **{k: v for k, v in self.files.items() if k != path}}

    def with_fixed(
        self, names: Iterable[str] | Mapping[str, float], *, suffix: str = "fixed"
    ) -> ModelSpec:
        """Return a copy with some parameters fixed (not estimated, no between-subject variability).

        Parameters
        ----------
        names : iterable of str, or mapping of str to float
            Parameters to fix: at their typical values (`ParameterSpec.typical`), or at the
            values given (in each parameter's unit).
        suffix : str, optional
            Appended to the name, and to the file name of the profile file (see
            `estimate_only`).

        Returns
        -------
        ModelSpec
            The other parameters keep their settings.

        Raises
        ------
        KeyError
            For a name the model does not have.
        ValueError
            For a value that is not a finite number.
        """
        values = dict(names) if isinstance(names, Mapping) else {}
        chosen = list(values) if isinstance(names, Mapping) else list(names)
        self._check_names(chosen, "fix")
        keep = [n for n in self.estimated() if n not in set(chosen)]
        iiv = [n for n, p in self.parameters.items() if p.iiv is not None and n not in chosen]
        return self._profiled(keep, iiv, values, suffix, iiv_needs_estimate=False)

    def estimate_only(
        self,
        typical: Iterable[str],
        iiv: Iterable[str] = (),
        *,
        values: Mapping[str, float] | None = None,
        suffix: str = "profile",
    ) -> ModelSpec:
        """Return a fitting profile: only the named typical values (and IIV) are estimated.

        Every other parameter is fixed at its typical value (or at ``values``) and loses its
        between-subject variability; the named ones keep their priors. This is how a large
        model is fitted to data that inform a few of its parameters: fewer unknowns and, for
        ODE models, fewer sensitivities per gradient (``docs/cart-fitting.md``).

        The copy's files start with a generated model file (next to the main file, named
        ``<stem>.<suffix>.toml``) that includes the main file and overrides the changed
        parameters (``override = true``, docs/model-files.md): the spec's `hash` changes, a
        saved fit carries the profile's text, and `pkpd.inference.load_fit` rebuilds the
        profile from it.

        Parameters
        ----------
        typical : iterable of str
            Parameters whose typical values are estimated (each needs a prior).
        iiv : iterable of str, optional
            Parameters that keep between-subject variability: a subset of ``typical``, each
            with an ``iiv`` prior in the model.
        values : mapping of str to float, optional
            Fixed values (parameter units) of some of the other parameters, e.g. the estimates
            of an earlier fitting stage; default their typical values.
        suffix : str, optional
            Appended to the model name (``name[suffix]``) and to the profile file's name.

        Returns
        -------
        ModelSpec

        Raises
        ------
        KeyError
            For a name the model does not have.
        ValueError
            For a parameter to estimate without a prior, IIV asked for a parameter without an
            ``iiv`` prior or not in ``typical``, a value given for an estimated parameter, or a
            value that is not a finite number.
        """
        typical, iiv, values = list(typical), list(iiv), dict(values or {})
        self._check_names(typical, "estimate")
        self._check_names(iiv, "give IIV to")
        self._check_names(values, "fix")
        no_prior = [n for n in typical if self.parameters[n].prior is None]
        if no_prior:
            raise ValueError(
                f"model {self.name!r}: cannot estimate {no_prior}: no prior in the model file"
            )
        both = sorted(set(values) & set(typical))
        if both:
            raise ValueError(f"values given for parameters to estimate: {both}")
        return self._profiled(typical, iiv, values, suffix, iiv_needs_estimate=True)

    def _check_names(self, names: Iterable[str], what: str) -> None:
        unknown = [n for n in names if n not in self.parameters]
        if unknown:
            raise KeyError(
                f"model {self.name!r} has no parameter(s) {unknown} to {what} "
                f"(its parameters: {', '.join(self.parameters)})"
            )

    def _profiled(
        self,
        typical: list[str],
        iiv: list[str],
        values: dict[str, float],
        suffix: str,
        iiv_needs_estimate: bool,
    ) -> ModelSpec:
        """Build the copy of `estimate_only` / `with_fixed`, its profile file first in files."""
        from dataclasses import replace

        no_iiv = [n for n in iiv if self.parameters[n].iiv is None]
        if no_iiv:
            raise ValueError(f"model {self.name!r}: {no_iiv} have no iiv prior in the model file")
        if iiv_needs_estimate:
            outside = [n for n in iiv if n not in set(typical)]
            if outside:
                raise ValueError(f"IIV asked for {outside}, whose typical values are not estimated")
        bad = {n: v for n, v in values.items() if not _finite_number(v)}
        if bad:
            raise ValueError(f"fixed values must be finite numbers, got {bad}")
        params, changed = dict(self.parameters), []
        for name, old in self.parameters.items():
            estimate = name in typical
            value = old.value if estimate else float(values.get(name, old.typical))
            new = replace(
                old, fixed=not estimate, value=value, iiv=old.iiv if name in iiv else None
            )
            if (new.fixed, new.value, new.iiv) != (old.fixed, old.value, old.iiv):
                params[name] = new
                changed.append(name)
        name = f"{self.name}[{suffix}]"
        files = self._derived_files(
            suffix, name, params, changed, "ModelSpec.estimate_only / with_fixed"
        )
        return replace(self, name=name, parameters=params, files=files)

    def describe(self) -> str:
        """Markdown description: equations, states, parameters (units, priors, sources).

        Returns
        -------
        str
        """
        from pkpd.model.render import describe

        return describe(self)

    def to_latex(self) -> str:
        """LaTeX ``align`` block of the ODE system.

        Returns
        -------
        str
        """
        from pkpd.model.render import latex_system

        return latex_system(self)

    def __repr__(self) -> str:
        return (
            f"<ModelSpec {self.name!r}: {len(self.states)} states, {len(self.parameters)} "
            f"parameters, {len(self.observations)} endpoints, time in {self.time_unit}>"
        )


def is_nan(x: Any) -> bool:
    """Whether ``x`` is a float NaN."""
    return isinstance(x, float) and math.isnan(x)


def _finite_number(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _toml_string(text: str) -> str:
    """Quote a TOML basic string (JSON escaping is valid TOML for these texts)."""
    return json.dumps(str(text), ensure_ascii=False)


def _prior_text(prior: Prior) -> str:
    """Text that parses back to exactly this prior (its own text when that does)."""
    from pkpd.model.priors import parse_prior

    try:
        if parse_prior(prior.text).params == prior.params:
            return prior.text
    except Exception:  # e.g. "... (median x2)" written by Prior.shift: not parseable
        pass
    inner = ", ".join(f"{k}={v!r}" for k, v in prior.params.items())
    return f"{prior.family}({inner})"


def _toml_value(value: Any) -> str:
    """Write a TOML value for plain model-file data (text, numbers, lists, tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _chosen(eligible: list[str], endpoints: Iterable[str] | None, message: str) -> list[str]:
    """Return ``endpoints`` (default: all ``eligible``), or raise ``message`` for others or none."""
    chosen = eligible if endpoints is None else list(endpoints)
    bad = [n for n in chosen if n not in eligible]
    if bad or not chosen:
        raise ValueError(f"{message} got {bad or chosen}")
    return chosen


def _profile_text(
    spec: ModelSpec,
    params: Mapping[str, ParameterSpec],
    changed: list[str],
    include: str,
    name: str,
    written_by: str,
    observations: Mapping[str, dict],
) -> str:
    """Write the model file of a derived model: include the model, override what changed."""
    lines = [
        f"# Model {name!r}, derived from {spec.name!r} (hash {spec.hash[:12]}) by {written_by}:",
        "# the parameters and observations below replace the model's.",
        "[model]",
        f"name = {_toml_string(name)}",
        f"description = {_toml_string(spec.description)}",
        f"time_unit = {_toml_string(spec.time_unit)}",
        f"include = [{_toml_string(include)}]",
    ]
    if spec.references:
        lines.append("references = [" + ", ".join(_toml_string(r) for r in spec.references) + "]")
    for name in changed:
        p = params[name]
        lines += ["", f"[parameters.{name}]", "override = true", f"unit = {_toml_string(p.unit)}"]
        if p.value is not None:
            lines.append(f"value = {float(p.value)!r}")
        if p.prior is not None:
            lines.append(f"prior = {_toml_string(_prior_text(p.prior))}")
        lines.append(f"fixed = {'true' if p.fixed else 'false'}")
        if p.iiv is not None:
            lines.append(f"iiv = {_toml_string(_prior_text(p.iiv))}")
        lines.append(f"iiv_scale = {_toml_string(p.iiv_scale)}")
        if p.covariates:
            effects = ", ".join(
                f"{e.covariate} = "
                + _toml_string(
                    f"{e.form}({e.coef if isinstance(e.coef, str) else repr(e.coef)}, "
                    f"ref={e.ref!r})"
                )
                for e in p.covariates
            )
            lines.append(f"covariates = {{ {effects} }}")
        lines.append(f"source = {_toml_string(p.source)}")
        lines.append(f"description = {_toml_string(p.description)}")
    for obs, entry in observations.items():
        lines += ["", f"[observations.{obs}]", "override = true"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"
