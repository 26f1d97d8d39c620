"""The subjects-last integrator (`pkpd.solve.lanes`) against the closed form and the engine."""

import jax
import numpy as np
import pytest
from handmodels import individual_vector
from test_engine import N_EVENTS, SUBJECTS, records

from pkpd.events import BOLUS as BOLUS_KIND
from pkpd.events import DoseRecords, build_event_table
from pkpd.solve import NONFINITE, OK, SOLVER_FAILURE, STEP_LIMIT, Solver, solve
from pkpd.solve.analytic import analytic_amounts
from pkpd.solve.engine import event_arrays
from pkpd.solve.lanes import solve_lanes, supports

TIGHT = Solver("tsit5", rtol=1e-10, atol=1e-12)


def lanes(model, ev, t, seq, p, solver=TIGHT):
    f = jax.jit(lambda *a: solve_lanes(model, solver, *a))
    return f(event_arrays(ev), np.asarray(t, float), np.asarray(seq, float), np.asarray(p, float))


@pytest.fixture(scope="module")
def cohort(model2):
    # oral doses with a lag and q12h repeats, an infusion by rate and one by duration, a reset
    # (EVID 3) and a reset-and-dose (EVID 4); an observation grid that crosses all of them
    ev = build_event_table(SUBJECTS, min_events=N_EVENTS)
    t = np.tile(np.linspace(0.0, 48.0, 49), (3, 1))
    seq = np.full(t.shape, 1e6)
    rng = np.random.default_rng(1)
    p = np.stack([individual_vector(model2)] * 3) * np.exp(rng.normal(0, 0.2, (3, 7)))
    return ev, t, seq, p


def test_matches_the_closed_form(model2, cohort):
    ev, t, seq, p = cohort
    res = lanes(model2, ev, t, seq, p)
    assert bool(res.ok.all())
    ref = analytic_amounts(model2, ev, t, seq, p)
    np.testing.assert_allclose(res.y, ref, rtol=1e-7, atol=1e-9)


def test_matches_the_engine_with_unsorted_times(model2, cohort):
    ev, t, seq, p = cohort
    order = np.random.default_rng(3).permutation(t.shape[1])
    a = lanes(model2, ev, t[:, order], seq[:, order], p, Solver("tsit5", rtol=1e-8, atol=1e-10))
    b = solve(model2, ev, t[:, order], seq[:, order], p, Solver("tsit5", rtol=1e-8, atol=1e-10))
    np.testing.assert_allclose(a.y, b.y, rtol=1e-6, atol=1e-8)


def test_ordering_rule_at_a_dose_time(model1):
    # Observations at the dose time: key 1 (before the dose's key 2) sees the pre-dose state,
    # key 9 the post-dose state; an IV bolus of 100 into an empty central compartment.
    ev = build_event_table([records([0.0, 5.0], [0.0, 100.0], [1, 1])], min_events=4)
    t = np.array([[5.0, 5.0, 6.0]])
    seq = np.array([[1.0, 9.0, 9.0]])
    p = individual_vector(model1)[None]
    res = lanes(model1, ev, t, seq, p)
    central = model1.state_index("central")
    assert float(res.y[0, 0, central]) == 0.0
    assert float(res.y[0, 1, central]) == pytest.approx(100.0, rel=1e-12)
    k = p[0, 0] / p[0, 1]
    assert float(res.y[0, 2, central]) == pytest.approx(100.0 * np.exp(-k), rel=1e-8)


def test_simultaneous_zero_doses_are_exact_no_ops(model1):
    one = build_event_table([records([0.0, 2.0], [100.0, 0.0], [1, 1])], min_events=N_EVENTS)
    many = build_event_table(
        [records([0.0] + [2.0] * 5, [100.0] + [0.0] * 5, [1] * 6)], min_events=N_EVENTS
    )
    t = np.array([[1.0, 2.0, 3.0]])
    seq = np.full(t.shape, 1e6)
    p = individual_vector(model1)[None]
    np.testing.assert_array_equal(lanes(model1, one, t, seq, p).y, lanes(model1, many, t, seq, p).y)


