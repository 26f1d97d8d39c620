"""Identifiability aids: what the data say, and about which parameters.

A hierarchical model can fit the data well and still leave some of its parameters where the
prior put them: a parameter that enters no observation, two parameters of which the data
determine only a combination, a variability that a handful of subjects cannot pin down. This
module says which parameters the data inform and which stay at their priors.

>>> pp = prior_predictive("pk_1cmt_oral", "theophylline", draws=500, seed=1)
>>> plot_prior_predictive(pp, "prior_pc.png")      # prior predictive intervals against the data
>>> contraction(fit)                               # per parameter: prior SD, posterior SD, verdict
>>> correlated_pairs(fit, threshold=0.5)           # pairs the data determine only together
>>> plot_pairs(fit, "pairs.png")                   # draws of the most correlated pairs
>>> print(identifiability_report(fit))             # informed / prior-dominated, in words

**Prior predictive check** (`prior_predictive`): parameters drawn from the priors written in
the model file, random effects from ``N(0, omega^2)`` with omega from its prior, the study's
doses, times and covariates integrated with the engine (`pkpd.inference.predictive`), residual
error added by each endpoint's error model. If the observed data sit far outside the prior
predictive intervals, the priors are in conflict with the data (or the units are wrong); if the
intervals are many orders of magnitude wide, the priors say little.

**Contraction** (`contraction`), per population parameter (typical values, covariate
coefficients, omegas, residual errors, cutpoints), on the scale the sampler works on (log for
positive priors, logit for ``LogitNormal`` / ``Beta``, the interval's logit for ``Uniform``,
the value itself for ``Normal``):

- ``contraction = 1 - var_posterior / var_prior``: 0 when the posterior is as wide as the prior,
  1 when the data pin the parameter down (Betancourt 2018, "Calibrating model-based inferences
  and decisions");
- ``z_score = (mean_posterior - mean_prior) / sd_prior``: how far the data moved it.

Prior moments are analytic for every prior family (`prior_moments`); the ordered cutpoints of
an ordinal endpoint (whose joint prior is the product of their priors restricted to increasing
values) by prior draws.

The verdict (`VERDICT_THRESHOLDS`):

=====================  ============================================================
``informed``           contraction >= 0.5: the posterior is less than ~70% as wide
``prior-dominated``    contraction < 0.1 and abs(z) < 1: the posterior is the prior
``weakly informed``    anything else (some narrowing, or a shift without narrowing)
=====================  ============================================================

A posterior mean more than 3 prior SDs from the prior mean is noted as a prior-data conflict.

**Non-convergence.** A fit that fails its convergence checks names the parameters that fail
them, worst first (`pkpd.inference.diagnostics.convergence`, ``flagged_parameters``);
`unidentified_message` adds, when some of them are prior-dominated, that they look unidentified
by the data: a sampler cannot converge on what the likelihood does not constrain.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy import special

#: Thresholds of the verdict: ``informed`` at or above ``informed``; ``prior-dominated`` below
#: ``prior_dominated`` with ``abs(z) < z_shift``; ``weakly informed`` otherwise. A posterior
#: mean more than ``conflict_z`` prior SDs from the prior mean is noted as a conflict.
VERDICT_THRESHOLDS = {"informed": 0.5, "prior_dominated": 0.1, "z_shift": 1.0, "conflict_z": 3.0}

#: Verdicts, from most to least informed.
VERDICTS = ("informed", "weakly informed", "prior-dominated")

#: Prior draws used for moments that have no closed form (ordered cutpoints).
PRIOR_DRAWS = 20_000

_EULER = float(np.euler_gamma)
_KIND = {
    "structural": "typical",
    "covariate": "covariate",
    "residual": "residual",
    "cutpoint": "cutpoint",
}
_ORDER = {"typical": 0, "covariate": 1, "IIV": 2, "residual": 3, "cutpoint": 4}


# -- sampling scale and prior moments ------------------------------------------------------------


def sampling_scale(prior: Any) -> str:
    """Return the unconstrained scale on which a fit samples a parameter with this prior.

    Parameters
    ----------
    prior : Prior
        A prior from a model file (`pkpd.model.priors.Prior`).

    Returns
    -------
    str
        ``"log"`` (``LogNormal``, ``HalfNormal``, ``HalfCauchy``, ``Exponential``, ``Gamma``),
        ``"logit"`` (``LogitNormal``, ``Beta``), ``"interval"`` (``Uniform``:
        ``logit((x - lower) / (upper - lower))``) or ``"identity"`` (``Normal``).
    """
    family = prior.family
    if family in ("LogNormal", "HalfNormal", "HalfCauchy", "Exponential", "Gamma"):
        return "log"
    if family in ("LogitNormal", "Beta"):
        return "logit"
    if family == "Uniform":
        return "interval"
    return "identity"


def to_sampling_scale(prior: Any, x: Any) -> np.ndarray:
    """Values of a parameter on its sampling scale (`sampling_scale`).

    Parameters
    ----------
    prior : Prior
        The parameter's prior.
    x : array_like
        Values on the natural scale.

    Returns
    -------
    numpy.ndarray
    """
    x = np.asarray(x, dtype=float)
    scale = sampling_scale(prior)
    with np.errstate(divide="ignore", invalid="ignore"):
        if scale == "log":
            return np.log(x)
        if scale == "logit":
            return special.logit(x)
        if scale == "interval":
            lo, hi = prior.params["lower"], prior.params["upper"]
            return special.logit((x - lo) / (hi - lo))
    return x


def scale_label(prior: Any, name: str) -> str:
    """Axis label of a parameter on its sampling scale, e.g. ``"log CL"``."""
    scale = sampling_scale(prior)
    return name if scale == "identity" else f"{'logit' if scale == 'interval' else scale} {name}"


def prior_moments(prior: Any) -> tuple[float, float]:
    """Mean and standard deviation of a prior on its sampling scale, in closed form.

    With ``Z`` standard normal, ``C`` standard Cauchy, ``E`` standard exponential, ``psi``
    the digamma and ``psi'`` the trigamma function:

    ==============  ========================================  =================================
    family          mean on the sampling scale                variance
    ==============  ========================================  =================================
    LogNormal       ``mu``                                    ``sigma^2``
    LogitNormal     ``mu``                                    ``sigma^2``
    Normal          ``mu``                                    ``sigma^2``
    HalfNormal      ``log sigma + E log|Z|``                  ``Var log|Z| = pi^2 / 8``
                    ``= log sigma - (gamma + log 2) / 2``
    HalfCauchy      ``log beta`` (``log|C|`` is symmetric)    ``pi^2 / 4``
    Exponential     ``-log lam - gamma``                      ``pi^2 / 6``
    Gamma           ``psi(alpha) - log beta``                 ``psi'(alpha)``
    Beta            ``psi(alpha) - psi(beta)``                ``psi'(alpha) + psi'(beta)``
    Uniform         0 (standard logistic)                     ``pi^2 / 3``
    ==============  ========================================  =================================

    Parameters
    ----------
    prior : Prior
        A prior from a model file.

    Returns
    -------
    mean, sd : float
    """
    f, p = prior.family, prior.params
    if f in ("LogNormal", "LogitNormal", "Normal"):
        return float(p["mu"]), float(p["sigma"])
    if f == "HalfNormal":
        return math.log(p["sigma"]) - (_EULER + math.log(2.0)) / 2, math.pi / math.sqrt(8.0)
    if f == "HalfCauchy":
        return math.log(p["beta"]), math.pi / 2
    if f == "Exponential":
        return -math.log(p["lam"]) - _EULER, math.pi / math.sqrt(6.0)
    if f == "Gamma":
        return (
            float(special.digamma(p["alpha"]) - math.log(p["beta"])),
            math.sqrt(float(special.polygamma(1, p["alpha"]))),
        )
    if f == "Beta":
        return (
            float(special.digamma(p["alpha"]) - special.digamma(p["beta"])),
            math.sqrt(float(special.polygamma(1, p["alpha"]) + special.polygamma(1, p["beta"]))),
        )
    if f == "Uniform":
        return 0.0, math.pi / math.sqrt(3.0)
    raise ValueError(f"no closed-form moments for prior family {f!r}")  # pragma: no cover


def ordered_prior_draws(
    spec: Any, names: list[str], n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Draws of cutpoints from their joint prior: the product of their priors, increasing.

    The fit restricts the cutpoints of an ordinal endpoint to increasing values (PyMC's ordered
    transform, or a potential), so their joint prior is the product of the written priors
    conditioned on order. Drawn by rejection; fixed cutpoints stay at their value.

    Parameters
    ----------
    spec : ModelSpec
        The model.
    names : list of str
        The endpoint's cutpoints, in order.
    n : int
        Draws wanted.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    dict of str to numpy.ndarray
        ``(n,)`` draws per cutpoint.

    Raises
    ------
    ValueError
        If fewer than 1 in 10,000 prior draws are ordered (priors that contradict the order).
    """
    kept: list[np.ndarray] = []
    total, tried = 0, 0
    batch = max(1000, 2 * n)
    while total < n:
        cols = []
        for c in names:
            par = spec.parameters[c]
            if par.estimated:
                cols.append(par.prior.sample(rng, batch))
            else:
                cols.append(np.full(batch, float(par.value)))
        block = np.stack(cols, axis=-1)
        ok = np.all(np.diff(block, axis=-1) > 0, axis=-1)
        kept.append(block[ok])
        total += int(ok.sum())
        tried += batch
        if tried >= 10_000 * max(n, 1) and total < n:
            raise ValueError(f"the priors of cutpoints {names} are almost never increasing")
    draws = np.concatenate(kept, axis=0)[:n]
    return {c: draws[:, k] for k, c in enumerate(names)}


