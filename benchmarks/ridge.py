"""How a ratio parameterization would straighten a ridge, from the draws of a saved NUTS run.

A diagonal mass matrix scales each coordinate by its posterior SD; what is left for NUTS is the
posterior correlation, whose condition number (largest over smallest eigenvalue) sets how many
leapfrog steps a trajectory along the narrowest direction takes. This reads the kept draws of
a checkpoint folder (`pkpd.inference.resumable`, unconstrained coordinates), writes them in the
coordinates of ``ratio_parameterization`` (`pkpd.inference.ratios`: ``log_<p>_ratio = log p -
sum log divisors``; a centred random effect of ``p`` becomes ``phi - sum log divisors``; a linear
map, so exact on the draws) and prints the condition numbers of the correlation of the named
typical values with and without the patients' random effects of ``p``, before and after:

    python benchmarks/ridge.py benchmarks/runs/core_noise/n60 --ratio p6=K_kill*k6

Draws of a run that has not mixed understate the ridge's length (each chain saw part of it).

With ``--correlates NAME`` it says instead what a slow coordinate trades against, in the run's
own (sampled) coordinates: the coordinates most correlated with ``NAME`` over the kept draws,
the condition number of the typical values' correlation (every coordinate but the patients'
``phi``), and the loadings of its narrowest directions:

    python benchmarks/ridge.py benchmarks/runs/core_ratio/n60 --correlates log_K_kill

With ``--effects`` it asks, of a run sampled in ratio coordinates, whether other coordinates for
the patients' effects of the target would be better conditioned: the condition number of the
correlation of all coordinates with each patient's centred effect ``phi_i`` replaced by ``phi_i
+ c * sum log divisors`` (``c = 0``: as sampled; ``c = 1``: the patients' effects on their
natural scale around the ratio's typical value; linear, exact on the draws) and by the
non-centred ``(phi_i - log_<target>_ratio) / omega`` (exact on the draws, not linear):

    python benchmarks/ridge.py benchmarks/runs/core_ratio/n60 --effects --ratio p6=K_kill*k6

With fewer draws than a few times the coordinates, sampling noise alone inflates each condition
number (by ~9 at a quarter); compare them with each other, not with 1.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path

import numpy as np


def _cond(draws: np.ndarray) -> float:
    w = np.linalg.eigvalsh(np.corrcoef(draws.T))
    return float(w.max() / w.min())


def _draws(directory: Path) -> tuple[dict, list[str], np.ndarray, int]:
    """The run's record, its coordinate names, the kept draws of every chain and the chains."""
    from pkpd.inference.resumable import coordinate_names

    run = json.loads((directory / "run.json").read_text())
    chains = sorted(directory.glob("chain*.pkl"))
    draws = np.concatenate(
        [np.asarray(pickle.loads(p.read_bytes())["draws"], dtype=float) for p in chains]
    )
    if draws.size == 0:
        raise SystemExit(f"{directory}: no kept draws yet")
    return run, coordinate_names(run), draws, len(chains)


def correlates(directory: Path, name: str, top: int = 12, directions: int = 2) -> dict:
    """What coordinate ``name`` moves with over the kept draws (sampled coordinates)."""
    _, names, draws, n_chains = _draws(directory)
    if name not in names:
        raise SystemExit(f"{directory}: no coordinate {name}")
    i = names.index(name)
    corr = np.corrcoef(draws.T)[i]
    order = [j for j in np.argsort(-np.abs(corr)) if j != i][:top]
    typical = [k for k, n in enumerate(names) if not n.startswith("phi[")]
    w, v = np.linalg.eigh(np.corrcoef(draws[:, typical].T))
    narrow = []
    for e in range(min(directions, w.size)):
        big = np.argsort(-np.abs(v[:, e]))[:6]
        narrow.append(
            {
                "eigenvalue": float(w[e]),
                "loadings": {names[typical[k]]: round(float(v[k, e]), 3) for k in big},
            }
        )
    return {
        "folder": str(directory),
        "coordinate": name,
        "draws": int(draws.shape[0]),
        "chains": n_chains,
        "chain_means": [round(float(c[:, i].mean()), 4) for c in np.array_split(draws, n_chains)],
        "sd": float(draws[:, i].std()),
        "most_correlated": {names[j]: round(float(corr[j]), 3) for j in order},
        "typical_values_condition": float(w.max() / w.min()),
        "narrowest_directions": narrow,
    }


def _iiv(run: dict) -> list[str]:
    """The parameters with random effects, in the order of ``phi``'s columns."""
    # The random effects' order is that of their SDs among the value variables.
    return [
        m.group(1)
        for n in run["names"]
        if (m := re.fullmatch(r"(?:log_)?omega_(\w+?)(?:_log__)?", n))
    ]


