"""pkpd.model.priors: prior strings parsed as data, checked, and turned into distributions."""

import math

import numpy as np
import pytest
from scipy import special, stats

from pkpd.model.priors import FAMILIES, Prior, PriorError, parse_prior

#: Every family, with a prior string and the scipy distribution it must equal.
CASES = {
    "LogNormal": ("LogNormal(mu=0.5, sigma=0.8)", stats.lognorm(s=0.8, scale=math.exp(0.5))),
    "Normal": ("Normal(1, sigma=2)", stats.norm(1, 2)),
    "HalfNormal": ("HalfNormal(0.5)", stats.halfnorm(scale=0.5)),
    "HalfCauchy": ("HalfCauchy(beta=2)", stats.halfcauchy(scale=2)),
    "Exponential": ("Exponential(lam=4)", stats.expon(scale=0.25)),
    "Gamma": ("Gamma(alpha=2, beta=3)", stats.gamma(a=2, scale=1 / 3)),
    "Uniform": ("Uniform(-1, 3)", stats.uniform(-1, 4)),
    "Beta": ("Beta(2, 5)", stats.beta(2, 5)),
}


def test_every_family_has_a_case():
    assert set(CASES) | {"LogitNormal"} == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(CASES))
def test_family_matches_scipy(family):
    text, reference = CASES[family]
    prior = parse_prior(text)
    assert prior.family == family
    assert prior.text == text
    assert prior.median() == pytest.approx(reference.median(), rel=1e-12)
    lo, hi = prior.interval(0.9)
    assert (lo, hi) == pytest.approx(reference.interval(0.9), rel=1e-12)
    draws = prior.sample(np.random.default_rng(3), size=(2, 3))
    assert draws.shape == (2, 3)
    again = prior.sample(np.random.default_rng(3), size=(2, 3))
    np.testing.assert_array_equal(draws, again)
    assert np.all(reference.pdf(draws) > 0)  # inside the support


def test_lognormal_median_and_cv():
    prior = parse_prior("LogNormal(median=3, cv=0.5)")
    assert prior.params["mu"] == pytest.approx(math.log(3.0), rel=1e-15)
    assert prior.params["sigma"] == pytest.approx(math.sqrt(math.log(1.25)), rel=1e-15)
    assert prior.median() == pytest.approx(3.0, rel=1e-14)
    # the coefficient of variation of a log-normal is sqrt(exp(sigma^2) - 1)
    dist = prior.scipy()
    assert dist.std() / dist.mean() == pytest.approx(0.5, rel=1e-12)
    assert str(prior) == "LogNormal(median=3, cv=0.5)"


def test_logit_normal():
    prior = parse_prior("LogitNormal(0.5, 1)")
    assert prior.support == "unit"
    assert prior.median() == pytest.approx(special.expit(0.5), rel=1e-14)
    lo, hi = prior.interval(0.95)
    assert lo == pytest.approx(special.expit(0.5 - 1.959963984540054), rel=1e-12)
    assert hi == pytest.approx(special.expit(0.5 + 1.959963984540054), rel=1e-12)
    draws = prior.sample(np.random.default_rng(0), size=1000)
    assert np.all((draws > 0) & (draws < 1))


def test_support():
    assert parse_prior("Normal(0, 1)").support == "real"
    assert parse_prior("HalfNormal(1)").support == "positive"
    assert parse_prior("Beta(1, 1)").support == "unit"
    assert parse_prior("Uniform(0, 1)").support == "interval"


def test_negative_numbers_and_whitespace():
    prior = parse_prior("  Normal(mu = -2.5, sigma = +1e-1)  ")
    assert prior.params == {"mu": -2.5, "sigma": 0.1}


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "a prior must be a text"),
        ("Normal", "must look like Family(parameters)"),
        ("os.system('x')", "must look like Family(parameters)"),
        ("__import__('os').system('x')", "must look like Family(parameters)"),
        ("Weibull(1, 2)", "unknown prior family 'Weibull'"),
        ("Normal(0, 1", "not valid syntax"),
        ("Normal(0, sigma=x)", "plain numbers"),
        ("Normal(0, sigma=1 + 1)", "plain numbers"),
        ("Normal(0, True)", "expected a number"),
        ("Normal(0, 1, 2)", "takes 2 parameter"),
        ("Normal(0)", "missing parameter"),
        ("Normal(0, mu=1)", "given twice"),
        ("Normal(0, scale=1)", "has no parameter 'scale'"),
        ("Normal(0, **{'sigma': 1})", "** is not allowed"),
        ("HalfNormal(0)", "sigma must be positive"),
        ("Gamma(-1, 1)", "alpha must be positive"),
        ("Exponential(0)", "lam must be positive"),
        ("Uniform(1, 1)", "upper must exceed lower"),
        ("Normal(1e999, 1)", "must be finite"),
        ("LogNormal(median=0, cv=1)", "must be positive"),
        ("LogNormal(median=1, cv=1, mu=0)", "LogNormal takes (median=, cv=)"),
        ("LogNormal(1, cv=1)", "LogNormal takes (median=, cv=)"),
    ],
)
def test_invalid(text, words):
    with pytest.raises(PriorError) as exc:
        parse_prior(text)
    assert words in str(exc.value)


def test_widened_keeps_the_median():
    for text in ("LogNormal(median=2, cv=0.3)", "Normal(1, 2)", "LogitNormal(0.2, 0.5)"):
        prior = parse_prior(text)
        wide = prior.widened(2.0)
        assert wide.median() == pytest.approx(prior.median(), rel=1e-14)
        lo, hi = prior.interval(0.5)
        wlo, whi = wide.interval(0.5)
        assert wlo < lo and whi > hi
    assert parse_prior("HalfNormal(1)").widened(3).params["sigma"] == 3.0
    assert parse_prior("Exponential(2)").widened(2).params["lam"] == 1.0
    assert parse_prior("Uniform(0, 2)").widened(2).params == {"lower": -1.0, "upper": 3.0}
    with pytest.raises(PriorError, match="cannot widen a Beta prior"):
        parse_prior("Beta(2, 2)").widened(2)


def test_shifted_multiplies_the_median():
    prior = parse_prior("LogNormal(median=2, cv=0.3)")
    assert prior.shifted(3.0).median() == pytest.approx(6.0, rel=1e-14)
    with pytest.raises(PriorError, match="cannot shift a Normal prior"):
        parse_prior("Normal(0, 1)").shifted(2)


def test_prior_is_data():
    a, b = parse_prior("HalfNormal(0.5)"), parse_prior("HalfNormal(sigma=0.5)")
    assert isinstance(a, Prior)
    assert a.params == b.params and a.family == b.family
