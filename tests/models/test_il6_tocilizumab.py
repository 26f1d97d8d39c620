"""Nishimoto 2008: under tocilizumab serum IL-6 rises while IL-6 signalling and CRP fall.

The mechanism: occupied IL-6 receptors neither signal nor clear IL-6 (receptor-mediated
consumption blocked), so free IL-6 accumulates behind a blocked receptor.
"""

import numpy as np
import pytest
from helpers import simulate

from pkpd.data.virtual import tocilizumab_dose

TIMES = np.arange(0.0, 28.0001, 0.05)
TOC = ("tocilizumab_iv", 3.0, float(tocilizumab_dose(70.0)), 1.0 / 24.0)
CART = ("cart_iv", 0.0, 1e8, 0.0)


def signalling(sim, i: int) -> np.ndarray:
    """Peripheral IL-6 signalling (1 - RO6) I6 / (I6 + K6) of subject i from the states."""
    st = sim["state_grid"]
    k6 = float(sim["params"].sel(parameter="K6").values[i])
    i6 = st.sel(state="I6").values[i]
    return (1 - st.sel(state="RO6").values[i]) * i6 / (i6 + k6)


SCENARIOS = {"cart": [CART], "cart+toc": [CART, TOC], "toc alone": [TOC], "nothing": []}


@pytest.fixture(scope="module")
def runs(cart_il6_toc):
    # One cohort, one subject per scenario (one compiled solve).
    sim = simulate(cart_il6_toc, list(SCENARIOS.values()), TIMES, {"WT": [70.0] * 4})
    return {name: (sim, i) for i, name in enumerate(SCENARIOS)}


def grid(run, endpoint: str) -> np.ndarray:
    sim, i = run
    return sim["pred_grid"].sel(endpoint=endpoint).values[i]


def test_il6_rises_while_signalling_and_crp_fall_during_crs(runs):
    a, b = runs["cart"], runs["cart+toc"]
    after = (TIMES > 3.5) & (TIMES <= 10.0)
    il6_a, il6_b = grid(a, "il6")[after], grid(b, "il6")[after]
    crp_a, crp_b = grid(a, "crp")[after], grid(b, "crp")[after]
    assert np.all(il6_b > il6_a)  # serum IL-6 higher under tocilizumab
    assert il6_b.max() > 1.5 * il6_a.max()
    assert np.all(signalling(*b)[after] < 0.1 * signalling(*a)[after])  # signalling blocked
    day5 = np.searchsorted(TIMES, 5.0)
    assert (
        crp_b[np.searchsorted(TIMES[after], 5.0)] < 0.5 * crp_a[np.searchsorted(TIMES[after], 5.0)]
    )
    day14 = np.searchsorted(TIMES, 14.0)
    assert np.all(np.diff(grid(b, "crp")[day5:day14]) < 0)
    # Tocilizumab does not change CAR-T expansion (Stein 2019: Ftoci not significant).
    np.testing.assert_allclose(grid(a, "cart_blood"), grid(b, "cart_blood"), rtol=1e-6)


def test_il6_rises_without_car_t_too(runs):
    # As in RA (Nishimoto 2008): baseline IL-6 rises under tocilizumab, CRP falls to near zero.
    a, b = runs["nothing"], runs["toc alone"]
    i6_a, i6_b = grid(a, "il6"), grid(b, "il6")
    np.testing.assert_allclose(i6_a, i6_a[0], rtol=1e-8)  # baseline is a steady state
    day10 = np.searchsorted(TIMES, 10.0)
    assert i6_b[day10] > 2.0 * i6_a[day10]
    crp_b = grid(b, "crp")
    assert crp_b[day10] < 0.1 * crp_b[0]
    # Signalling stays blocked while drug is well above KD (weeks after one dose).
    day24 = np.searchsorted(TIMES, 24.0)
    assert signalling(*b)[day24] < 0.2 * signalling(*a)[day24]
