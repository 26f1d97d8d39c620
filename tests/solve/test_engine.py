"""The batched engine: vmap == per-subject, gradients, dense grid, zero-length intervals."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from handmodels import individual_vector

from pkpd.events import DoseRecords, build_event_table
from pkpd.solve import Solver, solve, solve_dense
from pkpd.solve.analytic import analytic_amounts

SOLVER = Solver(rtol=1e-10, atol=1e-12)
N_EVENTS = 16


def records(time, amount, cmt, rate=None, dur=None, ii=None, addl=None, evid=None):
    n = len(time)
    z = np.zeros(n)
    return DoseRecords(
        time=np.asarray(time, float),
        amount=np.asarray(amount, float),
        cmt=np.asarray(cmt),
        rate=np.asarray(z if rate is None else rate, float),
        duration=np.asarray(z if dur is None else dur, float),
        ii=np.asarray(z if ii is None else ii, float),
        addl=np.asarray(np.zeros(n, int) if addl is None else addl),
        evid=np.asarray(np.ones(n, int) if evid is None else evid),
        seq=np.arange(2.0, 2.0 + n),
    )


SUBJECTS = [
    records([0.0], [100.0], [0], ii=[12.0], addl=[3]),
    records([0.0, 6.0], [50.0, 80.0], [1, 1], rate=[25.0, 0.0]),
    records([1.0, 10.0, 20.0], [100.0, 0.0, 40.0], [0, -1, 1], evid=[1, 3, 4], dur=[0, 0, 3.0]),
]


@pytest.fixture(scope="module")
def cohort_arrays(model2):
    ev = build_event_table(SUBJECTS, min_events=N_EVENTS)
    t = np.tile(np.linspace(0.0, 48.0, 13), (3, 1))
    seq = np.full(t.shape, 1e6)
    rng = np.random.default_rng(1)
    p = np.stack([individual_vector(model2)] * 3) * np.exp(rng.normal(0, 0.2, (3, 7)))
    return ev, t, seq, p


def test_vmap_batch_equals_single_subject_solves(model2, cohort_arrays):
    ev, t, seq, p = cohort_arrays
    batch = solve(model2, ev, t, seq, p, SOLVER)
    assert bool(batch.ok.all())
    for i, rec in enumerate(SUBJECTS):
        one = solve(
            model2,
            build_event_table([rec], min_events=N_EVENTS),
            t[i : i + 1],
            seq[i : i + 1],
            p[i : i + 1],
            SOLVER,
        )
        np.testing.assert_allclose(one.y[0], batch.y[i], rtol=1e-12, atol=1e-14)


def test_unsorted_observations(model2, cohort_arrays):
    ev, t, seq, p = cohort_arrays
    rng = np.random.default_rng(0)
    order = rng.permutation(t.shape[1])
    a = solve(model2, ev, t, seq, p, SOLVER).y
    b = solve(model2, ev, t[:, order], seq[:, order], p, SOLVER).y
    np.testing.assert_allclose(b, a[:, order], rtol=1e-12, atol=1e-14)


def _fd_check(f, p0, rel=1e-5):
    g = np.asarray(jax.grad(f)(jnp.asarray(p0)))
    fd = np.zeros_like(p0)
    for idx in np.ndindex(p0.shape):
        h = 1e-5 * abs(p0[idx])
        e = np.zeros_like(p0)
        e[idx] = h
        fd[idx] = (f(p0 + e) - f(p0 - e)) / (2 * h)
    scale = np.abs(fd) + 1e-3 * np.abs(fd).max()
    assert np.all(np.abs(g - fd) / scale <= rel), np.max(np.abs(g - fd) / scale)


@pytest.mark.parametrize("which", ["model1", "model2"])
def test_gradient_matches_finite_differences(which, request, cohort_arrays):
    model = request.getfixturevalue(which)
    ev, t, seq, _ = cohort_arrays
    p0 = np.stack([individual_vector(model, tlag=0.3, F=0.8)] * 3)
    p0[:, 0] *= np.array([0.8, 1.0, 1.3])
    weights = np.linspace(1, 2, t.shape[1])

    def f(p):
        y = solve(model, ev, t, seq, p, SOLVER).y
        return jnp.sum(jnp.sum(y, axis=2) * weights)

    _fd_check(f, p0)


def test_jacfwd_with_forward_mode(model1, cohort_arrays):
    ev, t, seq, _ = cohort_arrays
    p0 = jnp.asarray(np.stack([individual_vector(model1)] * 3))
    fwd = Solver(rtol=1e-10, atol=1e-12, adjoint=diffrax.ForwardMode())
    J = jax.jacfwd(lambda p: solve(model1, ev, t, seq, p, fwd).y[:, :, 1])(p0)
    G = jax.grad(lambda p: solve(model1, ev, t, seq, p, SOLVER).y[:, :, 1].sum())(p0)
    np.testing.assert_allclose(J.sum(axis=(0, 1)), G, rtol=1e-7, atol=1e-9)


def test_analytic_path_gradient(model2, cohort_arrays):
    ev, t, seq, _ = cohort_arrays
    p0 = np.stack([individual_vector(model2, tlag=0.3)] * 3)

    def f(p):
        return jnp.sum(solve(model2, ev, t, seq, p, Solver("analytic")).y)

    _fd_check(f, p0)


def test_dense_grid_shows_post_dose_state(model2, cohort_arrays):
    ev, _, _, p = cohort_arrays
    p = p.copy()
    p[:, model2.parameter_index("tlag")] = 0.0
    grid = np.array([0.0, 6.0, 12.0, 18.0, 24.0])
    res = solve_dense(model2, ev, grid, p, SOLVER)
    ref = analytic_amounts(model2, ev, np.tile(grid, (3, 1)), np.full((3, 5), np.inf), p)
    np.testing.assert_allclose(res.y, ref, rtol=1e-7, atol=1e-9)
    # subject 0: oral dose at 0 and every 12 h -> depot includes the dose at each grid time
    depot = model2.state_index("depot")
    assert res.y[0, 0, depot] == pytest.approx(100.0 * p[0, 6], rel=1e-12)


def test_zero_length_intervals_are_exact_no_ops(model1):
    # five simultaneous zero doses at t=2 give the same states as one (the extra intervals
    # have zero length)
    one = build_event_table([records([0.0, 2.0], [100.0, 0.0], [1, 1])], min_events=N_EVENTS)
    many = build_event_table(
        [records([0.0] + [2.0] * 5, [100.0] + [0.0] * 5, [1] * 6)], min_events=N_EVENTS
    )
    t = np.array([[1.0, 2.0, 3.0]])
    seq = np.full(t.shape, 1e6)
    p = individual_vector(model1)[None]
    a = solve(model1, one, t, seq, p, SOLVER).y
    b = solve(model1, many, t, seq, p, SOLVER).y
    np.testing.assert_array_equal(a, b)
    g = jax.grad(lambda q: solve(model1, many, t, seq, q, SOLVER).y.sum())(jnp.asarray(p))
    assert np.all(np.isfinite(g))


def test_chunked_batches_equal_one_batch(model2, cohort_arrays):
    # 3 subjects in chunks of 2: two equal chunks, the last subject repeated as padding
    ev, t, seq, p = cohort_arrays
    whole = solve(model2, ev, t, seq, p, SOLVER)
    chunked = solve(model2, ev, t, seq, p, Solver(rtol=1e-10, atol=1e-12, batch_size=2))
    assert chunked.y.shape == whole.y.shape
    np.testing.assert_allclose(chunked.y, whole.y, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(chunked.status, whole.status)


def test_batch_size_auto_resolves_per_platform():
    s = Solver()
    assert s.batch_size == "auto"
    assert s.resolved_batch_size("cpu") == 512
    assert s.resolved_batch_size("gpu") is None
    assert Solver(batch_size=64).resolved_batch_size("gpu") == 64
    assert Solver(batch_size=None).resolved_batch_size("cpu") is None
    with pytest.raises(ValueError, match="batch_size"):
        Solver(batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        Solver(batch_size="big")


def test_dense_grid_agrees_with_sparse_grid(model2, cohort_arrays):
    # Each interval starts from the previous interval's mean step (not a fresh guess): a dense
    # grid of stops must give the same states at shared times, to the solver's tolerance.
    ev, _, _, p = cohort_arrays
    sparse = np.tile(np.linspace(0.0, 48.0, 5), (3, 1))
    dense = np.tile(np.linspace(0.0, 48.0, 193), (3, 1))
    solver = Solver(rtol=1e-8, atol=1e-10)
    a = solve(model2, ev, sparse, np.full(sparse.shape, 1e6), p, solver)
    b = solve(model2, ev, dense, np.full(dense.shape, 1e6), p, solver)
    shared = np.searchsorted(dense[0], sparse[0])
    np.testing.assert_allclose(np.asarray(b.y)[:, shared], np.asarray(a.y), rtol=1e-6, atol=1e-8)
    # A user-set first step is honoured and gives the same answer.
    c = solve(
        model2, ev, dense, np.full(dense.shape, 1e6), p, Solver(rtol=1e-8, atol=1e-10, dt0=1e-4)
    )
    np.testing.assert_allclose(np.asarray(c.y), np.asarray(b.y), rtol=1e-6, atol=1e-8)
