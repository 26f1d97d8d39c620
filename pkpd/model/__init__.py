"""Model specifications: model files (TOML) loaded, unit-checked and compiled to JAX.

>>> from pkpd.model import load_model
>>> spec = load_model("pk_1cmt_oral")      # a library name or a path
>>> print(spec.describe())                  # equations, units, priors, sources
>>> model = spec.compile()                  # CompiledModel for pkpd.solve

See ``docs/model-files.md`` for the file format.
"""

from pkpd.model.compiled import AnalyticSpec, CompiledModel
from pkpd.model.library import library_path, list_models
from pkpd.model.loader import load_model, load_model_texts
from pkpd.model.priors import Prior, parse_prior
from pkpd.model.spec import (
    CovariateEffect,
    CovariateSpec,
    DerivedSpec,
    DoseSpec,
    ModelSpec,
    ObservationSpec,
    ParameterSpec,
    StateSpec,
)

__all__ = [
    "AnalyticSpec",
    "CompiledModel",
    "CovariateEffect",
    "CovariateSpec",
    "DerivedSpec",
    "DoseSpec",
    "ModelSpec",
    "ObservationSpec",
    "ParameterSpec",
    "Prior",
    "StateSpec",
    "library_path",
    "list_models",
    "load_model",
    "load_model_texts",
    "parse_prior",
]
