"""Where should ``init="map"`` of the ``cart_crs_core`` profile search for the joint mode?

The profile's last stage starts its NUTS chains at the joint mode of the non-centred core model
(`pkpd.inference.fit` with ``init="map"``). Since 2026-12-05 `fit_staged` passes the earlier
stage's estimates as ``map_start``; before, the optimiser started from the prior medians. This
script times both on a virtual cohort generated with the profile's own random effects (as the
recovery run does): the staged fit is run up to the last stage's start, with the NUTS sampler
replaced by a stop, and the core stage's L-BFGS is timed. It prints, per start, the seconds, the
log-density reached, the iterations and whether the optimiser converged.

    python benchmarks/map_start.py --patients 60 --seed 20261123
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class _Stop(Exception):
    """Raised in place of sampling: only the start is wanted."""


def measure(n_patients: int, seed: int) -> list[dict]:
    """Time the core stage's MAP from the earlier estimates and from the prior medians."""
    import cart_recovery

    from pkpd.inference import sample
    from pkpd.inference.profiles import fit_staged, get_profile

    generator = cart_recovery.generator_model(get_profile("cart_crs_core").final, "profile")
    cohort = cart_recovery.generated_cohort(n_patients, seed, model=generator)
    real_map, real_fit = sample.map_estimate, sample.fit
    found: list[dict] = []

    def timed_map(pm_model, start=None, **kwargs):
        t0 = time.perf_counter()
        point, report = real_map(pm_model, start=start, **kwargs)
        found.append(
            {
                "s": round(time.perf_counter() - t0, 1),
                "logp": report["logp"],
                "iterations": report["nit"],
                "success": report["success"],
            }
        )
        return point, report

    def stop(*args, **kwargs):
        raise _Stop

    rows = []
    for label in ("earlier estimates", "prior medians"):

        def fit(*args, map_start=None, _label=label, **kwargs):
            given = map_start if _label == "earlier estimates" else None
            return real_fit(*args, map_start=given, **kwargs)

        sample.map_estimate, sample.fit = timed_map, fit
        sample._SAMPLE["numpyro"], saved = stop, sample._SAMPLE["numpyro"]
        try:
            fit_staged("cart_crs", cohort, "cart_crs_core", sampler="numpyro", seed=seed)
        except _Stop:
            pass
        finally:
            sample.map_estimate, sample.fit = real_map, real_fit
            sample._SAMPLE["numpyro"] = saved
        rows.append({"start": label, "patients": n_patients, "seed": seed, **found[-1]})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--seed", type=int, default=20261123)
    args = parser.parse_args(argv)
    for row in measure(args.patients, args.seed):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