# -- which parameters -------------------------------------------------------------------------


def _ordered_groups(spec: Any) -> list[list[str]]:
    return [
        list(o.cutpoints)
        for o in spec.observations.values()
        if o.error == "ordinal" and len(o.cutpoints) > 1
    ]


def population_parameters(fit: Any) -> list[tuple[str, str, Any]]:
    """List the population parameters of a fit with their kind and prior, in summary order.

    Parameters
    ----------
    fit : Fit
        The fit.

    Returns
    -------
    list of (name, kind, prior)
        ``kind`` as in `Fit.summary`: ``typical``, ``covariate``, ``IIV`` (``omega_<name>``,
        prior: the ``iiv`` prior), ``residual``, ``cutpoint``. Only parameters in the
        posterior (estimated ones).
    """
    from pkpd.inference.builder import parameter_roles

    spec, post = fit.spec, fit.posterior
    rows = []
    for name, role in parameter_roles(spec).items():
        if name in post:
            rows.append((name, _KIND[role], spec.parameters[name].prior))
    for name, par in spec.parameters.items():
        if par.iiv is not None and f"omega_{name}" in post:
            rows.append((f"omega_{name}", "IIV", par.iiv))
    return sorted(rows, key=lambda r: _ORDER[r[1]])


def _flat(post: Any, name: str) -> np.ndarray:
    return np.asarray(post[name].values, dtype=float).reshape(-1)


