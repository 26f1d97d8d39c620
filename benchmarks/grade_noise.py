"""NUTS on daily grades: one logistic offset per patient, with and without noise per record.

With ``offset = "subject"`` and no ``record_scale`` a patient's grades follow its latent course
exactly, and their likelihood is zero wherever the latent cannot order them: the posterior has
hard walls where NUTS diverges. A ``record_scale`` ``s`` adds an independent logistic noise of
scale ``s`` per record on top of the patient's offset, and the likelihood (integrated over the
offset by quadrature, `pkpd.inference.likelihood._subject_noise_logp`) is smooth and positive.
This script simulates one cohort per grade model (`benchmarks/models/grade_course.toml`: a
severity that rises and falls, daily grades, three random effects), fits each with its own
likelihood by `pkpd.inference.fit` (nutpie, MAP start) and reports divergences, R-hat, ESS,
time and the 90% credible intervals of the population parameters against the truth.

    python benchmarks/grade_noise.py --patients 30 --write

``--write`` appends the table (machine, date, settings) to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent
TRUTH = {"ka": 1.0, "ke": 0.4, "gain": 8.0, "c1": 3.15, "c2": 5.0, "c3": 7.43, "c4": 8.08}
OMEGA = {"ka": 0.3, "ke": 0.3, "gain": 0.5}


def design(n: int, days: int) -> pd.DataFrame:
    rows = []
    for i in range(1, n + 1):
        rows.append(dict(ID=i, TIME=0.0, AMT=1.0, DV=np.nan, EVID=1, MDV=1, CMT=1, DVID=np.nan))
        rows += [
            dict(ID=i, TIME=float(t), AMT=0.0, DV=0.0, EVID=0, MDV=0, CMT=1, DVID=1)
            for t in range(1, days + 1)
        ]
    return pd.DataFrame(rows)


def variant(spec, scale: float | None):
    """The model with per-record noise of ``scale`` (None: grades follow the latent exactly)."""
    if scale is None:
        return spec.without_record_scale()
    # with_fixed records the value in the model's files, so a saved fit reloads this variant.
    return spec.with_fixed({"s_rec": scale}, suffix=f"s_rec_{scale:g}")


def run(args, label: str, scale: float | None) -> dict:
    import arviz as az

    from pkpd.inference import fit
    from pkpd.inference.synthetic import simulate_study
    from pkpd.model import load_model

    spec = variant(load_model(HERE / "models" / "grade_course.toml"), scale)
    cohort, _ = simulate_study(
        spec, design(args.patients, args.days), TRUTH, omega=OMEGA, seed=args.seed
    )
    t0 = time.perf_counter()
    res = fit(
        spec,
        cohort,
        sampler="nutpie",
        init="map",
        chains=args.chains,
        tune=args.tune,
        draws=args.draws,
        seed=args.seed,
    )
    seconds = time.perf_counter() - t0
    post = res.idata.posterior
    names = list(TRUTH)
    summ = az.summary(res.idata, var_names=names, hdi_prob=0.9, kind="all")
    cover = {}
    for n in names:
        lo, hi = np.quantile(post[n].values.ravel(), [0.05, 0.95])
        cover[n] = (float(np.median(post[n].values)), lo <= TRUTH[n] <= hi)
    diverging = int(res.idata.sample_stats["diverging"].values.sum())
    return dict(
        model=label,
        seconds=seconds,
        divergent=diverging,
        draws=args.chains * args.draws,
        rhat=float(summ["r_hat"].max()),
        ess=float(summ["ess_bulk"].min()),
        **{n: f"{m:.3g}{'' if ok else ' (x)'}" for n, (m, ok) in cover.items()},
    )


def main() -> None:
    from pkpd._jax import host_cpu

    sys.path.insert(0, str(HERE))
    from recovery import markdown  # a sibling script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--scale", type=float, default=0.25, help="per-record noise scale")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--tune", type=int, default=300)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = [
        run(args, "offset per patient, no noise per record", None),
        run(args, f"offset per patient + noise per record (s = {args.scale})", args.scale),
    ]
    table = markdown(pd.DataFrame(rows).set_index("model"))
    print(table)
    if args.write:
        text = (
            f"\n## Grades with and without noise per record under NUTS ({dt.date.today()})\n\n"
            f"`python benchmarks/grade_noise.py --patients {args.patients} --days {args.days} "
            f"--scale {args.scale} --chains {args.chains} --tune {args.tune} --draws "
            f"{args.draws} --seed {args.seed}`; machine {platform.machine()} ({host_cpu()}), "
            f"{os.cpu_count()} cores. Truth {TRUTH}, IIV SDs {OMEGA}; each cohort simulated "
            "with the grade model it is fitted with; a parameter's posterior median, (x) where "
            "its 90% interval misses the truth.\n\n" + table + "\n"
        )
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
