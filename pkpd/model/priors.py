"""Prior distributions written in model files: ``"LogNormal(median=3, cv=0.5)"``.

A prior is data (family and parameters), parsed from text with `ast` (never evaluated), checked
for valid parameter values at load time, and turned into a frozen `scipy.stats` distribution for
medians, quantiles and prior draws. The inference layer maps the same objects onto PyMC.

Families and their parameters (positional or keyword, in this order):

=================  =========================================  ==========
family             parameters                                 support
=================  =========================================  ==========
``LogNormal``      ``median, cv`` or ``mu, sigma`` (log scale)  positive
``Normal``         ``mu, sigma``                              real
``HalfNormal``     ``sigma``                                  positive
``HalfCauchy``     ``beta``                                   positive
``Exponential``    ``lam``                                    positive
``Gamma``          ``alpha, beta`` (rate)                     positive
``Uniform``        ``lower, upper``                           interval
``Beta``           ``alpha, beta``                            unit
``LogitNormal``    ``mu, sigma`` (logit scale)                unit
=================  =========================================  ==========

``LogNormal(median=m, cv=c)`` is the pharmacometric reading: median ``m`` and coefficient of
variation ``c``, i.e. ``log X ~ Normal(log m, sqrt(log(1 + c^2)))``.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special, stats

#: family -> (positional parameter names, support)
FAMILIES: dict[str, tuple[tuple[str, ...], str]] = {
    "LogNormal": (("mu", "sigma"), "positive"),
    "Normal": (("mu", "sigma"), "real"),
    "HalfNormal": (("sigma",), "positive"),
    "HalfCauchy": (("beta",), "positive"),
    "Exponential": (("lam",), "positive"),
    "Gamma": (("alpha", "beta"), "positive"),
    "Uniform": (("lower", "upper"), "interval"),
    "Beta": (("alpha", "beta"), "unit"),
    "LogitNormal": (("mu", "sigma"), "unit"),
}


class PriorError(ValueError):
    """A prior string that cannot be understood (the loader adds file, line and name)."""


@dataclass(frozen=True)
class Prior:
    """A prior distribution.

    Attributes
    ----------
    family : str
        One of `FAMILIES`.
    params : dict of str to float
        Canonical parameters (``LogNormal`` is always stored as ``mu, sigma`` on the log scale).
    text : str
        The text it was parsed from (for display).
    """

    family: str
    params: dict[str, float] = field(hash=False)
    text: str = ""

    @property
    def support(self) -> str:
        """``"positive"``, ``"real"``, ``"unit"`` (0, 1) or ``"interval"`` (lower, upper)."""
        return FAMILIES[self.family][1]

    def scipy(self) -> Any:
        """Return the frozen `scipy.stats` distribution.

        Returns
        -------
        scipy.stats.rv_frozen
        """
        p = self.params
        f = self.family
        if f == "LogNormal":
            return stats.lognorm(s=p["sigma"], scale=math.exp(p["mu"]))
        if f == "Normal":
            return stats.norm(p["mu"], p["sigma"])
        if f == "HalfNormal":
            return stats.halfnorm(scale=p["sigma"])
        if f == "HalfCauchy":
            return stats.halfcauchy(scale=p["beta"])
        if f == "Exponential":
            return stats.expon(scale=1.0 / p["lam"])
        if f == "Gamma":
            return stats.gamma(a=p["alpha"], scale=1.0 / p["beta"])
        if f == "Uniform":
            return stats.uniform(p["lower"], p["upper"] - p["lower"])
        if f == "Beta":
            return stats.beta(p["alpha"], p["beta"])
        if f == "LogitNormal":
            return _LogitNormal(p["mu"], p["sigma"])
        raise AssertionError(f)  # pragma: no cover

    def median(self) -> float:
        """Return the median (the typical value used when a parameter has no ``value``)."""
        return float(self.scipy().median())

    def interval(self, mass: float = 0.95) -> tuple[float, float]:
        """Return the central interval holding ``mass`` of the prior."""
        lo, hi = self.scipy().interval(mass)
        return float(lo), float(hi)

    def sample(self, rng: np.random.Generator, size: Any = None) -> np.ndarray:
        """Draw from the prior.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of randomness (seeded by the caller).
        size : int or tuple, optional
            Output shape.

        Returns
        -------
        numpy.ndarray
        """
        return np.asarray(self.scipy().rvs(size=size, random_state=rng), dtype=float)

    def widened(self, factor: float) -> Prior:
        """Return the same prior with its spread multiplied by ``factor`` (same median).

        Used by sensitivity analyses of unsourced assumptions.
        """
        p = dict(self.params)
        f = self.family
        if f in ("LogNormal", "Normal", "LogitNormal", "HalfNormal"):
            p["sigma"] *= factor
        elif f == "HalfCauchy":
            p["beta"] *= factor
        elif f == "Exponential":
            p["lam"] /= factor
        elif f == "Uniform":
            mid, half = (p["lower"] + p["upper"]) / 2, (p["upper"] - p["lower"]) / 2
            p["lower"], p["upper"] = mid - half * factor, mid + half * factor
        else:
            raise PriorError(f"cannot widen a {f} prior; write a LogNormal or Normal instead")
        return Prior(f, p, f"{self.text} (spread x{factor:g})")

    def shifted(self, factor: float) -> Prior:
        """Return the prior with its median multiplied by ``factor`` (log-scale families only)."""
        if self.family != "LogNormal":
            raise PriorError(f"cannot shift a {self.family} prior multiplicatively")
        p = dict(self.params)
        p["mu"] += math.log(factor)
        return Prior(self.family, p, f"{self.text} (median x{factor:g})")

    def __str__(self) -> str:
        if self.family == "LogNormal":
            cv = math.sqrt(math.expm1(self.params["sigma"] ** 2))
            return f"LogNormal(median={math.exp(self.params['mu']):.4g}, cv={cv:.3g})"
        inner = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"{self.family}({inner})"


class _LogitNormal:
    """Minimal frozen logit-normal distribution (scipy has none)."""

    def __init__(self, mu: float, sigma: float):
        self._norm = stats.norm(mu, sigma)

    def median(self) -> float:
        return float(special.expit(self._norm.median()))

    def interval(self, mass: float) -> tuple[float, float]:
        lo, hi = self._norm.interval(mass)
        return float(special.expit(lo)), float(special.expit(hi))

    def rvs(self, size: Any = None, random_state: Any = None) -> np.ndarray:
        return special.expit(self._norm.rvs(size=size, random_state=random_state))

    def ppf(self, q: Any) -> np.ndarray:
        return special.expit(self._norm.ppf(q))


def _number(node: ast.AST, text: str) -> float:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _number(node.operand, text)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            raise PriorError(f"prior {text!r}: expected a number, got {node.value!r}")
        return float(node.value)
    raise PriorError(f"prior {text!r}: parameters must be plain numbers")


def parse_prior(text: str) -> Prior:
    """Parse a prior string.

    Parameters
    ----------
    text : str
        For example ``"LogNormal(median=1.5, cv=0.5)"``, ``"HalfNormal(0.3)"``,
        ``"Normal(mu=0, sigma=1)"``.

    Returns
    -------
    Prior

    Raises
    ------
    PriorError
        Unknown family, unknown or missing parameters, invalid values (e.g. a negative scale).
    """
    if not isinstance(text, str) or not text.strip():
        raise PriorError(f"a prior must be a text like 'LogNormal(median=1, cv=0.5)', got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise PriorError(f"prior {text!r} is not valid syntax: {exc.msg}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise PriorError(f"prior {text!r} must look like Family(parameters)")
    family = call.func.id
    if family not in FAMILIES:
        raise PriorError(f"unknown prior family {family!r}; known: {', '.join(FAMILIES)}")
    args = [_number(a, text) for a in call.args]
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise PriorError(f"prior {text!r}: ** is not allowed")
        kwargs[kw.arg] = _number(kw.value, text)
    names = FAMILIES[family][0]
    if family == "LogNormal" and ("median" in kwargs or "cv" in kwargs):
        if args or set(kwargs) != {"median", "cv"}:
            raise PriorError(f"prior {text!r}: LogNormal takes (median=, cv=) or (mu=, sigma=)")
        if kwargs["median"] <= 0 or kwargs["cv"] <= 0:
            raise PriorError(f"prior {text!r}: median and cv must be positive")
        params = {
            "mu": math.log(kwargs["median"]),
            "sigma": math.sqrt(math.log1p(kwargs["cv"] ** 2)),
        }
        return Prior(family, params, text.strip())
    if len(args) > len(names):
        raise PriorError(f"prior {text!r}: {family} takes {len(names)} parameter(s) {names}")
    params = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names:
            raise PriorError(f"prior {text!r}: {family} has no parameter {key!r} (has {names})")
        if key in params:
            raise PriorError(f"prior {text!r}: parameter {key!r} given twice")
        params[key] = value
    missing = [n for n in names if n not in params]
    if missing:
        raise PriorError(f"prior {text!r}: missing parameter(s) {missing}")
    for key in ("sigma", "beta", "lam", "alpha"):
        if key in params and not params[key] > 0:
            raise PriorError(f"prior {text!r}: {key} must be positive")
    if family == "Uniform" and not params["upper"] > params["lower"]:
        raise PriorError(f"prior {text!r}: upper must exceed lower")
    if not all(math.isfinite(v) for v in params.values()):
        raise PriorError(f"prior {text!r}: parameters must be finite")
    return Prior(family, params, text.strip())
