"""Bundled published trial summaries and the validation of trial-summary files."""

import tomllib
from importlib import resources
from pathlib import Path

import pytest

from pkpd.data.trials import (
    SCALES,
    TrialFileError,
    load_trials,
    parse_trials,
    published_trials,
)

ROOT = Path(__file__).resolve().parents[2]


def entry(**overrides):
    base = {
        "id": "t1",
        "study": "Study",
        "product": "p",
        "costimulation": "CD28",
        "disease": "LBCL",
        "n": 100,
        "scale": "Lee",
        "source": "somewhere",
        "outcomes": [{"endpoint": "crs", "min_grade": 1, "count": 90}],
    }
    base.update(overrides)
    return base


def problems(data):
    with pytest.raises(TrialFileError) as err:
        parse_trials(data, file="x.toml")
    return str(err.value)


# ---------------------------------------------------------------- the bundled file


def test_bundled_file_values_as_in_science_md():
    trials = load_trials()
    zuma = trials["zuma1"]
    assert (zuma.n, zuma.scale, zuma.costimulation) == (108, "Lee", "CD28")
    any_crs = zuma.outcome("crs", min_grade=1)
    assert (any_crs.count, any_crs.n, any_crs.derived) == (101, 108, False)
    assert zuma.outcome("crs", min_grade=3).count == 14
    assert zuma.timing_of("crs").median_days == 2
    assert zuma.timing_of("crs").range_days == (1, 12)
    assert zuma.treated("tocilizumab").rate == pytest.approx(0.43)
    assert zuma.treated("corticosteroids").rate == pytest.approx(0.27)
    # The label's "neurologic toxicities" are counted their own way, onset median included.
    assert zuma.outcome("neuro", min_grade=1).definition == "label_nt"
    assert zuma.outcome("neuro", min_grade=1).label == "neuro>=1 (label_nt)"
    assert zuma.timing_of("neuro").definition == "label_nt"
    assert zuma.outcome("crs", min_grade=1).definition == ""
    juliet = trials["juliet"]
    assert (juliet.n, juliet.scale) == (111, "Penn")
    ge3 = juliet.outcome("crs", min_grade=3)
    assert ge3.derived and ge3.count == pytest.approx(0.22 * 111)
    assert juliet.treated("tocilizumab").rate == pytest.approx(0.14)
    hay = trials["hay2017"]
    grades = [hay.outcome("crs", grade=k).rate for k in range(1, 6)]
    assert grades == pytest.approx([0.26, 0.32, 0.045, 0.038, 0.038])
    assert hay.scale == "not stated"
    assert trials["cibmtr_tisacel"].outcome("crs", min_grade=3).rate == pytest.approx(0.116)
    assert trials["cibmtr_tisacel"].n == 410


def test_not_found_values_are_absent():
    trials = load_trials()
    # ELIANA/ENSIGN grade 3/4 CRS count: NOT FOUND in science.md.
    assert trials["eliana_ensign"].outcome("crs", min_grade=3) is None
    # TRANSCEND: only treatment use is given.
    assert trials["transcend"].outcomes == ()
    # Park 2023: CRS rates NOT FOUND.
    assert all(o.endpoint != "crs" for o in trials["park2023_anakinra"].outcomes)
    # ZUMA-1 neurologic grade >= 3: "-" in the table.
    assert trials["zuma1"].outcome("neuro", min_grade=3) is None


def test_every_entry_has_a_source_and_a_known_scale():
    for trial in load_trials().values():
        assert trial.source.strip()
        assert trial.scale in SCALES
        for o in trial.outcomes:
            assert o.source.strip()
            assert 0 <= o.count <= o.n


def test_published_trials_by_id():
    zuma, juliet = published_trials("zuma1", "juliet")
    assert (zuma.id, juliet.id) == ("zuma1", "juliet")
    with pytest.raises(KeyError, match="known"):
        published_trials("zuma99")


