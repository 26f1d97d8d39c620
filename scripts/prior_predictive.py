"""Prior predictive check of the CAR-T/CRS model library against published CRS and ICANS rates.

Virtual patients (`pkpd.data.virtual.draw_patients`) are simulated with ``cart_crs`` under
parameters drawn from the model file's priors (typical values and IIV SDs; ordinal cutpoints
drawn and sorted, i.e. an ordered-cutpoint prior), with the natural course (no treatment)
and with standard care (reactive tocilizumab / dexamethasone, `virtual.rescue_strategy`).
The table gives pooled rates with the 5-95% range of per-draw rates, next to the published
ranges of science.md section E.

``--calibrate`` prints the cutpoints that place the typical-value virtual population (3000
patients, seed 8, natural course) on the Hay 2017 CRS grade distribution and on ELIANA's ICANS
rates; those are the values written in models/outcomes.toml. The grades have the model's noise
per grading day on top of the patient's offset (the library's ``s_grade_day``); ``--record-scale
S`` calibrates for another scale, ``--record-scale 0`` for none.

Usage: python scripts/prior_predictive.py [--patients 100] [--draws 40] [--seed 7] [--calibrate]
       [--record-scale S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pkpd  # noqa: E402
from pkpd.data import virtual as V  # noqa: E402
from pkpd.solve import Solver  # noqa: E402
from pkpd.strategies import simulate_strategies, strategy_from_dict  # noqa: E402

#: metric -> (low, high, source): published ranges (science.md section E).
TARGETS: dict[str, tuple[float, float, str]] = {
    "any CRS": (0.55, 0.95, "JULIET 58%, registry 57.5%, Hay 70%, ELIANA+ENSIGN 79%, ZUMA-1 94%"),
    "CRS grade >= 3": (0.05, 0.25, "registry 11.6-18.7%, Hay 12%, ZUMA-1 13%, JULIET 22%"),
    "median CRS onset (day)": (1.0, 5.0, "ZUMA-1 2 d, JULIET 3 d, ELIANA 3 d, registry 5 d"),
    "any ICANS": (0.20, 0.90, "JULIET 21%, registry 22%, ELIANA 40%, ZUMA-1 87%"),
    "ICANS grade >= 3": (0.05, 0.35, "registry 6.9-9%, JULIET 12%, ELIANA 13%, Strati 41%"),
}

#: Calibration targets: Hay 2017 (CRS >= 1..4, grade 5 counted as 4) and ELIANA (ICANS).
CRS_TARGETS = (0.70, 0.44, 0.121, 0.076)
ICANS_TARGETS = {"any": 0.40, "severe": 0.13}
#: Calibration population (the values in models/outcomes.toml).
CAL_PATIENTS, CAL_SEED = 3000, 8

GRID = np.arange(0.0, 28.0 + 1e-9, 0.25)
# Prior draws differ a lot in speed; small vmapped batches wait less for their slowest member.
SOLVER = Solver("tsit5", rtol=1e-6, atol=1e-9, batch_size=64)


def natural_course():
    """The no-treatment strategy."""
    return strategy_from_dict({"name": "natural course"})


def _sorted_cutpoints(model, theta: np.ndarray) -> np.ndarray:
    """Sort each ordinal endpoint's cutpoints within every draw (ordered-cutpoint prior)."""
    theta = theta.copy()
    for obs in model.spec.observations.values():
        if obs.error == "ordinal":
            idx = [model.parameter_index(c) for c in obs.cutpoints]
            theta[:, idx] = np.sort(theta[:, idx], axis=1)
    return theta