def test_subjects_are_independent(model2, cohort):
    # A subject's solution does not depend on who else is in the batch (each has its own time,
    # step size and stops).
    ev, t, seq, p = cohort
    whole = lanes(model2, ev, t, seq, p)
    for i, rec in enumerate(SUBJECTS):
        one = lanes(
            model2,
            build_event_table([rec], min_events=N_EVENTS),
            t[i : i + 1],
            seq[i : i + 1],
            p[i : i + 1],
        )
        # equal up to rounding: XLA may vectorise a batch of 3 and a batch of 1 differently
        np.testing.assert_allclose(one.y[0], whole.y[i], rtol=1e-12, atol=1e-14)


def test_failures_are_reported_per_subject(blowup_model):
    # y' = a y^2 from 1 blows up at 1/a: a = 1 fails before t = 3, a = 0.1 does not
    ev = build_event_table(
        [
            DoseRecords(
                *(np.zeros(0) for _ in range(6)),
                addl=np.zeros(0, int),
                evid=np.zeros(0, int),
                seq=np.zeros(0),
            )
        ]
        * 2,
        min_events=1,
    )
    t = np.tile([0.0, 0.5, 3.0], (2, 1))
    res = lanes(
        blowup_model,
        ev,
        t,
        np.full(t.shape, 9.0),
        np.array([[1.0], [0.1]]),
        Solver("tsit5", max_steps=4096),
    )
    assert int(res.status[0]) in (NONFINITE, STEP_LIMIT, SOLVER_FAILURE)
    assert np.isnan(np.asarray(res.y[0])).all()
    assert int(res.status[1]) == OK
    # Regression: a zero-length step (the observation at t = 0) marked the first-same-as-last
    # derivative as fresh although none had been computed, so the first real step used f = 0;
    # this subject's error was 7.5e-7 (75x rtol 1e-8) instead of 3e-9.
    np.testing.assert_allclose(res.y[1, :, 0], 1 / (1 - 0.1 * t[1]), rtol=5e-8)


def test_step_limit_between_two_stops(model1):
    rec = records([0.0], [100.0], [1])
    ev = build_event_table([rec, rec])
    t = np.array([[1.0, 200.0], [1.0, 2.0]])
    p = np.stack([individual_vector(model1)] * 2)
    res = lanes(model1, ev, t, np.full(t.shape, 9.0), p, Solver("tsit5", max_steps=8))
    assert int(res.status[0]) == STEP_LIMIT
    assert np.isnan(np.asarray(res.y[0])).all()


def test_only_explicit_methods(model2):
    assert supports(model2, Solver("tsit5"))
    assert supports(model2, Solver("dopri8"))
    assert not supports(model2, Solver("kvaerno5"))
    assert not supports(model2, Solver("auto"))  # the closed form is used instead
    with pytest.raises(ValueError, match="explicit method"):
        solve_lanes(
            model2, Solver("kvaerno5"), {}, np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 7))
        )


def test_cart_crs_matches_the_engine():
    # The model and drugs strategies simulate: CAR-T bolus, a 1 h tocilizumab infusion at a
    # different time per patient, a 6-hourly grid to day 28.
    import jax.numpy as jnp

    import pkpd
    from pkpd.events import BOLUS, INFUSION_END, INFUSION_START

    m = pkpd.load_model("cart_crs").compile()
    n, rng = 6, np.random.default_rng(0)
    cov = np.array([d if np.isfinite(d) else 70.0 for d in m.covariate_defaults])
    eta = rng.normal(size=(n, len(m.iiv))) * 0.3
    p = np.asarray(
        jax.vmap(lambda e: m.individual(jnp.asarray(m.typical_values), e, jnp.asarray(cov)))(
            jnp.asarray(eta)
        )
    )
    ev = {k: np.zeros((n, 3)) for k in ("time", "amount", "rate", "duration", "seq")}
    toc = m.dose_targets["tocilizumab_iv"]
    ev.update(
        kind=np.array([[BOLUS, INFUSION_START, INFUSION_END]] * n),
        cmt=np.array([[m.dose_targets["cart_iv"], toc, toc]] * n),
        link=np.array([[-1, 2, 1]] * n),
        mask=np.ones((n, 3), bool),
    )
    ev["amount"][:] = [1e8, 8.0, 8.0]
    ev["duration"][:, 1:] = 1 / 24
    ev["seq"][:] = [2.0, 0.0, 1.0]
    ev["time"][:, 1:] = rng.uniform(0, 3, (n, 1))
    grid = np.tile(np.linspace(0.0, 28.0, 113), (n, 1))
    seq = np.full(grid.shape, 0.5)
    solver = Solver("tsit5", rtol=1e-6, atol=1e-9)
    a = lanes(m, ev, grid, seq, p, solver)
    b = solve(m, ev, grid, seq, p, solver)
    assert bool(a.ok.all()) and bool(b.ok.all())
    scale = np.abs(np.asarray(b.y)).max(axis=1, keepdims=True) + 1e-12
    assert np.max(np.abs(np.asarray(a.y) - np.asarray(b.y)) / scale) < 1e-4


