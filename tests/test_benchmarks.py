"""Checks of the benchmark scripts' own logic (not their timings)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cart_recovery_refuses_more_patients_than_the_dataset_has():
    # Regression: --timing --patients 100 timed the 60 patients of virtual_cart and printed 100.
    cart_recovery = _load("cart_recovery")
    spec, cohort = cart_recovery._last_stage(3, "cart_crs_core")
    assert len(cohort.subjects) == 3
    with pytest.raises(ValueError, match="virtual_cart has 60 patients, not 61"):
        cart_recovery._last_stage(61, "cart_crs_core")


def test_cart_recovery_map_table_claims_no_interval_or_coverage():
    # A MAP has one draw: its "90% CrI" would be the point itself and "covered" almost always
    # NO; the table must show the estimate only.
    import pandas as pd

    cart_recovery = _load("cart_recovery")
    table = pd.DataFrame(
        [
            {
                "parameter": "rho",
                "truth": 0.89,
                "median": 0.87,
                "lower": np.nan,
                "upper": np.nan,
                "covered": None,
                "contraction": np.nan,
            }
        ]
    ).set_index("parameter")
    res = {
        "n": 5,
        "n_obs": 50,
        "table": table,
        "plug_ins": {},
        "sampler": "map",
        "diag": {"rhat_max": np.nan, "ess_bulk_min": np.nan, "divergences": 0},
        "leapfrog": np.nan,
        "integrator": "lanes",
        "gradient": "forward",
        "generate_s": 1.0,
        "fit_s": 2.0,
        "stage_s": {"core": 2.0},
        "crs3": {
            "truth": 0.01,
            "truth_n": 10,
            "median": 0.02,
            "lower": 0.01,
            "upper": 0.03,
            "covered": True,
            "draws": 1,
            "patients": 10,
            "wall_s": 1.0,
        },
    }
    text = cart_recovery.markdown(res)
    assert "| rho | 0.89 | 0.87 | - | - | - |" in text
    assert "MAP (joint mode)" in text and "posterior median" not in text
    assert "R-hat max" not in text and "a point estimate" in text
    assert "at the MAP only: no parameter uncertainty" in text
    assert "NOT covered" not in text
    res["sampler"] = "nutpie"
    table.loc["rho", ["lower", "upper", "covered", "contraction"]] = [0.8, 0.9, True, 0.5]
    assert "| rho | 0.89 | 0.87 | [0.8, 0.9] | yes | 0.50 |" in cart_recovery.markdown(res)
    assert "worst-mixing" not in cart_recovery.markdown(res)
    assert "diagonal mass matrix, target acceptance 0.8" in cart_recovery.markdown(res)
    res.update(sampler_kwargs={"low_rank_modified_mass_matrix": True}, target_accept=0.9)
    assert "low-rank modified mass matrix, target acceptance 0.9" in cart_recovery.markdown(res)
    assert "chains started" not in cart_recovery.markdown(res)  # not recorded: not claimed
    res["init"] = "map"
    assert "chains started at the joint mode" in cart_recovery.markdown(res)
    assert "mass matrix" not in text  # a MAP has no sampler settings
    assert "untreated" not in text  # a result written before the untreated row: no such line
    res["crs3"]["untreated"] = {
        "truth": 0.11,
        "median": 0.16,
        "lower": 0.13,
        "upper": 0.19,
        "margin": 0.02,
        "covered": False,
    }
    assert (
        "The same new patients untreated (no tocilizumab or steroid): median 0.160, 90% "
        "interval [0.130, 0.190]; truth 0.110 (the generator's 10 patients untreated): NOT "
        "covered (+/-0.020)."
    ) in cart_recovery.markdown(res)
    res["diag"]["flagged_parameters"] = [
        {"name": "eta[FB]", "rhat": 1.017, "ess_bulk": 279.0, "ess_tail": 500.0, "severity": 1.7}
    ]
    assert "worst-mixing variable eta[FB] (R-hat 1.017, bulk ESS 279, of 1 flagged)" in (
        cart_recovery.markdown(res)
    )
    assert "R-hat | bulk ESS" not in cart_recovery.markdown(res)  # an older result: no columns
    assert "realized SDs" not in cart_recovery.markdown(res)  # an older result: no such line
    table.loc["omega_rho"] = [0.25, 0.26, 0.23, 0.30, True, 0.9]
    res["realized"] = {"omega_rho": 0.24, "omega_p6": 0.43}  # omega_p6: not a row here
    assert ("omega_rho 0.24 (inside the 90% CrI; generating 0.25).") in cart_recovery.markdown(res)
    res["realized"]["omega_rho"] = 0.31
    assert "omega_rho 0.31 (OUTSIDE the 90% CrI" in cart_recovery.markdown(res)
    assert "omega_p6" not in cart_recovery.markdown(res)


def test_cart_recovery_table_names_the_rows_whose_chains_disagree():
    # A parameter whose chains disagree (the weakly informed cutpoint gap of the 60-patient
    # design) must not count as recovered or missed without saying so.
    import pandas as pd

    cart_recovery = _load("cart_recovery")
    table = pd.DataFrame(
        {
            "parameter": ["rho", "c_crs4", "omega_rho"],
            "truth": [0.89, 8.5, 0.4],
            "median": [0.87, 9.4, 0.5],
            "lower": [0.8, 8.6, 0.3],
            "upper": [0.95, 10.2, 0.6],
            "covered": [True, False, True],
            "contraction": [0.9, 0.3, 0.6],
            "rhat": [1.004, 1.21, np.nan],
            "ess_bulk": [350.0, 12.0, np.nan],
        }
    ).set_index("parameter")
    res = {
        "n": 60,
        "n_obs": 7020,
        "table": table,
        "plug_ins": {"k6": (0.7, "core", 0.69)},
        "sampler": "numpyro",
        "diag": {"rhat_max": 1.21, "ess_bulk_min": 12.0, "divergences": 3},
        "leapfrog": 40.0,
        "integrator": "lanes",
        "gradient": "forward",
        "generate_s": 1.0,
        "fit_s": 2.0,
        "stage_s": {"core": 2.0},
    }
    text = cart_recovery.markdown(res)
    assert "| rho | 0.89 | 0.87 | [0.8, 0.95] | yes | 0.90 | 1.004 | 350 |" in text
    assert "| c_crs4 | 8.5 | 9.4 | [8.6, 10.2] | NO | 0.30 | 1.210 | 12 |" in text
    assert "| k6 (fixed at stage 'core' MAP) | 0.69 | 0.7 | - | - | - | - | - |" in text
    assert "Covered: 2 of 3 rows; among the rows with R-hat <= 1.01 (chains agree): 1 of 1." in (
        text
    )
    assert "not reliable: c_crs4 (1.210, not covered), omega_rho (nan, covered)." in text
    table["rhat"] = 1.0
    text = cart_recovery.markdown(res)
    assert "(chains agree): 2 of 3." in text and "not reliable" not in text


@pytest.mark.slow
def test_cart_recovery_times_generated_cohorts_of_any_size():
    cart_recovery = _load("cart_recovery")
    spec, cohort = cart_recovery._last_stage(3, "cart_crs_core", seed=7)
    assert len(cohort.subjects) == 3
    assert cohort.source.startswith("virtual_3_7")
    _, again = cart_recovery._last_stage(3, "cart_crs_core", seed=7)
    assert again.to_dataframe().equals(cohort.to_dataframe())


def test_cart_recovery_parameterization_option():
    cart_recovery = _load("cart_recovery")
    parse, text = cart_recovery.parse_parameterization, cart_recovery._parameterization_text
    assert parse("centered") == "centered" and parse("noncentered") == "noncentered"
    assert parse("rho, alpha") == {"rho": "centered", "alpha": "centered"}
    assert text({"rho": "centered", "FB": "noncentered"}) == "centred on rho"
    assert text({"rho": "centered"}) == "centred"
    assert text({"rho": "noncentered"}) == text({}) == "non-centred"


def test_cart_recovery_leapfrog_count_of_a_map():
    # Regression: a MAP's InferenceData has no sample_stats, and the script crashed on it
    # after a 20-minute fit.
    import arviz as az

    cart_recovery = _load("cart_recovery")
    posterior = {"rho": np.zeros((1, 1))}
    assert np.isnan(cart_recovery.leapfrog_per_draw(az.from_dict(posterior=posterior)))
    nuts = az.from_dict(posterior=posterior, sample_stats={"n_steps": np.array([[7.0]])})
    assert cart_recovery.leapfrog_per_draw(nuts) == 7.0


def test_fit_benchmark_has_a_runner_for_every_backend():
    # Regression: the pkpd_centred variant was added without a runner and failed with KeyError
    # after the 6-minute default row had run.
    fit_bench = _load("fit")
    assert set(fit_bench.RUNNERS) == set(fit_bench.BACKENDS)
    assert fit_bench.RUNNERS["pkpd_centred"].keywords == {"variant": "pkpd_centred"}


def test_cart_recovery_crs3_margin_is_the_monte_carlo_noise():
    # Regression: the P(CRS >= 3) check simulates the same new patients under every posterior
    # draw, so its interval had no sampling noise; a MAP "missed" a truth of 5/1000 with 4/1000.

    cart_recovery = _load("cart_recovery")
    m = cart_recovery.mc_margin(0.004, 1000, 0.005, 4000)
    se = np.sqrt((4.5 / 1001) * (1 - 4.5 / 1001) / 1000 + (20.5 / 4001) * (1 - 20.5 / 4001) / 4000)
    assert m == pytest.approx(1.645 * se)
    assert 0.004 + m > 0.005  # that run is within the noise
    assert cart_recovery.mc_margin(0.0, 1000, 0.0, 4000) > 0  # no events: still an error


def test_cart_recovery_crs3_truth_comes_from_the_cohorts_generator(monkeypatch):
    # Regression: a cohort generated with the profile's IIV only (--generator-iiv profile) got
    # no P(CRS >= 3) check at all, since the truth was always cart_crs with all its IIV.
    cart_recovery = _load("cart_recovery")
    used = []

    class Stop(Exception):
        pass

    def simulate_courses(model, *args, **kwargs):
        used.append(model)
        raise Stop

    monkeypatch.setattr("pkpd.data.virtual.simulate_courses", simulate_courses)
    generator = object()
    with pytest.raises(Stop):
        cart_recovery.crs3_check(None, seed=1, n_truth=3, generator=generator)
    assert used == [generator]
    with pytest.raises(Stop):
        cart_recovery.crs3_check(None, seed=1, n_truth=3)
    assert used[-1].name == "cart_crs"  # default: the library model with all its IIV


def test_cart_recovery_crs3_checks_rescued_and_untreated_patients(monkeypatch):
    """Truth and posterior predictive of both scenarios: the generator's under rescue and
    untreated, the fitted model's under the same two strategies, in that order."""
    from types import SimpleNamespace

    import pandas as pd

    cart_recovery = _load("cart_recovery")
    seen = []

    def simulate_courses(model, patients, seed, times, strategy=None):
        seen.append(strategy)
        worst = np.array([3, 0, 0, 0] if strategy is None else [3, 3, 0, 0])
        return SimpleNamespace(outcomes=pd.DataFrame({"max_crs_grade": worst}))

    def simulate_strategies(model, pop, strategies, grid, keep_trajectories):
        assert [s.name for s in strategies][1] == "none"
        grades = np.zeros((2, 5, 4))  # (strategy, draw, patient)
        grades[1, :, :2] = 3  # untreated: half the patients grade 3 under every draw
        return {"max_crs_grade": SimpleNamespace(values=grades)}

    monkeypatch.setattr("pkpd.data.virtual.simulate_courses", simulate_courses)
    monkeypatch.setattr("pkpd.strategies.simulate_strategies", simulate_strategies)
    monkeypatch.setattr("pkpd.strategies.population.make_population", lambda *a, **k: None)
    result = SimpleNamespace(spec=SimpleNamespace(compile=lambda: SimpleNamespace(covariates=[])))
    c = cart_recovery.crs3_check(
        result, seed=1, n_patients=4, n_draws=5, n_truth=4, generator=object()
    )
    assert seen[0] is None and seen[1].name == "none"
    assert c["truth"] == 0.25 and c["median"] == 0.0  # rescue, at the top level
    assert c["untreated"]["truth"] == 0.5 and c["untreated"]["median"] == 0.5
    assert c["untreated"]["covered"] and c["patients"] == 4 and c["draws"] == 5


