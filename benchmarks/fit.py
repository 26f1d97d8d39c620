"""Speed benchmark of hierarchical ODE fitting (issue #3): pkpd, PyMC's pm.ode, Stan.

One hierarchical ODE model and one simulated dataset, fitted in one run by

- **pkpd**: `pkpd.inference.fit` on ``benchmarks/models/tbi.toml`` (nutpie, JAX, diffrax);
- **pkpd_lowrank**: the same with nutpie's low-rank modified mass matrix
  (``sampler_kwargs={"low_rank_modified_mass_matrix": True}``); **pkpd_lowrank_ta90**: that
  with target acceptance 0.9 (fewer divergences, longer trajectories); **pkpd_lowrank_ta95**: 0.95;
  **pkpd_centred**: the defaults with centred random effects (``phi ~ Normal(typical, omega)``; its
  diagnostics use ``z = eta / omega``, like the other rows); **pkpd_centred_rho**: rho_i centred,
  kappa_i not;
- **pymc_ode**: PyMC's NUTS on the same model written with `pymc.ode.DifferentialEquation`
  (scipy ``odeint`` with forward sensitivities), capped at ``--cap-seconds`` of sampling: when
  the cap stops it, the cost of the full run is extrapolated and the table says so;
- **stan**: the same model in Stan (``benchmarks/models/tbi.stan``, ``ode_rk45_tol``) through
  PyStan 3 (``pip install pystan``, or the ``bench`` extra: ``pip install -e ".[bench]"``).

The model (``tbi``): 20 subjects, 12 samples each on days 1-28 of log T and log I,

    dT/dt = rho_i T B/(B+K) - delta T,   dB/dt = -kappa_i T B,   dI/dt = s T B/(B+K) - kel I,

T(0) = 1 cell/uL (the infused dose), B(0) = 1 (target burden relative to baseline), I(0) = I0;
log-normal, non-centred rho_i and kappa_i; 51 free parameters (7 typical values, 2 IIV SDs, 2
residual SDs, 40 standard-normal random effects). Priors are those of the model file, used by
all backends. pkpd and Stan use rtol 1e-6, atol 1e-14 (pkpd's fitting default) and a budget of
4096 steps per interval between samples; pm.ode's odeint has fixed tolerances (1.49e-8). Every
backend starts its chains at the prior medians (z = 0) with uniform(-1, 1) jitter on the
unconstrained scale, and runs ``--chains`` chains of ``--tune`` warm-up and ``--draws`` kept
iterations, two chains at a time (the machine's 2 cores).

Reported for each: compile time, sampling wall time, min bulk ESS and min bulk ESS per second
of sampling, max R-hat and min tail ESS (over the 51 free parameters), divergences, mean tree
depth, step size and leapfrog steps per draw, and the cost of one log-density gradient; then the
truth against each backend's posterior medians.

    python benchmarks/fit.py                                   # all three, prints the tables
    python benchmarks/fit.py --only pkpd --chains 4 --draws 500 --tune 500
    python benchmarks/fit.py --write                           # append to benchmarks/RESULTS.md

The backends run one after the other in child processes (``--worker``), so that each has the
machine's two cores to itself and one's imports (JAX threads, PyMC's worker processes) do not
disturb another's timing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL_FILE = ROOT / "benchmarks" / "models" / "tbi.toml"
STAN_FILE = ROOT / "benchmarks" / "models" / "tbi.stan"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

N_SUBJECTS = 20
TIMES = (1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 9.0, 11.0, 14.0, 18.0, 22.0, 28.0)  # days
DOSE = 1.0  # T(0), cells/uL
TYPICAL = ("rho", "kappa", "delta", "K", "s", "kel", "I0")
#: True values of the simulated study (typical values, residual SDs) and IIV SDs.
TRUTH = {
    "rho": 1.2,
    "kappa": 0.01,
    "delta": 0.3,
    "K": 0.2,
    "s": 5.0,
    "kel": 1.0,
    "I0": 5.0,
    "sigma_T": 0.25,
    "sigma_I": 0.3,
}
OMEGA = {"rho": 0.2, "kappa": 0.5}
#: Seed of the simulated dataset (chosen before any fit, never changed).
DATA_SEED = 20261124
#: ODE tolerances of every backend: pkpd's defaults for fitting (`pkpd.inference.default_solver`).
RTOL, ATOL = 1e-6, 1e-14
#: Step budget per interval between two sampling times (pkpd's default; odeint's ``mxstep``);
#: Stan's ``max_num_steps`` counts the steps of a whole solve: 12 intervals of this.
MAX_STEPS = 4096
#: pkpd rows: sampler options (``target_accept`` goes to `pkpd.inference.fit`, the rest to
#: nutpie through ``sampler_kwargs``).
PKPD_VARIANTS = {
    "pkpd": {},
    "pkpd_lowrank": {"low_rank_modified_mass_matrix": True},
    # the low-rank metric diverged 50 times at the default 0.8 (2026-11-23 09:18 entry)
    "pkpd_lowrank_ta90": {"low_rank_modified_mass_matrix": True, "target_accept": 0.9},
    "pkpd_lowrank_ta95": {"low_rank_modified_mass_matrix": True, "target_accept": 0.95},
    # eta ~ Normal(0, omega) itself: 12 informative samples per subject pin rho_i and kappa_i
    # down, where the non-centred z and omega_rho form a funnel-like correlation (docs/inference.md)
    "pkpd_centred": {"iiv_parameterization": "centered"},
    # rho_i only: kappa_i is the less informed of the two
    "pkpd_centred_rho": {"iiv_parameterization": {"rho": "centered"}},
}
BACKENDS = (*PKPD_VARIANTS, "pymc_ode", "stan")
#: The 51 free parameters: diagnostics are computed over these, for every backend.
FREE = (*[f"log_{n}" for n in TYPICAL], "omega_rho", "omega_kappa", "sigma_T", "sigma_I", "z")


# --------------------------------------------------------------------------------------------
# the model and the data, shared by the backends


def tbi_rhs(y, t, p):
    """Right-hand side of the T/B/I model, ``y = (T, B, I)``, ``p = (rho, kappa, delta, K, s,
    kel)``; works on numpy arrays and PyTensor tensors alike (the function given to pm.ode)."""
    T, B, I = y[0], y[1], y[2]
    g = B / (B + p[3])
    return [p[0] * T * g - p[2] * T, -p[1] * T * B, p[4] * T * g - p[5] * I]


def design(n_subjects: int = N_SUBJECTS):
    """The study design: a dose into T at day 0, then log T and log I at each of `TIMES`."""
    import pandas as pd

    rows = []
    for i in range(1, n_subjects + 1):
        rows.append(
            {
                "ID": i,
                "TIME": 0.0,
                "AMT": DOSE,
                "DV": np.nan,
                "EVID": 1,
                "MDV": 1,
                "CMT": 1,
                "DVID": np.nan,
            }
        )
        for t in TIMES:
            for dvid in (1, 2):
                rows.append(
                    {
                        "ID": i,
                        "TIME": t,
                        "AMT": np.nan,
                        "DV": 0.0,
                        "EVID": 0,
                        "MDV": 0,
                        "CMT": np.nan,
                        "DVID": dvid,
                    }
                )
    return pd.DataFrame(rows)


def load_spec():
    """The pkpd model."""
    import pkpd

    return pkpd.load_model(MODEL_FILE)


def simulate_data(seed: int = DATA_SEED) -> dict:
    """Simulate the study (pkpd's engine at rtol 1e-10) from `TRUTH` and `OMEGA`.

    Returns a dict with the ``cohort`` (pkpd), ``log_T`` and ``log_I`` (``(N, M)`` arrays, the
    same numbers for every backend), the true ``eta`` and the priors read from the model file.
    """
    from pkpd.inference.synthetic import simulate_study

    spec = load_spec()
    cohort, truth = simulate_study(spec, design(), TRUTH, omega=OMEGA, seed=seed, time_unit="day")
    df = cohort.to_dataframe()
    obs = df[(df["EVID"] == 0) & (df["MDV"] == 0)].sort_values(["ID", "TIME", "DVID"])
    dv = obs["DV"].to_numpy(dtype=float).reshape(N_SUBJECTS, len(TIMES), 2)
    return {
        "cohort": cohort,
        "spec": spec,
        "log_T": np.log(dv[:, :, 0]),
        "log_I": np.log(dv[:, :, 1]),
        "eta": truth["eta"],
        "priors": priors(spec),
    }


def priors(spec) -> dict:
    """Log-scale normal priors of the typical values and half-normal scales, from the file."""
    out = {}
    for n in TYPICAL:
        p = spec.parameters[n].prior
        assert p.family == "LogNormal", n
        out[f"log_{n}"] = (float(p.params["mu"]), float(p.params["sigma"]))
    for n in ("rho", "kappa"):
        p = spec.parameters[n].iiv
        assert p.family == "HalfNormal", n
        out[f"omega_{n}"] = float(p.params["sigma"])
    for n in ("sigma_T", "sigma_I"):
        p = spec.parameters[n].prior
        assert p.family == "HalfNormal", n
        out[n] = float(p.params["sigma"])
    return out


def prior_medians(pri: dict) -> dict:
    """The prior medians (z = 0), on the constrained scale."""
    point = {f"log_{n}": pri[f"log_{n}"][0] for n in TYPICAL}
    for n in ("omega_rho", "omega_kappa", "sigma_T", "sigma_I"):
        point[n] = pri[n] * 0.6744897501960817  # median of HalfNormal(s)
    point["z"] = np.zeros((N_SUBJECTS, 2))
    return point


def initial_points(pri: dict, chains: int, seed: int) -> list[dict]:
    """Per-chain starts: prior medians plus uniform(-1, 1) on the unconstrained scale (what
    pkpd's ``init="prior"`` and PyMC's ``jitter+adapt_diag`` do), constrained scale."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(chains):
        point = {}
        for name, value in prior_medians(pri).items():
            jitter = rng.uniform(-1, 1, size=np.shape(value))
            if name.startswith(("omega_", "sigma_")):  # log-transformed
                point[name] = float(value * np.exp(jitter))
            elif name == "z":
                point[name] = value + jitter
            else:
                point[name] = float(value + jitter)
        out.append(point)
    return out


def save_data(data: dict, path: Path) -> None:
    """Write what the pm.ode and Stan workers need (they do not import pkpd)."""
    np.savez(path, log_T=data["log_T"], log_I=data["log_I"], eta=data["eta"])
    Path(str(path) + ".json").write_text(json.dumps(data["priors"]))


def load_data(path: Path) -> dict:
    """Read what `save_data` wrote."""
    with np.load(path) as f:
        out = {k: f[k] for k in ("log_T", "log_I", "eta")}
    out["priors"] = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in json.loads(Path(str(path) + ".json").read_text()).items()
    }
    return out