def test_a_non_finite_trial_step_is_rejected_not_fatal(blowup_model):
    # y' = 1 - exp(y - 1) from 0 settles at 1. A first step of 1e4 puts a stage at y ~ 1000,
    # where exp overflows: that trial step must be rejected and shrunk (as diffrax does), not
    # mark the subject as failed (regression: it was NONFINITE).
    import dataclasses

    import jax.numpy as jnp

    model = dataclasses.replace(
        blowup_model,
        rhs=lambda t, y, p: 1.0 - jnp.exp(y - 1.0) + 0 * p[0],
        initial=lambda p: jnp.zeros(1) + 0 * p[0],
    )
    ev = build_event_table(
        [
            DoseRecords(
                *(np.zeros(0) for _ in range(6)),
                addl=np.zeros(0, int),
                evid=np.zeros(0, int),
                seq=np.zeros(0),
            )
        ],
        min_events=1,
    )
    t = np.array([[0.0, 2e4, 5e4]])
    seq = np.full(t.shape, 9.0)
    res = lanes(model, ev, t, seq, np.array([[1.0]]), Solver("tsit5", dt0=1e4))
    assert int(res.status[0]) == OK
    ref = solve(model, ev, t, seq, np.array([[1.0]]), Solver("tsit5", rtol=1e-10, atol=1e-12))
    np.testing.assert_allclose(res.y, ref.y, rtol=1e-6, atol=1e-8)


def test_step_counts(model2, cohort):
    """``with_stats`` leaves the solution unchanged and counts what the loop did."""
    ev, t, seq, p = cohort
    plain = lanes(model2, ev, t, seq, p)
    args = (event_arrays(ev), np.asarray(t, float), np.asarray(seq, float), np.asarray(p, float))
    middle = float(np.median(t))
    res, stats = jax.jit(
        lambda *a: solve_lanes(model2, TIGHT, *a, with_stats=True, count_after=middle)
    )(*args)
    np.testing.assert_array_equal(res.y, plain.y)
    accepted, rejected = np.asarray(stats.accepted), np.asarray(stats.rejected)
    after = np.asarray(stats.accepted_after)
    assert accepted.shape == (p.shape[0],) and np.all(accepted > 0)
    assert np.all((after > 0) & (after < accepted))
    assert int(stats.iterations) >= int(np.max(accepted + rejected))
    _, none_after = jax.jit(lambda *a: solve_lanes(model2, TIGHT, *a, with_stats=True))(*args)
    assert not np.any(np.asarray(none_after.accepted_after))


def _sum_of_outputs(model, solver, args, weights, adjoint_capacity=None, counter=None):
    from pkpd.solve.lanes import solve_lanes_adjoint

    def loss(q):
        if adjoint_capacity is None:
            y = solve_lanes(model, solver, *args, q).y
        else:
            y = solve_lanes_adjoint(
                model, solver, *args, q, capacity=adjoint_capacity, counter=counter
            ).y
        return (y * weights).sum()

    return loss


