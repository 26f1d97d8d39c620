"""CAR-T kinetics: the typical curve has Stein 2019's multiphasic features; Stein as a special case.

Stein 2019 (tisagenlecleucel, Table 1): doubling 0.78 d, Tmax 9.3 d, foldx 3900, initial decline
half-life 4.3 d, terminal ~220 d, FB 0.0079.
"""

import numpy as np
import pytest
from helpers import log_slope_half_life, simulate

TIMES = np.concatenate([np.arange(0.0, 30.0, 0.05), np.arange(30.0, 180.01, 0.5)])
DOSE = [("cart_iv", 0.0, 1e8, 0.0)]


@pytest.fixture(scope="module")
def typical(cart_kinetics):
    sim = simulate(cart_kinetics, DOSE, TIMES)
    return sim["pred_grid"].sel(endpoint="cart_blood").values[0]


def features(c: np.ndarray) -> dict:
    i = int(np.argmax(c))
    tmax = TIMES[i]
    return {
        "doubling": log_slope_half_life(TIMES, 1 / c, 1.0, 4.0),
        "tmax": tmax,
        "fold": c[i] / c[0],
        "decline": log_slope_half_life(TIMES, c, tmax + 3.0, tmax + 14.0),
        "terminal": log_slope_half_life(TIMES, c, 120.0, 180.0),
    }


def test_typical_curve_has_stein_features(typical):
    f = features(typical)
    # Measured with the library's typical values: doubling 0.78 d, Tmax 10.8 d, fold ~2300,
    # decline t1/2 ~4.5 d, terminal ~220 d.
    assert 0.65 <= f["doubling"] <= 0.95
    assert 7.0 <= f["tmax"] <= 14.0
    assert 1e3 <= f["fold"] <= 1e4
    assert 3.0 <= f["decline"] <= 5.5
    assert 150.0 <= f["terminal"] <= 300.0


def test_blood_counts_at_infusion_and_persistence(typical):
    # Kimmel 2021: ~0.36 cells/uL right after infusion (axi-cel); here 1e8 cells / 500 L.
    assert typical[0] == pytest.approx(0.2, rel=1e-6)
    # Memory phase: FB x Cmax persists (Stein: C ~ FB Cmax exp(-beta t)).
    i = np.argmax(typical)
    late = typical[np.searchsorted(TIMES, 180.0)]
    assert 0.3 * 0.0079 * typical[i] < late < 1.5 * 0.0079 * typical[i]


def test_tumour_burden_drives_expansion_more_than_dose(cart_kinetics):
    # Awasthi 2020 / Singh 2021: baseline tumour burden matters more than dose for exposure.
    base = simulate(cart_kinetics, DOSE, TIMES, {"TUMOR": [94.86]})
    cmax0 = base["pred_grid"].sel(endpoint="cart_blood").values[0].max()
    more_tumour = simulate(cart_kinetics, DOSE, TIMES, {"TUMOR": [10 * 94.86]})
    more_dose = simulate(cart_kinetics, [("cart_iv", 0.0, 1e9, 0.0)], TIMES, {"TUMOR": [94.86]})
    cmax_t = more_tumour["pred_grid"].sel(endpoint="cart_blood").values[0].max()
    cmax_d = more_dose["pred_grid"].sel(endpoint="cart_blood").values[0].max()
    assert cmax_t / cmax0 > 2.0 * (cmax_d / cmax0)
    assert cmax_d / cmax0 < 2.0  # a 10x dose changes the peak less than 2x


def test_stein_model_is_the_abrupt_antigen_loss_limit(cart_kinetics):
    # Very fast killing once CAR-T cells reach k_E and a tiny K_B make g a step at Tmax; then
    # C = C0 exp(rho t) before Tmax and (1-FB) Cmax e^{-alpha tau} + FB Cmax e^{-beta tau} after.
    params = {"gamma_B": 500.0, "K_B": 1e-6, "k_E": 200.0, "r_B": 0.0}
    sim = simulate(cart_kinetics, DOSE, TIMES, params=params)
    c = sim["pred_grid"].sel(endpoint="cart_blood").values[0]
    p = {n: float(v) for n, v in zip(sim["parameter"].values, sim["params"].values[0], strict=True)}
    i = int(np.argmax(c))
    tmax, cmax = TIMES[i], c[i]
    before = TIMES < tmax - 0.5
    np.testing.assert_allclose(c[before], c[0] * np.exp(p["rho"] * TIMES[before]), rtol=2e-3)
    tau = TIMES[TIMES > tmax + 0.5] - tmax
    stein = (1 - p["FB"]) * cmax * np.exp(-p["alpha"] * tau) + p["FB"] * cmax * np.exp(
        -p["beta"] * tau
    )
    np.testing.assert_allclose(c[TIMES > tmax + 0.5], stein, rtol=0.03)