def test_cart_recovery_random_effect_structure_options():
    """--add-iiv extends the fit's random effects; --generator-iiv chooses the generator's."""
    cart_recovery = _load("cart_recovery")
    from pkpd.inference.profiles import get_profile

    prof = cart_recovery.profile_with_iiv("cart_crs_core", ("K_kill",))
    assert prof.final.iiv == ("rho", "alpha", "FB", "p6", "I6_0", "K_kill")
    assert prof.stages[:-1] == get_profile("cart_crs_core").stages[:-1]
    assert "K_kill" in prof.name
    assert cart_recovery.profile_with_iiv("cart_crs_core", ()) == "cart_crs_core"
    with pytest.raises(ValueError, match="not estimated"):
        cart_recovery.profile_with_iiv("cart_crs_core", ("CL_toc",))

    stage = get_profile("cart_crs_core").final
    assert cart_recovery.generator_model(stage, "all") is None
    gen = cart_recovery.generator_model(stage, ["K_kill", "r_B"])
    with_iiv = {n for n, p in gen.spec.parameters.items() if p.iiv is not None}
    assert with_iiv == {"K_kill", "r_B"}
    gen = cart_recovery.generator_model(stage, "profile")
    assert {n for n, p in gen.spec.parameters.items() if p.iiv is not None} == set(stage.iiv)
    with pytest.raises(ValueError, match="no IIV"):
        cart_recovery.generator_model(stage, ["V_car"])
    with pytest.raises(ValueError, match="generator_iiv"):
        cart_recovery.generator_model(stage, "some")