def test_adjoint_matches_forward_mode(model2, cohort):
    """The discrete adjoint differentiates the same scheme as forward mode: same gradient to
    rounding, through lags, infusions by rate and by duration, resets and repeated doses;
    and when the record is too short it falls back to forward mode."""
    from pkpd.solve.lanes import AdjointCounter, iterations

    ev, t, seq, p = cohort
    solver = Solver("tsit5", rtol=1e-8, atol=1e-10)
    args = (event_arrays(ev), np.asarray(t, float), np.asarray(seq, float))
    p = np.asarray(p, float)
    weights = np.random.default_rng(2).normal(size=(*t.shape, model2.n_states))
    n_iter = iterations(model2, solver, *args, p)
    forward = jax.jit(jax.jacfwd(_sum_of_outputs(model2, solver, args, weights)))(p)
    assert np.all(np.isfinite(forward)) and np.abs(forward).max() > 0
    counter = AdjointCounter()
    for capacity in (n_iter, n_iter - 1):  # record just long enough; one short: fallback
        adj = jax.jit(jax.grad(_sum_of_outputs(model2, solver, args, weights, capacity, counter)))(
            p
        )
        np.testing.assert_allclose(adj, forward, rtol=1e-10, atol=1e-12 * np.abs(forward).max())
    jax.effects_barrier()
    # Two reverse passes, the second one past the record's end.
    assert (counter.gradients, counter.fallbacks) == (2, 1)
    from pkpd.solve.lanes import solve_lanes_adjoint

    with pytest.raises(ValueError, match="concrete event and observation arrays"):
        jax.jit(
            lambda tt: (
                solve_lanes_adjoint(model2, solver, args[0], tt, args[2], p, capacity=n_iter).y
            )
        )(args[1])


@pytest.mark.parametrize("rows", [False, True])
def test_adjoint_of_an_unused_fast_depot_stays_finite(model1, rows):
    """Regression: an IV-only cohort leaves the depot at exactly 0, and the steps (set by the
    slow elimination) are far beyond the depot's time constant: the scheme is unstable for
    that mode, whose adjoint grew backwards until 0 x inf made the gradient NaN (cart_crs:
    ka_dex). Forward mode gives 0 there; the adjoint must agree."""
    import dataclasses

    import jax.numpy as jnp

    model = model1
    if rows:  # the elementwise right-hand side the compiled models provide
        ka, cl, v = (model.parameters.index(n) for n in ("ka", "CL", "V"))
        model = dataclasses.replace(
            model,
            rhs_rows=lambda t, y, p: [-p[ka] * y[0], p[ka] * y[0] - p[cl] / p[v] * y[1] + 0.0 * t],
        )
    n = 2
    ev = {k: np.zeros((n, 1)) for k in ("time", "amount", "rate", "duration", "seq")}
    ev.update(
        kind=np.full((n, 1), BOLUS_KIND),
        cmt=np.ones((n, 1), int),
        link=np.full((n, 1), -1),
        mask=np.ones((n, 1), bool),
    )
    ev["amount"][:] = 100.0
    grid = np.tile(np.linspace(1.0, 400.0, 12), (n, 1))
    seq = np.full(grid.shape, 1.0)
    p = np.stack([individual_vector(model)] * n)
    p[:, model.parameters.index("ka")] = [500.0, 2000.0]
    p[:, model.parameters.index("CL")] = [0.5, 0.8]
    args = ({k: jnp.asarray(a) for k, a in ev.items()}, grid, seq)
    solver = Solver("tsit5", rtol=1e-6, atol=1e-9)
    weights = np.ones((*grid.shape, model.n_states))
    forward = jax.jit(jax.jacfwd(_sum_of_outputs(model, solver, args, weights)))(p)
    adj = jax.jit(jax.grad(_sum_of_outputs(model, solver, args, weights, 4096)))(p)
    assert np.all(np.isfinite(adj))
    np.testing.assert_allclose(adj, forward, rtol=1e-9, atol=1e-12 * np.abs(forward).max())


def _needed(p, depot=np.inf, rest=np.inf):
    return np.tile([depot, rest, rest], (p.shape[0], 1))


