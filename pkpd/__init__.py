"""pkpd: Bayesian pharmacodynamic intervention modelling.

Load NONMEM-style event datasets, build mechanistic ODE models from declarative model files,
integrate them for whole cohorts at once with exact dose handling, and (in later layers) fit,
compare dosing strategies and design trials.

Quick start
-----------
>>> import pkpd
>>> cohort = pkpd.load_dataset("theophylline")
>>> model = pkpd.load_model("pk_1cmt_oral").compile()
>>> sim = pkpd.simulate(model, cohort)          # typical values, predictions at the observations
"""

from pkpd._jax import enable_x64, use_compilation_cache

# float64 everywhere in the ODE engine and likelihoods; must happen before any JAX array exists.
enable_x64()

from pkpd.data import Cohort, load_dataset, read_dataset  # noqa: E402
from pkpd.errors import DatasetError, ModelError, PkpdError, SolverError  # noqa: E402
from pkpd.model import load_model  # noqa: E402
from pkpd.solve import Solver, simulate  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "use_compilation_cache",
    "Cohort",
    "DatasetError",
    "ModelError",
    "PkpdError",
    "Solver",
    "SolverError",
    "__version__",
    "load_dataset",
    "load_model",
    "read_dataset",
    "simulate",
]