def prior_predictive(
    model, n_patients: int, n_draws: int, seed: int, strategies=None, chunk_size: int = 256
):
    """Simulate prior draws x virtual patients; return outcomes per strategy.

    Parameters
    ----------
    model : CompiledModel
        ``cart_crs`` (or any library model with CRS/ICANS grades and a ``cart_iv`` route).
    n_patients, n_draws : int
        Virtual patients and prior draws (every patient under every draw).
    seed : int
        Seed of patients, draws, random effects and grade offsets.
    strategies : list of Strategy, optional
        Default: natural course and standard care.
    chunk_size : int, optional
        Simulations per batched solve; small chunks settle reactive doses in fewer passes.

    Returns
    -------
    dict
        Strategy name -> dict of ``(D, N)`` arrays: ``crs``, ``icans`` (worst grades),
        ``crs_onset``, ``icans_onset`` (days; NaN without the event).
    """
    strategies = strategies or [natural_course(), V.rescue_strategy()]
    patients = V.draw_patients(n_patients, seed)
    pop = V.make_population(model, patients, seed, n_draws=n_draws, typical=False)
    pop = pop.with_theta(_sorted_cutpoints(model, pop.theta), "prior (sorted cutpoints)")
    sim = simulate_strategies(
        model,
        pop,
        strategies,
        grid=GRID,
        keep_trajectories=0,
        solver=SOLVER,
        chunk_size=chunk_size,
    )
    out = {}
    for k, s in enumerate(strategies):
        out[s.name] = {
            "crs": sim["max_crs_grade"].values[k],
            "icans": sim["max_icans_grade"].values[k],
            "crs_onset": sim["onset_crs_grade"].values[k],
            "icans_onset": sim["onset_icans_grade"].values[k],
        }
    return out


def metrics(res: dict) -> dict[str, tuple[float, float, float]]:
    """Pooled value and 5-95% range over draws of each metric of `TARGETS`.

    Parameters
    ----------
    res : dict
        One strategy's entry of `prior_predictive`.

    Returns
    -------
    dict
        Metric -> (pooled, 5th percentile over draws, 95th percentile over draws).
    """

    def rate(x: np.ndarray) -> tuple[float, float, float]:
        per = x.mean(axis=1)
        return float(x.mean()), float(np.quantile(per, 0.05)), float(np.quantile(per, 0.95))

    def onset(x: np.ndarray) -> tuple[float, float, float]:
        per = np.array([np.nanmedian(r) if np.isfinite(r).any() else np.nan for r in x])
        per = per[np.isfinite(per)]
        pooled = float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")
        return pooled, float(np.quantile(per, 0.05)), float(np.quantile(per, 0.95))

    return {
        "any CRS": rate(res["crs"] >= 1),
        "CRS grade >= 3": rate(res["crs"] >= 3),
        "median CRS onset (day)": onset(res["crs_onset"]),
        "any ICANS": rate(res["icans"] >= 1),
        "ICANS grade >= 3": rate(res["icans"] >= 3),
    }


def table(results: dict) -> str:
    """Markdown table of `metrics` per strategy next to the published ranges."""
    names = list(results)
    lines = [
        "| metric | " + " | ".join(names) + " | published range | in range | sources |",
        "|---|" + "---|" * len(names) + "---|---|---|",
    ]
    values = {n: metrics(results[n]) for n in names}
    for metric, (lo, hi, src) in TARGETS.items():
        cells = []
        for n in names:
            v, a, b = values[n][metric]
            fmt = "{:.1f}" if "onset" in metric else "{:.0%}"
            cells.append(f"{fmt.format(v)} ({fmt.format(a)}-{fmt.format(b)})")
        pooled = [values[n][metric][0] for n in names]
        ok = ", ".join("yes" if lo <= v <= hi else "NO" for v in pooled)
        fmt = "{:.1f}" if "onset" in metric else "{:.0%}"
        rng = f"{fmt.format(lo)}-{fmt.format(hi)}"
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {rng} | {ok} | {src} |")
    return "\n".join(lines)


def _cut(latent: np.ndarray, p: float) -> float:
    """Cutpoint c with mean(sigmoid(latent - c)) = p."""
    return float(brentq(lambda c: expit(latent - c).mean() - p, -50.0, 50.0))


def model_record_scale(spec) -> float | None:
    """The record_scale of the model's CRS and ICANS grades (one value for both), or None."""
    scales = spec.record_scales()
    values = {scales.get(g) for g in ("crs_grade", "icans_grade")}
    if len(values) > 1:
        raise ValueError(f"the CRS and ICANS grades have different record scales: {scales}")
    return values.pop()