def sampling_scale_draws(fit: Any) -> pd.DataFrame:
    """Posterior draws of the population parameters on their sampling scale.

    Parameters
    ----------
    fit : Fit
        The fit.

    Returns
    -------
    pandas.DataFrame
        One column per parameter (`population_parameters`), one row per draw (chains
        concatenated); ``attrs["labels"]`` maps names to axis labels (``"log CL"``) and
        ``attrs["chain"]`` gives each row's chain.
    """
    post = fit.posterior
    data, labels = {}, {}
    for name, _, prior in population_parameters(fit):
        data[name] = to_sampling_scale(prior, _flat(post, name))
        labels[name] = scale_label(prior, name)
    table = pd.DataFrame(data)
    table.attrs["labels"] = labels
    table.attrs["chain"] = np.repeat(np.arange(post.sizes["chain"]), post.sizes["draw"])
    return table


# -- contraction ----------------------------------------------------------------------------


def classify(contraction_value: float, z_score: float) -> str:
    """Verdict of one parameter from its contraction and posterior z-score.

    ``informed`` when ``contraction >= 0.5``; ``prior-dominated`` when ``contraction < 0.1``
    and ``abs(z) < 1``; ``weakly informed`` otherwise (`VERDICT_THRESHOLDS`). NaN inputs (a
    point estimate) give ``"n/a"``.

    Parameters
    ----------
    contraction_value : float
        ``1 - var_posterior / var_prior``.
    z_score : float
        ``(mean_posterior - mean_prior) / sd_prior``.

    Returns
    -------
    str
    """
    t = VERDICT_THRESHOLDS
    if not (np.isfinite(contraction_value) and np.isfinite(z_score)):
        return "n/a"
    if contraction_value >= t["informed"]:
        return "informed"
    if contraction_value < t["prior_dominated"] and abs(z_score) < t["z_shift"]:
        return "prior-dominated"
    return "weakly informed"


def contraction(fit: Any, seed: int = 0) -> pd.DataFrame:
    """Posterior contraction and shift of every population parameter, with a verdict.

    Parameters
    ----------
    fit : Fit
        The fit (NUTS draws; for a MAP point the posterior SD is undefined and the verdict is
        ``"n/a"``).
    seed : int, optional
        Seed of the prior draws used where the moments have no closed form (ordered
        cutpoints).

    Returns
    -------
    pandas.DataFrame
        Indexed by parameter (summary order): ``kind``, ``prior`` (as written), ``scale``
        (sampling scale), ``prior_mean``, ``prior_sd``, ``post_mean``, ``post_sd`` (on that
        scale), ``contraction`` (``1 - post_sd^2 / prior_sd^2``), ``z_score``
        (``(post_mean - prior_mean) / prior_sd``), ``verdict`` (``informed``, ``weakly
        informed``, ``prior-dominated``; thresholds in `VERDICT_THRESHOLDS`), ``moments``
        (``analytic`` or ``prior draws``) and ``note`` (a prior-data conflict, if any).
    """
    spec, post = fit.spec, fit.posterior
    rng = np.random.default_rng(seed)
    ordered: dict[str, np.ndarray] = {}
    for names in _ordered_groups(spec):
        if any(c in post for c in names):
            ordered.update(ordered_prior_draws(spec, names, PRIOR_DRAWS, rng))
    n_total = post.sizes["chain"] * post.sizes["draw"]
    rows = []
    for name, kind, prior in population_parameters(fit):
        if name in ordered:
            draws = ordered[name]
            prior_mean, prior_sd = float(draws.mean()), float(draws.std(ddof=1))
            moments = "prior draws"
            scale = "identity"
        else:
            prior_mean, prior_sd = prior_moments(prior)
            moments = "analytic"
            scale = sampling_scale(prior)
        values = _flat(post, name)
        if name not in ordered:
            values = to_sampling_scale(prior, values)
        values = values[np.isfinite(values)]
        if n_total >= 2 and values.size >= 2:
            post_mean, post_sd = float(values.mean()), float(values.std(ddof=1))
            shrink = 1.0 - post_sd**2 / prior_sd**2
            z = (post_mean - prior_mean) / prior_sd
        else:
            post_mean = float(values.mean()) if values.size else float("nan")
            post_sd = shrink = float("nan")
            z = (post_mean - prior_mean) / prior_sd
        note = ""
        if np.isfinite(z) and abs(z) > VERDICT_THRESHOLDS["conflict_z"]:
            note = (
                f"posterior mean {abs(z):.1f} prior SDs from the prior mean: prior-data conflict?"
            )
        rows.append(
            {
                "parameter": name,
                "kind": kind,
                "prior": prior.text or str(prior),
                "scale": scale,
                "prior_mean": prior_mean,
                "prior_sd": prior_sd,
                "post_mean": post_mean,
                "post_sd": post_sd,
                "contraction": shrink,
                "z_score": z,
                "verdict": classify(shrink, z),
                "moments": moments,
                "note": note,
            }
        )
    columns = [
        "parameter",
        "kind",
        "prior",
        "scale",
        "prior_mean",
        "prior_sd",
        "post_mean",
        "post_sd",
        "contraction",
        "z_score",
        "verdict",
        "moments",
        "note",
    ]
    return pd.DataFrame(rows, columns=columns).set_index("parameter")


# -- correlations ---------------------------------------------------------------------------


def correlated_pairs(fit: Any, threshold: float = 0.5) -> pd.DataFrame:
    """Pairs of population parameters whose posterior draws are correlated.

    Correlations (Pearson, chains pooled) are computed on the sampling scale, where the
    sampler works: a strong correlation means the data determine a combination of the two (a
    ratio, on the log scale) better than either alone.

    Parameters
    ----------
    fit : Fit
        The fit.
    threshold : float, optional
        Keep pairs with ``abs(correlation) >= threshold`` (0 keeps every pair).

    Returns
    -------
    pandas.DataFrame
        Columns ``a``, ``b``, ``correlation``, ``abs_correlation``; strongest first.
    """
    draws = sampling_scale_draws(fit)
    draws = draws.loc[:, draws.std() > 0]
    names = list(draws.columns)
    rows = []
    if len(names) >= 2 and len(draws) >= 3:
        corr = np.corrcoef(draws.to_numpy(), rowvar=False)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                r = float(corr[i, j])
                if np.isfinite(r) and abs(r) >= threshold:
                    rows.append(
                        {"a": names[i], "b": names[j], "correlation": r, "abs_correlation": abs(r)}
                    )
    table = pd.DataFrame(rows, columns=["a", "b", "correlation", "abs_correlation"])
    table = table.sort_values("abs_correlation", ascending=False, kind="stable")
    table = table.reset_index(drop=True)
    table.attrs["threshold"] = threshold
    return table


