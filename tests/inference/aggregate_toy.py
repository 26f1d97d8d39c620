"""The toy CRS model and trial summaries shared by the aggregate-likelihood and calibration tests.

Not a test module (no ``test_`` prefix): `test_aggregate.py` and `test_calibration.py` import it.
"""

from pathlib import Path

import numpy as np

import pkpd
from pkpd.data.trials import parse_trials
from pkpd.inference.aggregate import VirtualDesign

# A toy CRS model (tests only): a cytokine pulse scaled by tumour burden TB, its signalling
# blocked by an antibody; the CRS grade is ordinal on log(1 + signalling).
TOY = """
[model]
name = "agg_toy"
description = "Toy cytokine pulse with antibody blockade (aggregate-likelihood tests)"
time_unit = "day"

[states]
toc = { unit = "mg", description = "antibody" }
IL6 = { unit = "1", description = "cytokine" }

[covariates]
WT = { unit = "kg", default = 70, description = "body weight" }
TB = { unit = "1", default = 1, description = "tumour burden (relative)" }

[parameters]
tpk = { unit = "day", value = 3.0, source = "assumption: test" }
kout = { unit = "1/day", value = 2.0, source = "assumption: test" }
k_toc = { unit = "1/day", value = 0.1, source = "assumption: test" }
V_toc = { unit = "L", value = 5.0, source = "assumption: test" }
KD = { unit = "mg/L", value = 1.0, source = "assumption: test" }
c1 = { unit = "1", prior = "Normal(1.0, 0.5)", source = "assumption: test" }
c2 = { unit = "1", prior = "Normal(2.0, 0.5)", source = "assumption: test" }
c3 = { unit = "1", prior = "Normal(3.0, 0.5)", source = "assumption: test" }
c4 = { unit = "1", prior = "Normal(4.0, 0.5)", source = "assumption: test" }
sigma_il6 = { unit = "1", prior = "HalfNormal(0.5)", source = "assumption: test" }

[parameters.kin]
unit = "1/day"
prior = "LogNormal(median=40, cv=0.3)"
iiv = "HalfNormal(0.5)"
covariates = { TB = "power(1, ref=1)" }
source = "assumption: test"

[derived]
occ = { expression = "(toc / V_toc) / (toc / V_toc + KD)", description = "occupancy" }

[equations]
toc = "-k_toc * toc"
IL6 = "kin * (pos(t) / tpk) * exp(1 - pos(t) / tpk) - kout * IL6"

[doses.tocilizumab_iv]
compartment = "toc"
unit = "mg"

[observations.il6]
expression = "IL6"
unit = "1"
dvid = 1
error = "lognormal"
sigma = "sigma_il6"

[observations.crs_grade]
expression = "log(1 + IL6 * (1 - occ))"
unit = "1"
dvid = 2
error = "ordinal"
cutpoints = ["c1", "c2", "c3", "c4"]
levels = [0, 1, 2, 3, 4]
offset = "subject"
"""

BASE = {"study": "S", "product": "x", "disease": "d", "scale": "Lee", "source": "synthetic"}


def toy_covariates(trial, normals, model):
    scale = 1.0 if trial.costimulation == "CD28" else 0.4
    return {"TB": 0.5 * scale * np.exp(0.5 * normals[:, 0]), "WT": 70 * np.exp(0.2 * normals[:, 1])}


def no_base(trial, covariates, model):
    return []


def design(n=128, seed=0):
    return VirtualDesign(n_patients=n, seed=seed, covariates=toy_covariates, base=no_base)


def toy_model(folder: Path):
    """The toy model, written to ``folder`` and compiled."""
    path = folder / "agg_toy.toml"
    path.write_text(TOY)
    return pkpd.load_model(path).compile()


def two_trials():
    """Trial a (CD28, Lee, rates >= k and an onset median) and b (4-1BB, exact grade shares)."""
    return list(
        parse_trials(
            {
                "trial": [
                    dict(
                        BASE,
                        id="a",
                        costimulation="CD28",
                        n=100,
                        outcomes=[
                            {"endpoint": "crs", "min_grade": k, "count": c}
                            for k, c in ((1, 80), (2, 55), (3, 30), (4, 10))
                        ],
                        timing=[{"endpoint": "crs", "what": "onset", "median_days": 1.5}],
                    ),
                    dict(
                        BASE,
                        id="b",
                        costimulation="4-1BB",
                        n=133,
                        scale="not stated",
                        outcomes=[
                            {"endpoint": "crs", "grade": k, "rate": r}
                            for k, r in ((1, 0.26), (2, 0.32), (3, 0.045), (4, 0.038), (5, 0.038))
                        ],
                    ),
                ]
            }
        ).values()
    )
