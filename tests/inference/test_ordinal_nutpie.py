"""Regression: models with ordered cutpoints must sample with nutpie (the default sampler).

`build_model` used to give the ordered cutpoint vector an explicit initial value, and nutpie
refuses models with non-default initial values ("Cannot convert models with non-default
initial_values"), so every default fit of a model with an ordinal endpoint failed.
"""

import warnings

import numpy as np

from pkpd.inference import build_model, fit


def test_ordinal_cutpoints_have_default_initial_values(multi_spec, multi_cohort):
    pm_model, _ = build_model(multi_spec, multi_cohort)
    vec = [v for v in pm_model.free_RVs if v.name.startswith("cutpoints_")]
    assert vec, "the model should use the ordered cutpoint vector"
    assert all(pm_model.rvs_to_initial_values[v] is None for v in vec)


def test_nutpie_fits_a_model_with_ordinal_grades(multi_spec, multi_cohort):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = fit(
            multi_spec,
            multi_cohort,
            sampler="nutpie",
            chains=1,
            draws=30,
            tune=30,
            seed=3,
            progressbar=False,
            log_likelihood_group=False,
        )
    cuts = f.idata.posterior[["c1", "c2"]].to_array().values
    assert np.all(np.isfinite(cuts))
    assert np.all(cuts[1] > cuts[0])