def test_optimizer_benchmark_runs(capsys):
    _load("optimizer").main()
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 6 and rows[-1].startswith("| bowl failing beyond a box")


def test_conditioning_shows_what_centring_on_typical_values_changes():
    # The reason random effects are centred on the typical values (phi): with data that pin each
    # patient's kinetics, the typical rho is tied to the patients' coordinates non-centred,
    # much less centred (docs/inference.md, "Centred random effects").
    conditioning = _load("conditioning")
    nc = conditioning.scaled_hessian(8, "cart_kinetics", "noncentered", 20261123)
    c = conditioning.scaled_hessian(8, "cart_kinetics", "centered", 20261123)
    assert nc["dimensions"] == c["dimensions"]
    assert set(nc["coupling"]) == set(c["coupling"]) and "log_rho" in c["coupling"]
    assert c["coupling"]["log_rho"] < 0.5 * nc["coupling"]["log_rho"], (nc, c)


@pytest.mark.parametrize("method, order", [("kencarp4", 4), ("kencarp5", 5)])
def test_imex_prototype_is_an_accurate_l_stable_method(method, order):
    # The IMEX prototype of benchmarks/imex_tail.py, on Prothero-Robinson problems
    # y' = lam (y - cos t) - sin t, y(0) = 1, exact solution cos t, fixed steps to t = 1.
    import diffrax
    import jax.numpy as jnp

    imex_tail = _load("imex_tail")
    cls, _ = imex_tail.METHODS[method]
    stages = imex_tail.imex_stages(cls.tableau.tableaus)

    def solve(lam, n_steps):
        def field(t, y):
            return lam * (y - jnp.cos(t)) - jnp.sin(t)

        y, t, h = jnp.ones((1, 1)), jnp.zeros(1), jnp.full(1, 1.0 / n_steps)
        for _ in range(n_steps):
            y, _, _ = stages(field, diffrax.Tsit5.tableau, t, h, y, field(t, y))
            t = t + h
        return float(abs(y[0, 0] - jnp.cos(1.0)))

    # Non-stiff (the Jacobian's diagonal -1 is taken implicitly): the method's order.
    coarse, fine = solve(-1.0, 4), solve(-1.0, 8)
    assert 2 ** (order - 0.7) < coarse / fine < 2 ** (order + 1.5), (coarse, fine)
    # Stiff: steps 10,000 and 1,000 times longer than 1/|lam|, where an explicit step
    # (stability bound ~3/|lam|) would blow up, stay stable and converge, but only at about
    # second order (the methods' stage order; measured 2.1 and 1.6): the explicit part carries
    # the forcing lam * cos(t) that balances the stiff decay.
    stiff_10, stiff_100 = solve(-1e5, 10), solve(-1e5, 100)
    assert stiff_10 < 1.0 and stiff_100 < stiff_10 / 20, (stiff_10, stiff_100)


