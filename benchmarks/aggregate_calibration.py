"""Aggregate calibration: cart_crs fitted to ZUMA-1 and JULIET summaries, other cohorts predicted.

Calibrates a few parameters of the full CAR-T/CRS model (``cart_crs``) to the published CRS
summaries of ZUMA-1 (axi-cel, N = 108) and JULIET (tisa-cel, N = 111) alone
(`pkpd.inference.calibration.calibrate`: virtual patients, binomial likelihood, MAP + Laplace),
then reports the posterior predictive rates of cohorts that were *not* used (Hay 2017 grade
distribution, real-world tisa-cel: CIBMTR and the ALL registry, ELIANA/ENSIGN) next to the
observed rates, with 95% intervals that include binomial sampling at each study's N. Agreement is
not forced: the table shows whatever the model predicts. ``--write`` appends the tables, the
machine, the date and the settings to benchmarks/RESULTS.md.

    python benchmarks/aggregate_calibration.py [--patients 256] [--write]
    python benchmarks/aggregate_calibration.py --treatment soc_reactive_toc   # treated course
    python benchmarks/aggregate_calibration.py --quick          # smoke run (~3 min)
    python benchmarks/aggregate_calibration.py --record-scale 0.1   # other daily grade noise

Assumptions made here (not in the trial file): the Fred Hutch product of Hay 2017 is given the
4-1BB product level (PRODUCT = 0); every cohort's virtual patients have the covariate
distribution of `pkpd.data.virtual.PatientDistribution` (ZUMA-1 median tumour burden), whatever
the disease; CAR-T doses by product (`pkpd.data.virtual.cart_dose`); rates are those of the
natural (untreated) course in every cohort, so the cutpoints absorb each era's management, the
same for the calibration and the predicted cohorts (``--treatment soc_reactive_toc`` simulates
tocilizumab 8 mg/kg at CRS grade >= 2 instead; see docs/aggregate.md for why that is not the
default).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pkpd  # noqa: E402
from pkpd._jax import host_cpu  # noqa: E402
from pkpd.data.trials import Outcome, published_trials  # noqa: E402
from pkpd.inference.aggregate import AggregateWarning, VirtualDesign  # noqa: E402
from pkpd.inference.calibration import (  # noqa: E402
    IMPORTANCE_DRAWS,
    calibrate,
    posterior_predictive,
)
from pkpd.strategies import load_strategies  # noqa: E402

CALIBRATION = ("zuma1", "juliet")
VALIDATION = ("hay2017", "cibmtr_tisacel", "rw_tisacel_all", "eliana_ensign")
#: Calibrated parameters: expansion rate and its CD28 factor (the only product difference of
#: the model), the four CRS cutpoints, and the shift of the Penn scale (JULIET) against Lee.
PARAMETERS = ("rho", "rho_cd28", "c_crs1", "c_crs2", "c_crs3", "c_crs4", "shift_penn")
#: Cutpoint priors: the model file's were set on Hay 2017 (a validation cohort here), so they are
#: widened to SD 2 around the same centres; the data, not Hay, must place them.
WIDE = 2.0
#: With --with-neuro: ZUMA-1's any-grade rate and onset are the label's "neurologic toxicities"
#: (definition "label_nt"), not the neurologic events of JULIET, so they get a shift of their own
#: on the ICANS cutpoints (a shift of 2 turns a 50% rate into 88%: wide, either sign).
NEURO_DEFINITION_SHIFTS = {"label_nt": "Normal(0, 2)"}


def _cumulative(trial) -> list[Outcome]:
    """Grade >= 2, 3, 4 from an exact-grade distribution (derived rows)."""
    exact = [o for o in trial.outcomes if o.exact and o.endpoint == "crs"]
    out = []
    for k in (2, 3, 4):
        rows = [o for o in exact if o.grade >= k]
        if rows:
            out.append(
                Outcome(
                    "crs",
                    k,
                    False,
                    sum(o.count for o in rows),
                    trial.n,
                    True,
                    None,
                    "derived: sum of the exact grades",
                    trial.source,
                )
            )
    return out


def _uninformed_cutpoints(parameters, table) -> set[str]:
    """Calibrated cutpoints that no calibration-cohort row uses.

    Only their prior and the ordering place them, so a validation row that depends on one is a
    prior prediction (marked † in the table), not a test of the calibration.
    """
    used = {
        c
        for t, cs in zip(table["trial"], table["cutpoints"], strict=True)
        if t in CALIBRATION
        for c in cs.split(",")
        if c
    }
    return {p for p in parameters if p.startswith("c_") and p not in used}


def _fmt(x: float) -> str:
    return f"{100 * x:.1f}%"


def calibration_problem(
    patients: int,
    seed: int,
    with_neuro: bool = False,
    record_scale: float | None = None,
    treatment: str | None = None,
):
    """The script's calibration problem.

    Returns
    -------
    types.SimpleNamespace
        ``spec``, ``model`` (compiled), ``parameters``, ``priors``, ``design`` and ``options``
        (keyword arguments of `AggregateLikelihood` / `calibrate`: treatment, use, shifts).
    """
    spec = pkpd.load_model("cart_crs").at_record_scale(record_scale)
    model = spec.compile()
    strategy = None
    if treatment:
        strategy = next(s for s in load_strategies("cart_default") if s.name == treatment)
    parameters = list(PARAMETERS)
    use = ["crs"]
    definition_shifts = {}
    if with_neuro:
        parameters += ["c_icans1", "c_icans2", "c_icans3"]
        parameters += [f"shift_{d}" for d in NEURO_DEFINITION_SHIFTS]
        use += ["icans", "neuro"]
        definition_shifts = dict(NEURO_DEFINITION_SHIFTS)
    priors = {}
    for p in parameters:
        par = spec.parameters.get(p)
        if par is not None and par.prior.family == "Normal" and p.startswith("c_"):
            priors[p] = f"Normal({par.prior.params['mu']}, {WIDE})"
    design = VirtualDesign(n_patients=patients, seed=seed, product={"hay2017": 0})
    options = dict(
        treatment=strategy,
        use=use,
        grading_shifts={"Penn": "Normal(0, 1)"},
        definition_shifts=definition_shifts,
    )
    return SimpleNamespace(
        spec=spec,
        model=model,
        parameters=parameters,
        priors=priors,
        design=design,
        options=options,
    )


def parameter_table(summary: pd.DataFrame, importance: bool) -> list[str]:
    """The calibrated parameters; with ``importance``, the reweighted median and interval too."""
    head = "| parameter | prior | MAP | median | 95% interval | "
    rule = "|---|---|---|---|---|"
    if importance:
        head += "reweighted median [95%] +- MC SE (median; ends) | "
        rule += "---|"
    lines = [head + "posterior SD / prior SD |", rule + "---|"]
    for name, row in summary.iterrows():
        extra = ""
        if importance:
            extra = (
                "not reweighted (check flagged or not run) | "
                if np.isnan(row["median_is"])
                else f"{row['median_is']:.3g} [{row['lower_is']:.3g}, {row['upper_is']:.3g}]"
                + _mcse_text(row)
                + " | "
            )
        lines.append(
            f"| {name} | {row['prior']} | {row['map']:.3g} | {row['median']:.3g} | "
            f"[{row['lower']:.3g}, {row['upper']:.3g}] | {extra}{row['sd_ratio']:.2f} |"
        )
    return lines


def _mcse_text(row: pd.Series) -> str:
    """`` +- a (b, c)``: the reweighted quantiles' Monte Carlo errors, where the summary has
    them."""
    errors = [row.get(f"mcse_{c}_is", np.nan) for c in ("median", "lower", "upper")]
    if not np.all(np.isfinite(errors)):
        return ""
    return f" +- {errors[0]:.2g} ({errors[1]:.2g}, {errors[2]:.2g})"


def predictive_rows(table: pd.DataFrame, uninformed: set[str]) -> list[str]:
    """The posterior predictive table (`posterior_predictive`) in markdown."""
    lines = [
        "| role | cohort | outcome | N | observed | predicted rate | predictive 95% | p | inside |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        role = "calibration" if r["trial"] in CALIBRATION else "validation"
        star = "*" if r["derived"] else ""
        if set(filter(None, r["cutpoints"].split(","))) & uninformed:
            star += "†"
        lines.append(
            f"| {role} | {r['trial']} | {r['outcome']}{star} | {r['n']:.0f} | "
            f"{_fmt(r['observed'])} | {_fmt(r['rate'])} [{_fmt(r['rate_lower'])}, "
            f"{_fmt(r['rate_upper'])}] | [{_fmt(r['pred_lower'])}, {_fmt(r['pred_upper'])}] | "
            f"{r['p_value']:.2f} | {'yes' if r['inside'] else 'NO'} |"
        )
    return lines


def check_line(check: dict | None) -> str:
    """The Laplace check (`pkpd.inference.calibration.laplace_check`) in one line."""
    if check is None:
        return "Laplace check: not run (--importance-draws 0)."
    verdict = "flagged" if check["pareto_k"] > check["k_threshold"] else "passed"
    return (
        f"Laplace check: Pareto k {check['pareto_k']:.2f} of the importance weights (posterior "
        f"over the {check.get('proposal', 'Gaussian')}) at {check['draws']} of its draws, "
        f"threshold "
        f"{check['k_threshold']:.2f}: {verdict}; ESS of the weights {check['ess']:.0f}, "
        f"{check['outside_support']} outside the support (benchmarks/pareto_k_noise.py: how "
        "noisy k is at that size)."
    )


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=512, help="virtual patients per arm (2^k)")
    ap.add_argument("--draws", type=int, default=100, help="posterior draws for the predictive")
    ap.add_argument("--replicates", type=int, default=4, help="RQMC designs for the MC error")
    ap.add_argument(
        "--treatment",
        default=None,
        help="strategy of the cart_default library simulated in every cohort "
        "(default: none, the natural course)",
    )
    ap.add_argument(
        "--with-neuro",
        action="store_true",
        help="also calibrate ICANS cutpoints to the neurologic-event rates",
    )
    ap.add_argument(
        "--record-scale",
        type=float,
        default=None,
        help="grades with noise per grading day of this scale on top of the patient's offset "
        "(ModelSpec.with_record_scale; default: the library's s_grade_day, 0.25; 0: none, as "
        "before 2026-12-06 evening)",
    )
    ap.add_argument(
        "--importance-draws",
        type=int,
        default=IMPORTANCE_DRAWS,
        help="Laplace draws at which the log-posterior is evaluated for the Pareto k check "
        f"(default {IMPORTANCE_DRAWS}; ~2 s each with --with-neuro; 0: no check)",
    )
    ap.add_argument(
        "--importance-df",
        type=float,
        default=None,
        help="draw the check's --importance-draws from a multivariate Student-t with this many "
        "degrees of freedom (4 is a good first choice) at the mode with the Laplace covariance "
        "as scale, instead of from the Gaussian (calibrate's importance_df)",
    )
    ap.add_argument(
        "--importance",
        action="store_true",
        help="also report the Laplace draws reweighted to the posterior (importance weights of "
        "the check, when it passed): parameter intervals and a second predictive pass",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 patients, 20 draws")
    ap.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    ap.add_argument(
        "--progress", action="store_true", help="a line on stderr per MAP iteration and stage"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.patients, args.draws, args.replicates = 64, 20, 2

    t_start = time.perf_counter()
    problem = calibration_problem(
        args.patients, args.seed, args.with_neuro, args.record_scale, args.treatment
    )
    spec, model, parameters = problem.spec, problem.model, problem.parameters
    priors, design, options = problem.priors, problem.design, problem.options
    treatment, use = options["treatment"], options["use"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AggregateWarning)  # reported in the table instead
        fit = calibrate(
            model,
            published_trials(*CALIBRATION),
            parameters,
            design=design,
            priors=priors,
            draws=1000,
            seed=args.seed,
            mc_replicates=args.replicates,
            importance_draws=args.importance_draws,
            importance_df=args.importance_df,
            progressbar=args.progress,
            **options,
        )
        t_cal = time.perf_counter() - t_start
        validation = published_trials(*VALIDATION)
        extra = {t.id: _cumulative(t) for t in validation}
        predict = functools.partial(
            posterior_predictive,
            fit,
            published_trials(*CALIBRATION) + validation,
            n_draws=args.draws,
            seed=args.seed,
            extra=extra,
        )
        t0 = time.perf_counter()
        table = predict()
        t_pred = time.perf_counter() - t0
        reweighted = None
        if args.importance and fit.importance_weights is not None:
            t0 = time.perf_counter()
            reweighted = predict(importance=True)
            t_pred_is = time.perf_counter() - t0
        # Share of virtual patients given tocilizumab at the posterior median.
        treated = None
        if treatment is not None:
            from pkpd.inference.aggregate import AggregateLikelihood

            lik = AggregateLikelihood(
                model,
                published_trials(*CALIBRATION) + validation,
                fit.parameters,
                design=design,
                **options,
            )
            lik.refresh(fit.median)
            treated = lik.treated_fraction()
    total = time.perf_counter() - t_start

    day_scale = spec.record_scales().get("crs_grade")
    lines = []
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmd = "python benchmarks/aggregate_calibration.py " + " ".join(argv or sys.argv[1:])
    lines.append(f"### aggregate calibration, {now}")
    lines.append("")
    lines.append(
        f"`{cmd.strip()}`: cart_crs calibrated to {', '.join(CALIBRATION)} "
        f"({', '.join(use)} outcomes and onset medians) by MAP + Laplace; "
        f"{args.patients} virtual patients per arm (scrambled Sobol, seed {args.seed}); "
        f"management: "
        f"{'natural course (untreated)' if treatment is None else treatment.name}; "
        f"Penn-scale shift on CRS cutpoints >= 2; cutpoint priors widened to SD {WIDE}"
        + (
            "; grades without noise per grading day."
            if day_scale is None
            else f"; grades with noise per grading day of scale {day_scale} (record_scale) on "
            "top of the patient's offset."
        )
    )
    lines.append("")
    lines.append(
        f"machine: {platform.machine()} ({host_cpu()}), {os.cpu_count()} CPUs, JAX "
        f"{jax.devices()[0]}, jax {jax.__version__}; calibration {t_cal:.0f} s, "
        f"predictive ({args.draws} draws) {t_pred:.0f} s, "
        + ("" if reweighted is None else f"reweighted predictive {t_pred_is:.0f} s, ")
        + f"total {total:.0f} s "
        f"(wall times: {', '.join(f'{k} {v:.0f} s' for k, v in fit.settings['wall_time'].items())})"
    )
    lines.append("")
    lines.append("Calibrated parameters (posterior median and 95% interval, Laplace):")
    lines.append("")
    lines.extend(parameter_table(fit.summary, args.importance))
    uninformed = _uninformed_cutpoints(fit.parameters, table)
    lines.append("")
    lines.append(
        "MAP: "
        + "; ".join(
            f"{r['nit']} iterations{' from a saddle' if r.get('from_saddle') else ''}"
            f"{' (continued by pkpd L-BFGS)' if r.get('continued') else ''}, "
            f"largest |gradient| {r['grad_max']:.2g} at the end ({r['message']})"
            for r in fit.settings["map_rounds"]
        )
    )
    lines.append(check_line(fit.settings["laplace_check"]))
    for note in fit.settings["notes"]:
        lines.append(f"Note: {note}")
    lines.append("")
    lines.append(
        "Posterior predictive rates (observed fraction; predicted rate: posterior median "
        "[95% CrI]; predictive: 95% interval of the fraction at the study's N, binomial "
        "sampling included; p: two-sided posterior predictive p-value; * derived from "
        "percentages or sums of them; † depends on a cutpoint that no calibration outcome "
        "uses (placed by its prior and the ordering only): a prior prediction, not a "
        "validation):"
    )
    lines.append("")
    lines.extend(predictive_rows(table, uninformed))
    if reweighted is not None:
        lines.append("")
        lines.append(
            f"The same with the {args.draws} draws taken from the "
            f"{fit.importance_weights.size} draws of the check's proposal "
            f"({fit.settings['laplace_check']['proposal']}) in proportion to their importance "
            f"weights (the proposal corrected towards the posterior; ESS of the weights "
            f"{fit.settings['laplace_check']['ess']:.0f}):"
        )
        lines.append("")
        lines.extend(predictive_rows(reweighted, uninformed))
    elif args.importance:
        lines.append("")
        lines.append("Not reweighted: the Laplace check flagged its weights, or did not run.")
    lines.append("")
    mc = fit.rates
    lines.append(
        "Monte-Carlo error at the posterior median (calibration rows): i.i.d. SE of the "
        "virtual-patient mean, and the SD over "
        f"{args.replicates} independently scrambled designs (RQMC), against the data's "
        "binomial SE:"
    )
    lines.append("")
    lines.append("| cohort | outcome | predicted | MC SE (iid) | RQMC SE | data SE | RQMC / data |")
    lines.append("|---|---|---|---|---|---|---|")
    for _, r in mc.iterrows():
        rq = r.get("rqmc_se", np.nan)
        ratio = r.get("rqmc_ratio", np.nan)
        lines.append(
            f"| {r['trial']} | {r['outcome']} | {_fmt(r['predicted'])} | "
            f"{r['mc_se']:.4f} | {rq:.4f} | {r['data_se']:.4f} | {ratio:.2f} |"
        )
    lines.append("")
    if treated is not None:
        lines.append(
            "Tocilizumab use: share of virtual patients treated at the posterior median "
            "vs the share reported (a check, not fitted; denominators differ where "
            "noted):"
        )
        lines.append("")
        lines.append("| cohort | predicted | reported |")
        lines.append("|---|---|---|")
        trials = {t.id: t for t in published_trials(*CALIBRATION, *VALIDATION)}
        for _, r in treated.iterrows():
            use_row = trials[r["trial"]].treated("tocilizumab")
            rep = (
                "not reported"
                if use_row is None
                else (f"{_fmt(use_row.rate)} ({use_row.denominator})")
            )
            lines.append(f"| {r['trial']} | {_fmt(r['fraction'])} | {rep} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n" + text + "\n")
    return text


if __name__ == "__main__":
    print(main())
