"""`ModelSpec.with_record_scale`: grades with noise per record, built in code."""

import pytest

import pkpd


@pytest.fixture(scope="module")
def cart():
    return pkpd.load_model("cart_crs")


def test_adds_one_fixed_scale_to_every_subject_offset_grade(cart):
    noisy = cart.with_record_scale(0.25)
    par = noisy.parameters["s_record"]
    assert par.fixed and par.value == 0.25 and par.unit == "1" and par.is_assumption
    grades = [n for n, o in cart.observations.items() if o.error == "ordinal"]
    assert grades == ["crs_grade", "icans_grade"]
    assert all(noisy.observations[n].record_scale == "s_record" for n in grades)
    # The library's own noise per grading day is replaced, in a copy.
    assert all(cart.observations[n].record_scale == "s_grade_day" for n in grades)
    assert cart.record_scales() == {"crs_grade": 0.25, "icans_grade": 0.25}
    assert noisy.record_scales() == {"crs_grade": 0.25, "icans_grade": 0.25}
    assert "s_record" not in noisy.estimated()
    assert noisy.name == cart.name
    # The compiled model carries the value (the simulators read it from theta).
    model = noisy.compile()
    assert model.typical_values[model.parameter_index("s_record")] == 0.25
    one = cart.with_record_scale(0.1, ["icans_grade"], parameter="s_icans_day")
    assert one.observations["crs_grade"].record_scale == "s_grade_day"
    assert one.observations["icans_grade"].record_scale == "s_icans_day"
    assert one.record_scales() == {"crs_grade": 0.25, "icans_grade": 0.1}


def test_the_library_grades_have_noise_per_grading_day(cart):
    # Without it a course the latent cannot order has likelihood zero (real data would hit
    # it) and NUTS diverges on the walls (docs/model-files.md): the library's default.
    par = cart.parameters["s_grade_day"]
    assert par.fixed and par.value == 0.25 and par.is_assumption
    assert all(cart.observations[n].offset == "subject" for n in ("crs_grade", "icans_grade"))
    assert "s_grade_day" not in cart.estimated()


@pytest.mark.parametrize(
    "args, message",
    [
        ((0.0,), r"must lie in \(0, 0.5\]"),
        ((0.6,), r"must lie in \(0, 0.5\]"),
        ((0.2, ["il6"]), "offset = 'subject'"),
        ((0.2, []), "offset = 'subject'"),
    ],
)
def test_refuses_what_the_model_file_refuses(cart, args, message):
    with pytest.raises(ValueError, match=message):
        cart.with_record_scale(*args)


def test_refuses_a_taken_name(cart):
    with pytest.raises(ValueError, match="already has a parameter 's_crs'"):
        cart.with_record_scale(0.2, parameter="s_crs")


def test_the_files_describe_the_noise(cart):
    """Regression: the copy kept the model's files, so its hash was the model's and a saved fit
    (which keeps the files) reloaded the model without the noise."""
    from dataclasses import replace

    from pkpd.model import load_model_texts

    noisy = cart.with_record_scale(0.25).with_fixed(["rho"])
    assert noisy.hash != cart.with_fixed(["rho"]).hash
    again = load_model_texts(noisy.files)  # what load_fit does with a saved fit's files
    assert again.hash == noisy.hash
    for table in ("parameters", "observations"):
        mine, theirs = getattr(noisy, table), getattr(again, table)
        assert list(mine) == list(theirs)
        for name in mine:
            a, b = replace(mine[name], where=None), replace(theirs[name], where=None)
            assert a == b, name
    assert again.observations["icans_grade"].record_scale == "s_record"
    assert again.parameters["s_record"].value == 0.25


def test_with_priors_files_carry_the_priors(cart):
    from pkpd.model import load_model_texts

    prior = cart.parameters["c_crs1"].prior
    changed = cart.with_priors({"rho": prior})
    assert changed.hash != cart.hash
    again = load_model_texts(changed.files)
    assert again.parameters["rho"].prior == prior and again.name == changed.name


def test_without_record_scale_drops_the_noise_and_reloads(cart):
    from pkpd.model import load_model_texts

    plain = cart.without_record_scale()
    assert plain.record_scales() == {}
    assert plain.name == cart.name and plain.hash != cart.hash
    assert "s_grade_day" in plain.parameters  # stays, unused
    again = load_model_texts(plain.files)  # what load_fit does with a saved fit's files
    assert again.hash == plain.hash and again.record_scales() == {}
    # The rest of the entry is the file's, not rewritten.
    for n in ("crs_grade", "icans_grade"):
        assert again.observations[n].cutpoints == cart.observations[n].cutpoints
        assert again.observations[n].offset == "subject"
    one = cart.without_record_scale(["icans_grade"])
    assert one.record_scales() == {"crs_grade": 0.25}
    # And back: a scale can be put on again.
    assert plain.with_record_scale(0.1).record_scales() == {"crs_grade": 0.1, "icans_grade": 0.1}


@pytest.mark.parametrize("endpoints", [["il6"], []])
def test_without_record_scale_refuses_endpoints_without_one(cart, endpoints):
    with pytest.raises(ValueError, match="only endpoints with a record_scale"):
        cart.without_record_scale(endpoints)


def test_at_record_scale_is_the_one_option_of_the_scripts(cart):
    assert cart.at_record_scale(None) is cart
    plain = cart.at_record_scale(0.0)
    assert plain.hash == cart.without_record_scale().hash and plain.record_scales() == {}
    assert plain.at_record_scale(0) is plain  # nothing to drop
    noisy = cart.at_record_scale(0.1, parameter="s_day", source="assumption: test")
    assert (
        noisy.hash == cart.with_record_scale(0.1, parameter="s_day", source="assumption: test").hash
    )
    assert noisy.record_scales() == {"crs_grade": 0.1, "icans_grade": 0.1}
    with pytest.raises(ValueError):
        cart.at_record_scale(-0.1)