def test_cart_recovery_generator_rates_of_the_profile_generator(monkeypatch, capsys):
    # --generator-rates reports the generator a recovery run's cohort comes from.
    import json
    import sys

    cart_recovery = _load("cart_recovery")
    models = []

    def rates(n, seed, model=None):
        models.append(model)
        return {"patients": n, "seed": seed}

    monkeypatch.setattr(cart_recovery, "generator_rates", rates)
    for extra in ([], ["--profile", "cart_crs_core", "--generator-iiv", "profile"]):
        monkeypatch.setattr(
            sys, "argv", ["cart_recovery.py", "--generator-rates", "--patients", "7", *extra]
        )
        cart_recovery.main()
    assert models[0] is None  # cart_crs with all its IIV
    assert set(models[1].iiv) == {"rho", "alpha", "FB", "p6", "I6_0"}
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed[0] == {"patients": 7, "seed": 20261123}
    assert set(printed[1]["generator_iiv"]) == set(models[1].iiv)


def test_map_start_benchmark_times_both_starts_and_restores_fit(monkeypatch):
    """The benchmark gives the earlier estimates to the first run only, and leaves `fit`,
    `map_estimate` and the NUTS sampler as they were."""
    from pkpd.inference import sample

    map_start = _load("map_start")
    cart_recovery = _load("cart_recovery")
    monkeypatch.setitem(sys.modules, "cart_recovery", cart_recovery)
    monkeypatch.setattr(cart_recovery, "generator_model", lambda stage, iiv: None)
    monkeypatch.setattr(cart_recovery, "generated_cohort", lambda n, seed, model: "cohort")
    given = []

    def fake_map(pm_model, start=None, **kwargs):
        return {}, {"logp": -1.0, "nit": 3 if start is None else 2, "success": True}

    def fake_fit(spec, cohort, map_start=None, **kwargs):
        given.append(map_start)
        sample.map_estimate("model", start=map_start)
        sample._SAMPLE["numpyro"]()

    def fake_staged(spec, cohort, profile, **kwargs):
        assert cohort == "cohort" and profile == "cart_crs_core"
        sample.fit(spec, cohort, map_start={"rho": 1.0}, **kwargs)

    monkeypatch.setattr(sample, "fit", fake_fit)
    monkeypatch.setattr(sample, "map_estimate", fake_map)
    monkeypatch.setattr("pkpd.inference.profiles.fit_staged", fake_staged)
    originals = sample.fit, sample.map_estimate, sample._SAMPLE["numpyro"]
    rows = map_start.measure(4, seed=1)
    assert given == [{"rho": 1.0}, None]
    assert [(r["start"], r["iterations"]) for r in rows] == [
        ("earlier estimates", 2),
        ("prior medians", 3),
    ]
    assert (sample.fit, sample.map_estimate, sample._SAMPLE["numpyro"]) == originals


def test_ordinal_offset_models_the_simulators_grades_and_shows_the_overconfidence():

    from pkpd.strategies.simulate import grades

    script = _load("ordinal_offset")
    # The script's grades are the library's: one logistic offset per patient for every day.
    rng = np.random.default_rng(3)
    latent, grade = script.simulate(rng, 50, persistent=True)
    u = np.random.default_rng(3)
    u.normal(4.0, 1.5, 50), u.uniform(2, 8, 50)  # the same stream as `simulate`
    offsets = u.uniform(size=(50, 1))[:, 0]
    cut = np.broadcast_to(script.CUTPOINTS, (50, 4))
    np.testing.assert_array_equal(grades(latent, cut, np.arange(5.0), offsets), grade)
    # Independent-days likelihood: right centre, model SD about a third of the spread over
    # cohorts under persistent offsets (0.14 against 0.40 at 200 cohorts), not under
    # independent days (0.14 against 0.13); the subject-offset likelihood on persistent offsets
    # is calibrated (0.24 against 0.23).
    for persistent, offset, low, high in (
        (True, "record", 2.0, 4.0),
        (False, "record", 0.7, 1.3),
        (True, "subject", 0.7, 1.3),
    ):
        rng = np.random.default_rng(7)
        fits = [script.fit_c2(*script.simulate(rng, 60, persistent), offset) for _ in range(40)]
        est, sd = zip(*fits, strict=True)
        assert abs(np.mean(est) - 5.0) < 0.2
        assert low < np.std(est) / np.median(sd) < high


def test_ordinal_offset_likelihood_is_the_librarys():
    """The script's numpy likelihood equals `observation_logp` for both offsets."""
    from types import SimpleNamespace

    import pytensor
    import pytensor.tensor as pt

    from pkpd.inference.likelihood import observation_logp

    script = _load("ordinal_offset")
    latent, grade = script.simulate(np.random.default_rng(5), 12, persistent=True)
    x = np.array([3.1, 0.7, 0.85, -0.4])
    cut = script.cutpoints(x)
    names = ["c1", "c2", "c3", "c4"]
    n, days = latent.shape
    obs = SimpleNamespace(
        subject=np.repeat(np.arange(n), days),
        endpoint=np.zeros(n * days, int),
        category=grade.ravel().astype(int),
        cens=np.zeros(n * days, int),
    )
    f = pt.dvector("f")
    for offset in ("record", "subject"):
        ospec = SimpleNamespace(error="ordinal", cutpoints=names, offset=offset)
        spec = SimpleNamespace(observations={"g": ospec})
        params = {nm: pt.constant(v) for nm, v in zip(names, cut, strict=True)}
        lp = observation_logp(f, f, params, obs, spec, SimpleNamespace(endpoints=["g"]))
        got = pytensor.function([f], lp.sum())(latent.ravel())
        assert np.isfinite(got)
        assert -script.nll(x, latent, grade, offset) == pytest.approx(got, rel=1e-10)


