"""Is the fit trustworthy, and what did it find? Convergence checks and pharmacometric summaries.

`convergence` reads R-hat, bulk and tail ESS (ArviZ, rank-normalised split R-hat), divergences,
E-BFMI and tree-depth hits from the draws and says whether the fit passes the thresholds of the
design (`THRESHOLDS`: R-hat <= 1.01, bulk and tail ESS >= 400, no divergences). A fit that fails
is *flagged*: `verdict` gives the one line that every summary, plot title and CLI message
starts with. A MAP point or a variational (ADVI) approximation is always flagged: there is no
chain to check.

`parameter_table` is the summary in the field's terms: typical values (THETA) with median and
95% credible interval, between-subject variability as omega and %CV
(``100 sqrt(exp(omega^2) - 1)``), eta shrinkage (``1 - SD(posterior mean eta) / omega``) and the
residual error parameters.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

#: Thresholds a fit must meet (``docs/inference.md``): R-hat, bulk and tail ESS, divergences.
THRESHOLDS = {"rhat_max": 1.01, "ess_bulk_min": 400.0, "ess_tail_min": 400.0, "divergences": 0}

#: E-BFMI below this suggests the momentum resampling explores the energy poorly (Betancourt).
EBFMI_MIN = 0.3

#: Approximate posteriors (not MCMC): always flagged, nothing to check.
APPROXIMATE = ("advi", "fullrank_advi", "pathfinder")

#: Flagged parameters named in the verdict at most (the rest are counted).
MAX_NAMED = 8


class FitWarning(UserWarning):
    """A fit that fails its convergence checks (R-hat, ESS, divergences) is being used."""


def _sampled_variables(posterior: Any) -> list[str]:
    """Variables checked for convergence: everything in the posterior but constant entries."""
    return [name for name in posterior.data_vars if posterior[name].size > 0]


def _finite_min(values: list[np.ndarray]) -> float:
    flat = np.concatenate([np.ravel(v) for v in values]) if values else np.array([])
    flat = flat[np.isfinite(flat)]
    return float(flat.min()) if flat.size else float("nan")


def _finite_max(values: list[np.ndarray]) -> float:
    flat = np.concatenate([np.ravel(v) for v in values]) if values else np.array([])
    flat = flat[np.isfinite(flat)]
    return float(flat.max()) if flat.size else float("nan")


def _stat(stats: Any, *names: str) -> np.ndarray | None:
    for name in names:
        if stats is not None and name in stats:
            return np.asarray(stats[name].values)
    return None


def convergence(idata: Any, method: str = "nuts", max_treedepth: int = 10) -> dict[str, Any]:
    """Convergence diagnostics of a fit and the verdict.

    Parameters
    ----------
    idata : arviz.InferenceData
        Draws with ``posterior`` and (for NUTS) ``sample_stats``.
    method : str, optional
        How the draws were made: NUTS samplers are checked; ``"map"`` and variational methods
        are flagged as not checkable.
    max_treedepth : int, optional
        The sampler's tree-depth limit (10 for nutpie, numpyro and PyMC).

    Returns
    -------
    dict
        ``rhat_max``, ``ess_bulk_min``, ``ess_tail_min``, ``divergences``, ``ebfmi_min``,
        ``treedepth_hits`` (draws at the limit), ``chains``, ``draws``, ``ok`` (bool),
        ``problems`` (list of str; empty when ok), ``worst`` (variable with the largest R-hat),
        ``flagged_parameters`` (`flagged_parameters`: every parameter with R-hat > 1.01 or
        bulk or tail ESS < 400, worst first; empty for MAP and approximate methods).
    """
    import arviz as az

    post = idata.posterior
    chains, draws = int(post.sizes["chain"]), int(post.sizes["draw"])
    out: dict[str, Any] = {
        "rhat_max": float("nan"),
        "ess_bulk_min": float("nan"),
        "ess_tail_min": float("nan"),
        "divergences": 0,
        "ebfmi_min": float("nan"),
        "treedepth_hits": 0,
        "chains": chains,
        "draws": draws,
        "method": method,
        "worst": None,
        "flagged_parameters": [],
    }
    problems: list[str] = []
    if method == "map":
        problems.append("a MAP point estimate, not posterior draws: no uncertainty, no checks")
    elif method in APPROXIMATE:
        problems.append(f"an approximate posterior ({method}), not MCMC: cannot be checked")
    names = _sampled_variables(post)
    if draws >= 4 and method not in ("map",):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # single-chain R-hat, constant entries
            rhat = az.rhat(post, var_names=names)
            ess_bulk = az.ess(post, var_names=names, method="bulk")
            ess_tail = az.ess(post, var_names=names, method="tail")
        # Constant entries (the diagonal of a correlation matrix) give NaN: not evidence.
        r = {n: np.asarray(rhat[n].values) for n in names}
        out["rhat_max"] = _finite_max(list(r.values()))
        out["ess_bulk_min"] = _finite_min([np.asarray(ess_bulk[n].values) for n in names])
        out["ess_tail_min"] = _finite_min([np.asarray(ess_tail[n].values) for n in names])
        worst = [(float(np.nanmax(v)), n) for n, v in r.items() if np.isfinite(v).any()]
        out["worst"] = max(worst)[1] if worst else None
        if method not in APPROXIMATE:
            out["flagged_parameters"] = flagged_parameters(post, rhat, ess_bulk, ess_tail)
    stats = idata.sample_stats if "sample_stats" in idata.groups() else None
    div = _stat(stats, "diverging")
    if div is not None:
        out["divergences"] = int(np.sum(div))
    depth = _stat(stats, "tree_depth", "depth")
    if depth is not None:
        out["treedepth_hits"] = int(np.sum(depth >= max_treedepth))
    energy = _stat(stats, "energy")
    if energy is not None and energy.shape[-1] > 2:
        num = np.mean(np.diff(energy, axis=-1) ** 2, axis=-1)
        den = np.var(energy, axis=-1)
        out["ebfmi_min"] = float(np.min(num / den))

    if method != "map" and method not in APPROXIMATE:
        if chains < 2:
            problems.append(f"{chains} chain: R-hat needs at least 2 chains")
        if not out["rhat_max"] <= THRESHOLDS["rhat_max"]:
            problems.append(
                f"R-hat {out['rhat_max']:.3f} > {THRESHOLDS['rhat_max']} ({out['worst']})"
            )
        if not out["ess_bulk_min"] >= THRESHOLDS["ess_bulk_min"]:
            problems.append(
                f"bulk ESS {out['ess_bulk_min']:.0f} < {THRESHOLDS['ess_bulk_min']:.0f}"
            )
        if not out["ess_tail_min"] >= THRESHOLDS["ess_tail_min"]:
            problems.append(
                f"tail ESS {out['ess_tail_min']:.0f} < {THRESHOLDS['ess_tail_min']:.0f}"
            )
        if out["divergences"] > THRESHOLDS["divergences"]:
            problems.append(f"{out['divergences']} divergent transitions")
    out["ok"] = not problems
    out["problems"] = problems
    # Warnings that do not fail a fit on their own but are worth reading.
    notes = []
    if np.isfinite(out["ebfmi_min"]) and out["ebfmi_min"] < EBFMI_MIN:
        notes.append(f"E-BFMI {out['ebfmi_min']:.2f} < {EBFMI_MIN}")
    if out["treedepth_hits"]:
        notes.append(f"{out['treedepth_hits']} draws hit the maximum tree depth {max_treedepth}")
    out["notes"] = notes
    return out


def verdict(diag: dict[str, Any]) -> str:
    """One line saying whether the fit passed its checks, and why not.

    Parameters
    ----------
    diag : dict
        Output of `convergence`.

    Returns
    -------
    str
        ``"OK: ..."`` or ``"FLAGGED: ..."``; every summary, plot title and CLI message that uses
        a fit starts with it.
    """
    if diag["ok"]:
        text = (
            f"OK: R-hat max {diag['rhat_max']:.3f}, min ESS bulk {diag['ess_bulk_min']:.0f} / "
            f"tail {diag['ess_tail_min']:.0f}, {diag['divergences']} divergences, "
            f"{diag['chains']} chains x {diag['draws']} draws"
        )
    else:
        text = "FLAGGED, do not trust this fit: " + "; ".join(diag["problems"])
        named = format_flagged(diag.get("flagged_parameters") or [])
        if named:
            text += f". Parameters failing the checks, worst first: {named}"
    if diag.get("notes"):
        text += " (note: " + "; ".join(diag["notes"]) + ")"
    return text


def _redundant(name: str, names: set[str]) -> bool:
    """Whether a variable repeats another under a transform (``log_CL`` and ``CL``)."""
    for prefix in ("log_", "logit_"):
        if name.startswith(prefix) and name[len(prefix) :] in names:
            return True
    if name in ("z", "phi") and "eta" in names:
        return True
    if name == "chol_iiv" and "corr_iiv" in names:
        return True
    return name.startswith("cutpoints_")  # each cutpoint is also its own variable


def flagged_parameters(post: Any, rhat: Any, ess_bulk: Any, ess_tail: Any) -> list[dict]:
    """Parameters that fail R-hat <= 1.01 or ESS >= 400, worst first.

    Random effects are reported per IIV parameter (the worst subject): ``eta[CL]``. A free
    variable that repeats a reported one on another scale (``log_CL`` for ``CL``, ``z`` and
    ``phi`` for ``eta``, the packed ``chol_iiv``, the ordered
    ``cutpoints_<endpoint>`` vector) is left out; R-hat and ESS are rank-based, so they agree.

    Parameters
    ----------
    post : xarray.Dataset
        The posterior.
    rhat, ess_bulk, ess_tail : xarray.Dataset
        ArviZ's R-hat and ESS of its variables.

    Returns
    -------
    list of dict
        ``name``, ``rhat``, ``ess_bulk``, ``ess_tail``, ``severity``: the largest of
        ``(R-hat - 1) / 0.01`` and ``400 / min ESS`` (above 1 means failing), sorted by it.
    """
    names = set(rhat.data_vars)
    rows = []
    for name in rhat.data_vars:
        if _redundant(name, names):
            continue
        r, b, t = rhat[name], ess_bulk[name], ess_tail[name]
        if "subject" in r.dims:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # all-NaN slices
                r, b, t = r.max("subject"), b.min("subject"), t.min("subject")
        dims = list(r.dims)
        rv, bv, tv = (np.atleast_1d(np.asarray(x.values, dtype=float)) for x in (r, b, t))
        shape = np.shape(r.values)
        for flat, index in enumerate(np.ndindex(*shape) if shape else [()]):
            label = name
            if dims:
                parts = [
                    str(r[d].values[i]) if d in r.coords else str(i)
                    for d, i in zip(dims, index, strict=True)
                ]
                label = f"{name}[{', '.join(parts)}]"
            rh, eb, et = rv.reshape(-1)[flat], bv.reshape(-1)[flat], tv.reshape(-1)[flat]
            ess = float(np.nanmin([eb, et])) if np.isfinite([eb, et]).any() else np.nan
            bad_r = np.isfinite(rh) and rh > THRESHOLDS["rhat_max"]
            bad_e = (np.isfinite(eb) and eb < THRESHOLDS["ess_bulk_min"]) or (
                np.isfinite(et) and et < THRESHOLDS["ess_tail_min"]
            )
            if not (bad_r or bad_e):
                continue
            severity = max(
                (rh - 1.0) / (THRESHOLDS["rhat_max"] - 1.0) if np.isfinite(rh) else 0.0,
                THRESHOLDS["ess_bulk_min"] / max(ess, 1e-9) if np.isfinite(ess) else 0.0,
            )
            rows.append(
                {
                    "name": label,
                    "rhat": float(rh),
                    "ess_bulk": float(eb),
                    "ess_tail": float(et),
                    "severity": float(severity),
                }
            )
    rows.sort(key=lambda row: -row["severity"])
    return rows


def format_flagged(rows: list[dict], max_named: int = MAX_NAMED) -> str:
    """Format flagged parameters as text: ``CL (R-hat 1.32, ESS 9/21), ..., and 4 more``.

    Parameters
    ----------
    rows : list of dict
        Output of `flagged_parameters`.
    max_named : int, optional
        Parameters named at most.

    Returns
    -------
    str
        Empty when ``rows`` is.
    """

    def one(row: dict) -> str:
        rh = f"R-hat {row['rhat']:.3f}" if np.isfinite(row["rhat"]) else "R-hat n/a"
        eb = f"{row['ess_bulk']:.0f}" if np.isfinite(row["ess_bulk"]) else "n/a"
        et = f"{row['ess_tail']:.0f}" if np.isfinite(row["ess_tail"]) else "n/a"
        return f"{row['name']} ({rh}, ESS bulk/tail {eb}/{et})"

    text = ", ".join(one(r) for r in rows[:max_named])
    if len(rows) > max_named:
        text += f", and {len(rows) - max_named} more"
    return text


def cv_percent(omega: Any) -> np.ndarray:
    """IIV of a log-normal parameter as a coefficient of variation: ``100 sqrt(exp(w^2) - 1)``.

    Parameters
    ----------
    omega : array_like
        Standard deviation of the random effect (log scale).

    Returns
    -------
    numpy.ndarray
    """
    return 100.0 * np.sqrt(np.expm1(np.asarray(omega, dtype=float) ** 2))


def shrinkage(eta: np.ndarray, omega: float) -> float:
    """Eta shrinkage: ``1 - SD(posterior mean eta over subjects) / omega``.

    Parameters
    ----------
    eta : numpy.ndarray
        ``(chain, draw, subject)`` draws of one random effect.
    omega : float
        Its standard deviation (posterior median).

    Returns
    -------
    float
        0: individual effects as spread as the population says; near 1: the data say little
        about individuals (individual plots and eta-covariate plots then mislead).
    """
    means = np.asarray(eta).reshape(-1, np.shape(eta)[-1]).mean(axis=0)
    if means.size < 2 or not omega > 0:
        return float("nan")
    return float(1.0 - np.std(means, ddof=1) / omega)


def parameter_table(
    idata: Any, spec: Any, roles: dict[str, str], iiv: tuple[str, ...], mass: float = 0.95
) -> pd.DataFrame:
    """Posterior summary in pharmacometric terms.

    Parameters
    ----------
    idata : arviz.InferenceData
        The draws.
    spec : ModelSpec
        The model (units, IIV scales).
    roles : dict of str to str
        Role of each estimated parameter (`pkpd.inference.builder.parameter_roles`).
    iiv : tuple of str
        Parameters with IIV (order of the ``iiv`` dimension).
    mass : float, optional
        Mass of the central credible interval.

    Returns
    -------
    pandas.DataFrame
        One row per typical value, IIV and residual parameter, and, for a fit with correlated
        IIV (``corr_iiv`` in the draws), one row ``corr(A,B)`` per pair of IIV parameters (the
        correlation of their random effects): ``kind`` (``typical``, ``covariate``, ``IIV``,
        ``IIV correlation``, ``residual``, ``cutpoint``), ``unit``, ``median``, ``lower``,
        ``upper`` (the credible interval), ``cv_percent`` (IIV: the %CV, median),
        ``cv_lower``, ``cv_upper``, ``shrinkage`` (IIV), ``rhat``, ``ess_bulk``, ``ess_tail``.
    """
    import arviz as az

    post = idata.posterior
    lo_q, hi_q = (1 - mass) / 2, 1 - (1 - mass) / 2
    multi = post.sizes["chain"] > 1 and post.sizes["draw"] >= 4
    rows = []

    def stats(values: np.ndarray) -> dict[str, float]:
        flat = values.reshape(-1)
        out = {
            "median": float(np.median(flat)),
            "lower": float(np.quantile(flat, lo_q)),
            "upper": float(np.quantile(flat, hi_q)),
        }
        if post.sizes["draw"] >= 4:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["rhat"] = float(az.rhat(values)) if multi else float("nan")
                out["ess_bulk"] = float(az.ess(values, method="bulk"))
                out["ess_tail"] = float(az.ess(values, method="tail"))
        return out

    kind_of = {
        "structural": "typical",
        "covariate": "covariate",
        "residual": "residual",
        "cutpoint": "cutpoint",
    }
    order = {
        "typical": 0,
        "covariate": 1,
        "IIV": 2,
        "IIV correlation": 3,
        "residual": 4,
        "cutpoint": 5,
    }
    for name, role in roles.items():
        if name not in post:
            continue
        par = spec.parameters[name]
        rows.append(
            {
                "parameter": name,
                "kind": kind_of[role],
                "unit": par.unit,
                **stats(np.asarray(post[name].values)),
            }
        )
    eta = np.asarray(post["eta"].values) if "eta" in post else None
    for k, name in enumerate(iiv):
        key = f"omega_{name}"
        if key not in post:
            continue
        omega = np.asarray(post[key].values)
        row = {
            "parameter": key,
            "kind": "IIV",
            "unit": spec.parameters[name].iiv_scale,
            **stats(omega),
        }
        if spec.parameters[name].iiv_scale == "log":
            cv = cv_percent(omega).reshape(-1)
            row["cv_percent"] = float(np.median(cv))
            row["cv_lower"] = float(np.quantile(cv, lo_q))
            row["cv_upper"] = float(np.quantile(cv, hi_q))
        if eta is not None:
            row["shrinkage"] = shrinkage(eta[..., k], row["median"])
        rows.append(row)
    if "corr_iiv" in post:
        corr = np.asarray(post["corr_iiv"].values)  # (chain, draw, iiv, iiv)
        for i, a in enumerate(iiv):
            for j in range(i + 1, len(iiv)):
                rows.append(
                    {
                        "parameter": f"corr({a},{iiv[j]})",
                        "kind": "IIV correlation",
                        "unit": "1",
                        **stats(corr[..., i, j]),
                    }
                )
    table = pd.DataFrame(rows)
    columns = [
        "parameter",
        "kind",
        "unit",
        "median",
        "lower",
        "upper",
        "cv_percent",
        "cv_lower",
        "cv_upper",
        "shrinkage",
        "rhat",
        "ess_bulk",
        "ess_tail",
    ]
    for c in columns:
        if c not in table:
            table[c] = np.nan
    table = table[columns]
    table = table.sort_values("kind", key=lambda s: s.map(order), kind="stable")
    return table.set_index("parameter")


def format_table(table: pd.DataFrame, verdict_line: str) -> str:
    """Text rendering of a `parameter_table`, the verdict first.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of `parameter_table`.
    verdict_line : str
        Output of `verdict`.

    Returns
    -------
    str
    """
    shown = table.copy()
    shown["95% CrI"] = [
        f"[{lo:.4g}, {hi:.4g}]" for lo, hi in zip(shown["lower"], shown["upper"], strict=True)
    ]
    shown["IIV %CV"] = [
        "" if not np.isfinite(cv) else f"{cv:.1f} [{lo:.1f}, {hi:.1f}]"
        for cv, lo, hi in zip(
            shown["cv_percent"], shown["cv_lower"], shown["cv_upper"], strict=True
        )
    ]
    shown["shrinkage"] = [
        "" if not np.isfinite(s) else f"{100 * s:.0f}%" for s in shown["shrinkage"]
    ]
    shown["median"] = [f"{m:.4g}" for m in shown["median"]]
    shown["R-hat"] = [f"{r:.3f}" if np.isfinite(r) else "" for r in shown["rhat"]]
    shown["ESS bulk"] = [f"{e:.0f}" if np.isfinite(e) else "" for e in shown["ess_bulk"]]
    cols = ["kind", "unit", "median", "95% CrI", "IIV %CV", "shrinkage", "R-hat", "ESS bulk"]
    return verdict_line + "\n" + shown[cols].to_string()