def test_needed_until_freezes_states_and_leaves_the_others_unchanged(model2, cohort):
    """A state past its ``needed_until`` keeps its value (its derivative is 0); the depot, which
    uses no other state, is integrated to the end and agrees with the full solve."""
    ev, t, seq, p = cohort
    args = (event_arrays(ev), np.asarray(t, float), np.asarray(seq, float))
    full = lanes(model2, ev, t, seq, p)
    until = _needed(p, rest=16.0)
    cut = jax.jit(lambda q: solve_lanes(model2, TIGHT, *args, q, needed_until=until))(
        np.asarray(p, float)
    )
    assert bool(cut.ok.all())
    y, y_full = np.asarray(cut.y), np.asarray(full.y)
    np.testing.assert_allclose(y[:, :, 0], y_full[:, :, 0], rtol=1e-8, atol=1e-10)
    before = t[0] <= 16.0
    np.testing.assert_allclose(y[:, before], y_full[:, before], rtol=1e-8, atol=1e-10)
    # Subjects 0 and 1 have no reset after the cut: central and periph stay at their day-16
    # values (subject 2's reset at 20 h sets every state back to its initial value).
    at_cut = int(np.flatnonzero(t[0] == 16.0)[0])
    for i in (0, 1):
        frozen = y[i, ~before, 1:]
        np.testing.assert_array_equal(frozen, np.broadcast_to(y[i, at_cut, 1:], frozen.shape))
        assert np.abs(y_full[i, ~before, 1:] - y[i, at_cut, 1:]).max() > 1e-3


def test_needed_until_everywhere_is_the_full_solve(model2, cohort):
    ev, t, seq, p = cohort
    args = (event_arrays(ev), np.asarray(t, float), np.asarray(seq, float))
    full = lanes(model2, ev, t, seq, p)
    cut = jax.jit(lambda q: solve_lanes(model2, TIGHT, *args, q, needed_until=_needed(q)))(
        np.asarray(p, float)
    )
    np.testing.assert_allclose(cut.y, full.y, rtol=1e-12, atol=1e-14)


def test_a_frozen_stiff_state_no_longer_bounds_the_step(model2):
    """Fast exchange between central and periph (stiff for an explicit method); only the depot
    needed: its few steps instead of the stability-bound many."""
    n = 2
    ev = build_event_table([records([0.0], [100.0], [0])] * n, min_events=1)
    t = np.tile(np.linspace(1.0, 48.0, 5), (n, 1))
    seq = np.full(t.shape, 1e6)
    p = np.stack([individual_vector(model2)] * n)
    p[:, model2.parameters.index("Q")] = 5e3
    p[:, model2.parameters.index("tlag")] = 0.0
    args = (event_arrays(ev), t, seq)
    solver = Solver("tsit5", rtol=1e-6, atol=1e-9)

    def counts(until):
        res, st = jax.jit(
            lambda q: solve_lanes(model2, solver, *args, q, with_stats=True, needed_until=until)
        )(p)
        return np.asarray(res.y), np.asarray(st.accepted)

    y_full, steps_full = counts(None)
    y_cut, steps_cut = counts(_needed(p, rest=-np.inf))
    assert np.all(steps_full > 10 * steps_cut), (steps_full, steps_cut)
    # to the tolerances (atol 1e-9: the depot is below it after a day)
    np.testing.assert_allclose(y_cut[:, :, 0], y_full[:, :, 0], rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(y_cut[:, :, 1:], 0.0)  # never integrated: initial value


def test_adjoint_matches_forward_mode_with_needed_until(model2, cohort):
    from pkpd.solve.lanes import iterations, solve_lanes_adjoint

    ev, t, seq, p = cohort
    solver = Solver("tsit5", rtol=1e-8, atol=1e-10)
    args = (event_arrays(ev), np.asarray(t, float), np.asarray(seq, float))
    p = np.asarray(p, float)
    until = _needed(p, rest=16.0)
    until[1, 2] = 30.0  # periph of subject 1 later than central: any times are allowed
    weights = np.random.default_rng(3).normal(size=(*t.shape, model2.n_states))
    n_iter = iterations(model2, solver, *args, p, needed_until=until)

    def loss(adjoint):
        def f(q):
            if adjoint:
                y = solve_lanes_adjoint(
                    model2, solver, *args, q, capacity=n_iter, needed_until=until
                ).y
            else:
                y = solve_lanes(model2, solver, *args, q, needed_until=until).y
            return (y * weights).sum()

        return f

    forward = jax.jit(jax.jacfwd(loss(False)))(p)
    adj = jax.jit(jax.grad(loss(True)))(p)
    assert np.abs(forward).max() > 0
    np.testing.assert_allclose(adj, forward, rtol=1e-10, atol=1e-12 * np.abs(forward).max())