def test_cart_recovery_grade_noise_option(monkeypatch):

    cart_recovery = _load("cart_recovery")
    library = cart_recovery.base_model()
    assert library.record_scales() == {"crs_grade": 0.25, "icans_grade": 0.25}
    monkeypatch.setattr(cart_recovery, "GRADE_NOISE", 0.1)
    spec = cart_recovery.base_model()
    for name in ("crs_grade", "icans_grade"):  # both ordinal endpoints, one fixed scale
        assert spec.observations[name].record_scale == "s_record"
    assert spec.parameters["s_record"].value == 0.1 and not spec.parameters["s_record"].estimated
    assert spec.record_scales() == {"crs_grade": 0.1, "icans_grade": 0.1}
    monkeypatch.setattr(cart_recovery, "GRADE_NOISE", 0.0)  # none: only the patient's offset
    assert cart_recovery.base_model().record_scales() == {}
    monkeypatch.setattr(cart_recovery, "GRADE_NOISE", 0.1)
    # The generator draws grades with the chosen noise: same patients and seed, other grades
    # (and, through the reactive rescue that grades trigger, other drug doses and IL-6 after
    # them).
    noisy = cart_recovery.generated_cohort(4, seed=3).ds
    monkeypatch.setattr(cart_recovery, "GRADE_NOISE", None)
    plain = cart_recovery.generated_cohort(4, seed=3).ds
    grade = plain["obs_dvid"].values == spec.observations["crs_grade"].dvid
    assert grade.sum() > 20
    assert np.any(noisy["obs_dv"].values[grade] != plain["obs_dv"].values[grade])


def test_cart_recovery_writes_the_command_that_reruns_it():
    """Regression: the command written to RESULTS.md dropped --grade-noise, so the 2026-12-06
    core_noise entry did not say it was run with it."""
    import shlex

    cart_recovery = _load("cart_recovery")
    parser = cart_recovery.build_parser()
    argv = (
        "--patients 60 --profile cart_crs_core --generator-iiv profile --seed 20261123 "
        "--chains 4 --tune 500 --draws 100 --iiv-parameterization centered --init map "
        "--checkpoint benchmarks/runs/core_noise --max-seconds 7200 --progress --grade-noise 0.25 "
        "--write --target-accept 0.9 --low-rank --add-iiv k6 --no-ppc --ratio p6=K_kill*k6"
    )
    args = parser.parse_args(shlex.split(argv))
    line = cart_recovery.command_line(args)
    assert line.startswith("python benchmarks/cart_recovery.py ")
    again = parser.parse_args(shlex.split(line)[2:])
    # Everything but the switches that change no number (--write, --progress) comes back.
    assert {**vars(again), "write": True, "progress": True} == vars(args)
    assert cart_recovery.command_line(parser.parse_args(["--grade-noise", "0"])).count(
        "--grade-noise 0"
    )


def test_grade_noise_benchmark_variants():
    grade_noise = _load("grade_noise")
    from pkpd.model import load_model

    spec = load_model(BENCHMARKS / "models" / "grade_course.toml")
    exact = grade_noise.variant(spec, None)
    assert exact.observations["grade"].record_scale is None
    noisy = grade_noise.variant(spec, 0.1)
    assert noisy.observations["grade"].record_scale == "s_rec"
    assert noisy.parameters["s_rec"].value == 0.1
    # The value is in the model's files (with_fixed), so a saved fit identifies the variant.
    assert noisy.hash != spec.hash and noisy.estimated() == spec.estimated()
    design = grade_noise.design(3, 14)
    assert (design["EVID"] == 0).sum() == 3 * 14 and (design["EVID"] == 1).sum() == 3


def test_cart_recovery_checkpoint_fits_the_cohort_of_its_first_call(tmp_path):
    """A checkpointed run saves its generated cohort on the first call and reads it back on every
    call (a later generator change must not change a resumed run's data), number for number."""

    cart_recovery = _load("cart_recovery")
    made = cart_recovery.generated_cohort(4, seed=3)
    first = cart_recovery.checkpoint_cohort(tmp_path / "n4", lambda: made)
    assert (tmp_path / "n4" / "cohort.csv").exists()

    def regenerate():
        raise AssertionError("a later call regenerated the cohort")

    again = cart_recovery.checkpoint_cohort(tmp_path / "n4", regenerate)
    for cohort in (first, again):
        assert set(cohort.ds.data_vars) == set(made.ds.data_vars)
        for name, var in made.ds.data_vars.items():
            np.testing.assert_array_equal(cohort.ds[name].values, var.values, err_msg=name)
            assert cohort.ds[name].attrs == var.attrs, name  # units, covariate roles
        assert {k: v for k, v in cohort.ds.attrs.items() if k != "source"} == {
            k: v for k, v in made.ds.attrs.items() if k != "source"
        }
        for name, coord in made.ds.coords.items():
            np.testing.assert_array_equal(cohort.ds[name].values, coord.values, err_msg=name)


def test_cart_recovery_checkpoint_fits_the_model_of_its_first_call(tmp_path, monkeypatch):
    """The run's model is saved with its first call's checkpoint (model.json: the files' texts) and
    read back by every call, so a library change between calls does not change a resumed run."""
    cart_recovery = _load("cart_recovery")
    monkeypatch.setattr(cart_recovery, "GRADE_NOISE", 0.25)
    made = cart_recovery.base_model()
    first = cart_recovery.checkpoint_model(tmp_path / "n4", lambda: made)

    def remake():
        raise AssertionError("a later call rebuilt the model")

    again = cart_recovery.checkpoint_model(tmp_path / "n4", remake)
    for spec in (first, again):
        assert spec.hash == made.hash and spec.name == made.name
        assert list(spec.parameters) == list(made.parameters)
        assert spec.observations["crs_grade"].record_scale == "s_record"
        assert spec.parameters["s_record"].value == 0.25