# --------------------------------------------------------------------------------------------
# diagnostics, common to the backends


def diagnose(posterior: dict, sample_stats: dict) -> dict:
    """Diagnostics over the free parameters.

    ``posterior``: name -> array ``(chain, draw, ...)``; ``sample_stats``: ``diverging``,
    ``depth``, ``step_size``, ``n_steps`` -> ``(chain, draw)`` (post warm-up).
    """
    import arviz as az

    ds = az.convert_to_inference_data({k: posterior[k] for k in FREE}).posterior
    ess = az.ess(ds, method="bulk")
    ess_tail = az.ess(ds, method="tail")
    rhat = az.rhat(ds)

    def minmax(d, f):
        return float(f([float(f(d[v].values)) for v in d.data_vars]))

    st = {k: np.asarray(v, dtype=float) for k, v in sample_stats.items() if v is not None}
    return {
        "ess_bulk_min": minmax(ess, np.min),
        "ess_tail_min": minmax(ess_tail, np.min),
        "rhat_max": minmax(rhat, np.max),
        "divergences": int(st["diverging"].sum()) if "diverging" in st else -1,
        "mean_depth": float(st["depth"].mean()) if "depth" in st else float("nan"),
        "mean_step_size": float(st["step_size"].mean()) if "step_size" in st else float("nan"),
        "mean_leapfrog": float(st["n_steps"].mean()) if "n_steps" in st else float("nan"),
        "draws": int(np.asarray(posterior["z"]).shape[1]),
        "chains": int(np.asarray(posterior["z"]).shape[0]),
    }