def noisy_peaks(model, pop, sim) -> dict[str, np.ndarray]:
    """Peak over the grid of each grade's latent plus its noise per grading day.

    `pkpd.strategies.worst.worst_latent` (the day noise is each patient's, what the strategies
    simulator draws its grades with), so that ``mean(sigmoid(peak - c_k))`` is exact over the
    patients' offsets given their day noise. ``sim`` must keep every (draw, patient) trajectory
    and its strategies must not react to the grades.

    Returns
    -------
    dict
        ``"crs"``, ``"icans"`` -> ``(strategy, draw, patient)`` arrays.
    """
    from pkpd.strategies.worst import worst_latent

    shape = sim["cmax_crs_severity"].shape
    if sim.sizes["pair"] != shape[1] * shape[2]:
        raise ValueError("noisy_peaks needs every trajectory (keep_trajectories = pairs)")
    return {
        w: worst_latent(model, pop, sim, f"{w}_grade").values.reshape(shape)
        for w in ("crs", "icans")
    }


def with_record_scale(model, record_scale: float | None):
    """``model`` with grades of day noise ``record_scale`` (None: the model's; 0: none)."""
    if record_scale is None or record_scale == model_record_scale(model.spec):
        return model
    return model.spec.at_record_scale(record_scale).compile()


def calibrate(
    model, n_patients: int, seed: int, record_scale: float | None = None
) -> dict[str, float]:
    """Cutpoints placing the typical-value virtual population (natural course) on the targets.

    The worst grade of a patient has P(grade >= k) = sigmoid(peak latent - c_k), so each
    cutpoint solves mean_i sigmoid(peak_i - c_k) = target_k exactly (no Monte Carlo offsets).
    With ``record_scale`` ``s`` (grades with noise per grading day on top of the offset, as
    `pkpd.strategies` simulates them) the peak is that of ``latent(t) + s d_day(t)``, each
    patient's days drawn once (`pkpd.strategies.simulate.day_noise`, keyed by the patient's
    numbers): Monte Carlo over the days, exact over the offset.

    Parameters
    ----------
    model : CompiledModel
        ``cart_crs``.
    n_patients : int
        Virtual patients.
    seed : int
        Seed.
    record_scale : float, optional
        Scale of the noise per grading day; None: the model's (`model_record_scale`), 0: none.

    Returns
    -------
    dict
        Cutpoint parameter name -> value.
    """
    model = with_record_scale(model, record_scale)
    patients = V.draw_patients(n_patients, seed)
    pop = V.make_population(model, patients, seed, typical=True)
    sim = simulate_strategies(
        model, pop, [natural_course()], grid=GRID, keep_trajectories=n_patients
    )
    peaks = noisy_peaks(model, pop, sim)
    crs, icans = peaks["crs"][0, 0], peaks["icans"][0, 0]
    out = {f"c_crs{k + 1}": _cut(crs, p) for k, p in enumerate(CRS_TARGETS)}
    c1, c3 = _cut(icans, ICANS_TARGETS["any"]), _cut(icans, ICANS_TARGETS["severe"])
    out.update(c_icans1=c1, c_icans2=(c1 + c3) / 2, c_icans3=c3, c_icans4=c3 + 2.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100, help="virtual patients")
    parser.add_argument("--draws", type=int, default=40, help="prior draws")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--calibrate", action="store_true", help="print calibrated cutpoints")
    parser.add_argument(
        "--record-scale",
        type=float,
        default=None,
        help="with --calibrate: grades with noise per grading day of this scale instead of the "
        "model's record_scale (0: none)",
    )
    args = parser.parse_args()
    model = pkpd.load_model("cart_crs").compile()
    t0 = time.time()
    if args.calibrate:
        cuts = calibrate(model, CAL_PATIENTS, CAL_SEED, args.record_scale)
        for name, value in cuts.items():
            print(f"{name} = {value:.2f}")
        print(f"({time.time() - t0:.0f} s)")
        return
    results = prior_predictive(model, args.patients, args.draws, args.seed)
    print(
        f"Prior predictive, {args.draws} prior draws x {args.patients} virtual patients "
        f"(seed {args.seed}); pooled rate (5-95% over draws):\n"
    )
    print(table(results))
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