def test_aggregate_calibration_cumulative_rows_sum_the_exact_grades():
    # Hay 2017 reports exact CRS grades 1-5 (26%, 32%, 4.5%, 3.8%, 3.8% of 133); grade >= k
    # is the sum over grades >= k, grade 5 (death) included in >= 4.
    agg = _load("aggregate_calibration")
    from pkpd.data.trials import published_trials

    (hay,) = published_trials("hay2017")
    rows = {o.grade: o for o in agg._cumulative(hay)}
    assert sorted(rows) == [2, 3, 4]
    assert all(
        o.endpoint == "crs" and not o.exact and o.derived and o.n == 133 for o in rows.values()
    )
    assert rows[2].count == pytest.approx(133 * (0.32 + 0.045 + 0.038 + 0.038))
    assert rows[3].count == pytest.approx(133 * (0.045 + 0.038 + 0.038))
    assert rows[4].count == pytest.approx(133 * (0.038 + 0.038))
    # The exact grades >= 2 agree with the abstract's "any CRS 70%, grade 1 26%" to rounding.
    assert rows[2].count / 133 == pytest.approx(0.70 - 0.26, abs=0.01)
    # A trial with cumulative rates only has nothing to derive.
    (cibmtr,) = published_trials("cibmtr_tisacel")
    assert agg._cumulative(cibmtr) == []


def test_aggregate_calibration_marks_cutpoints_no_calibration_row_uses():
    # A validation rate that depends on a cutpoint no calibration cohort informs is a prior
    # prediction; the table must flag it rather than count it as validation.
    import pandas as pd

    agg = _load("aggregate_calibration")
    table = pd.DataFrame(
        {
            "trial": ["zuma1", "juliet", "hay2017", "hay2017"],
            "cutpoints": ["c_crs1", "c_crs3", "c_crs2", "c_crs4"],
        }
    )
    parameters = ["rho", "c_crs1", "c_crs2", "c_crs3", "c_crs4", "shift_penn"]
    assert agg._uninformed_cutpoints(parameters, table) == {"c_crs2", "c_crs4"}
    table.loc[0, "cutpoints"] = "c_crs1,c_crs2,c_crs4"
    assert agg._uninformed_cutpoints(parameters, table) == set()


def test_cart_recovery_mixing_is_per_parameter_and_none_for_a_point():
    import xarray as xr

    cart_recovery = _load("cart_recovery")
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(4, 200))
    stuck = mixed + np.array([0.0, 0.0, 0.0, 5.0])[:, None]  # one chain elsewhere
    post = xr.Dataset(
        {"rho": (("chain", "draw"), mixed), "c_crs4": (("chain", "draw"), stuck)},
        coords={"chain": range(4), "draw": range(200)},
    )
    rhat, ess = cart_recovery._mixing(post, ["rho", "c_crs4"], point=False)
    assert rhat["rho"] < 1.01 and rhat["c_crs4"] > 1.5
    assert ess["rho"] > 400 and ess["c_crs4"] < 50
    assert cart_recovery._mixing(post, ["rho"], point=True) == ({}, {})


def test_realized_iiv_are_the_sds_of_the_effects_the_generator_drew():
    """`cart_recovery.realized_iiv`: the sample SDs of the generating model's effects for the
    cohort's patients (seeded: the same again, another seed another), near omega for many
    patients (400: the sample SD's relative SE is ~3.5%, so within 15%)."""
    cart_recovery = _load("cart_recovery")
    from pkpd.inference.profiles import get_profile

    model = cart_recovery.generator_model(get_profile("cart_crs_core").final, "profile")
    a = cart_recovery.realized_iiv(400, 7, model)
    assert list(a) == [f"omega_{n}" for n in model.iiv]
    assert a == cart_recovery.realized_iiv(400, 7, model)
    assert a != cart_recovery.realized_iiv(400, 8, model)
    for name, sd in a.items():
        omega = model.spec.parameters[name.removeprefix("omega_")].iiv.median()
        assert sd == pytest.approx(omega, rel=0.15), name


def test_aggregate_probe_parses_values_and_names_what_is_missing():
    """`aggregate_probe.py`: ``name=value`` lists, and a base point without every calibrated
    parameter is refused with their names (before any likelihood is built)."""
    probe = _load("aggregate_probe")
    assert probe._values("rho=0.355, c_crs1=-5") == {"rho": 0.355, "c_crs1": -5.0}
    with pytest.raises(SystemExit, match="--at lacks rho_cd28, c_crs1"):
        probe.probe({"rho": 0.3}, [], with_neuro=False, patients=8)


def test_ridge_rewrites_the_draws_in_ratio_coordinates(tmp_path):
    """`benchmarks/ridge.py` on a made-up checkpoint folder: draws along log p = g + log K +
    log k (g and every patient's offset nearly fixed, K and k free) are a ridge before, and
    uncorrelated after the rewrite."""
    import json
    import pickle

    ridge = _load("ridge")
    rng = np.random.default_rng(0)
    n, n_sub = 400, 5
    log_k, log_kk = rng.normal(0, 0.3, n), rng.normal(0, 0.3, n)
    log_p = 2.0 + log_k + log_kk + rng.normal(0, 0.01, n)
    phi = np.stack(
        [log_p + 0.1 * i + rng.normal(0, 0.01, n) for i in range(n_sub)], axis=1
    )  # the patients' centred log p_i: offsets from the typical value
    other = rng.normal(0, 0.2, n)  # the other random effect's column (not rewritten)
    names = ["log_K", "log_k", "log_p", "log_omega_a", "log_omega_p", "phi"]
    shapes = [[], [], [], [], [], [n_sub, 2]]
    draws = np.column_stack(
        [log_k, log_kk, log_p, other, other]
        + [col for i in range(n_sub) for col in (other, phi[:, i])]
    )
    (tmp_path / "run.json").write_text(json.dumps({"names": names, "shapes": shapes}))
    (tmp_path / "chain0.pkl").write_bytes(pickle.dumps({"draws": list(draws)}))
    out = ridge.ridge(tmp_path, "p", ("K", "k"))
    assert out["patients"] == n_sub and out["draws"] == n
    assert out["typical_values"]["before"] > 100 * out["typical_values"]["after"]
    assert out["with_random_effects"]["before"] > 100 * out["with_random_effects"]["after"]
    # exact: the ratio's SD is that of the made-up noise
    assert out["posterior_sd_after"]["log_p_ratio"] == pytest.approx(
        np.std(log_p - log_k - log_kk), rel=1e-12
    )