def medians(posterior: dict) -> dict:
    """Posterior medians of the typical values (natural scale), IIV and residual SDs."""
    out = {n: float(np.exp(np.median(posterior[f"log_{n}"]))) for n in TYPICAL}
    for n in ("omega_rho", "omega_kappa", "sigma_T", "sigma_I"):
        out[n] = float(np.median(posterior[n]))
    return out


# --------------------------------------------------------------------------------------------
# backends


def run_pkpd(args, data, variant: str = "pkpd") -> dict:
    """`pkpd.inference.fit` with its defaults (nutpie, Tsit5 rtol 1e-6 atol 1e-14, forward
    sensitivities), timed; plus the cost of one log-density gradient measured directly.

    ``variant`` names a row of `PKPD_VARIANTS`: the same fit with extra nutpie options.
    """
    sampler_kwargs = dict(PKPD_VARIANTS[variant])
    target_accept = sampler_kwargs.pop("target_accept", 0.8)
    parameterization = sampler_kwargs.pop("iiv_parameterization", "noncentered")
    import jax
    import jax.numpy as jnp

    from pkpd.inference import build_model, fit

    t0 = time.perf_counter()
    result = fit(
        data["spec"],
        data["cohort"],
        chains=args.chains,
        draws=args.draws,
        tune=args.tune,
        seed=args.seed,
        progressbar=False,
        log_likelihood_group=False,
        target_accept=target_accept,
        sampler_kwargs=sampler_kwargs,
        iiv_parameterization=parameterization,
    )
    solver = result.info.solver  # pkpd's default: Tsit5, rtol 1e-6, atol 1e-14
    assert (solver.rtol, solver.atol, solver.max_steps) == (RTOL, ATOL, MAX_STEPS), solver
    total = time.perf_counter() - t0
    wall = result.settings.wall_time
    attrs = result.idata.sample_stats.attrs
    compile_s = float(attrs.get("pkpd_compile_s", np.nan))
    sample_s = wall["sample"] - (compile_s if np.isfinite(compile_s) else 0.0)
    post = result.idata.posterior
    if parameterization != "noncentered":  # z = eta / omega: a function of the draws, as for
        # the other rows (mixed, the sampled z holds the non-centred columns only)
        omega = np.stack(
            [post[f"omega_{n}"].values for n in post["eta"].coords["iiv"].values], axis=-1
        )
        post = post.drop_vars(["z", "iiv_noncentered"], errors="ignore").assign(
            z=(post["eta"].dims, post["eta"].values / omega[:, :, None, :])
        )
    posterior = {k: post[k].values for k in FREE}
    stats = result.idata.sample_stats
    sample_stats = {
        k: stats[k].values if k in stats else None
        for k in ("diverging", "depth", "step_size", "n_steps")
    }

    # One log-density + gradient, as nutpie calls it (jitted JAX, value_and_grad).
    pm_model, _ = build_model(
        data["spec"], data["cohort"], solver=solver, iiv_parameterization=parameterization
    )
    f, names = flat_logp(pm_model)

    # At posterior draws (the cost depends on where the sampler is).
    flat = []
    for c in range(2):
        for d in range(0, args.draws, max(1, args.draws // 5)):
            flat.append(np.concatenate([np.ravel(_unconstrained(post, n, c, d)) for n in names]))
    grad_ms = time_gradient(jax.jit(jax.value_and_grad(f)), [jnp.asarray(x) for x in flat])
    return {
        "backend": variant,
        "method": f"nutpie {_version('nutpie')} (JAX"
        + (", low-rank modified mass matrix" if sampler_kwargs else ", diagonal mass matrix")
        + f", target acceptance {target_accept:g}"
        + (
            ", centred random effects"
            if parameterization == "centered"
            else f", centred {', '.join(parameterization)}"
            if isinstance(parameterization, dict)
            else ""
        )
        + "), Tsit5 (diffrax tableau, stages unrolled), forward sensitivities",
        "tolerances": f"rtol {RTOL:g}, atol {ATOL:g}",
        "compile_s": compile_s + wall.get("build", 0.0),
        "sample_s": sample_s,
        "total_s": total,
        "grad_ms": grad_ms,
        "capped": False,
        **diagnose(posterior, sample_stats),
        "medians": medians(posterior),
    }


def flat_logp(pm_model):
    """pkpd's log-density as nutpie's JAX backend calls it: one function of the flat vector of
    unconstrained value variables (`pkpd.inference.sample._flat_fn`), and the variables' names."""
    import jax.numpy as jnp

    from pkpd.inference.sample import _flat_fn

    fn, names, shapes = _flat_fn(pm_model)
    splits = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]

    def f(x):
        parts = jnp.split(x, splits)
        return fn(*[p.reshape(s) for p, s in zip(parts, shapes, strict=True)])[0]

    return f, names


def _unconstrained(post, name: str, chain: int, draw: int) -> np.ndarray:
    """A value variable of pkpd's model (``x_log__`` is log x) at one posterior draw."""
    if name.endswith("_log__"):
        return np.log(post[name[: -len("_log__")]].values[chain, draw])
    return post[name].values[chain, draw]


def time_gradient(fn, points, repeats: int = 3) -> float:
    """Median milliseconds of ``fn(x)`` over ``points`` (after one compiling call)."""
    import jax

    jax.block_until_ready(fn(points[0]))
    times = []
    for _ in range(repeats):
        for x in points:
            t0 = time.perf_counter()
            jax.block_until_ready(fn(x))
            times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def pymc_ode_model(data):
    """The model in PyMC with `pymc.ode.DifferentialEquation` (one ODE op per subject)."""
    import pymc as pm
    import pytensor.tensor as pt
    import scipy.integrate

    class DifferentialEquation(pm.ode.DifferentialEquation):
        """pm.ode with the benchmark's tolerances (pm.ode calls scipy's odeint at its default
        rtol = atol = 1.49e-8 and offers no option to change them)."""

        def _simulate(self, y0, theta):
            s0 = np.concatenate([y0, self._sens_ic])
            sol = scipy.integrate.odeint(
                func=self._system,
                y0=s0,
                t=self._augmented_times,
                args=(np.concatenate([y0, theta]),),
                rtol=RTOL,
                atol=ATOL,
                mxstep=MAX_STEPS,
            )
            y = sol[1:, : self.n_states]
            sens = sol[1:, self.n_states :].reshape(self.n_times, self.n_states, self.n_p)
            return y, sens

    pri = data["priors"]
    ode = DifferentialEquation(func=tbi_rhs, times=TIMES, n_states=3, n_theta=6, t0=0)
    coords = {"subject": np.arange(N_SUBJECTS), "iiv": ["rho", "kappa"]}
    with pm.Model(coords=coords) as model:
        lv = {n: pm.Normal(f"log_{n}", *pri[f"log_{n}"]) for n in TYPICAL}
        omega_rho = pm.HalfNormal("omega_rho", pri["omega_rho"])
        omega_kappa = pm.HalfNormal("omega_kappa", pri["omega_kappa"])
        sigma_T = pm.HalfNormal("sigma_T", pri["sigma_T"])
        sigma_I = pm.HalfNormal("sigma_I", pri["sigma_I"])
        z = pm.Normal("z", 0.0, 1.0, dims=("subject", "iiv"))
        rho_i = pt.exp(lv["rho"] + omega_rho * z[:, 0])
        kappa_i = pt.exp(lv["kappa"] + omega_kappa * z[:, 1])
        rest = [pt.exp(lv[n]) for n in ("delta", "K", "s", "kel")]
        y0 = pt.stack([pt.constant(DOSE), pt.constant(1.0), pt.exp(lv["I0"])])
        sols = [
            ode(y0=y0, theta=pt.stack([rho_i[i], kappa_i[i], *rest])) for i in range(N_SUBJECTS)
        ]
        log_t = pt.log(pt.stack([s[:, 0] for s in sols]))
        log_i = pt.log(pt.stack([s[:, 2] for s in sols]))
        pm.Normal("obs_T", mu=log_t, sigma=sigma_T, observed=data["log_T"])
        pm.Normal("obs_I", mu=log_i, sigma=sigma_I, observed=data["log_I"])
    return model


def run_pymc_ode(args, data) -> dict:
    """PyMC's NUTS on the pm.ode model, stopped after ``--cap-seconds`` of sampling."""
    import pymc as pm

    model = pymc_ode_model(data)
    t0 = time.perf_counter()
    fn = model.logp_dlogp_function(ravel_inputs=True)
    fn.set_extra_values({})
    compile_s = time.perf_counter() - t0
    x0 = model.initial_point()
    x = np.concatenate([np.ravel(x0[v.name]) for v in fn._grad_vars])
    times = []
    rng = np.random.default_rng(0)
    for _ in range(5):
        t1 = time.perf_counter()
        fn(x + rng.uniform(-0.3, 0.3, x.size))
        times.append(time.perf_counter() - t1)
    grad_ms = 1e3 * float(np.median(times))

    start = prior_medians(data["priors"])  # PyMC adds the uniform(-1, 1) jitter
    total_iter = args.chains * (args.tune + args.draws)
    progress = {"iter": 0, "leapfrog": 0, "t_first": None, "stopped": False}
    t_start = time.perf_counter()

    def callback(trace, draw):
        progress["iter"] += 1
        # PyMC's raw NUTS stats call it tree_size (n_steps only in the InferenceData); reading
        # n_steps here counted 0 gradients in the 2026-11-23 09:18 entry.
        progress["leapfrog"] += int(draw.stats[0].get("tree_size", 0))
        if time.perf_counter() - t_start > args.cap_seconds:
            progress["stopped"] = True
            raise KeyboardInterrupt

    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            idata = pm.sample(
                draws=args.draws,
                tune=args.tune,
                chains=args.chains,
                cores=2,
                random_seed=args.seed,
                initvals=start,
                init="jitter+adapt_diag",
                progressbar=False,
                callback=callback,
                compute_convergence_checks=False,
                discard_tuned_samples=True,
            )
        except ValueError:
            # Stopped during warm-up: no kept draws, PyMC cannot build a trace (the cost per
            # gradient is what the capped run is for).
            if not progress["stopped"]:
                raise
            idata = None
    sample_s = time.perf_counter() - t_start
    row = {
        "backend": "pymc_ode",
        "method": f"PyMC {pm.__version__} NUTS, pm.ode.DifferentialEquation "
        "(scipy odeint/LSODA, forward sensitivities)",
        "tolerances": f"rtol {RTOL:g}, atol {ATOL:g} (odeint)",
        "compile_s": compile_s,
        "sample_s": sample_s,
        "grad_ms": grad_ms,
        "capped": progress["stopped"],
        "iterations_done": progress["iter"],
        "iterations_total": total_iter,
        "leapfrog_done": progress["leapfrog"],
    }
    post = getattr(idata, "posterior", None)
    if post is not None and post.sizes.get("draw", 0) >= 4 and not progress["stopped"]:
        posterior = {k: post[k].values for k in FREE}
        st = idata.sample_stats
        row.update(
            diagnose(
                posterior,
                {
                    "diverging": st["diverging"].values,
                    "depth": st["tree_depth"].values,
                    "step_size": st["step_size"].values,
                    "n_steps": st["n_steps"].values,
                },
            )
        )
        row["medians"] = medians(posterior)
    return row


def stan_data(data, atol: float = ATOL) -> dict:
    """The data block of ``tbi.stan`` (``atol``: the ODE's absolute tolerance)."""
    pri = data["priors"]
    return {
        "N": N_SUBJECTS,
        "M": len(TIMES),
        "times": list(TIMES),
        "dose": DOSE,
        "log_T": data["log_T"].tolist(),
        "log_I": data["log_I"].tolist(),
        "prior_mu": [pri[f"log_{n}"][0] for n in TYPICAL],
        "prior_sd": [pri[f"log_{n}"][1] for n in TYPICAL],
        "omega_sd": pri["omega_rho"],
        "sigma_sd": pri["sigma_T"],
        "rtol": RTOL,
        "atol": atol,
        "max_num_steps": MAX_STEPS * len(TIMES),
    }


def run_stan(args, data) -> dict:
    """Stan's NUTS (diagonal mass matrix, windowed adaptation) through PyStan."""
    try:
        import stan
    except ImportError:
        return {
            "backend": "stan",
            "skipped": "PyStan is not installed (pip install pystan, or "
            "the bench extra: pip install -e '.[bench]')",
        }
    pri = data["priors"]
    assert pri["omega_rho"] == pri["omega_kappa"] and pri["sigma_T"] == pri["sigma_I"]
    code = STAN_FILE.read_text()
    t0 = time.perf_counter()
    posterior_model = stan.build(code, data=stan_data(data, args.stan_atol), random_seed=args.seed)
    compile_s = time.perf_counter() - t0
    starts = initial_points(pri, args.chains, args.seed)
    inits = [
        {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()} for s in starts
    ]
    t0 = time.perf_counter()
    fit_ = posterior_model.sample(
        num_chains=args.chains,
        num_samples=args.draws,
        num_warmup=args.tune,
        init=inits,
        save_warmup=True,
    )
    sample_s = time.perf_counter() - t0
    n_keep = args.draws
    post = {}
    for name in FREE:
        arr = np.asarray(fit_[name])  # (..., draws * chains), chain-major in the last axis
        arr = arr.reshape(*arr.shape[:-1], args.chains, args.tune + n_keep)
        arr = np.moveaxis(np.moveaxis(arr, -2, 0), -1, 1)[:, args.tune :]
        if name != "z":
            arr = arr.reshape(args.chains, n_keep)
        post[name] = arr

    def stat(name):
        a = np.asarray(fit_[name]).reshape(args.chains, args.tune + n_keep)
        return a

    leap = stat("n_leapfrog__")
    st = {
        "diverging": stat("divergent__")[:, args.tune :],
        "depth": stat("treedepth__")[:, args.tune :],
        "step_size": stat("stepsize__")[:, args.tune :],
        "n_steps": leap[:, args.tune :],
    }
    parallel = min(args.chains, 2)
    return {
        "backend": "stan",
        "method": f"Stan (httpstan {_version('httpstan')}, PyStan {_version('pystan')}) NUTS, "
        "ode_rk45_tol (Dormand-Prince, forward sensitivities)",
        "tolerances": f"rtol {RTOL:g}, atol {args.stan_atol:g}"
        + (" (a variant: not the other backends' atol)" if args.stan_atol != ATOL else ""),
        "compile_s": compile_s,
        "sample_s": sample_s,
        "grad_ms": 1e3 * sample_s * parallel / float(leap.sum()),
        "grad_ms_note": "sampling time x 2 cores / leapfrog steps (warm-up included)",
        "capped": False,
        **diagnose(post, st),
        "medians": medians(post),
        "leapfrog_total": int(leap.sum()),
    }


def profile(args) -> str:
    """Where the time of one log-density gradient goes: a markdown table.

    Every variant is the pkpd model of this benchmark (``build_model``), its log-density and
    gradient jitted as nutpie's JAX backend does (``jax.value_and_grad`` of the PyTensor graph
    in JAX), timed at 10 points: the simulation truth with the true random effects, each
    coordinate moved by up to 0.1 on the unconstrained scale (a posterior-like region).
    """
    import diffrax
    import jax
    import jax.numpy as jnp

    from pkpd.inference import build_model
    from pkpd.solve import Solver

    data = simulate_data(args.data_seed)
    spec, cohort = data["spec"], data["cohort"]
    rng = np.random.default_rng(0)

    def points(pm_model, n_sub):
        names = [v.name for v in pm_model.value_vars]
        truth = {f"log_{k}": np.log(TRUTH[k]) for k in TYPICAL}
        truth.update({f"{k}_log__": np.log(TRUTH[k]) for k in ("sigma_T", "sigma_I")})
        truth.update({f"omega_{k}_log__": np.log(v) for k, v in OMEGA.items()})
        truth["z"] = data["eta"][:n_sub] / np.array([OMEGA["rho"], OMEGA["kappa"]])
        x0 = np.concatenate([np.ravel(truth[n]) for n in names])
        return [jnp.asarray(x0 + rng.uniform(-0.1, 0.1, x0.size)) for _ in range(10)]

    def timed(solver, gradient="forward", n_sub=N_SUBJECTS, integrator="auto"):
        sub = cohort if n_sub == N_SUBJECTS else cohort.subset(cohort.subjects[:n_sub])
        pm_model, _ = build_model(
            spec, sub, solver=solver, gradient=gradient, integrator=integrator
        )
        f, _ = flat_logp(pm_model)

        pts = points(pm_model, n_sub)
        t0 = time.perf_counter()
        jax.block_until_ready(jax.jit(jax.value_and_grad(f))(pts[0]))
        compile_s = time.perf_counter() - t0
        return (
            time_gradient(jax.jit(f), pts),
            time_gradient(jax.jit(jax.value_and_grad(f)), pts),
            compile_s,
        )

    fit_solver = Solver("tsit5", rtol=RTOL, atol=ATOL, max_steps=MAX_STEPS)
    variants = [
        (
            "Tsit5, diffrax's stage loop (before)",
            Solver(diffrax.Tsit5(), rtol=RTOL, atol=ATOL, max_steps=MAX_STEPS),
            "forward",
            None,
            "engine",
        ),
        ("Tsit5, stages unrolled, engine (pkpd default)", fit_solver, "forward", None, "engine"),
        ("Tsit5, subjects-last lanes", fit_solver, "forward", None, "lanes"),
        ("Tsit5, stages unrolled", fit_solver, "reverse", None, "engine"),
        (
            "Dopri5, lanes",
            Solver("dopri5", rtol=RTOL, atol=ATOL, max_steps=MAX_STEPS),
            "forward",
            None,
            "lanes",
        ),
        (
            "Dopri8, lanes",
            Solver("dopri8", rtol=RTOL, atol=ATOL, max_steps=MAX_STEPS),
            "forward",
            None,
            "lanes",
        ),
        (
            "Kvaerno5 (implicit)",
            Solver.stiff(rtol=RTOL, atol=ATOL, max_steps=MAX_STEPS),
            "forward",
            None,
            "engine",
        ),
        (
            "Tsit5 lanes, atol 1e-9",
            Solver("tsit5", rtol=RTOL, atol=1e-9, max_steps=MAX_STEPS),
            "forward",
            None,
            "lanes",
        ),
        ("Tsit5 lanes, 1 subject", fit_solver, "forward", 1, "lanes"),
        ("Tsit5 lanes, 5 subjects", fit_solver, "forward", 5, "lanes"),
        ("Tsit5 engine, 1 subject", fit_solver, "forward", 1, "engine"),
        ("Tsit5 engine, 5 subjects", fit_solver, "forward", 5, "engine"),
    ]
    lines = [
        "| solver | gradient | subjects | log-density (ms) | log-density + gradient (ms) | "
        "compile (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, solver, gradient, n_sub, integrator in variants:
        n = n_sub or N_SUBJECTS
        try:
            v, g, c = timed(solver, gradient, n, integrator)
            lines.append(f"| {label} | {gradient} | {n} | {v:.2f} | {g:.2f} | {c:.1f} |")
        except Exception as exc:  # report and go on
            lines.append(f"| {label} | {gradient} | {n} | failed: {type(exc).__name__} | | |")
        print(lines[-1], flush=True)

    # nutpie's JAX backend: the Python function it calls per gradient, against the bare call.
    import nutpie

    pm_model, _ = build_model(spec, cohort)
    compiled = nutpie.compile_pymc_model(pm_model, backend="jax", gradient_backend="jax")
    logp = compiled._make_logp_func()
    x = np.zeros(compiled.n_dim)
    logp(x, **compiled._shared_data)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        logp(x, **compiled._shared_data)
        times.append(time.perf_counter() - t0)
    lines += [
        "",
        f"nutpie's per-gradient Python call (log-density, gradient to numpy) at the prior "
        f"medians: {1e3 * float(np.median(times)):.2f} ms, load average "
        f"{os.getloadavg()[0]:.1f}.",
    ]
    return "\n".join(lines)


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


RUNNERS = {
    # every variant has a runner (pkpd_centred once failed with KeyError for want of one)
    **{name: functools.partial(run_pkpd, variant=name) for name in PKPD_VARIANTS},
    "pymc_ode": run_pymc_ode,
    "stan": run_stan,
}


# --------------------------------------------------------------------------------------------
# driver


def worker(args) -> None:
    """Run one backend in this process and write its row as JSON."""
    warnings.simplefilter("ignore")
    data = load_data(Path(args.data))
    if args.worker in PKPD_VARIANTS:
        sim = simulate_data(args.data_seed)
        assert np.array_equal(sim["log_T"], data["log_T"]), "the data differ between backends"
        data.update(cohort=sim["cohort"], spec=sim["spec"])
    load0 = os.getloadavg()[0]
    try:
        row = RUNNERS[args.worker](args, data)
    except Exception as exc:  # report, do not hide: the table says what failed
        row = {"backend": args.worker, "failed": f"{type(exc).__name__}: {exc}"}
    row["load_before"] = load0
    row["load_after"] = os.getloadavg()[0]
    Path(args.json).write_text(json.dumps(row, default=float))


def extrapolate(rows: dict) -> None:
    """Fill in a capped pm.ode run: cost of the full run from its measured cost per gradient.

    The number of gradient evaluations of the full run and the ESS it would reach are taken
    from Stan's NUTS on the same posterior with the same settings (PyMC's NUTS adapts the same
    way: diagonal mass matrix, windowed warm-up), or from pkpd's when Stan did not run.
    """
    row = rows.get("pymc_ode")
    if not row or not row.get("capped"):
        return
    ref = next((rows[k] for k in ("stan", "pkpd") if k in rows and "ess_bulk_min" in rows[k]), None)
    if ref is None:
        return
    if ref["backend"] == "stan":
        grads = ref["leapfrog_total"]
    else:  # post-warm-up leapfrog steps per draw, for the warm-up too (an underestimate)
        grads = ref["mean_leapfrog"] * row["iterations_total"]
    if row["leapfrog_done"]:
        per_grad_s = row["sample_s"] * 2 / row["leapfrog_done"]
    else:  # the callback saw no leapfrog counts: the directly timed gradient instead
        per_grad_s = row["grad_ms"] / 1e3
        row["per_grad_source"] = "directly timed gradient"
    row["extrapolated_from"] = ref["backend"]
    row["extrapolated_sample_s"] = per_grad_s * grads / 2
    row["extrapolated_ess"] = ref["ess_bulk_min"]
    row["grad_ms_sampling"] = 1e3 * per_grad_s


def fmt(x, spec=".1f") -> str:
    """Format a number, or a dash."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return format(x, spec)


def table(rows: dict) -> str:
    """The markdown table of the backends."""
    head = (
        "| backend | compile (s) | sampling (s) | min bulk ESS | min bulk ESS / s | "
        "max R-hat | min tail ESS | divergences | mean tree depth | step size | "
        "leapfrog / draw | ms / gradient | load avg (before, after) |"
    )
    lines = [head, "|" + "---|" * 13]
    for name in BACKENDS:
        r = rows.get(name)
        if r is None:
            continue
        load = f"{fmt(r.get('load_before'))}, {fmt(r.get('load_after'))}"
        if "skipped" in r or "failed" in r:
            why = r.get("skipped") or "failed: " + r["failed"]
            lines.append(f"| {name} | {why} |" + " |" * 10 + f" {load} |")
            continue
        if r.get("capped"):
            est = r.get("extrapolated_sample_s")
            ess = r.get("extrapolated_ess")
            done = f"{r['iterations_done']}/{r['iterations_total']} iterations"
            sample = (
                f"stopped at {fmt(r['sample_s'], '.0f')} ({done}); full run est. {fmt(est, '.0f')}"
            )
            per_s = f"est. {fmt(ess / est, '.3f')}" if est else "-"
            lines.append(
                f"| {name} | {fmt(r['compile_s'])} | {sample} | - | {per_s} | - | - | - | - | "
                f"- | - | {fmt(r['grad_ms'], '.1f')} | {load} |"
            )
            continue
        per_s = r["ess_bulk_min"] / r["sample_s"]
        lines.append(
            f"| {name} | {fmt(r['compile_s'])} | {fmt(r['sample_s'])} | "
            f"{fmt(r['ess_bulk_min'], '.0f')} | {fmt(per_s, '.2f')} | {fmt(r['rhat_max'], '.3f')} "
            f"| {fmt(r['ess_tail_min'], '.0f')} | {r['divergences']} | "
            f"{fmt(r['mean_depth'], '.2f')} | {fmt(r['mean_step_size'], '.3f')} | "
            f"{fmt(r['mean_leapfrog'], '.1f')} | {fmt(r['grad_ms'], '.2f')} | {load} |"
        )
    return "\n".join(lines)


def truth_table(rows: dict) -> str:
    """Truth against each backend's posterior medians."""
    have = [n for n in BACKENDS if n in rows and "medians" in rows[n]]
    truth = {**TRUTH, **{f"omega_{k}": v for k, v in OMEGA.items()}}
    lines = ["| parameter | truth | " + " | ".join(have) + " |", "|" + "---|" * (2 + len(have))]
    for name, value in truth.items():
        cells = [fmt(rows[b]["medians"][name], ".4g") for b in have]
        lines.append(f"| {name} | {value:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def methods(rows: dict) -> str:
    """One line per backend: method and tolerances."""
    out = []
    for name in BACKENDS:
        r = rows.get(name)
        if r and "method" in r:
            out.append(f"- {name}: {r['method']}; {r['tolerances']}")
    return "\n".join(out)


def ratios(rows: dict) -> str:
    """pkpd's (each variant's) min bulk ESS per second against the others'."""
    out = []
    for mine_name in PKPD_VARIANTS:
        p = rows.get(mine_name)
        if not p or "ess_bulk_min" not in p:
            continue
        mine = p["ess_bulk_min"] / p["sample_s"]
        for name in ("pymc_ode", "stan"):
            r = rows.get(name)
            if not r:
                continue
            if r.get("capped") and r.get("extrapolated_sample_s"):
                other = r["extrapolated_ess"] / r["extrapolated_sample_s"]
                out.append(f"{mine_name} / {name} (extrapolated): {mine / other:.0f}x")
            elif "ess_bulk_min" in r:
                other = r["ess_bulk_min"] / r["sample_s"]
                out.append(f"{mine_name} / {name}: {mine / other:.1f}x")
    return "; ".join(out)


def report(rows: dict, args) -> str:
    """The whole markdown entry."""
    import jax

    from pkpd._jax import host_cpu

    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    versions = ", ".join(
        f"{n} {_version(n)}"
        for n in (
            "jax",
            "diffrax",
            "pymc",
            "pytensor",
            "nutpie",
            "numpy",
            "scipy",
            "pystan",
            "httpstan",
        )
    )
    machine = (
        f"{platform.machine()} ({host_cpu()}), {os.cpu_count()} CPUs, {platform.system()}, "
        f"JAX {jax.devices()[0]}"
    )
    parts = [
        f"### fit benchmark (T/B/I, issue #3), {now}",
        "",
        f"`python benchmarks/fit.py --chains {args.chains} --draws {args.draws} --tune "
        f"{args.tune} --seed {args.seed} --cap-seconds {args.cap_seconds:g}"
        + (
            f" --only {args.only}"
            if getattr(args, "only", ",".join(BACKENDS)) != ",".join(BACKENDS)
            else ""
        )
        + (f" --stan-atol {args.stan_atol:g}" if getattr(args, "stan_atol", ATOL) != ATOL else "")
        + f"`: {N_SUBJECTS} "
        f"subjects x {len(TIMES)} times x 2 endpoints, 51 free parameters, dataset seed "
        f"{args.data_seed}; ESS and R-hat over the 51 free parameters; sampling time excludes "
        "compilation; 2 chains at a time.",
        "",
        f"machine: {machine}; python {platform.python_version()}; {versions}",
        "",
        methods(rows),
        "",
        table(rows),
        "",
    ]
    r = ratios(rows)
    if r:
        parts += [r, ""]
    capped = rows.get("pymc_ode", {})
    if capped.get("capped"):
        parts += [
            f"pm.ode was stopped after {capped['sample_s']:.0f} s of sampling "
            f"({capped['iterations_done']} of {capped['iterations_total']} iterations, "
            + (
                f"{capped['leapfrog_done']} gradient evaluations, "
                if capped["leapfrog_done"]
                else "gradient evaluations not counted, "
            )
            + f"{fmt(capped.get('grad_ms_sampling'), '.0f')} ms each on one of 2 cores"
            + (f", from the {capped['per_grad_source']}" if capped.get("per_grad_source") else "")
            + "). "
            f"Its full run is extrapolated: that cost per gradient times the "
            f"{capped.get('extrapolated_from', '?')} run's gradient evaluations, over 2 cores, "
            f"with that run's min bulk ESS.",
            "",
        ]
    parts += ["Truth and posterior medians:", "", truth_table(rows), ""]
    return "\n".join(parts)


def main(argv=None) -> None:
    """Command line."""
    from pkpd._jax import host_cpu

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--only",
        default=",".join(BACKENDS),
        help="comma-separated backends: " + ", ".join(BACKENDS),
    )
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--tune", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1, help="sampler seed")
    ap.add_argument("--data-seed", type=int, default=DATA_SEED, help="dataset seed")
    ap.add_argument(
        "--cap-seconds",
        type=float,
        default=1200.0,
        help="stop pm.ode's sampling after this many seconds and extrapolate",
    )
    ap.add_argument(
        "--worker-timeout",
        type=float,
        default=3600.0,
        help="stop a backend that has not finished after this many seconds (compilation "
        "included) and report it as not finished; a 55-minute Stan run once had to be killed "
        "by hand",
    )
    ap.add_argument(
        "--stan-atol",
        type=float,
        default=ATOL,
        help="Stan's absolute ODE tolerance (default: the common one); a variant, because rk45 "
        "controls the error of the sensitivity states too",
    )
    ap.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="time one log-density gradient of pkpd's model with several solvers and options "
        "(no sampling)",
    )
    ap.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.profile:
        warnings.simplefilter("ignore")
        now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        text = (
            f"### fit benchmark profile (T/B/I, issue #3), {now}\n\n`python benchmarks/fit.py "
            f"--profile`: one log-density gradient of pkpd's T/B/I model (20 subjects, "
            f"rtol {RTOL:g}, atol {ATOL:g} unless stated), median over 10 points near the "
            f"truth; load average {os.getloadavg()[0]:.1f} at the start; machine "
            f"{platform.machine()} ({host_cpu()}), {os.cpu_count()} CPUs, {platform.system()}; jax "
            f"{_version('jax')}, diffrax {_version('diffrax')}, nutpie {_version('nutpie')}."
            f"\n\n{profile(args)}\n"
        )
        print(text)
        if args.write:
            with RESULTS.open("a") as fh:
                fh.write("\n" + text)
        return
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BACKENDS))
    if unknown:
        ap.error(f"unknown backend(s): {unknown}")
    # Stan first when it runs: a capped pm.ode run is extrapolated from its gradient count.
    order = [b for b in (*PKPD_VARIANTS, "stan", "pymc_ode") if b in chosen]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "data.npz"
        save_data(simulate_data(args.data_seed), data_file)
        for name in order:
            out = Path(tmp) / f"{name}.json"
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--json",
                str(out),
                "--chains",
                str(args.chains),
                "--draws",
                str(args.draws),
                "--tune",
                str(args.tune),
                "--seed",
                str(args.seed),
                "--data-seed",
                str(args.data_seed),
                "--cap-seconds",
                str(args.cap_seconds),
                "--stan-atol",
                str(args.stan_atol),
                "--data",
                str(data_file),
            ]
            print(f"running {name} ...", flush=True)
            t0 = time.perf_counter()
            # A session of its own, so that a stopped worker's children (Stan's chain
            # processes) stop with it.
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            try:
                _, stderr = proc.communicate(timeout=args.worker_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                rows[name] = {
                    "backend": name,
                    "failed": f"did not finish in {args.worker_timeout:.0f} s (stopped; "
                    f"{args.chains} chains x {args.tune + args.draws} iterations)",
                }
                print(f"  {name}: stopped after {args.worker_timeout:.0f} s", flush=True)
                continue
            if out.exists():
                rows[name] = json.loads(out.read_text())
            else:
                rows[name] = {
                    "backend": name,
                    "failed": f"exit {proc.returncode}: {stderr[-500:]}",
                }
            print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    extrapolate(rows)
    text = report(rows, args)
    print(text)
    if args.write:
        with RESULTS.open("a") as fh:
            fh.write("\n" + text)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