def test_the_file_ships_inside_the_package():
    # The wheel packages the whole `pkpd` folder (hatch: packages = ["pkpd"]), as for the
    # bundled datasets; the file must be found through importlib.resources, not the checkout.
    shipped = resources.files("pkpd.data") / "trials" / "published.toml"
    assert shipped.is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = config["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "pkpd" in wheel["packages"]
    assert not any("toml" in str(x) for x in wheel.get("exclude", []))


# ---------------------------------------------------------------- validation errors


def test_valid_minimal_file():
    trials = parse_trials({"trial": [entry()]})
    assert trials["t1"].outcome("crs", min_grade=1).rate == pytest.approx(0.9)


def test_rate_only_gives_a_derived_unrounded_count():
    t = parse_trials(
        {"trial": [entry(outcomes=[{"endpoint": "crs", "min_grade": 3, "rate": 0.135}])]}
    )["t1"]
    o = t.outcome("crs", min_grade=3)
    assert o.derived and o.count == pytest.approx(13.5)


def test_unknown_key_in_a_trial():
    assert "unknown key 'arm'" in problems({"trial": [entry(arm="A")]})


def test_unknown_key_in_an_outcome():
    msg = problems(
        {"trial": [entry(outcomes=[{"endpoint": "crs", "min_grade": 1, "count": 5, "pct": 5}])]}
    )
    assert "outcomes[0].pct" in msg and "unknown key" in msg


def test_unknown_top_level_key():
    assert "unknown top-level key" in problems({"trial": [entry()], "extra": 1})


def test_count_above_denominator():
    msg = problems({"trial": [entry(outcomes=[{"endpoint": "crs", "min_grade": 1, "count": 120}])]})
    assert "exceeds its denominator" in msg and "'trial 't1'.outcomes[0].count'" in msg


@pytest.mark.parametrize("rate", [1.2, -0.1])
def test_rate_outside_unit_interval(rate):
    msg = problems({"trial": [entry(outcomes=[{"endpoint": "crs", "min_grade": 1, "rate": rate}])]})
    assert "[0, 1]" in msg


def test_treatment_rate_outside_unit_interval():
    msg = problems({"trial": [entry(treatment=[{"drug": "tocilizumab", "rate": 43}])]})
    assert "treatment[0].rate" in msg


def test_count_and_rate_disagree():
    msg = problems(
        {"trial": [entry(outcomes=[{"endpoint": "crs", "min_grade": 1, "count": 50, "rate": 0.9}])]}
    )
    assert "disagrees" in msg


def test_unknown_scale_and_costimulation():
    msg = problems({"trial": [entry(scale="CTCAE", costimulation="CD3")]})
    assert "scale must be one of" in msg and "costimulation must be one of" in msg


def test_missing_required_key():
    bad = entry()
    del bad["source"]
    assert "'trial 't1'.source': missing required key" in problems({"trial": [bad]})


def test_grade_keys_exclusive_and_in_range():
    assert "exactly one of" in problems(
        {"trial": [entry(outcomes=[{"endpoint": "crs", "min_grade": 1, "grade": 1, "count": 1}])]}
    )
    assert "grade must be an integer 1-5" in problems(
        {"trial": [entry(outcomes=[{"endpoint": "crs", "grade": 6, "count": 1}])]}
    )


def test_unknown_endpoint():
    assert "endpoint must be one of" in problems(
        {"trial": [entry(outcomes=[{"endpoint": "fever", "min_grade": 1, "count": 1}])]}
    )


def test_definition_is_an_identifier():
    msg = problems(
        {
            "trial": [
                entry(
                    outcomes=[
                        {"endpoint": "neuro", "min_grade": 1, "count": 5, "definition": "N T"}
                    ],
                    timing=[
                        {"endpoint": "neuro", "what": "onset", "median_days": 4, "definition": 3}
                    ],
                )
            ]
        }
    )
    assert "outcomes[0].definition" in msg and "identifier" in msg
    assert "timing[0].definition" in msg and "expected text" in msg
    ok = parse_trials(
        {
            "trial": [
                entry(
                    outcomes=[
                        {"endpoint": "neuro", "min_grade": 1, "count": 5, "definition": "label_nt"}
                    ]
                )
            ]
        }
    )["t1"]
    assert ok.outcome("neuro", min_grade=1).definition == "label_nt"


def test_duplicate_ids():
    assert "duplicate id" in problems({"trial": [entry(), entry()]})


def test_median_outside_its_range():
    msg = problems(
        {
            "trial": [
                entry(
                    timing=[
                        {
                            "endpoint": "crs",
                            "what": "onset",
                            "median_days": 14,
                            "range_days": [1, 12],
                        }
                    ]
                )
            ]
        }
    )
    assert "outside" in msg


def test_exact_grades_inconsistent_with_any():
    msg = problems(
        {
            "trial": [
                entry(
                    outcomes=[
                        {"endpoint": "crs", "min_grade": 1, "rate": 0.5},
                        {"endpoint": "crs", "grade": 1, "rate": 0.4},
                        {"endpoint": "crs", "grade": 2, "rate": 0.4},
                    ]
                )
            ]
        }
    )
    assert "add up to" in msg


def test_every_problem_is_listed(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[trial]]\nid = "a"\nstudy = "s"\nproduct = "p"\ncostimulation = "CD28"\n'
        'disease = "d"\nn = 10\nscale = "Lee"\nsource = "x"\ncolour = "red"\n'
        'outcomes = [{ endpoint = "crs", min_grade = 1, count = 11 }]\n'
    )
    with pytest.raises(TrialFileError) as err:
        load_trials(path)
    assert len(err.value.problems) == 2
    assert str(path) in str(err.value)


def test_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[[trial]\n")
    with pytest.raises(TrialFileError, match="not valid TOML"):
        load_trials(path)