def test_ridge_correlates_names_what_a_slow_coordinate_moves_with(tmp_path):
    """`ridge.py --correlates`: on made-up draws where log_K moves against one patient's effect
    and with nothing else, that comes first (with its sign), the chain means are per chain, and
    the narrowest direction of the typical values loads on the pair built to be collinear."""
    import json
    import pickle

    ridge = _load("ridge")
    rng = np.random.default_rng(1)
    n = 300
    log_k = rng.normal(0, 1, n)
    log_a = rng.normal(0, 1, n)
    log_b = log_a + rng.normal(0, 0.05, n)  # collinear with log_a
    phi = np.column_stack([-log_k + rng.normal(0, 0.3, n), rng.normal(0, 1, n)])
    draws = np.column_stack([log_k, log_a, log_b, phi[:, 0], phi[:, 1]])
    draws[150:, 0] += 0.5  # the second chain sits elsewhere
    names, shapes = ["log_K", "log_a", "log_b", "phi"], [[], [], [], [2, 1]]
    (tmp_path / "run.json").write_text(json.dumps({"names": names, "shapes": shapes}))
    for c in range(2):
        rows = list(draws[150 * c : 150 * (c + 1)])
        (tmp_path / f"chain{c}.pkl").write_bytes(pickle.dumps({"draws": rows}))
    out = ridge.correlates(tmp_path, "log_K", top=2)
    assert next(iter(out["most_correlated"])) == "phi[0,0]"
    assert out["most_correlated"]["phi[0,0]"] < -0.8 and len(out["most_correlated"]) == 2
    assert out["chain_means"][1] - out["chain_means"][0] == pytest.approx(0.5, abs=0.3)
    narrow = out["narrowest_directions"][0]["loadings"]
    assert set(list(narrow)[:2]) == {"log_a", "log_b"}
    assert out["typical_values_condition"] > 100
    with pytest.raises(SystemExit, match="no coordinate"):
        ridge.correlates(tmp_path, "log_x")


def test_ridge_effects_compares_coordinates_for_the_patients_effects(tmp_path):
    """`ridge.py --effects`: made-up draws where each patient's effect phi_i = log p_i - log K
    (ratio coordinates) is pinned and K is free: the sampled coordinates (shift 0) are best
    conditioned, the natural ones (shift 1: log p_i moves with K) are a ridge; the non-centred
    effects divide by omega exactly; the ratio mode refuses such a run, naming the modes that read
    it, and the effects mode refuses a run without the ratio."""
    import json
    import pickle

    ridge = _load("ridge")
    rng = np.random.default_rng(2)
    n, n_sub = 500, 6
    log_k = rng.normal(0, 1.0, n)
    log_ratio = rng.normal(1.0, 0.05, n)
    log_omega = rng.normal(-1.0, 0.1, n)
    phi = log_ratio[:, None] + 0.2 * np.arange(n_sub) + rng.normal(0, 0.05, (n, n_sub))
    names = ["log_K", "log_p_ratio", "log_omega_p", "phi"]
    shapes = [[], [], [], [n_sub, 1]]
    draws = np.column_stack([log_k, log_ratio, log_omega, phi])
    (tmp_path / "run.json").write_text(json.dumps({"names": names, "shapes": shapes}))
    (tmp_path / "chain0.pkl").write_bytes(pickle.dumps({"draws": list(draws)}))
    out = ridge.effect_coordinates(tmp_path, "p", ("K",), shifts=(0.0, 1.0))
    assert out["patients"] == n_sub and out["coordinates"] == 3 + n_sub
    by = out["condition_by_shift"]
    assert by["1"] > 100 * by["0"]
    nc = draws.copy()
    nc[:, 3:] = (phi - log_ratio[:, None]) / np.exp(log_omega)[:, None]
    assert out["condition_non_centred"] == pytest.approx(ridge._cond(nc), rel=1e-12)
    # the ratio mode names what reads a run already in ratio coordinates
    with pytest.raises(SystemExit, match=r"already sampled in ratio coordinates.*--effects"):
        ridge.ridge(tmp_path, "p", ("K",))
    (tmp_path / "run.json").write_text(
        json.dumps({"names": ["log_K", "log_p", "log_omega_p", "phi"], "shapes": shapes})
    )
    with pytest.raises(SystemExit, match="not a run with p sampled as a ratio"):
        ridge.effect_coordinates(tmp_path, "p", ("K",))


def test_laplace_step_tables_separate_the_jumps_from_the_curvature():
    """On a quadratic (curvature 20) whose gradient jumps up by 0.015 every 3e-4 and falls in
    between, small steps see the local curvature -30 and large ones the quadratic's."""
    laplace_step = _load("laplace_step")

    def gradient(x):
        return 20.0 * x - 0.015 * (np.mod(x / 3e-4, 1.0) - 0.5)

    def objective(x):  # only the gradient is used by the curvatures
        return 10.0 * float(x @ x), gradient(x)

    x = np.array([0.31245])  # mid-piece
    rows, direction = laplace_step.step_table(gradient, x, steps=(1e-5, 0.02))
    assert rows[0]["eig_min"] == pytest.approx(-30.0)
    assert rows[1]["eig_min"] == pytest.approx(20.0, abs=0.375)
    scan = laplace_step.line_scan(objective, x, direction, offsets=(1e-5, 0.03))
    assert [r["s"] for r in scan] == [-0.03, -1e-5, 0.0, 1e-5, 0.03]
    assert scan[3]["curvature"] == pytest.approx(-30.0)
    assert scan[4]["curvature"] == pytest.approx(20.0, abs=0.25)
    assert np.isnan(scan[0]["curvature"]) and np.isnan(scan[2]["curvature"])


