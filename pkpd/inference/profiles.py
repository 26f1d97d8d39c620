"""Fitting profiles: which parameters of a large model a fit estimates, and in which stages.

The CAR-T/CRS model (``cart_crs``) has 87 estimated parameters, 14 with between-subject
variability. A patient cohort with CAR-T counts, serum IL-6 and daily CRS grades informs a
dozen of them; the others stay at their priors whatever the data (drug PK without drug
concentrations, NET and IL-1 parameters without those assays, ICANS with few events), yet each
costs a dimension of the posterior and, for the ODE solve, one forward sensitivity per subject
in every gradient. On a 60-patient cohort one gradient of the full model did not finish
compiling and running in 10 minutes on a 2-core machine (``docs/cart-fitting.md``). A *profile*
estimates only what the design informs and fixes the rest at its typical value
(`pkpd.model.spec.ModelSpec.estimate_only`).

>>> f = fit_staged("cart_crs", cohort, profile="cart_crs_core", seed=1)
>>> f.extra["staged"]["stages"]          # every stage: model, parameters, sampler, estimates
>>> f.spec.text                          # the profile as a model file (saved with the fit)

A profile is a list of stages (`Stage`). Each stage fits one model (the profile's model or a
nested one, e.g. ``cart_kinetics`` inside ``cart_crs``) to the endpoints it names, estimating
the typical values and IIV it names; the other parameters are fixed at their typical values,
or, when an earlier stage estimated them, at that stage's estimate (the sequential approach of
PK/PD modelling: Zhang, Beal & Sheiner 2003, J Pharmacokinet Pharmacodyn 30:387). A parameter
that an earlier stage estimated and this stage estimates again starts there (``started_from``):
the earlier stage then only shortens the warm-up. Earlier stages are point estimates (MAP) or
Pathfinder; the last stage is NUTS, started where its `Stage` says (``init``: the earlier
estimates, or the joint mode, optimised from the prior medians) with its random effects
written as it says (``iiv_parameterization``). Fixing a parameter at an earlier stage's
estimate ignores its uncertainty: the last stage's intervals are conditional on it, which
`fit_staged` records (``fixed_from``) so a reader can see it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

#: Samplers an earlier (not the last) stage may use: point estimates or Pathfinder.
EARLY_SAMPLERS = ("map", "pathfinder")

#: Last-stage samplers that are NUTS (`pkpd.inference.fit`): the ones a stage's ``init`` and
#: ``iiv_parameterization`` apply to by default.
NUTS_SAMPLERS = ("auto", "nutpie", "numpyro", "pymc")


@dataclass(frozen=True)
class Stage:
    """One stage of a staged fit.

    Attributes
    ----------
    name : str
        Short name (``"kinetics"``).
    model : str or None
        Library model (or path) fitted in this stage; None: the model given to `fit_staged`.
    typical : tuple of str
        Parameters whose typical values this stage estimates.
    iiv : tuple of str
        Those of ``typical`` that keep between-subject variability.
    endpoints : tuple of str
        Endpoints of the cohort this stage fits (the other observations are left out).
    sampler : str
        ``"map"`` or ``"pathfinder"`` for an earlier stage; the last stage's is chosen by
        `fit_staged` (NUTS by default).
    reasons : dict of str to str
        Why each estimated parameter is in (what in the design informs it).
    predose_zero : tuple of str
        Endpoints that are exactly 0 before the first dose (CAR-T counts before the infusion);
        their pre-dose records are left out (`select_endpoints`).
    init : str
        Last stage only: where its NUTS chains start unless `fit_staged` is given ``init``
        (``"prior"``: the earlier stages' estimates and prior medians; ``"map"``: the joint
        mode of this stage's model, `pkpd.inference.fit`).
    iiv_parameterization : str
        Last stage only: how its NUTS writes the random effects unless `fit_staged` is given
        ``iiv_parameterization`` (``"noncentered"`` or ``"centered"``, `build_model`).
    ratios : dict of str to tuple of str
        Last stage only: parameters sampled through their ratio to others unless `fit_staged`
        is given ``ratio_parameterization`` (`pkpd.inference.ratios`).
    """

    name: str
    model: str | None
    typical: tuple[str, ...]
    iiv: tuple[str, ...]
    endpoints: tuple[str, ...]
    sampler: str = "map"
    reasons: dict[str, str] = field(default_factory=dict)
    predose_zero: tuple[str, ...] = ("cart_blood",)
    init: str = "prior"
    iiv_parameterization: str = "noncentered"
    ratios: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """A named fitting profile: stages, the last one giving the posterior.

    Attributes
    ----------
    name : str
    description : str
    stages : tuple of Stage
    """

    name: str
    description: str
    stages: tuple[Stage, ...]

    @property
    def final(self) -> Stage:
        """The last stage (the one sampled with NUTS)."""
        return self.stages[-1]


# Why each parameter is in. The virtual cohort's design (pkpd.data.virtual.SAMPLING): CAR-T
# blood counts on days 0-28 and 90, IL-6 daily in week 1 then at the CAR-T visits, CRS grades
# daily to day 28; reactive tocilizumab and dexamethasone as dose events.
_KINETICS_REASONS = {
    "rho": "expansion rate: the rise of CAR-T counts over days 1-10 (time and height of the peak)",
    "alpha": "contraction rate: the fall of counts from the peak to day 28",
    "FB": "memory fraction: the day-90 count relative to the peak",
    "V_car": "apparent volume: the day-1 count for a known dose (dose / V_car before expansion)",
    "sigma_cart": "residual SD of log counts: the scatter of ~10 counts per patient",
}
_CORE_REASONS = {
    "rho": _KINETICS_REASONS["rho"],
    "alpha": _KINETICS_REASONS["alpha"],
    # V_car only scales the observed counts (no ODE sensitivity): estimating it costs a
    # dimension, not a solve, and a pooled-MAP plug-in was 15% low (docs/cart-fitting.md).
    "V_car": _KINETICS_REASONS["V_car"],
    # FB again, with IIV: fixed at the pooled (no-IIV) MAP it was 0.0140 against the truth
    # 0.0079 on the 60-patient virtual cohort, and without IIV on it the day-90 spread went
    # into sigma_cart, as in the cart_kinetics profile (RESULTS.md, 2026-12-04 short
    # cart_crs_core run; CAR-T recovery 07:48 vs 13:42). One more tangent (8 instead of 7).
    "FB": _KINETICS_REASONS["FB"],
    "sigma_cart": _KINETICS_REASONS["sigma_cart"],
    "K_kill": "myeloid activation per engaged CAR-T cell: the timing of the IL-6 rise after "
    "the CAR-T expansion",
    "p6": "IL-6 production of the activated myeloid pool: the height of the IL-6 peak",
    "k6": "IL-6 elimination: the fall of IL-6 after the peak (daily samples in week 1)",
    "I6_0": "baseline IL-6: the day-0 (pre-infusion) samples",
    "sigma_il6": "residual SD of log IL-6: ~12 samples per patient",
    "c_crs1": "CRS cutpoints: 29 daily grades per patient (grade >= 1 is common)",
    "c_crs2": "CRS cutpoints: grade >= 2 (triggers tocilizumab in the design)",
    "c_crs3": "CRS cutpoints: grade >= 3 (rare: the least informed cutpoint)",
    "c_crs4": "CRS cutpoints: estimated with the others so they stay ordered (one ordered "
    "vector per endpoint in the builder)",
}

#: First stage of both library profiles: a pooled (no IIV) MAP of the nested kinetics model on
#: CAR-T counts.
_POOLED_KINETICS = Stage(
    name="pooled",
    model="cart_kinetics",
    typical=("rho", "alpha", "FB", "V_car", "sigma_cart"),
    iiv=(),
    endpoints=("cart_blood",),
    sampler="map",
    reasons=_KINETICS_REASONS,
)

#: The library's profiles, by name.
PROFILES: dict[str, Profile] = {
    "cart_kinetics": Profile(
        name="cart_kinetics",
        description=(
            "CAR-T kinetics only (model cart_kinetics, CAR-T blood counts): a pooled MAP of "
            "the kinetics, then NUTS from there on expansion, contraction, memory and the "
            "apparent volume, with IIV on expansion, contraction and memory"
        ),
        stages=(
            _POOLED_KINETICS,
            Stage(
                name="kinetics",
                model="cart_kinetics",
                typical=("rho", "alpha", "FB", "V_car", "sigma_cart"),
                # IIV where Stein 2019 reports the largest between-patient variability (omega
                # 0.95 on alpha, 0.89 on logit FB; rho's carries Stein's fold-expansion
                # variability). Without IIV on FB the day-90 counts' spread went into
                # sigma_cart (0.63 vs 0.56) and, with V_car fixed at the pooled MAP (427 vs
                # 500 L), alpha was missed (RESULTS.md, CAR-T recovery 07:48 vs 12:15).
                iiv=("rho", "alpha", "FB"),
                endpoints=("cart_blood",),
                reasons=_KINETICS_REASONS,
            ),
        ),
    ),
    "cart_crs_core": Profile(
        name="cart_crs_core",
        description=(
            "CAR-T kinetics, IL-6 and CRS grades (model cart_crs): a pooled MAP of the nested "
            "kinetics model on CAR-T counts, then NUTS on 14 typical values with IIV on "
            "expansion, contraction, memory, IL-6 production and baseline, started at the "
            "joint mode, random effects centred, IL-6 production sampled through its ratio "
            "to the activation threshold and IL-6 elimination"
        ),
        stages=(
            replace(_POOLED_KINETICS, name="kinetics"),
            Stage(
                name="core",
                model=None,
                typical=tuple(_CORE_REASONS),
                # IIV on the kinetics (as in the cart_kinetics profile) and on the IL-6
                # production and baseline: the between-patient spread of IL-6 peaks and
                # baselines is large (CV ~100% in the model file's IIV priors) and drives who
                # gets severe CRS.
                iiv=("rho", "alpha", "FB", "p6", "I6_0"),
                endpoints=("cart_blood", "il6", "crs_grade"),
                reasons=_CORE_REASONS,
                # From the prior medians (every patient typical) 4 chains made 5-15 warm-up
                # iterations in 12-15 minutes at 15-1000 leapfrog steps each, centred or not;
                # from the joint mode in centred coordinates 45-55 at a median ~27 steps
                # (60 patients, RESULTS.md 2026-12-05 08:53). Centred, the start's Hessian
                # scaled by its diagonal has its largest eigenvalue 4.1 against 31.7.
                init="map",
                iiv_parameterization="centered",
                # The IL-6 peaks inform p6 / (K_kill * k6) (production over activation
                # threshold and elimination), not its parts: in the kept draws of the 60-patient
                # runs the correlation of log K_kill, log k6, log p6 and the patients' log p6_i
                # had condition number 15,000-17,000, 29-40 with p6 sampled as that ratio
                # (benchmarks/ridge.py; RESULTS.md, "The IL-6 gain ridge", 2026-12-07).
                ratios={"p6": ("K_kill", "k6")},
            ),
        ),
    ),
}


def get_profile(profile: str | Profile) -> Profile:
    """Return a profile by name (`PROFILES`), or the profile given.

    Raises
    ------
    KeyError
        For an unknown name (the message lists the known ones).
    """
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    return PROFILES[profile]


def select_endpoints(
    cohort: Any,
    endpoints: Sequence[str],
    source_spec: Any,
    target_spec: Any,
    predose_zero: Sequence[str] = (),
) -> Any:
    """Keep only some endpoints' observations, and the doses the target model has routes for.

    Observations of the ``predose_zero`` endpoints recorded before a subject's first dose are
    left out too: the model predicts exactly 0 there (no CAR-T cells before the infusion), so
    a censored record's M3 term is ``log P(DV < LLOQ) = log 1 = 0`` with a zero gradient
    (`pkpd.inference.likelihood.observation_logp`): leaving it out changes nothing but the
    number of observations the fit reports.

    Parameters
    ----------
    cohort : Cohort
        Data whose DVID codes are those of ``source_spec`` (or endpoint names).
    endpoints : sequence of str
        Endpoint names to keep.
    source_spec, target_spec : ModelSpec
        The model whose codes the cohort uses, and the model to fit (its codes are written).
    predose_zero : sequence of str, optional
        Endpoints whose pre-dose observations are left out (see above).

    Returns
    -------
    Cohort
        A new cohort (source ``"<source>[endpoints]"``).

    Raises
    ------
    KeyError
        For an endpoint that either model lacks.
    """
    from pkpd.data import from_dataframe

    missing = [
        e
        for e in endpoints
        if e not in source_spec.observations or e not in target_spec.observations
    ]
    if missing:
        raise KeyError(
            f"endpoint(s) {missing} not in both {source_spec.name!r} and {target_spec.name!r}"
        )
    df = cohort.to_dataframe()
    dvid_col = next(c for c in df.columns if c.upper() == "DVID")
    cmt_col = next((c for c in df.columns if c.upper() == "CMT"), None)
    evid_col = next((c for c in df.columns if c.upper() == "EVID"), None)
    recode: dict[Any, int] = {}
    for e in endpoints:
        code = target_spec.observations[e].dvid
        recode[source_spec.observations[e].dvid] = code
        recode[e] = code
    is_obs = df[evid_col].isin([0, 2]) if evid_col is not None else df[dvid_col].notna()
    keep_obs = is_obs & df[dvid_col].map(lambda v: not pd.isna(v) and _code(v) in recode)
    keep_dose = ~is_obs
    if cmt_col is not None:
        keep_dose &= df[cmt_col].astype(str).isin(set(target_spec.doses))
    if predose_zero:
        zero_codes = {source_spec.observations[e].dvid for e in predose_zero} | set(predose_zero)
        id_col = next(c for c in df.columns if c.upper() == "ID")
        position = pd.Series(np.arange(len(df)), index=df.index)
        first_dose = position[keep_dose].groupby(df.loc[keep_dose, id_col]).min()
        before = position < df[id_col].map(first_dose).fillna(np.inf)
        zero = df[dvid_col].map(lambda v: not pd.isna(v) and _code(v) in zero_codes)
        keep_obs &= ~(zero & before)
    out = df[keep_obs | keep_dose].copy()
    out[dvid_col] = (
        out[dvid_col].map(lambda v: pd.NA if pd.isna(v) else recode[_code(v)]).astype("Int64")
    )
    return from_dataframe(
        out,
        source=f"{cohort.source}[{','.join(endpoints)}]",
        time_unit=cohort.time_unit,
        covariates=cohort.covariate_names,
    )


def _code(v: Any) -> Any:
    """Return a DVID value as the int it encodes, or the name it is."""
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


def _estimates(result: Any, names: Sequence[str]) -> dict[str, float]:
    """Posterior median (a MAP fit: its one draw) of each typical value."""
    post = result.idata.posterior
    return {n: float(np.median(np.asarray(post[n].values))) for n in names}


def fit_staged(
    spec: Any,
    cohort: Any,
    profile: str | Profile = "cart_crs_core",
    *,
    seed: int = 0,
    sampler: str = "auto",
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    init: str | None = None,
    gradient: str = "auto",
    integrator: str = "auto",
    solver: Any = None,
    progressbar: bool = False,
    sampler_kwargs: Mapping[str, Any] | None = None,
    iiv_parameterization: str | Mapping[str, str] | None = None,
    target_accept: float = 0.8,
    checkpoint: Any = None,
    ratio_parameterization: Mapping[str, Sequence[str]] | None = None,
) -> Any:
    """Fit a model in the stages of a profile; return the last stage's fit.

    Parameters
    ----------
    spec : ModelSpec or str or Path
        The full model (e.g. ``"cart_crs"``); stages with ``model=None`` fit it.
    cohort : Cohort or str
        The data (a Cohort or a bundled dataset name), with DVID codes of ``spec`` (or
        endpoint names).
    profile : str or Profile, optional
        A name from `PROFILES` or a `Profile`.
    seed : int, optional
        Random seed of every stage (the same seed gives the same result).
    sampler : str, optional
        Sampler of the last stage (`pkpd.inference.fit`; default NUTS with nutpie).
    init : str, optional
        Start of the last stage (`pkpd.inference.fit`). ``"prior"``: the estimates of earlier
        stages for the parameters it estimates again, prior medians for the rest; ``"map"``: the
        joint mode, searched for from the same starts (`fit`'s ``map_start``);
        ``"pathfinder"``: as in `fit`. Default: the last stage's ``init`` when it is sampled
        by NUTS (``"map"`` for ``cart_crs_core``), else ``"prior"``. An earlier stage always
        starts from the estimates of the stages before it.
    chains, draws, tune, gradient, integrator, solver, progressbar, sampler_kwargs, target_accept
        Settings of the last stage, passed to `pkpd.inference.fit` (earlier stages use the same
        ``gradient``, ``integrator`` and ``solver``).
    iiv_parameterization : str or mapping, optional
        How the last stage writes its random effects (`pkpd.inference.build_model`; a mapping
        names parameters of the last stage's ``iiv``). Default: the last stage's
        ``iiv_parameterization`` when it is sampled by NUTS (``"centered"`` for
        ``cart_crs_core``), else ``"noncentered"`` (a MAP, Pathfinder or ADVI fit). Earlier
        stages stay non-centred: they are MAP or Pathfinder fits.
    ratio_parameterization : mapping of str to sequence of str, optional
        Parameters of the last stage sampled through their ratio to others
        (`pkpd.inference.build_model`; ``{}`` for none). Default: the last stage's ``ratios``.
    checkpoint : str or Path, optional
        Checkpoint folder of the last stage's NUTS (`pkpd.inference.fit`): calling again with
        it redoes the earlier stages (point estimates, deterministic for a seed) and goes on
        with the last stage's chains from where they stopped.

    Returns
    -------
    Fit
        The last stage's fit: its ``spec`` is the profile (`ModelSpec.estimate_only`, saved
        with the fit); ``extra["staged"]`` records the profile and, per stage, the model and
        its hash, the estimated, fixed-from-earlier (``fixed_from``) and started-from-earlier
        (``started_from``) parameters, the endpoints, the observations used, the sampler
        settings, the estimates and the wall time.

    Raises
    ------
    KeyError
        For an unknown profile, parameter or endpoint.
    ValueError
        For an earlier stage whose sampler is not one of `EARLY_SAMPLERS`.
    """
    from pkpd.data import load_dataset
    from pkpd.inference.sample import fit
    from pkpd.model import load_model

    prof = get_profile(profile)
    # A profile's start and parameterization were chosen for its NUTS (centred effects have no
    # joint mode for a MAP to find).
    nuts = sampler in NUTS_SAMPLERS
    if init is None:
        init = prof.final.init if nuts else "prior"
    if iiv_parameterization is None:
        iiv_parameterization = prof.final.iiv_parameterization if nuts else "noncentered"
    if ratio_parameterization is None:  # the same posterior, so for any sampler
        ratio_parameterization = prof.final.ratios
    base = load_model(spec) if isinstance(spec, str) or hasattr(spec, "__fspath__") else spec
    data = load_dataset(cohort) if isinstance(cohort, str) else cohort
    for stage in prof.stages[:-1]:
        if stage.sampler not in EARLY_SAMPLERS:
            raise ValueError(
                f"stage {stage.name!r}: an earlier stage's sampler must be one of "
                f"{EARLY_SAMPLERS}, got {stage.sampler!r}"
            )
    estimates: dict[str, tuple[float, str]] = {}  # parameter -> (estimate, stage)
    records: list[dict[str, Any]] = []
    result = None
    for k, stage in enumerate(prof.stages):
        last = k == len(prof.stages) - 1
        t0 = time.perf_counter()
        full = base if stage.model is None else load_model(stage.model)
        carried = {
            n: v
            for n, (v, _) in estimates.items()
            if n in full.parameters and n not in stage.typical
        }
        starts = {n: estimates[n] for n in stage.typical if n in estimates}
        staged_spec = full.estimate_only(
            stage.typical, stage.iiv, values=carried, suffix=f"{prof.name}.{stage.name}"
        )
        stage_data = select_endpoints(
            data,
            stage.endpoints,
            base,
            full,
            [e for e in stage.predose_zero if e in stage.endpoints],
        )
        kwargs: dict[str, Any] = dict(
            seed=seed,
            gradient=gradient,
            integrator=integrator,
            solver=solver,
            progressbar=progressbar,
        )
        # Earlier estimates as the start, unless the user chose another start for the last stage.
        stage_init: Any = init if last else "prior"
        start_values = {n: v for n, (v, _) in starts.items()}
        if starts and stage_init == "prior":
            stage_init = start_values
        if last:
            kwargs.update(
                sampler=sampler,
                chains=chains,
                draws=draws,
                tune=tune,
                init=stage_init,
                sampler_kwargs=dict(sampler_kwargs or {}),
                target_accept=target_accept,
                checkpoint=checkpoint,
                iiv_parameterization=iiv_parameterization,
                ratio_parameterization=ratio_parameterization,
            )
            if starts and stage_init == "map":
                # The joint mode is searched for from the earlier estimates, as the other
                # starts use them (the core stage at 60 patients: the same mode as from the
                # prior medians in as many L-BFGS steps, RESULTS.md 2026-12-05 19:25).
                kwargs["map_start"] = start_values
        else:
            kwargs.update(sampler=stage.sampler, log_likelihood_group=False, init=stage_init)
            if stage.sampler == "pathfinder":
                kwargs["draws"] = 1000
        result = fit(staged_spec, stage_data, **kwargs)
        found = _estimates(result, stage.typical)
        records.append(
            {
                "stage": stage.name,
                "model": full.name,
                "model_hash": staged_spec.hash,
                "estimated": list(stage.typical),
                "iiv": list(stage.iiv),
                "fixed_from": {
                    n: {"value": estimates[n][0], "stage": estimates[n][1]} for n in carried
                },
                "started_from": (
                    {n: {"value": v, "stage": st} for n, (v, st) in starts.items()}
                    if isinstance(stage_init, dict) or "map_start" in kwargs
                    else {}
                ),
                "endpoints": list(stage.endpoints),
                "n_observations": int(stage_data.n_observations),
                "settings": asdict(result.settings),
                "estimates": found,
                "wall_s": time.perf_counter() - t0,
            }
        )
        estimates.update({n: (v, stage.name) for n, v in found.items()})
    assert result is not None  # a profile has at least one stage
    result.extra["staged"] = {
        "profile": prof.name,
        "description": prof.description,
        "stages": records,
    }
    return result
