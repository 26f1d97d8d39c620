"""Populations: prior and posterior draws, covariates, common random numbers."""

from types import SimpleNamespace

import arviz as az
import numpy as np
import pytest

import pkpd
from pkpd.strategies import make_population
from pkpd.strategies.population import posterior_draws, prior_draws


def test_prior_draws_follow_the_model_file(toy):
    spec = toy.spec
    theta, omega = prior_draws(spec, 4000, np.random.default_rng(0))
    kin = theta[:, toy.parameter_index("kin")]
    assert np.median(kin) == pytest.approx(40.0, rel=0.03)  # LogNormal(median=40, cv=0.3)
    assert np.all(theta[:, toy.parameter_index("tpk")] == 3.0)  # fixed value
    assert omega.shape == (4000, 1)
    assert np.median(omega) == pytest.approx(spec.parameters["kin"].iiv.median(), rel=0.05)


def test_posterior_draws_read_parameters_and_omegas_by_name(toy):
    rng = np.random.default_rng(1)
    post = {
        "kin": rng.normal(50, 1, (2, 100)),
        "omega_kin": rng.uniform(0.1, 0.2, (2, 100)),
        "sigma_il6": rng.uniform(0.1, 0.3, (2, 100)),
    }
    fit = SimpleNamespace(spec=toy.spec, idata=az.from_dict(posterior=post))
    theta, omega = posterior_draws(fit, 50, np.random.default_rng(2))
    kin = theta[:, toy.parameter_index("kin")]
    assert np.all((kin > 40) & (kin < 60))
    assert np.all((omega >= 0.1) & (omega <= 0.2))
    # parameters a fit did not estimate stay at their values
    assert np.all(theta[:, toy.parameter_index("kout")] == 2.0)


def test_posterior_correlation_is_read_by_name_in_model_order():
    model = pkpd.load_model("pk_1cmt_oral").compile()  # IIV on ka, CL, V
    rng = np.random.default_rng(4)
    fitted = ["V", "ka", "CL"]  # another order than the model's
    corr = np.broadcast_to(np.eye(3), (2, 50, 3, 3)).copy()
    corr[..., 0, 2] = corr[..., 2, 0] = 0.9  # corr(V, CL)
    post = {
        "omega_ka": rng.uniform(0.5, 0.6, (2, 50)),
        "omega_CL": np.full((2, 50), 0.3),
        "omega_V": np.full((2, 50), 0.2),
        "corr_iiv": corr,
    }
    idata = az.from_dict(
        posterior=post,
        dims={"corr_iiv": ["iiv", "iiv_bis"]},
        coords={"iiv": fitted, "iiv_bis": fitted},
    )
    fit = SimpleNamespace(spec=model.spec, idata=idata)
    pop = make_population(model, n_patients=5000, n_draws=2, seed=0, fit=fit)
    eta = pop.eta(np.zeros(5000, int), np.arange(5000))
    r = np.corrcoef(eta.T)
    assert r[1, 2] == pytest.approx(0.9, abs=0.02)  # CL, V in the model's order
    assert abs(r[0, 1]) < 0.05 and abs(r[0, 2]) < 0.05
    np.testing.assert_allclose(eta.std(axis=0)[1:], [0.3, 0.2], rtol=0.05)
    # Without a correlation in the fit: independent effects, exactly omega * z as before.
    del post["corr_iiv"]
    plain = make_population(
        model,
        n_patients=50,
        n_draws=2,
        seed=0,
        fit=SimpleNamespace(spec=model.spec, idata=az.from_dict(posterior=post)),
    )
    assert plain.corr_chol is None
    np.testing.assert_array_equal(
        plain.eta(np.ones(50, int), np.arange(50)), plain.z * plain.omega[1]
    )
    # A fit correlating other parameters than the model's IIV is refused.
    post["corr_iiv"] = corr[..., :2, :2]
    other = az.from_dict(
        posterior=post,
        dims={"corr_iiv": ["iiv", "iiv_bis"]},
        coords={"iiv": ["ka", "CL"], "iiv_bis": ["ka", "CL"]},
    )
    with pytest.raises(ValueError, match="simulate with the fitted model"):
        make_population(
            model,
            n_patients=5,
            n_draws=2,
            seed=0,
            fit=SimpleNamespace(spec=model.spec, idata=other),
        )


def test_patients_do_not_change_with_the_number_of_draws(toy):
    a = make_population(toy, n_patients=10, n_draws=3, seed=4, covariates={"WT": 70.0})
    b = make_population(toy, n_patients=10, n_draws=30, seed=4, covariates={"WT": 70.0})
    np.testing.assert_array_equal(a.z, b.z)
    np.testing.assert_array_equal(a.u, b.u)
    assert a.provided == ("WT",)


def test_covariates_and_base_doses_from_a_cohort():
    model = pkpd.load_model("pk_1cmt_oral").compile()
    cohort = pkpd.load_dataset("theophylline")
    pop = make_population(
        model, n_patients=25, n_draws=2, seed=0, cohort=cohort, base_routes=["oral"]
    )
    (base,) = pop.base
    assert base.route == "oral"
    # theophylline doses are ~320 mg at time 0, one per subject
    assert np.all((base.amount > 200) & (base.amount < 400))
    assert np.all(base.time == 0.0)
    assert set(pop.patient_ids) <= set(cohort.subjects.tolist())