def test_aggregate_calibration_problem_options():
    """The script's problem, shared with laplace_step.py: neuro cutpoints and endpoints with
    ``with_neuro``, cutpoint priors widened, ``record_scale`` 0 drops the day noise, and the
    treatment is looked up by name (regression: the name once shadowed the strategy)."""
    agg = _load("aggregate_calibration")
    crs = agg.calibration_problem(64, 1)
    assert crs.parameters == list(agg.PARAMETERS) and crs.options["use"] == ["crs"]
    assert crs.options["treatment"] is None
    assert crs.priors["c_crs1"].endswith(f", {agg.WIDE})") and "rho" not in crs.priors
    assert crs.spec.record_scales() == {"crs_grade": 0.25, "icans_grade": 0.25}
    assert crs.design.n_patients == 64 and crs.design.seed == 1
    neuro = agg.calibration_problem(
        64, 1, with_neuro=True, record_scale=0.0, treatment="soc_reactive_toc"
    )
    assert neuro.parameters[-4:] == ["c_icans1", "c_icans2", "c_icans3", "shift_label_nt"]
    assert neuro.options["definition_shifts"] == agg.NEURO_DEFINITION_SHIFTS
    assert crs.options["definition_shifts"] == {}
    assert neuro.options["use"] == ["crs", "icans", "neuro"]
    assert neuro.spec.record_scales() == {}
    assert neuro.options["treatment"].name == "soc_reactive_toc"


def test_pareto_k_noise_flags_a_wider_posterior_more_often():
    """`benchmarks/pareto_k_noise.py`: the exact k of N(0, s^2) over N(0, 1) is 1 - 1/s^2; a
    posterior 2x as wide as its Gaussian is flagged far more often than one 2% wider, and its
    weights' ESS is smaller."""
    noise = _load("pareto_k_noise")
    near, wide = noise.noise_table(reps=20, seed=0, scales=(1.02, 2.0), sizes=(1000,))
    assert near["k"] == pytest.approx(1 - 1 / 1.02**2) and wide["k"] == pytest.approx(0.75)
    assert near["flagged"] <= 0.05 < 0.2 <= wide["flagged"]
    assert near["relative_ess"] > 0.95 > 0.5 > wide["relative_ess"]
    assert near["k_5"] <= near["k_median"] <= near["k_95"]


def test_aggregate_calibration_check_line_says_passed_flagged_or_not_run():
    agg = _load("aggregate_calibration")
    check = {"draws": 200, "pareto_k": 0.7, "k_threshold": 0.57, "ess": 80.0, "outside_support": 0}
    assert "k 0.70" in agg.check_line(check) and "flagged" in agg.check_line(check)
    assert "passed" in agg.check_line(dict(check, pareto_k=-np.inf))
    assert "not run" in agg.check_line(None)
    assert "over the Gaussian)" in agg.check_line(check)  # fits from before the proposal option
    t_check = dict(check, proposal="Student-t (df 4)")
    assert "over the Student-t (df 4))" in agg.check_line(t_check)


def test_aggregate_calibration_tables_with_and_without_reweighting():
    import pandas as pd

    agg = _load("aggregate_calibration")
    summary = pd.DataFrame(
        {
            "prior": ["Normal(1, 1)", "Normal(2, 1)"],
            "map": [1.0, 2.0],
            "median": [1.1, 2.1],
            "lower": [0.5, 1.5],
            "upper": [1.7, 2.7],
            "sd_ratio": [0.4, 0.9],
            "median_is": [1.2, np.nan],
            "lower_is": [0.6, np.nan],
            "upper_is": [1.9, np.nan],
            "mcse_median_is": [0.013, np.nan],
            "mcse_lower_is": [0.04, np.nan],
            "mcse_upper_is": [0.052, np.nan],
        },
        index=pd.Index(["c1", "c2"], name="parameter"),
    )
    plain = agg.parameter_table(summary, importance=False)
    assert plain[2] == "| c1 | Normal(1, 1) | 1 | 1.1 | [0.5, 1.7] | 0.40 |"
    both = agg.parameter_table(summary, importance=True)
    assert "reweighted median [95%]" in both[0] and both[1].count("---") == 7
    assert both[2] == (
        "| c1 | Normal(1, 1) | 1 | 1.1 | [0.5, 1.7] | "
        "1.2 [0.6, 1.9] +- 0.013 (0.04, 0.052) | 0.40 |"
    )
    # a summary without the errors (before 2026-12-07 23:50) prints the quantiles alone
    older = summary.drop(columns=["mcse_median_is", "mcse_lower_is", "mcse_upper_is"])
    assert "| 1.2 [0.6, 1.9] | 0.40 |" in agg.parameter_table(older, importance=True)[2]
    assert "not reweighted" in both[3]
    row = dict(
        trial="zuma1",
        outcome="CRS >= 3",
        cutpoints="c1",
        n=108,
        observed=0.13,
        rate=0.12,
        rate_lower=0.08,
        rate_upper=0.2,
        pred_lower=0.06,
        pred_upper=0.22,
        p_value=0.8,
        inside=True,
        derived=False,
    )
    table = pd.DataFrame([row, dict(row, trial="hay2017", inside=False)])
    rows = agg.predictive_rows(table, {"c1"})
    assert len(rows) == 4 and rows[0].startswith("| role |")
    assert rows[2].startswith("| calibration | zuma1 | CRS >= 3† | 108 |")
    assert rows[3].startswith("| validation | hay2017 |") and rows[3].endswith("| NO |")
