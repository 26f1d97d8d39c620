"""Closed form vs matrix exponential, and its numerical corner cases."""

import jax.numpy as jnp
import numpy as np
import pytest
from handmodels import individual_vector, one_cmt, two_cmt
from jax.scipy.linalg import expm

from pkpd.events import DoseRecords, build_event_table
from pkpd.solve.analytic import (
    analytic_amounts,
    analytic_supported,
    exp_divided_differences,
    rate_matrix,
    unit_responses,
)

TIMES = np.array([0.0, 0.01, 0.3, 1.0, 2.5, 10.0, 48.0, 300.0])


def reference(K, t):
    """expm and its integral from the augmented matrix [[K, I], [0, 0]]."""
    n = K.shape[0]
    aug = jnp.zeros((2 * n, 2 * n)).at[:n, :n].set(K).at[:n, n:].set(jnp.eye(n))
    big = expm(aug * t)
    return big[:n, :n], big[:n, n:]


@pytest.mark.parametrize(
    "build, overrides",
    [
        (one_cmt, {}),
        (two_cmt, {}),
        (one_cmt, {"ka": 0.1}),  # ka == CL/V: confluent
        (two_cmt, {"ka": 8.0, "Q": 0.5}),
    ],
)
def test_closed_form_matches_expm(build, overrides):
    model = build()
    p = jnp.asarray(individual_vector(model, **overrides))
    K, lam = rate_matrix(model, p)
    np.testing.assert_allclose(np.sort(np.linalg.eigvals(np.asarray(K)).real), lam, rtol=1e-10)
    phi, psi = unit_responses(K, lam, jnp.asarray(TIMES))
    for i, t in enumerate(TIMES):
        ref_phi, ref_psi = reference(K, t)
        np.testing.assert_allclose(phi[i], ref_phi, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(psi[i], ref_psi, rtol=1e-9, atol=1e-12)


def test_two_cmt_textbook_formulas():
    model = two_cmt()
    p = individual_vector(model)
    CL, V, Q, V2, ka = p[:5]
    k10, k12, k21 = CL / V, Q / V, Q / V2
    s = k10 + k12 + k21
    alpha = (s + np.sqrt(s * s - 4 * k10 * k21)) / 2
    beta = k10 * k21 / alpha
    t = TIMES
    K, lam = rate_matrix(model, jnp.asarray(p))
    phi, _ = unit_responses(K, lam, jnp.asarray(t))
    central_iv = (alpha - k21) / (alpha - beta) * np.exp(-alpha * t) + (k21 - beta) / (
        alpha - beta
    ) * np.exp(-beta * t)
    np.testing.assert_allclose(phi[:, 1, 1], central_iv, rtol=1e-12, atol=1e-300)
    oral = ka * (
        (k21 - alpha) / ((ka - alpha) * (beta - alpha)) * np.exp(-alpha * t)
        + (k21 - beta) / ((ka - beta) * (alpha - beta)) * np.exp(-beta * t)
        + (k21 - ka) / ((alpha - ka) * (beta - ka)) * np.exp(-ka * t)
    )
    np.testing.assert_allclose(phi[:, 1, 0], oral, rtol=1e-10, atol=1e-300)


def test_divided_differences_are_exact_when_confluent():
    lam = jnp.array([-0.5, -0.5])
    t = jnp.array([0.0, 1.0, 4.0])
    dd = exp_divided_differences(lam, t)
    np.testing.assert_allclose(dd[:, 1], t * np.exp(-0.5 * t), rtol=1e-14)


def test_numpy_input_and_support_check():
    model = one_cmt()
    rec = DoseRecords(
        *(np.array([v]) for v in (0.0, 100.0, 1, 0.0, 0.0, 0.0)),
        addl=np.array([0]),
        evid=np.array([1]),
        seq=np.array([2.0]),
    )
    ev = build_event_table([rec])
    t = np.array([[1.0, 2.0]])
    y = analytic_amounts(model, ev, t, np.full(t.shape, 9.0), individual_vector(model)[None])
    k = 3.0 / 30.0
    np.testing.assert_allclose(y[0, :, 1], 100 * np.exp(-k * t[0]), rtol=1e-13)
    assert analytic_supported(model) == (True, "")
    assert not analytic_supported(one_cmt(analytic=False))[0]
