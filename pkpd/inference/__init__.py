"""Hierarchical Bayesian fitting on the engine (layer 4).

>>> from pkpd.inference import build_model, fit, load_fit
>>> f = fit("pk_1cmt_oral", "theophylline", seed=1)
>>> f.summary()                 # typical values, IIV %CV, shrinkage, residual error
>>> f.diagnostics()             # R-hat, ESS, divergences, E-BFMI, tree depth; ok / flagged
>>> f.save("theo.nc"); f2 = load_fit("theo.nc")

See ``docs/inference.md``.
"""

from pkpd.inference.builder import ModelInfo, build_model, default_solver, prepare_model
from pkpd.inference.diagnostics import THRESHOLDS, FitWarning, convergence
from pkpd.inference.fitresult import Fit, ModelChangedError, load_fit
from pkpd.inference.profiles import PROFILES, Profile, Stage, fit_staged
from pkpd.inference.resumable import SamplingPaused
from pkpd.inference.sample import (
    DEFAULT_SAMPLER,
    SAMPLERS,
    FitSettings,
    fit,
    map_estimate,
    start_point,
)

__all__ = [
    "DEFAULT_SAMPLER",
    "PROFILES",
    "SAMPLERS",
    "THRESHOLDS",
    "Fit",
    "FitSettings",
    "FitWarning",
    "ModelChangedError",
    "ModelInfo",
    "Profile",
    "SamplingPaused",
    "Stage",
    "build_model",
    "convergence",
    "default_solver",
    "fit",
    "fit_staged",
    "load_fit",
    "map_estimate",
    "prepare_model",
    "start_point",
]
