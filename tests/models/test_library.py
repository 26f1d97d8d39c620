"""The model library as data: every file loads, every parameter is documented, docs are current."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import pkpd
from pkpd.model.library import library_path

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(library_path().glob("*.toml"))
CART = [p for p in FILES if not p.stem.startswith(("pk_", "pd_"))]

# An explicit assumption must say why: "assumption: <reason of a few words>".
_ASSUMPTION = re.compile(r"^assumption\s*:\s*(?P<reason>.+)$", re.IGNORECASE | re.DOTALL)


def parameter_problems(path: Path) -> list[str]:
    """What a model file's own parameters lack: unit, prior or fixed value, source."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    problems = []
    for name, entry in data.get("parameters", {}).items():
        if not isinstance(entry, dict):
            problems.append(f"{path.name}: {name} is a bare value (no unit, prior or source)")
            continue
        if not str(entry.get("unit", "")).strip():
            problems.append(f"{path.name}: {name} has no unit")
        if entry.get("prior") is None and entry.get("value") is None:
            problems.append(f"{path.name}: {name} has neither a prior nor a fixed value")
        source = str(entry.get("source", "")).strip()
        if not source:
            problems.append(f"{path.name}: {name} has no source")
        elif source.lower().startswith("assumption"):
            match = _ASSUMPTION.match(source)
            if match is None or len(match.group("reason").split()) < 3:
                problems.append(f"{path.name}: {name}: an assumption must give its reason")
    return problems


def test_cart_library_is_there():
    names = {p.stem for p in CART}
    expected = {
        "antigen",
        "cart_kinetics",
        "myeloid",
        "il6",
        "tocilizumab_pk",
        "tocilizumab",
        "il1",
        "anakinra_pk",
        "anakinra",
        "nets",
        "disulfiram_pk",
        "disulfiram",
        "vascular",
        "crp",
        "outcomes",
        "dexamethasone_pk",
        "dexamethasone",
        "cart_crs",
        "cart_il6_toc",
    }
    assert expected <= names


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_parameter_has_unit_prior_and_source(path):
    assert parameter_problems(path) == []


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_loaded_parameters_are_documented(path):
    # The same rule on the loaded specification (includes and overrides resolved).
    spec = pkpd.load_model(path)
    for p in spec.parameters.values():
        assert p.unit, p.name
        assert p.prior is not None or p.value is not None, p.name
        assert p.source, p.name
        assert p.fixed or p.prior is not None, p.name


def test_the_check_catches_undocumented_parameters(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[model]\nname = "bad"\n[states]\nx = { unit = "mg" }\n[equations]\nx = "-k * x"\n'
        "[parameters]\n"
        'k = { unit = "1/h", prior = "LogNormal(median=1, cv=1)" }\n'
        'j = { unit = "1/h", source = "Somebody 2020" }\n'
        'h = { unit = "", value = 1.0, source = "assumption" }\n'
        "q = 3.0\n"
    )
    problems = parameter_problems(bad)
    assert any("k has no source" in p for p in problems)
    assert any("j has neither a prior nor a fixed value" in p for p in problems)
    assert any("h has no unit" in p for p in problems)
    assert any("h: an assumption must give its reason" in p for p in problems)
    assert any("q is a bare value" in p for p in problems)


def test_assembled_model_has_every_component(cart_crs):
    spec = cart_crs.spec
    assert set(cart_crs.dose_targets) >= {
        "cart_iv",
        "tocilizumab_iv",
        "anakinra_sc",
        "anakinra_iv",
        "disulfiram_po",
        "dexamethasone_po",
        "dexamethasone_iv",
    }
    assert {"crs_grade", "icans_grade", "il6", "crp", "net", "cart_blood"} <= set(spec.observations)
    assert spec.observations["crs_grade"].error == "ordinal"
    assert spec.observations["crs_grade"].levels == (0, 1, 2, 3, 4)
    assert set(spec.covariates) == {"TUMOR", "PRODUCT", "WT", "NETP"}
    dvids = [o.dvid for o in spec.observations.values()]
    assert len(dvids) == len(set(dvids))


def test_nested_models_are_sub_models(cart_crs):
    # A nested model's states and parameters are those of the assembled model, unchanged.
    full = cart_crs.spec
    for name in ("cart_kinetics", "cart_il6_toc", "tocilizumab", "anakinra"):
        sub = pkpd.load_model(name)
        assert set(sub.states) <= set(full.states), name
        for p in sub.parameters.values():
            assert full.parameters[p.name].typical == p.typical, (name, p.name)


def test_model_docs_are_current():
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_model_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for path in FILES:
        page = ROOT / "docs" / "models" / f"{path.stem}.md"
        assert page.is_file()
