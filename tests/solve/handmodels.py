"""Hand-written CompiledModels from plain JAX functions (no dependency on pkpd.model).

Parameters are in hours, litres and milligrams. Every model has a depot (oral route, with lag
``tlag`` and bioavailability ``F``) and an IV route into the central compartment, so one model
covers bolus, infusion and oral dosing.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pkpd.model.compiled import AnalyticSpec, CompiledModel  # noqa: E402


def _individual_factory(names, iiv, cov_effects):
    """individual(theta, eta, cov): log-normal IIV and power covariate effects."""
    iiv_idx = [names.index(n) for n in iiv]

    def individual(theta, eta, cov):
        theta = jnp.asarray(theta, dtype=jnp.float64)
        p = theta
        if iiv_idx:
            p = p.at[jnp.array(iiv_idx)].multiply(jnp.exp(jnp.asarray(eta)))
        for pname, (ci, expo, ref) in cov_effects.items():
            i = names.index(pname)
            p = p.at[i].multiply((cov[ci] / ref) ** expo)
        return jnp.concatenate([p, jnp.asarray(cov, dtype=jnp.float64)])

    return individual


def one_cmt(analytic: bool = True, time_unit: str = "h") -> CompiledModel:
    """1-compartment, first-order absorption (depot, central); covariate WT (default 70)."""
    names = ("CL", "V", "ka", "tlag", "F")
    CL, V, KA, TLAG, F = range(5)

    def rhs(t, y, p):
        return jnp.stack([-p[KA] * y[0], p[KA] * y[0] - p[CL] / p[V] * y[1]])

    return CompiledModel(
        name="hand_1cmt",
        time_unit=time_unit,
        states=("depot", "central"),
        state_units=("mg", "mg"),
        parameters=names,
        parameter_units=("L/h", "L", "1/h", "h", "1"),
        covariates=("WT",),
        covariate_units=("kg",),
        covariate_defaults=(70.0,),
        endpoints=("conc",),
        endpoint_units=("mg/L",),
        endpoint_dvid=(1,),
        typical_values=np.array([3.0, 30.0, 1.2, 0.5, 0.8]),
        iiv=("CL", "V"),
        rhs=rhs,
        initial=lambda p: jnp.zeros(2, dtype=jnp.float64) * p[0],
        observe=lambda t, y, p: jnp.stack([y[1] / p[V]]),
        individual=_individual_factory(names, ("CL", "V"), {"CL": (0, 0.75, 70.0)}),
        dose_lag=lambda p: jnp.stack([p[TLAG], 0.0 * p[TLAG]]),
        dose_bioavailability=lambda p: jnp.stack([p[F], 1.0 + 0.0 * p[F]]),
        dose_scale=lambda p: jnp.ones(2, dtype=jnp.float64),
        dose_targets={"oral": 0, "iv": 1},
        analytic=AnalyticSpec("1cmt", {"CL": "CL", "V": "V", "ka": "ka"}, "central", "depot")
        if analytic
        else None,
    )


def two_cmt(analytic: bool = True) -> CompiledModel:
    """2-compartment, first-order absorption (depot, central, peripheral); no covariates."""
    names = ("CL", "V", "Q", "V2", "ka", "tlag", "F")
    CL, V, Q, V2, KA, TLAG, F = range(7)

    def rhs(t, y, p):
        k10, k12, k21 = p[CL] / p[V], p[Q] / p[V], p[Q] / p[V2]
        return jnp.stack(
            [
                -p[KA] * y[0],
                p[KA] * y[0] - (k10 + k12) * y[1] + k21 * y[2],
                k12 * y[1] - k21 * y[2],
            ]
        )

    return CompiledModel(
        name="hand_2cmt",
        time_unit="h",
        states=("depot", "central", "periph"),
        state_units=("mg", "mg", "mg"),
        parameters=names,
        parameter_units=("L/h", "L", "L/h", "L", "1/h", "h", "1"),
        covariates=(),
        covariate_units=(),
        covariate_defaults=(),
        endpoints=("conc", "periph_conc"),
        endpoint_units=("mg/L", "mg/L"),
        endpoint_dvid=(1, 2),
        typical_values=np.array([4.0, 25.0, 6.0, 60.0, 0.9, 0.25, 0.7]),
        iiv=("CL", "V", "ka"),
        rhs=rhs,
        initial=lambda p: jnp.zeros(3, dtype=jnp.float64) * p[0],
        observe=lambda t, y, p: jnp.stack([y[1] / p[V], y[2] / p[V2]]),
        individual=_individual_factory(names, ("CL", "V", "ka"), {}),
        dose_lag=lambda p: jnp.stack([p[TLAG], 0.0 * p[TLAG], 0.0 * p[TLAG]]),
        dose_bioavailability=lambda p: jnp.stack([p[F], 1.0 + 0.0 * p[F], 1.0 + 0.0 * p[F]]),
        dose_scale=lambda p: jnp.ones(3, dtype=jnp.float64),
        dose_targets={"oral": 0, "iv": 1},
        analytic=AnalyticSpec(
            "2cmt",
            {"CL": "CL", "V": "V", "Q": "Q", "V2": "V2", "ka": "ka"},
            "central",
            "depot",
            "periph",
        )
        if analytic
        else None,
    )


def blowup() -> CompiledModel:
    """dy/dt = a * y^2 from y0 = 1: finite-time blow-up at t = 1/a."""
    return CompiledModel(
        name="blowup",
        time_unit="h",
        states=("y",),
        state_units=("1",),
        parameters=("a",),
        parameter_units=("1/h",),
        covariates=(),
        covariate_units=(),
        covariate_defaults=(),
        endpoints=("y",),
        endpoint_units=("1",),
        endpoint_dvid=(1,),
        typical_values=np.array([1.0]),
        iiv=(),
        rhs=lambda t, y, p: p[0] * y**2,
        initial=lambda p: jnp.ones(1, dtype=jnp.float64) + 0.0 * p[0],
        observe=lambda t, y, p: y,
        individual=lambda theta, eta, cov: jnp.asarray(theta, dtype=jnp.float64),
        dose_lag=lambda p: jnp.zeros(1, dtype=jnp.float64),
        dose_bioavailability=lambda p: jnp.ones(1, dtype=jnp.float64),
        dose_scale=lambda p: jnp.ones(1, dtype=jnp.float64),
        dose_targets={"bolus": 0},
    )


def individual_vector(model: CompiledModel, **values) -> np.ndarray:
    """Typical values with overrides, followed by default covariates."""
    p = np.array(model.typical_values, dtype=float)
    for k, v in values.items():
        p[model.parameter_index(k)] = v
    return np.concatenate([p, np.array(model.covariate_defaults, dtype=float)])


class FakeCohort:
    """Minimal stand-in for `pkpd.data.Cohort` (the contract's solver-facing API)."""

    def __init__(self, ds, time_unit=None, source="fake.csv"):
        self.ds = ds
        self.ds.attrs.setdefault("source", source)
        self.ds.attrs["time_unit"] = time_unit

    @property
    def subjects(self):
        return self.ds["subject"].values.copy()

    @property
    def n_subjects(self):
        return int(self.ds.sizes["subject"])

    @property
    def source(self):
        return str(self.ds.attrs.get("source", ""))

    @property
    def time_unit(self):
        return self.ds.attrs.get("time_unit")

    @property
    def covariate_names(self):
        return list(self.ds.attrs.get("covariates", []))


def make_cohort(df, time_unit=None, covariates=(), source="fake.csv"):
    """Build a contract-shaped Cohort from a NONMEM-style DataFrame (line = row + 2)."""
    import pandas as pd
    import xarray as xr

    df = df.copy()
    df.columns = [c.upper() for c in df.columns]
    df["LINE"] = np.arange(2, len(df) + 2)
    for col, default in (
        ("EVID", 0),
        ("AMT", 0.0),
        ("RATE", 0.0),
        ("DUR", 0.0),
        ("II", 0.0),
        ("ADDL", 0),
        ("DV", np.nan),
    ):
        if col not in df:
            df[col] = default
        elif col != "DV":
            df[col] = df[col].fillna(default)
    has_cmt, has_dvid = "CMT" in df, "DVID" in df
    ids = list(pd.unique(df["ID"]))
    obs_rows = [df[(df.ID == i) & df.EVID.isin([0, 2])] for i in ids]
    dose_rows = [df[(df.ID == i) & df.EVID.isin([1, 3, 4])] for i in ids]
    no, nd = max([len(o) for o in obs_rows] + [1]), max([len(d) for d in dose_rows] + [1])
    n = len(ids)

    def pad(frames, col, m, fill, dtype=float):
        out = np.full((n, m), fill, dtype=dtype)
        for i, f in enumerate(frames):
            out[i, : len(f)] = f[col].to_numpy()
        return out

    def textual(col):
        return col in df and not pd.api.types.is_numeric_dtype(df[col])

    cmt_obj = object if textual("CMT") else int
    dvid_obj = object if textual("DVID") else int
    if not has_cmt:
        df["CMT"] = -1
    if not has_dvid:
        df["DVID"] = 1
    obs_rows = [df.loc[o.index] for o in obs_rows]
    dose_rows = [df.loc[d.index] for d in dose_rows]
    cfill = "" if cmt_obj is object else -1
    data = {
        "obs_time": (("subject", "obs"), pad(obs_rows, "TIME", no, np.nan)),
        "obs_dv": (("subject", "obs"), pad(obs_rows, "DV", no, np.nan)),
        "obs_mdv": (("subject", "obs"), pad(obs_rows, "DV", no, 1).astype(bool)),
        "obs_dvid": (
            ("subject", "obs"),
            pad(obs_rows, "DVID", no, 1 if dvid_obj is int else "", dvid_obj),
        ),
        "obs_cmt": (("subject", "obs"), pad(obs_rows, "CMT", no, cfill, cmt_obj)),
        "obs_cens": (("subject", "obs"), np.zeros((n, no), np.int8)),
        "obs_limit": (("subject", "obs"), np.full((n, no), np.nan)),
        "obs_line": (("subject", "obs"), pad(obs_rows, "LINE", no, -1, int)),
        "obs_mask": (("subject", "obs"), pad(obs_rows, "LINE", no, -1, int) >= 0),
        "dose_time": (("subject", "dose"), pad(dose_rows, "TIME", nd, 0.0)),
        "dose_amt": (("subject", "dose"), pad(dose_rows, "AMT", nd, 0.0)),
        "dose_rate": (("subject", "dose"), pad(dose_rows, "RATE", nd, 0.0)),
        "dose_dur": (("subject", "dose"), pad(dose_rows, "DUR", nd, 0.0)),
        "dose_ii": (("subject", "dose"), pad(dose_rows, "II", nd, 0.0)),
        "dose_addl": (("subject", "dose"), pad(dose_rows, "ADDL", nd, 0, int)),
        "dose_cmt": (("subject", "dose"), pad(dose_rows, "CMT", nd, cfill, cmt_obj)),
        "dose_evid": (("subject", "dose"), pad(dose_rows, "EVID", nd, 1, int)),
        "dose_line": (("subject", "dose"), pad(dose_rows, "LINE", nd, -1, int)),
        "dose_mask": (("subject", "dose"), pad(dose_rows, "LINE", nd, -1, int) >= 0),
        "rec_line": (("subject", "record"), np.zeros((n, 1), int)),
        "rec_mask": (("subject", "record"), np.zeros((n, 1), bool)),
    }
    for cov in covariates:
        first = [df[df.ID == i][cov].dropna() for i in ids]
        data[f"cov_{cov}"] = ("subject", np.array([f.iloc[0] if len(f) else np.nan for f in first]))
    cols = [c for c in df.columns if c != "LINE"]
    if not has_cmt:
        cols.remove("CMT")
    if not has_dvid:
        cols.remove("DVID")
    ds = xr.Dataset(
        data,
        coords={"subject": np.array(ids)},
        attrs={"source": source, "columns": cols, "covariates": list(covariates)},
    )
    return FakeCohort(ds, time_unit=time_unit, source=source)
