"""Virtual CAR-T patients: covariates, simulated courses and NONMEM-style datasets.

Everything here is synthetic. Patients' covariates (tumour burden, weight, baseline NET
propensity, product) are drawn from the distributions of `PatientDistribution`; their
parameters from the model file's population priors (typical values and between-subject
variability, `pkpd.strategies.make_population`); their courses are simulated with the model
library (default ``cart_crs``) under a management strategy (default: tocilizumab when CRS grade
>= 2, dexamethasone when ICANS grade >= 2), and sampled on a realistic schedule with assay noise
and LLOQs. Reactive rescue doses are recorded as dose events, so the dataset can be fitted with
the very model that made it.

>>> patients = draw_patients(60, seed=20261123)
>>> data = make_virtual_cohort(patients, seed=20261123)     # a pandas.DataFrame
>>> cohort = from_dataframe(data, time_unit="day")

The simulation itself is `pkpd.strategies.simulate_strategies` (imported when needed: this
module is in the data layer, the simulator above it). Same seed, same cohort.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: CAR-T blood-count schedule (days): infusion day, first week, then weekly and day 90.
CART_DAYS: tuple[float, ...] = (0, 1, 2, 3, 5, 7, 10, 14, 21, 28, 90)
#: Cytokine / CRP / NET-marker schedule (days): daily in week 1, then at the CAR-T visits.
CYTOKINE_DAYS: tuple[float, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 10, 14, 21, 28)
#: Daily CRS / ICANS grading (days).
GRADE_DAYS: tuple[float, ...] = tuple(float(d) for d in range(0, 29))

#: Endpoint -> (schedule, lower limit of quantification in the endpoint unit or None).
SAMPLING: dict[str, tuple[tuple[float, ...], float | None]] = {
    "cart_blood": (CART_DAYS, 0.1),  # flow cytometry, cells/uL (assumption)
    "il6": (CYTOKINE_DAYS, 1.5),  # pg/mL, typical high-sensitivity ELISA (assumption)
    "il1": (CYTOKINE_DAYS, 0.5),  # pg/mL (assumption)
    "crp": (CYTOKINE_DAYS, 0.5),  # mg/L (assumption)
    "net": (CYTOKINE_DAYS, None),  # relative MPO-DNA
    "crs_grade": (GRADE_DAYS, None),
    "icans_grade": (GRADE_DAYS, None),
}


@dataclass(frozen=True)
class PatientDistribution:
    """Distribution of virtual patients' covariates (adults with a CD19+ B-cell malignancy).

    Attributes
    ----------
    tumour_median : float
        Median baseline tumour burden (mL): the ZUMA-1 median of Kimmel 2021 (94.86 mL).
    tumour_log_sd : float
        SD of log tumour burden; assumption (IQR ~42-213 mL at 1.2; no spread was sourced).
    weight_median, weight_log_sd : float
        Body weight (kg) median and log-SD; assumption for adults.
    netp_log_sd : float
        SD of log baseline NET propensity (median 1 = healthy); assumption (Flora 2024 gives no
        spread: some patients' neutrophils are "already on high alert").
    p_cd28 : float
        Share of CD28 products (axicabtagene ciloleucel); the rest 4-1BB (tisagenlecleucel).
    """

    tumour_median: float = 94.86
    tumour_log_sd: float = 1.2
    weight_median: float = 75.0
    weight_log_sd: float = 0.2
    netp_log_sd: float = 0.7
    p_cd28: float = 0.5


def cart_dose(product: Any, weight: Any) -> np.ndarray:
    """CAR-T dose (cells) by product and weight.

    Parameters
    ----------
    product : array_like
        0 = tisagenlecleucel (4-1BB), 1 = axicabtagene ciloleucel (CD28).
    weight : array_like
        Body weight (kg).

    Returns
    -------
    numpy.ndarray
        Tisagenlecleucel 1e8 cells (Stein 2019 median above 50 kg); axicabtagene ciloleucel
        2e6 cells/kg up to 2e8 (label).
    """
    product = np.asarray(product, dtype=float)
    weight = np.asarray(weight, dtype=float)
    # Rounded to 3 significant digits, as a product's certificate of analysis would state it.
    return _round(np.where(product >= 0.5, np.minimum(2e6 * weight, 2e8), 1e8), 3)


def tocilizumab_dose(weight: Any) -> np.ndarray:
    """Tocilizumab dose for CRS (mg): 8 mg/kg (>= 30 kg) or 12 mg/kg (< 30 kg), at most 800 mg.

    Parameters
    ----------
    weight : array_like
        Body weight (kg).

    Returns
    -------
    numpy.ndarray
        Dose in mg (CAR-T prescribing information, science.md D1).
    """
    weight = np.asarray(weight, dtype=float)
    return np.minimum(np.where(weight >= 30.0, 8.0, 12.0) * weight, 800.0)


def draw_patients(
    n: int, seed: int, distribution: PatientDistribution | None = None
) -> pd.DataFrame:
    """Draw virtual patients' covariates and CAR-T doses.

    Parameters
    ----------
    n : int
        Number of patients.
    seed : int
        Seed (same seed, same patients).
    distribution : PatientDistribution, optional
        Covariate distributions (default `PatientDistribution()`).

    Returns
    -------
    pandas.DataFrame
        One row per patient: ``ID`` (1..n), ``TUMOR`` (mL), ``WT`` (kg), ``NETP``, ``PRODUCT``
        (0/1) and ``CART_DOSE`` (cells).
    """
    d = distribution or PatientDistribution()
    rng = np.random.default_rng([int(seed), 1])
    tumour = d.tumour_median * np.exp(d.tumour_log_sd * rng.standard_normal(n))
    weight = d.weight_median * np.exp(d.weight_log_sd * rng.standard_normal(n))
    netp = np.exp(d.netp_log_sd * rng.standard_normal(n))
    product = (rng.uniform(size=n) < d.p_cd28).astype(int)
    # Covariates to 4 significant digits, as a dataset records them (and round-trips them).
    tumour, weight, netp = _round(tumour), _round(weight), _round(netp)
    return pd.DataFrame(
        {
            "ID": np.arange(1, n + 1),
            "TUMOR": tumour,
            "WT": weight,
            "NETP": netp,
            "PRODUCT": product,
            "CART_DOSE": cart_dose(product, weight),
        }
    )


def make_population(
    model: Any,
    patients: pd.DataFrame,
    seed: int,
    *,
    n_draws: int = 1,
    typical: bool = True,
    priors: Mapping[str, Any] | None = None,
) -> Any:
    """Give virtual patients their parameters: a `pkpd.strategies.Population`.

    Parameters
    ----------
    model : CompiledModel
        A model of the library with a ``cart_iv`` dose route.
    patients : pandas.DataFrame
        From `draw_patients` (columns named as the model's covariates, and ``CART_DOSE``).
    seed : int
        Seed of the parameter draws, random effects and grade offsets.
    n_draws : int, optional
        Population parameter draws D (every patient is simulated under each).
    typical : bool, optional
        True: typical values and IIV SDs at their prior medians; False: drawn from the priors.
    priors : mapping, optional
        Replacement priors by parameter name (with ``typical=False``).

    Returns
    -------
    Population
        With the CAR-T infusion at day 0 as the base dose.
    """
    from pkpd.strategies import population as P

    covariates = {c: patients[c].to_numpy(float) for c in model.covariates if c in patients}
    doses = patients["CART_DOSE"].to_numpy(float)
    pop = P.make_population(
        model,
        n_patients=len(patients),
        n_draws=n_draws,
        seed=seed,
        covariates=covariates,
        base=[("cart_iv", 0.0, doses)],
        typical=typical,
    )
    if priors and not typical:
        rng = np.random.default_rng([int(seed), 2])
        theta, omega = P.prior_draws(model.spec, n_draws, rng, priors)
        pop = P.Population(
            theta, omega, pop.z, pop.u, pop.covariates, pop.base, "prior", pop.patient_ids
        )
    return pop


def rescue_strategy(name: str = "standard_care") -> Any:
    """Return the default management: reactive tocilizumab (CRS) and dexamethasone (ICANS).

    Tocilizumab 8 mg/kg (max 800 mg) IV over 1 h when the CRS grade is >= 2 at a twice-daily
    assessment, at most 4 doses at least 8 h apart (label); dexamethasone 10 mg IV when the ICANS
    grade is >= 2, at most 4 doses 12 h apart (common practice; assumption).

    Parameters
    ----------
    name : str, optional
        Strategy name.

    Returns
    -------
    pkpd.strategies.Strategy
    """
    from pkpd.strategies import strategy_from_dict

    return strategy_from_dict(
        {
            "name": name,
            "description": "tocilizumab when CRS grade >= 2; dexamethasone when ICANS grade >= 2",
            "reactive": [
                {
                    "drug": "tocilizumab",
                    "route": "iv",
                    "dose": 8,
                    "dose_unit": "mg/kg",
                    "cap": 800,
                    "duration": "1 h",
                    "trigger": "crs_grade >= 2",
                    "assess_every": "12 h",
                    "max_doses": 4,
                    "min_interval": "8 h",
                },
                {
                    "drug": "dexamethasone",
                    "route": "iv",
                    "dose": 10,
                    "dose_unit": "mg",
                    "trigger": "icans_grade >= 2",
                    "assess_every": "12 h",
                    "max_doses": 4,
                    "min_interval": "12 h",
                },
            ],
        }
    )


@dataclass(frozen=True)
class VirtualCourses:
    """Simulated courses of virtual patients under one strategy (one parameter draw).

    Attributes
    ----------
    patients : pandas.DataFrame
        The patients (`draw_patients`).
    times : numpy.ndarray
        ``(T,)`` days of the grid.
    endpoints : list of str
        Endpoint names (ordinal endpoints hold drawn grades).
    values : numpy.ndarray
        ``(N, T, E)`` endpoint values on the grid.
    doses : list of pandas.DataFrame
        Per patient, the reactive doses given: ``TIME`` (day), ``route``, ``AMT``, ``DUR``
        (days; 0 for a bolus).
    outcomes : pandas.DataFrame
        Per patient: worst CRS / ICANS grade, onset day and number of rescue doses.
    parameters : numpy.ndarray
        ``(N, P)`` typical values of the draw (model parameter order) used for residual errors.
    """

    patients: pd.DataFrame
    times: np.ndarray
    endpoints: list[str]
    values: np.ndarray
    doses: list[pd.DataFrame]
    outcomes: pd.DataFrame
    parameters: np.ndarray = field(repr=False)


def simulate_courses(
    model: Any,
    patients: pd.DataFrame,
    seed: int,
    *,
    strategy: Any = None,
    times: Sequence[float] | None = None,
    typical: bool = True,
    solver: Any = None,
    integrator: str = "engine",
) -> VirtualCourses:
    """Simulate virtual patients under a strategy (by default `rescue_strategy`).

    Parameters
    ----------
    model : CompiledModel
        The model (default library model in `make_virtual_cohort`: ``cart_crs``).
    patients : pandas.DataFrame
        From `draw_patients`.
    seed : int
        Seed of parameters, random effects and grade offsets.
    strategy : pkpd.strategies.Strategy, optional
        Management (prophylaxis and/or reactive rescue).
    times : sequence of float, optional
        Output grid in days (default: every sampling day of `SAMPLING`).
    typical : bool, optional
        Typical values with IIV (True) or one draw of the population priors (False).
    solver : Solver, optional
        Default Tsit5, rtol 1e-6, atol 1e-9.
    integrator : {"engine", "lanes", "auto"}, optional
        Passed to `simulate_strategies`. The default is the fits' own integrator: a dataset is
        small, so speed does not matter, and the same seed then gives the same records whatever
        becomes of the faster forward-only path.

    Returns
    -------
    VirtualCourses
    """
    from pkpd.strategies import simulate_strategies

    strategy = strategy if strategy is not None else rescue_strategy()
    if times is None:
        times = sorted({float(t) for sched, _ in SAMPLING.values() for t in sched})
    grid = np.asarray(times, dtype=float)
    pop = make_population(model, patients, seed, typical=typical)
    n = len(patients)
    sim = simulate_strategies(
        model,
        pop,
        [strategy],
        grid=grid,
        solver=solver,
        keep_trajectories=n,
        integrator=integrator,
    )
    order = np.asarray(sim["pair_patient"].values)
    values = np.empty_like(sim["traj"].values[0])
    values[order] = sim["traj"].values[0]
    slots = np.empty_like(sim["reactive_time"].values[0])
    slots[order] = sim["reactive_time"].values[0]
    doses = _reactive_doses(strategy, slots, patients["WT"].to_numpy(float))
    endpoints = list(sim["endpoint"].values)
    out = {"ID": patients["ID"].to_numpy()}
    for name in ("crs_grade", "icans_grade"):
        if f"max_{name}" in sim:
            out[f"max_{name}"] = sim[f"max_{name}"].values[0, 0].astype(int)
            out[f"onset_{name}"] = sim[f"onset_{name}"].values[0, 0]
    for var in sim.data_vars:
        if str(var).startswith("doses_"):
            out[str(var)] = sim[var].values[0, 0].astype(int)
    return VirtualCourses(
        patients=patients.reset_index(drop=True),
        times=grid,
        endpoints=endpoints,
        values=values,
        doses=doses,
        outcomes=pd.DataFrame(out),
        parameters=np.asarray(pop.theta[0]),
    )


def _reactive_doses(strategy: Any, slots: np.ndarray, weight: np.ndarray) -> list[pd.DataFrame]:
    """Dose records from the reactive slot times of `simulate_strategies` (policy order)."""
    out = []
    for i in range(slots.shape[0]):
        rows = []
        k = 0
        for pol in strategy.reactive:
            dose = pol.dose
            for _ in range(pol.max_doses):
                t = slots[i, k] if k < slots.shape[1] else np.nan
                k += 1
                if not np.isfinite(t):
                    continue
                if dose.per_kg:
                    amt = dose.amount * weight[i]
                else:
                    amt = dose.amount
                if dose.cap is not None:
                    amt = min(amt, dose.cap)
                rows.append(
                    {
                        "TIME": float(t),
                        "route": dose.route_name,
                        "AMT": float(amt),
                        "DUR": float(dose.duration),
                    }
                )
        out.append(pd.DataFrame(rows, columns=["TIME", "route", "AMT", "DUR"]))
    return out


def _round(x: np.ndarray, digits: int = 4) -> np.ndarray:
    """Round to significant digits, so the written file does not depend on the last bits."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(x != 0, np.floor(np.log10(np.abs(x))), 0.0)
    scale = 10.0 ** (digits - 1 - mag)
    return np.round(x * scale) / scale


def to_records(
    model: Any,
    courses: VirtualCourses,
    seed: int,
    sampling: Mapping[str, tuple[Sequence[float], float | None]] | None = None,
) -> pd.DataFrame:
    """Sample simulated courses as a NONMEM-style dataset, with residual error and LLOQs.

    Parameters
    ----------
    model : CompiledModel
        The model the courses came from (residual-error parameters and DVID codes).
    courses : VirtualCourses
        From `simulate_courses`.
    seed : int
        Seed of the residual errors.
    sampling : mapping, optional
        Endpoint -> (days, LLOQ); default `SAMPLING`.

    Returns
    -------
    pandas.DataFrame
        Columns ``ID, TIME, DV, MDV, EVID, AMT, CMT, RATE, DVID, LLOQ, BLQ`` and the covariates
        ``TUMOR, WT, NETP, PRODUCT``; times in days, CMT holds dose-route names. Below-LLOQ
        observations have ``BLQ = 1`` and DV missing.
    """
    spec = model.spec
    sampling = dict(sampling or SAMPLING)
    rng = np.random.default_rng([int(seed), 3])
    theta = dict(zip(model.parameters, courses.parameters, strict=True))
    index = {t: k for k, t in enumerate(courses.times.tolist())}
    rows: list[dict[str, Any]] = []
    cov_names = [c for c in ("TUMOR", "WT", "NETP", "PRODUCT") if c in courses.patients]
    for i, pat in courses.patients.iterrows():
        covs = {c: (int(pat[c]) if c == "PRODUCT" else float(pat[c])) for c in cov_names}
        pid = int(pat["ID"])
        # The CAR-T dose is recorded as simulated (a rounded dose would differ from it).
        events = [dict(TIME=0.0, EVID=1, AMT=float(pat["CART_DOSE"]), CMT="cart_iv", RATE=0.0)]
        for _, d in courses.doses[i].iterrows():
            rate = d["AMT"] / d["DUR"] if d["DUR"] > 0 else 0.0
            events.append(
                dict(
                    TIME=float(d["TIME"]),
                    EVID=1,
                    AMT=float(d["AMT"]),
                    CMT=d["route"],
                    RATE=float(rate),
                )
            )
        obs = []
        for name, (days, lloq) in sampling.items():
            if name not in courses.endpoints:
                continue
            o = spec.observations[name]
            e = courses.endpoints.index(name)
            for day in days:
                pred = float(courses.values[i, index[float(day)], e])
                rec: dict[str, Any] = dict(TIME=float(day), EVID=0, DVID=o.dvid)
                if o.error == "ordinal":
                    rec["DV"] = int(pred)
                else:
                    rec["DV"] = _noisy(o, pred, theta, rng)
                    if lloq is not None:
                        rec["LLOQ"] = lloq
                        rec["BLQ"] = int(rec["DV"] < lloq)
                        if rec["BLQ"]:
                            rec["DV"] = np.nan
                obs.append(rec)
        # At equal times samples come first (pre-dose): a day-0 sample is the pre-infusion
        # baseline, and a grade assessed at a rescue dose is the one that triggered it.
        merged = sorted(
            [(r["TIME"], 0, k, r) for k, r in enumerate(obs)]
            + [(r["TIME"], 1, k, r) for k, r in enumerate(events)],
            key=lambda x: (x[0], x[1], x[2]),
        )
        rows.extend({"ID": pid, **r, **covs} for _, _, _, r in merged)
    df = pd.DataFrame(rows)
    columns = ["ID", "TIME", "DV", "MDV", "EVID", "AMT", "CMT", "RATE", "DVID", "LLOQ", "BLQ"]
    for c in columns:
        if c not in df:
            df[c] = np.nan
    is_obs = df["EVID"] == 0
    # MDV = 1 on doses; a censored (BLQ) sample is still an observation (MDV 0, DV missing).
    df["MDV"] = (~is_obs).astype(int)
    df["CMT"] = df["CMT"].where(~is_obs, None)
    df["RATE"] = df["RATE"].where(~is_obs)
    df["DVID"] = df["DVID"].where(is_obs).astype("Int64")
    df["BLQ"] = df["BLQ"].where(is_obs & df["LLOQ"].notna()).astype("Int64")
    return df[columns + cov_names]


def _noisy(obs: Any, pred: float, theta: Mapping[str, float], rng: np.random.Generator) -> float:
    """One observation with the endpoint's residual error (4 significant digits)."""
    if obs.error == "lognormal":
        value = pred * np.exp(theta[obs.sigma["sigma"]] * rng.standard_normal())
    elif obs.error == "proportional":
        value = pred * (1.0 + theta[obs.sigma["sigma_prop"]] * rng.standard_normal())
    elif obs.error == "additive":
        value = pred + theta[obs.sigma["sigma"]] * rng.standard_normal()
    elif obs.error == "combined":
        sd = np.hypot(theta[obs.sigma["sigma"]], theta[obs.sigma["sigma_prop"]] * pred)
        value = pred + sd * rng.standard_normal()
    else:
        value = pred
    return float(_round(value))


def make_virtual_cohort(
    patients: pd.DataFrame,
    seed: int,
    *,
    model: Any = "cart_crs",
    strategy: Any = None,
    sampling: Mapping[str, tuple[Sequence[float], float | None]] | None = None,
) -> pd.DataFrame:
    """Simulate virtual patients and write them as a NONMEM-style dataset.

    Parameters
    ----------
    patients : pandas.DataFrame
        From `draw_patients`.
    seed : int
        Seed of parameters, random effects, grade offsets and residual errors.
    model : str or CompiledModel, optional
        Library model name or compiled model (default ``cart_crs``).
    strategy : pkpd.strategies.Strategy, optional
        Management (default `rescue_strategy`).
    sampling : mapping, optional
        Endpoint -> (days, LLOQ); default `SAMPLING`.

    Returns
    -------
    pandas.DataFrame
        Records readable by `pkpd.data.from_dataframe` / `read_dataset` (time unit: day).
    """
    if isinstance(model, str):
        from pkpd.model import load_model

        model = load_model(model).compile()
    sampling = dict(sampling or SAMPLING)
    times = sorted({float(t) for days, _ in sampling.values() for t in days})
    courses = simulate_courses(model, patients, seed, strategy=strategy, times=times)
    return to_records(model, courses, seed, sampling)
