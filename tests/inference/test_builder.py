"""The PyMC model: variable names and dims, priors mapped from the model file, fixed parameters,
correlated IIV, covariate effects through ``model.individual``, and the single JAX op."""

import dataclasses

import numpy as np
import pymc as pm
import pytest
from scipy import stats

import pkpd
from pkpd.inference import build_model
from pkpd.inference.builder import prior_variable
from pkpd.model import parse_prior


def test_names_dims_and_fixed_parameters():
    pm_model, info = build_model("pk_1cmt_oral", "theophylline")
    free = {rv.name for rv in pm_model.free_RVs}
    assert free == {
        "log_ka",
        "log_CL",
        "log_V",
        "sigma_add",
        "omega_ka",
        "omega_CL",
        "omega_V",
        "z",
    }
    assert {d.name for d in pm_model.deterministics} == {"ka", "CL", "V", "eta"}
    assert info.fixed == {"tlag": 0.0, "F": 1.0}
    assert pm_model.named_vars_to_dims["eta"] == ("subject", "iiv")
    assert list(pm_model.coords["iiv"]) == ["ka", "CL", "V"]
    assert len(pm_model.coords["subject"]) == 12
    assert len(pm_model.coords["obs_id"]) == 132
    assert info.roles == {
        "ka": "structural",
        "sigma_add": "residual",
        "CL": "structural",
        "V": "structural",
    }
    # The closed form is the default fitting solver when the model declares one.
    assert info.solver.uses_analytic(info.model)


def test_one_jax_op_for_the_whole_cohort():
    from pytensor.graph.traversal import ancestors
    from pytensor.link.jax.ops import JAXOp

    pm_model, _ = build_model("pk_1cmt_oral", "theophylline")
    ops = {
        v.owner.op
        for v in ancestors([pm_model.logp()])
        if v.owner is not None and isinstance(v.owner.op, JAXOp)
    }
    assert len(ops) == 1


@pytest.mark.parametrize(
    "text",
    [
        "LogNormal(median=3, cv=0.5)",
        "Normal(mu=1, sigma=2)",
        "HalfNormal(0.7)",
        "HalfCauchy(1.5)",
        "Exponential(2.0)",
        "Gamma(alpha=2, beta=3)",
        "Uniform(lower=1, upper=4)",
        "Beta(alpha=2, beta=5)",
        "LogitNormal(mu=0.3, sigma=0.8)",
    ],
)
def test_prior_density_matches_the_model_file(text):
    """The PyMC prior of each family has the density scipy gives for the same text."""
    prior = parse_prior(text)
    with pm.Model() as m:
        x = prior_variable("x", prior)
    values = np.asarray(prior.sample(np.random.default_rng(0), size=5))
    # Density of x on its natural scale: logp of the free variable (on its own scale, with no
    # Jacobian) minus log|dx/dfree| for the log / logit parameterisations.
    free = m.free_RVs[0]
    for v in values:
        if prior.family == "LogNormal":
            lp = pm.logp(free, np.log(v)).eval() - np.log(v)
        elif prior.family == "LogitNormal":
            u = np.log(v) - np.log1p(-v)
            lp = pm.logp(free, u).eval() - np.log(v * (1 - v))
        else:
            lp = pm.logp(x, v).eval()
        if prior.family == "LogitNormal":
            normal = stats.norm(prior.params["mu"], prior.params["sigma"])
            want = normal.logpdf(u) - np.log(v * (1 - v))
        else:
            want = prior.scipy().logpdf(v)
        # atol 1e-7: PyMC writes some constants as pt.log(2) of an integer, which PyTensor
        # evaluates in float32 (error up to ~5e-8 in log(2)); a constant, harmless to sampling.
        np.testing.assert_allclose(lp, want, rtol=1e-10, atol=1e-7)


COVARIATE_MODEL = """
[model]
name = "test_cov"
time_unit = "h"
analytic = { kind = "1cmt", central = "central", depot = "depot", CL = "CL", V = "V", ka = "ka" }

[states]
depot = { unit = "mg" }
central = { unit = "mg" }

[covariates]
WT = { unit = "kg", default = 70 }

[parameters]
ka = { unit = "1/h", value = 1.5, source = "assumption: test" }
beta_CL = { unit = "1", prior = "Normal(mu=0.75, sigma=0.2)", source = "assumption: test" }
sigma_add = { unit = "mg/L", prior = "HalfNormal(1.0)", source = "assumption: test" }
V = { unit = "L", prior = "LogNormal(median=30, cv=1)", iiv = "HalfNormal(0.5)", source = "test" }

[parameters.CL]
unit = "L/h"
prior = "LogNormal(median=3, cv=1)"
iiv = "HalfNormal(0.5)"
covariates = { WT = "power(beta_CL, ref=70)" }
source = "assumption: test"

[equations]
depot = "-ka * depot"
central = "ka * depot - CL / V * central"

[doses.oral]
compartment = "depot"
unit = "mg"

[observations.conc]
expression = "central / V"
unit = "mg/L"
error = "additive"
sigma = "sigma_add"
"""


def test_estimated_covariate_coefficient_and_correlated_iiv(tmp_path):
    path = tmp_path / "cov.toml"
    path.write_text(COVARIATE_MODEL)
    spec = pkpd.load_model(path)
    pm_model, info = build_model(spec, "theophylline", correlated_iiv=True)
    assert info.roles["beta_CL"] == "covariate"
    assert "beta_CL" in {rv.name for rv in pm_model.free_RVs}
    assert "chol_iiv" in {rv.name for rv in pm_model.free_RVs}
    names = {d.name for d in pm_model.deterministics}
    assert {"omega_CL", "omega_V", "corr_iiv", "eta"} <= names
    point = pm_model.initial_point()
    assert np.isfinite(pm_model.compile_logp()(point))
    # The covariate effect is the model's: CL_i = CL * (WT_i / 70) ** beta_CL at eta = 0.
    theta = info.theta_from({"beta_CL": 0.5, "sigma_add": 1.0, "CL": 3.0, "V": 30.0})
    p = np.asarray(info.model.individual(theta, np.zeros(2), info.bound.covariates[0]))
    wt = info.bound.covariates[0, 0]
    assert p[info.model.parameter_index("CL")] == pytest.approx(3.0 * (wt / 70) ** 0.5)


def test_options_are_checked():
    with pytest.raises(ValueError, match="censoring"):
        build_model("pk_1cmt_oral", "theophylline", censoring="bogus")
    with pytest.raises(ValueError, match="gradient"):
        build_model("pk_1cmt_oral", "theophylline", gradient="sideways")
    spec = pkpd.load_model("pk_1cmt_oral")
    one = dataclasses.replace(
        spec,
        parameters={
            n: dataclasses.replace(p, iiv=None) if n in ("ka", "V") else p
            for n, p in spec.parameters.items()
        },
    )
    with pytest.raises(ValueError, match="at least two"):
        build_model(one, "theophylline", correlated_iiv=True)