def plot_pairs(
    fit: Any,
    path: str | Path | None = None,
    *,
    pairs: Any = None,
    n_pairs: int = 4,
    max_points: int = 2000,
    seed: int = 0,
) -> Any:
    """Scatter plots of the posterior draws of the most correlated parameter pairs.

    Each panel shows one pair on the sampling scale (``log CL`` against ``log V``), coloured
    by chain, with divergent transitions (if any) as red crosses: a ridge or a banana is a
    combination the data determine while each parameter alone stays uncertain.

    Parameters
    ----------
    fit : Fit
        The fit.
    path : str or Path, optional
        Where to save (PNG, PDF, SVG by suffix).
    pairs : pandas.DataFrame or list of (str, str), optional
        The pairs to draw (default: the ``n_pairs`` most correlated, `correlated_pairs`).
    n_pairs : int, optional
        Panels when ``pairs`` is not given.
    max_points : int, optional
        Draws shown at most per panel (chosen at random, seeded).
    seed : int, optional
        Seed of that choice.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from pkpd.inference.plots import _finish, _plt

    plt = _plt()
    draws = sampling_scale_draws(fit)
    if pairs is None:
        pairs = correlated_pairs(fit, threshold=0.0).head(n_pairs)
    if isinstance(pairs, pd.DataFrame):
        chosen = list(zip(pairs["a"], pairs["b"], strict=True))
    else:
        chosen = [tuple(p) for p in pairs]
    chain = np.asarray(draws.attrs["chain"])
    diverging = np.zeros(len(draws), dtype=bool)
    if "sample_stats" in fit.idata.groups() and "diverging" in fit.idata.sample_stats:
        div = np.asarray(fit.idata.sample_stats["diverging"].values, dtype=bool).reshape(-1)
        if div.size == diverging.size:
            diverging = div
    rng = np.random.default_rng(seed)
    idx = np.arange(len(draws))
    if idx.size > max_points:
        idx = np.sort(rng.choice(idx, max_points, replace=False))
    n = max(1, len(chosen))
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False)
    for ax in axes.flat[len(chosen) :]:
        ax.set_visible(False)
    labels = draws.attrs["labels"]
    for ax, (a, b) in zip(axes.flat, chosen, strict=False):
        x, y = draws[a].to_numpy(), draws[b].to_numpy()
        for c in np.unique(chain):
            sel = idx[chain[idx] == c]
            ax.plot(
                x[sel], y[sel], ".", ms=2, alpha=0.35, color=f"C{int(c)}", label=f"chain {int(c)}"
            )
        div = idx[diverging[idx]]
        if div.size:
            ax.plot(x[div], y[div], "x", ms=4, color="red", label="divergent")
        r = float(np.corrcoef(x, y)[0, 1]) if np.std(x) > 0 and np.std(y) > 0 else np.nan
        ax.set_xlabel(labels.get(a, a))
        ax.set_ylabel(labels.get(b, b))
        ax.set_title(f"r = {r:.2f}", fontsize=9)
    if chosen:
        axes.flat[0].legend(fontsize=6, markerscale=3)
    text = (
        f"Posterior draws of the most correlated parameter pairs (sampling scale): "
        f"{fit.spec.name} on {fit.cohort.source}"
    )
    return _finish(fig, fit, text, path)


# -- the report ----------------------------------------------------------------------------


@dataclass
class IdentifiabilityReport:
    """What the data inform, as a table and as text.

    Attributes
    ----------
    table : pandas.DataFrame
        `contraction` plus ``rhat``, ``ess_bulk`` (per parameter) and ``partner``,
        ``partner_corr`` (its most correlated other parameter).
    pairs : pandas.DataFrame
        `correlated_pairs` above the threshold.
    unidentified : list of str
        Parameters that fail the convergence checks and are prior-dominated.
    text : str
        The printable report (the fit's verdict first).
    """

    table: pd.DataFrame
    pairs: pd.DataFrame
    unidentified: list[str]
    text: str

    def by_verdict(self, verdict: str) -> list[str]:
        """Parameters with this verdict (``informed``, ``weakly informed``, ...)."""
        return [str(n) for n in self.table.index[self.table["verdict"] == verdict]]

    @property
    def informed(self) -> list[str]:
        """Parameters the data inform."""
        return self.by_verdict("informed")

    @property
    def prior_dominated(self) -> list[str]:
        """Parameters whose posterior is their prior."""
        return self.by_verdict("prior-dominated")

    def __str__(self) -> str:
        return self.text


def _base_name(label: str) -> str:
    """``"eta[CL]"`` -> ``"eta"``; ``"log_CL"`` -> ``"log_CL"``."""
    return label.split("[", 1)[0]


def unidentified_parameters(fit: Any, table: pd.DataFrame | None = None) -> list[str]:
    """Parameters that fail the convergence checks and whose posterior is their prior.

    Parameters
    ----------
    fit : Fit
        The fit.
    table : pandas.DataFrame, optional
        A precomputed `contraction` table.

    Returns
    -------
    list of str
        Worst convergence first; empty when the fit passes its checks.
    """
    diag = fit.diagnostics()
    if diag.get("ok", True):
        return []
    flagged = [_base_name(p["name"]) for p in diag.get("flagged_parameters", [])]
    if not flagged:
        return []
    if table is None:
        table = contraction(fit)
    dominated = set(table.index[table["verdict"] == "prior-dominated"])
    out: list[str] = []
    for name in flagged:
        for candidate in (name, name.removeprefix("log_"), name.removeprefix("logit_")):
            if candidate in dominated and candidate not in out:
                out.append(candidate)
                break
    return out


def unidentified_message(fit: Any, table: pd.DataFrame | None = None) -> str | None:
    """Name the flagged parameters that look unidentified by the data, if any.

    Parameters
    ----------
    fit : Fit
        The fit.
    table : pandas.DataFrame, optional
        A precomputed `contraction` table.

    Returns
    -------
    str or None
        None when the fit passes its checks or no flagged parameter is prior-dominated.
    """
    names = unidentified_parameters(fit, table)
    if not names:
        return None
    if table is None:
        table = contraction(fit)
    details = ", ".join(f"{n} (contraction {table.loc[n, 'contraction']:.2f})" for n in names)
    return (
        f"These parameters look unidentified by the data: {details}. They fail the "
        "convergence checks and their posterior is no narrower than their prior: no "
        "observation constrains them. Fix them, give them an informative prior, or add "
        "data that depend on them."
    )


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def identifiability_report(
    fit: Any, threshold: float = 0.5, seed: int = 0
) -> IdentifiabilityReport:
    """Report which parameters the data inform, which stay at their priors, which go together.

    Parameters
    ----------
    fit : Fit
        The fit.
    threshold : float, optional
        Correlations reported when ``abs(r) >= threshold``.
    seed : int, optional
        Seed of prior draws (see `contraction`).

    Returns
    -------
    IdentifiabilityReport
        ``table`` (DataFrame), ``pairs``, ``unidentified`` and ``text``; ``print(report)``
        prints the text.
    """
    table = contraction(fit, seed=seed)
    diag = fit.diagnostics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = fit.summary()
    table["rhat"] = summary["rhat"].reindex(table.index)
    table["ess_bulk"] = summary["ess_bulk"].reindex(table.index)
    every = correlated_pairs(fit, threshold=0.0)
    partner, partner_corr = [], []
    for name in table.index:
        rows = every[(every["a"] == name) | (every["b"] == name)]
        if len(rows):
            top = rows.iloc[0]
            partner.append(top["b"] if top["a"] == name else top["a"])
            partner_corr.append(float(top["correlation"]))
        else:
            partner.append("")
            partner_corr.append(float("nan"))
    table["partner"] = partner
    table["partner_corr"] = partner_corr
    pairs = every[every["abs_correlation"] >= threshold].reset_index(drop=True)
    unidentified = unidentified_parameters(fit, table)

    shown = pd.DataFrame(
        {
            "kind": table["kind"],
            "scale": table["scale"],
            "prior SD": [f"{v:.3g}" for v in table["prior_sd"]],
            "post SD": [f"{v:.3g}" for v in table["post_sd"]],
            "contraction": [f"{v:.2f}" if np.isfinite(v) else "" for v in table["contraction"]],
            "z": [f"{v:+.2f}" if np.isfinite(v) else "" for v in table["z_score"]],
            "verdict": table["verdict"],
            "R-hat": [f"{v:.3f}" if np.isfinite(v) else "" for v in table["rhat"]],
            "most correlated with": [
                f"{p} ({r:+.2f})" if p else "" for p, r in zip(partner, partner_corr, strict=True)
            ],
        },
        index=table.index,
    )
    t = VERDICT_THRESHOLDS
    lines = [
        diag["verdict"],
        f"Identifiability of {fit.spec.name} fitted to {fit.cohort.source}: contraction = "
        "1 - posterior variance / prior variance on the sampling scale; z = shift of the "
        "posterior mean in prior SDs.",
        f"(informed: contraction >= {t['informed']}; prior-dominated: contraction < "
        f"{t['prior_dominated']} and |z| < {t['z_shift']}; weakly informed: otherwise)",
        "",
        shown.to_string() if len(shown) else "(no estimated population parameters)",
        "",
    ]
    if not np.isfinite(table["contraction"]).any() and len(table):
        lines.append("No posterior spread (a point estimate): contraction cannot be judged.")
    groups = {v: [str(n) for n in table.index[table["verdict"] == v]] for v in VERDICTS}
    lines.append(f"Informed by the data: {_names(groups['informed'])}")
    lines.append(f"Weakly informed: {_names(groups['weakly informed'])}")
    dominated = groups["prior-dominated"]
    if dominated:
        lines.append(
            f"Prior-dominated (posterior ~ prior; what the fit says about them is "
            f"what the prior said): {_names(dominated)}"
        )
    else:
        lines.append("Prior-dominated: none")
    for name, note in table["note"].items():
        if note:
            lines.append(f"Note: {name}: {note}")
    if len(pairs):
        text = "; ".join(
            f"{a} ~ {b} (r = {r:+.2f})"
            for a, b, r in zip(pairs["a"], pairs["b"], pairs["correlation"], strict=True)
        )
        lines.append(f"Correlated pairs (|r| >= {threshold:g}, sampling scale): {text}")
    else:
        lines.append(f"Correlated pairs (|r| >= {threshold:g}): none")
    message = unidentified_message(fit, table)
    if message:
        lines.append(message)
    return IdentifiabilityReport(
        table=table, pairs=pairs, unidentified=unidentified, text="\n".join(lines)
    )


def plot_contraction(
    fit: Any, path: str | Path | None = None, *, report: IdentifiabilityReport | None = None
) -> Any:
    """Posterior z-score against contraction, one point per population parameter.

    Right (contraction near 1), z near 0: the data inform the parameter, in agreement with the
    prior. Left (near 0): the posterior is the prior. Right with a large abs(z): the data
    overrule the prior (prior-data conflict). Shaded: the prior-dominated region.

    Parameters
    ----------
    fit : Fit
        The fit.
    path : str or Path, optional
        Where to save.
    report : IdentifiabilityReport, optional
        A precomputed report.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from pkpd.inference.plots import _finish, _plt

    plt = _plt()
    table = (report or identifiability_report(fit)).table
    colors = {
        "informed": "tab:green",
        "weakly informed": "tab:orange",
        "prior-dominated": "tab:red",
        "n/a": "0.5",
    }
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    t = VERDICT_THRESHOLDS
    ax.fill_between(
        [-1.0, t["prior_dominated"]], -t["z_shift"], t["z_shift"], color="tab:red", alpha=0.08, lw=0
    )
    ax.axvline(t["informed"], color="tab:green", ls=":", lw=1)
    for verdict_name, part in table.groupby("verdict"):
        c = np.clip(part["contraction"].to_numpy(dtype=float), -0.5, 1.0)
        ax.plot(
            c, part["z_score"], "o", color=colors.get(verdict_name, "0.5"), label=str(verdict_name)
        )
        for name, x, y in zip(part.index, c, part["z_score"], strict=True):
            if np.isfinite(x) and np.isfinite(y):
                ax.annotate(
                    str(name), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlim(-0.55, 1.05)
    ax.set_xlabel("contraction = 1 - posterior var / prior var (sampling scale)")
    ax.set_ylabel("posterior z-score (shift in prior SDs)")
    ax.legend(fontsize=7)
    text = f"Identifiability: {fit.spec.name} on {fit.cohort.source}"
    return _finish(fig, fit, text, path)


# -- prior predictive -------------------------------------------------------------------------


def _prepared(
    spec_or_model: Any, cohort: Any, solver: Any, censoring: str, correlated_iiv: bool | None
) -> Any:
    """Return a ModelInfo from a model (spec, name, path), a ModelInfo or a Fit."""
    from pkpd.inference.builder import ModelInfo, prepare_model

    if isinstance(spec_or_model, ModelInfo):
        return spec_or_model
    if hasattr(spec_or_model, "idata") and hasattr(spec_or_model, "info"):  # a Fit
        if cohort is None:
            return spec_or_model.info
        spec_or_model = spec_or_model.spec
    if cohort is None:
        raise ValueError("prior_predictive needs a cohort (the study design and data)")
    return prepare_model(
        spec_or_model,
        cohort,
        solver=solver,
        censoring=censoring,
        correlated_iiv=bool(correlated_iiv),
    )


def prior_draws(
    info: Any,
    draws: int,
    rng: np.random.Generator,
    correlated_iiv: bool = False,
    lkj_eta: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Typical values, omegas and random effects drawn from the model file's priors.

    Parameters
    ----------
    info : ModelInfo
        The prepared model.
    draws : int
        Number of draws.
    rng : numpy.random.Generator
        Source of randomness.
    correlated_iiv : bool, optional
        Correlate the random effects with an LKJ(``lkj_eta``) prior, as ``fit`` does.
    lkj_eta : float, optional
        Shape of the LKJ prior.

    Returns
    -------
    theta : numpy.ndarray
        ``(D, P)`` typical values (fixed parameters at their value).
    omega : numpy.ndarray
        ``(D, K)`` IIV standard deviations.
    eta : numpy.ndarray
        ``(D, N, K)`` random effects of the cohort's subjects.
    """
    spec = info.spec
    values: dict[str, np.ndarray] = {}
    for names in _ordered_groups(spec):
        if any(c in info.estimated for c in names):
            values.update(ordered_prior_draws(spec, names, draws, rng))
    for name in info.estimated:
        if name not in values:
            values[name] = spec.parameters[name].prior.sample(rng, draws)
    theta = info.theta_from(values) if values else np.tile(info.theta_from({}), (draws, 1))
    k, n = len(info.iiv), info.n_subjects
    omega = (
        np.stack([spec.parameters[p].iiv.sample(rng, draws) for p in info.iiv], axis=-1)
        if k
        else np.zeros((draws, 0))
    )
    z = rng.standard_normal((draws, n, k))
    if k >= 2 and correlated_iiv:
        import pymc as pm

        corr = pm.draw(
            pm.LKJCorr.dist(n=k, eta=lkj_eta, return_matrix=True),
            draws=draws,
            random_seed=int(rng.integers(2**31 - 1)),
        )
        cov = omega[:, :, None] * np.asarray(corr).reshape(draws, k, k) * omega[:, None, :]
        chol = np.linalg.cholesky(cov + 1e-12 * np.eye(k))
        eta = np.einsum("dnk,djk->dnj", z, chol)
    else:
        eta = z * omega[:, None, :]
    return theta, omega, eta


def prior_predictive(
    spec_or_model: Any,
    cohort: Any = None,
    draws: int = 500,
    seed: int = 0,
    *,
    solver: Any = None,
    censoring: str = "m3",
    correlated_iiv: bool | None = None,
) -> xr.Dataset:
    """Simulate the observations of a study under the priors of a model file.

    Each draw takes the typical values, the omegas and (for each subject of the cohort) the
    random effects from the priors written in the model file, integrates the cohort's doses,
    times and covariates with the engine, and adds residual error by each endpoint's error
    model (`pkpd.inference.predictive.simulate_dv`); simulated values beyond the assay's limits
    count as censored (`pkpd.inference.predictive.censor_flags`).

    Parameters
    ----------
    spec_or_model : ModelSpec or str or Path or ModelInfo or Fit
        The model (a loaded spec, a library name, a file, a prepared model, or a fit: its model
        and, unless ``cohort`` is given, its data).
    cohort : Cohort or str or Path, optional
        The study (a Cohort, a bundled dataset name or a CSV file); required unless
        ``spec_or_model`` carries one.
    draws : int, optional
        Prior draws (one simulated study each).
    seed : int, optional
        Seed of every random number.
    solver : Solver, optional
        ODE solver (default: the fitting solver).
    censoring : {"m3", "drop"}, optional
        As in `fit`: ``"drop"`` leaves censored records out.
    correlated_iiv : bool, optional
        Draw correlated random effects (LKJ(2) prior), as ``fit(..., correlated_iiv=True)``;
        default: as the fit or prepared model given, else independent.

    Returns
    -------
    xarray.Dataset
        ``y_rep``, ``pred`` and ``cens_rep`` over ``(sample, obs_id)``, the observed ``y``
        (NaN where censored), ``cens``, ``limit``, ``time``, ``subject`` and ``endpoint``, the
        draws ``theta (sample, parameter)`` and ``omega (sample, iiv)``; ``attrs``: ``model``,
        ``source``, ``seed``, ``failed_fraction`` (draws whose solve failed: NaN predictions),
        ``time_unit``, ``endpoint_units``, ``ordinal`` (ordinal endpoints).
    """
    from pkpd.inference.likelihood import residual_parameters
    from pkpd.inference.predictive import censor_flags, predictions, simulate_dv

    info = _prepared(spec_or_model, cohort, solver, censoring, correlated_iiv)
    correlated = info.correlated_iiv if correlated_iiv is None else bool(correlated_iiv)
    rng = np.random.default_rng(seed)
    theta, omega, eta = prior_draws(info, int(draws), rng, correlated_iiv=correlated)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = predictions(info, theta, eta)
    params = list(info.model.parameters)
    resid = {n: theta[:, params.index(n)] for n in residual_parameters(info.spec, info.model)}
    with np.errstate(all="ignore"):
        y = simulate_dv(info, pred, resid, rng)
        flags = censor_flags(info, y)
    obs = info.observations
    failed = ~np.all(np.isfinite(pred), axis=1)
    dims = ("sample", "obs_id")
    return xr.Dataset(
        {
            "y_rep": (dims, y),
            "pred": (dims, pred),
            "cens_rep": (dims, flags),
            "y": ("obs_id", np.where(obs.cens != 0, np.nan, obs.dv)),
            "cens": ("obs_id", obs.cens),
            "limit": ("obs_id", obs.limit),
            "time": ("obs_id", obs.time),
            "subject": ("obs_id", np.asarray(info.bound.subjects)[obs.subject]),
            "endpoint": ("obs_id", np.asarray(info.model.endpoints)[obs.endpoint]),
            "theta": (("sample", "parameter"), theta),
            "omega": (("sample", "iiv"), omega),
        },
        coords={
            "obs_id": np.arange(len(obs)),
            "sample": np.arange(theta.shape[0]),
            "parameter": params,
            "iiv": list(info.iiv),
        },
        attrs={
            "model": info.spec.name,
            "source": str(info.cohort.source),
            "seed": int(seed),
            "failed_fraction": float(failed.mean()) if failed.size else 0.0,
            "time_unit": str(info.model.time_unit),
            "endpoint_units": [str(u) for u in info.model.endpoint_units],
            "endpoints": list(info.model.endpoints),
            "ordinal": [
                n for n in info.model.endpoints if info.spec.observations[n].error == "ordinal"
            ],
        },
    )


def prior_predictive_coverage(pp: xr.Dataset, interval: float = 0.9) -> pd.DataFrame:
    """How many observations fall inside their own prior predictive interval.

    Parameters
    ----------
    pp : xarray.Dataset
        Output of `prior_predictive`.
    interval : float, optional
        Mass of the central interval.

    Returns
    -------
    pandas.DataFrame
        Per endpoint: ``n`` (uncensored observations), ``inside``, ``below``, ``above``
        (fractions of them relative to each record's central prior predictive interval) and
        ``width_decades`` (median width of the interval in decades, positive endpoints only:
        how vague the priors are). Ordinal endpoints are left out.
    """
    lo_q, hi_q = (1 - interval) / 2, 1 - (1 - interval) / 2
    rows = []
    for name in pp.attrs.get("endpoints", list(dict.fromkeys(pp["endpoint"].values))):
        if name in pp.attrs.get("ordinal", []):
            continue
        sel = (pp["endpoint"].values == name) & (pp["cens"].values == 0)
        if not sel.any():
            continue
        y = pp["y"].values[sel]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lo, hi = np.nanquantile(pp["y_rep"].values[:, sel], [lo_q, hi_q], axis=0)
        width = np.nan
        if (lo > 0).all():
            width = float(np.median(np.log10(hi / lo)))
        rows.append(
            {
                "endpoint": name,
                "n": int(sel.sum()),
                "inside": float(np.mean((y >= lo) & (y <= hi))),
                "below": float(np.mean(y < lo)),
                "above": float(np.mean(y > hi)),
                "width_decades": width,
            }
        )
    return pd.DataFrame(
        rows, columns=["endpoint", "n", "inside", "below", "above", "width_decades"]
    ).set_index("endpoint")


def plot_prior_predictive(
    pp: xr.Dataset,
    path: str | Path | None = None,
    *,
    n_bins: int = 8,
    intervals: tuple[float, ...] = (0.5, 0.9),
    log_y: bool | None = None,
) -> Any:
    """Prior predictive intervals against the observed data, per endpoint.

    Continuous endpoints: the observations (censored ones as open triangles at their limit)
    over the median and central intervals of the prior predictive distribution in time bins of
    about equal counts (one per nominal time when there are at most 20), on a log axis when
    the endpoint's observations are positive. Ordinal
    endpoints: the observed fraction of each grade against its prior predictive 90% interval.

    Parameters
    ----------
    pp : xarray.Dataset
        Output of `prior_predictive`.
    path : str or Path, optional
        Where to save (PNG, PDF, SVG by suffix).
    n_bins : int, optional
        Time bins per endpoint.
    intervals : tuple of float, optional
        Central intervals drawn (shaded, widest lightest).
    log_y : bool, optional
        Logarithmic y axis; default: when every observation of the endpoint is positive.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from pkpd.inference.plots import _plt
    from pkpd.inference.predictive import time_bins

    plt = _plt()
    endpoints = [n for n in pp.attrs.get("endpoints", []) if (pp["endpoint"].values == n).any()]
    if not endpoints:
        endpoints = list(dict.fromkeys(pp["endpoint"].values))
    units = dict(
        zip(pp.attrs.get("endpoints", []), pp.attrs.get("endpoint_units", []), strict=False)
    )
    ordinal = set(pp.attrs.get("ordinal", []))
    coverage = prior_predictive_coverage(pp, interval=max(intervals))
    ncol = len(endpoints)
    fig, axes = plt.subplots(1, ncol, figsize=(5.5 * ncol, 4.2), squeeze=False)
    y_rep_all = pp["y_rep"].values
    for ax, name in zip(axes.flat, endpoints, strict=True):
        sel = np.flatnonzero(pp["endpoint"].values == name)
        y = pp["y"].values[sel]
        cens = pp["cens"].values[sel]
        t = pp["time"].values[sel]
        unit = units.get(name, "")
        if name in ordinal:
            levels = np.unique(
                np.concatenate(
                    [
                        y[np.isfinite(y)],
                        np.unique(y_rep_all[:, sel][np.isfinite(y_rep_all[:, sel])]),
                    ]
                )
            )
            sim = y_rep_all[:, sel]
            frac_sim = np.stack([(sim == v).mean(axis=1) for v in levels], axis=-1)
            lo, med, hi = np.nanquantile(frac_sim, [0.05, 0.5, 0.95], axis=0)
            frac_obs = np.array([np.mean(y[np.isfinite(y)] == v) for v in levels])
            xs = np.arange(levels.size)
            ax.bar(xs, med, color="tab:blue", alpha=0.3, label="prior predictive median")
            ax.errorbar(
                xs,
                med,
                yerr=[med - lo, hi - med],
                fmt="none",
                ecolor="tab:blue",
                capsize=3,
                label="90% interval",
            )
            ax.plot(xs, frac_obs, "ko", label="observed")
            ax.set_xticks(xs, [f"{v:g}" for v in levels])
            ax.set_xlabel(name)
            ax.set_ylabel("fraction of records")
            ax.legend(fontsize=7)
            continue
        positive = bool(np.all(y[np.isfinite(y)] > 0)) and np.isfinite(y).any()
        use_log = positive if log_y is None else log_y
        unique = np.unique(t)
        if unique.size <= max(20, n_bins):  # a sampling design: one group per nominal time
            which = np.searchsorted(unique, t)
            n_groups = unique.size
        else:
            edges = time_bins(t, n_bins)
            which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
            n_groups = len(edges) - 1
        mids, bands = [], {q: ([], []) for q in intervals}
        medians = []
        for b in range(n_groups):
            cols = sel[which == b]
            if cols.size == 0:
                continue
            values = y_rep_all[:, cols].reshape(-1)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            mids.append(float(np.median(t[which == b])))
            medians.append(float(np.median(values)))
            for q in intervals:
                lo_q, hi_q = (1 - q) / 2, 1 - (1 - q) / 2
                bands[q][0].append(float(np.quantile(values, lo_q)))
                bands[q][1].append(float(np.quantile(values, hi_q)))
        for k, q in enumerate(sorted(intervals, reverse=True)):
            ax.fill_between(
                mids,
                bands[q][0],
                bands[q][1],
                color="tab:blue",
                alpha=0.15 + 0.15 * k,
                lw=0,
                label=f"prior predictive {100 * q:g}%",
            )
        ax.plot(mids, medians, "-", color="tab:blue", lw=1.2, label="prior predictive median")
        unc = np.isfinite(y) & (cens == 0)
        ax.plot(t[unc], y[unc], "o", color="k", ms=3, alpha=0.7, label="observed")
        limits = pp["limit"].values[sel]
        cen = cens != 0
        if cen.any():
            ax.plot(t[cen], limits[cen], "v", mfc="none", color="k", ms=4, label="censored")
        if use_log:
            ax.set_yscale("log")
            obs_pos = y[unc & (y > 0)]
            if obs_pos.size:
                lows = [v for v in bands[max(intervals)][0] if v > 0]
                bottom = min(obs_pos.min() / 10, min(lows) if lows else obs_pos.min() / 10)
                bottom = max(bottom, obs_pos.min() / 1e4)
                top = max(obs_pos.max() * 10, max(bands[max(intervals)][1], default=0))
                top = min(top, obs_pos.max() * 1e4)
                ax.set_ylim(bottom, top)
        ax.set_xlabel(f"time ({pp.attrs.get('time_unit', '')})")
        ax.set_ylabel(f"{name} ({unit})" if unit else name)
        if name in coverage.index:
            row = coverage.loc[name]
            ax.set_title(
                f"{name}: {100 * row['inside']:.0f}% of observations inside their "
                f"{100 * max(intervals):g}% prior predictive interval",
                fontsize=8,
            )
        ax.legend(fontsize=7)
    failed = pp.attrs.get("failed_fraction", 0.0)
    title = (
        f"Prior predictive check: {pp.attrs.get('model', '')} on "
        f"{pp.attrs.get('source', '')} ({pp.sizes['sample']} prior draws"
    )
    title += f"; {100 * failed:.0f}% failed solves)" if failed else ")"
    width = max(40, int(fig.get_figwidth() * 11))
    fig.suptitle(textwrap.fill(title, width), fontsize=10)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig
