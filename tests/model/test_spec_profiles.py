"""ModelSpec.estimate_only / with_fixed: fitting profiles as new, honest model specs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pkpd.model import load_model


@pytest.fixture(scope="module")
def kin():
    return load_model("cart_kinetics")


def test_estimate_only_estimates_the_named_and_fixes_the_rest(kin):
    prof = kin.estimate_only(["rho", "alpha", "sigma_cart"], iiv=["rho"], values={"V_car": 400.0})
    assert prof.estimated() == ["rho", "alpha", "sigma_cart"]
    assert [n for n, p in prof.parameters.items() if p.iiv is not None] == ["rho"]
    assert prof.parameters["V_car"].fixed and prof.parameters["V_car"].value == 400.0
    for name, p in prof.parameters.items():
        if name not in ("rho", "alpha", "sigma_cart", "V_car"):
            assert p.fixed
            assert p.value == pytest.approx(kin.parameters[name].typical, rel=1e-12)
    # the estimated ones keep their priors; the original is unchanged
    assert prof.parameters["rho"].prior == kin.parameters["rho"].prior
    assert len(kin.estimated()) == 14
    assert kin.parameters["alpha"].iiv is not None


def test_profile_changes_name_hash_and_text(kin):
    prof = kin.estimate_only(["rho"], iiv=["rho"], suffix="only rho")
    assert prof.name == "cart_kinetics[only rho]"
    assert prof.hash != kin.hash
    assert prof.main_file.endswith("cart_kinetics.only_rho.toml")
    assert "[parameters.alpha]" in prof.text and "override = true" in prof.text
    assert "[parameters.rho]" not in prof.text  # unchanged: not overridden
    # deterministic: the same profile has the same hash (saved fits can be matched)
    assert kin.estimate_only(["rho"], iiv=["rho"], suffix="only rho").hash == prof.hash
    assert kin.estimate_only(["rho"], suffix="only rho").hash != prof.hash


def test_profile_text_loads_back_to_the_same_spec(kin, tmp_path: Path):
    """The profile's files, written out, load to the same parameters (how saved fits reload)."""
    prof = kin.estimate_only(["rho", "FB"], iiv=["FB"], values={"beta": 0.004})
    for path, text in prof.files.items():
        (tmp_path / Path(path).name).write_text(text, encoding="utf-8")
    again = load_model(tmp_path / Path(prof.main_file).name)
    assert again.estimated() == prof.estimated()
    for name, p in prof.parameters.items():
        q = again.parameters[name]
        assert (q.fixed, q.value, q.prior, q.iiv, q.iiv_scale, q.unit, q.covariates) == (
            p.fixed,
            p.value,
            p.prior,
            p.iiv,
            p.iiv_scale,
            p.unit,
            p.covariates,
        ), name
    assert list(again.parameters) == list(prof.parameters)


def test_profile_of_a_profile(kin):
    first = kin.estimate_only(["rho", "alpha", "FB"], iiv=["rho", "alpha"], suffix="a")
    second = first.estimate_only(["rho"], iiv=["rho"], suffix="b")
    assert second.estimated() == ["rho"]
    assert second.name == "cart_kinetics[a][b]"
    assert len(second.files) == len(first.files) + 1


def test_unknown_names_are_refused(kin):
    with pytest.raises(KeyError, match="rhoo"):
        kin.estimate_only(["rhoo"])
    with pytest.raises(KeyError, match="nope"):
        kin.estimate_only(["rho"], iiv=["nope"])
    with pytest.raises(KeyError, match="Vcar"):
        kin.estimate_only(["rho"], values={"Vcar": 1.0})
    with pytest.raises(KeyError, match="zeta"):
        kin.with_fixed(["zeta"])


def test_estimating_without_a_prior_is_refused(kin):
    no_prior = [n for n, p in kin.parameters.items() if p.prior is None]
    assert no_prior, "cart_kinetics should have a parameter with a value and no prior"
    with pytest.raises(ValueError, match="no prior"):
        kin.estimate_only(["rho", no_prior[0]])


def test_bad_iiv_and_values_are_refused(kin):
    no_iiv = next(n for n, p in kin.parameters.items() if p.iiv is None and p.prior is not None)
    with pytest.raises(ValueError, match="no iiv prior"):
        kin.estimate_only([no_iiv], iiv=[no_iiv])
    with pytest.raises(ValueError, match="not estimated"):
        kin.estimate_only(["alpha"], iiv=["rho"])
    with pytest.raises(ValueError, match="to estimate"):
        kin.estimate_only(["rho"], values={"rho": 1.0})
    with pytest.raises(ValueError, match="finite"):
        kin.estimate_only(["rho"], values={"V_car": math.nan})


def test_with_fixed_fixes_only_the_named(kin):
    fixed = kin.with_fixed({"rho": 1.0, "alpha": 0.2})
    assert fixed.parameters["rho"].fixed and fixed.parameters["rho"].value == 1.0
    assert fixed.parameters["rho"].iiv is None and fixed.parameters["alpha"].iiv is None
    assert set(kin.estimated()) - set(fixed.estimated()) == {"rho", "alpha"}
    kept = [n for n, p in kin.parameters.items() if p.iiv is not None and n not in ("rho", "alpha")]
    assert kept and all(fixed.parameters[n].iiv is not None for n in kept)
    at_typical = kin.with_fixed(["beta"])
    assert at_typical.parameters["beta"].value == pytest.approx(kin.parameters["beta"].typical)
    assert at_typical.hash != kin.hash