def ridge(directory: Path, target: str, divisors: tuple[str, ...]) -> dict:
    """Condition numbers of the draws' correlation before and after the ratio."""
    run, names, draws, n_chains = _draws(directory)
    col = {n: i for i, n in enumerate(names)}
    iiv = _iiv(run)
    logs = [f"log_{n}" for n in (*divisors, target)]
    missing = [n for n in logs if n not in col]
    if f"log_{target}_ratio" in col:
        raise SystemExit(
            f"{directory}: already sampled in ratio coordinates (log_{target}_ratio); "
            "--effects or --correlates read such runs"
        )
    if missing:
        raise SystemExit(f"{directory}: no coordinate {', '.join(missing)}")
    shapes = dict(zip(run["names"], run["shapes"], strict=True))
    phis = []  # the patients' centred random effects of the target (all effects centred)
    if target in iiv and len(shapes.get("phi", ())) == 2 and shapes["phi"][1] == len(iiv):
        phis = [f"phi[{i},{iiv.index(target)}]" for i in range(shapes["phi"][0])]
    old = draws[:, [col[n] for n in logs + phis]]
    shift = old[:, : len(divisors)].sum(axis=1, keepdims=True)
    new = old.copy()
    new[:, len(divisors) :] -= shift  # the target and its patients' phi
    k = len(logs)
    return {
        "folder": str(directory),
        "ratio": f"{target} / ({' * '.join(divisors)})",
        "draws": int(draws.shape[0]),
        "chains": n_chains,
        "patients": len(phis),
        "typical_values": {"before": _cond(old[:, :k]), "after": _cond(new[:, :k])},
        "with_random_effects": ({"before": _cond(old), "after": _cond(new)} if phis else None),
        "posterior_sd_after": {
            n: float(new[:, j].std()) for j, n in enumerate([*logs[:-1], f"log_{target}_ratio"])
        },
    }


def effect_coordinates(
    directory: Path,
    target: str,
    divisors: tuple[str, ...],
    shifts: tuple[float, ...] = (-0.2, -0.1, 0.0, 0.1, 0.2, 0.5, 1.0),
) -> dict:
    """Condition numbers of all coordinates' correlation with the target's effects rewritten."""
    run, names, draws, n_chains = _draws(directory)
    col = {n: i for i, n in enumerate(names)}
    ratio, omega = f"log_{target}_ratio", f"log_omega_{target}"
    logs = [f"log_{d}" for d in divisors]
    iiv = _iiv(run)
    missing = [n for n in (ratio, omega, *logs) if n not in col]
    if missing or target not in iiv:
        raise SystemExit(
            f"{directory}: not a run with {target} sampled as a ratio and its random effects "
            f"centred (no coordinate {', '.join(missing) or 'phi of ' + target})"
        )
    n_sub = dict(zip(run["names"], run["shapes"], strict=True))["phi"][0]
    phis = [col[f"phi[{i},{iiv.index(target)}]"] for i in range(n_sub)]
    shift = draws[:, [col[n] for n in logs]].sum(axis=1, keepdims=True)
    shifted = {}
    for c in shifts:
        new = draws.copy()
        new[:, phis] += c * shift
        shifted[f"{c:g}"] = _cond(new)
    new = draws.copy()
    new[:, phis] = (draws[:, phis] - draws[:, [col[ratio]]]) / np.exp(draws[:, [col[omega]]])
    return {
        "folder": str(directory),
        "target": target,
        "draws": int(draws.shape[0]),
        "chains": n_chains,
        "coordinates": len(names),
        "patients": n_sub,
        "condition_by_shift": shifted,
        "condition_non_centred": _cond(new),
    }


def main() -> None:
    from pkpd.inference.ratios import parse_ratios

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="checkpoint folder (with run.json)")
    parser.add_argument("--ratio", default="p6=K_kill*k6")
    parser.add_argument(
        "--correlates", metavar="NAME", help="what this coordinate moves with, instead"
    )
    parser.add_argument(
        "--effects",
        action="store_true",
        help="other coordinates for the patients' effects of each --ratio target, instead",
    )
    args = parser.parse_args()
    if args.effects:
        for target, divisors in parse_ratios(args.ratio).items():
            print(json.dumps(effect_coordinates(args.folder, target, divisors), indent=1))
        return
    if args.correlates:
        print(json.dumps(correlates(args.folder, args.correlates), indent=1))
        return
    for target, divisors in parse_ratios(args.ratio).items():
        print(json.dumps(ridge(args.folder, target, divisors)))


if __name__ == "__main__":
    main()
