"""Fit a model file to a cohort: MAP, NUTS (nutpie, numpyro, PyMC) or ADVI.

>>> f = fit("pk_1cmt_oral", "theophylline", chains=4, draws=1000, tune=1000, seed=1)
>>> f = fit(spec, cohort, sampler="map")        # seconds: a point estimate, for iterating
>>> f = fit(spec, cohort, sampler="advi")       # a quick approximate posterior

Every NUTS sampler runs the same PyMC model (`build_model`), whose ODE part is one JAX op. The
sampler that was fastest on the theophylline fit on this machine kind (2 CPU cores) is the
default; the measurements are in ``docs/inference.md``. Chains start from the prior medians
(``z = 0``: every subject typical) plus PyMC's uniform(-1, 1) jitter on the unconstrained scale,
so they start in a plausible region, not in a stiff corner of parameter space, yet apart from
each other (R-hat needs dispersed starts); ``init="map"`` starts from the joint MAP instead (found
with L-BFGS on the JAX-compiled log-density), and ``init={"CL": 2.7, ...}`` from given typical
values (e.g. an earlier, simpler fit's estimates; `start_point`). The same ``seed`` gives the same
draws.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pkpd.inference.builder import ModelInfo, build_model, resolve_parameterization
from pkpd.inference.optimize import lbfgs
from pkpd.inference.ratios import ratio_name
from pkpd.solve import Solver

#: Sampler names accepted by `fit`.
SAMPLERS = ("auto", "nutpie", "numpyro", "pymc", "advi", "fullrank_advi", "map", "pathfinder")

#: The sampler ``"auto"`` stands for. Measured on theophylline (docs/inference.md): nutpie and
#: numpyro within the noise of this shared 2-core machine in wall time, nutpie with shallower
#: trees (fewer gradients per draw) and much faster compilation; PyMC's NUTS 5x slower.
DEFAULT_SAMPLER = "nutpie"

#: Variational methods (approximate posteriors, not MCMC).
VARIATIONAL = ("advi", "fullrank_advi")


@dataclass(frozen=True)
class FitSettings:
    """How a fit was run (saved with it).

    Attributes
    ----------
    sampler : str
        The sampler actually used (``"auto"`` resolved).
    chains, draws, tune : int
        Chains, kept draws per chain, tuning iterations per chain (variational methods: the
        optimisation steps).
    seed : int
        The random seed.
    init : str
        ``"map"``, ``"prior"``, ``"pathfinder"`` or ``"values"`` (started at `init_values`).
    target_accept : float
        NUTS target acceptance rate.
    solver : str
        ``repr`` of the `Solver` used in the likelihood.
    correlated_iiv : bool
    censoring : str
    gradient : str
        ``"forward"``, ``"reverse"`` or ``"adjoint"``: how the likelihood was differentiated
        (``"auto"`` resolved, `pkpd.inference.predict.resolve_gradient`).
    integrator : str
        ``"lanes"`` or ``"engine"``: the integrator of the likelihood's predictions
        (`pkpd.inference.predict.resolve_integrator`; fits saved before it was recorded
        read back as ``"engine"``, what they used).
    iiv_parameterization : dict of str to str
        ``"centered"`` or ``"noncentered"`` per parameter with IIV (`build_model`; fits saved
        before it was recorded read back empty: they were all non-centred).
    ratio_parameterization : dict of str to list of str
        Parameters sampled through their ratio to others, with the divisors (`build_model`,
        `pkpd.inference.ratios`; empty: none, as in fits saved before it was recorded).
    wall_time : dict of str to float
        Seconds spent building, initialising, sampling (including compilation) and
        post-processing.
    sampler_kwargs : dict
        Extra keyword arguments given to the sampler (e.g. nutpie's
        ``low_rank_modified_mass_matrix``), as passed to `fit`.
    init_values : dict of str to float
        The typical values chains started from (``init="values"``), or the MAP optimisation
        of ``init="map"`` started from (`fit`'s ``map_start``), natural scale.
    """

    sampler: str
    chains: int
    draws: int
    tune: int
    seed: int
    init: str
    target_accept: float
    solver: str
    correlated_iiv: bool = False
    censoring: str = "m3"
    gradient: str = "forward"
    integrator: str = "engine"
    iiv_parameterization: dict[str, str] = field(default_factory=dict)
    ratio_parameterization: dict[str, list[str]] = field(default_factory=dict)
    wall_time: dict[str, float] = field(default_factory=dict)
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    init_values: dict[str, float] = field(default_factory=dict)


def _flat_fn(pm_model: Any) -> tuple[Any, list[str], list[tuple[int, ...]]]:
    """Return the log-density as a JAX function of the unconstrained value variables."""
    from pymc.sampling.jax import get_jaxified_graph

    logp = get_jaxified_graph(inputs=pm_model.value_vars, outputs=[pm_model.logp()])
    point = pm_model.initial_point()
    names = [v.name for v in pm_model.value_vars]
    shapes = [np.shape(point[n]) for n in names]
    return logp, names, shapes


def flat_view(names: list[str], shapes: list[tuple[int, ...]]) -> tuple[Any, Any]:
    """``flatten(point) -> vector`` and ``unflatten(vector) -> [array per variable]``.

    The order of `_flat_fn`'s value variables; ``unflatten`` slices, so it works on NumPy and
    JAX arrays alike.
    """
    offsets = np.cumsum([0, *[int(np.prod(s)) for s in shapes]])

    def unflatten(x: Any) -> list[Any]:
        return [x[offsets[i] : offsets[i + 1]].reshape(shapes[i]) for i in range(len(names))]

    def flatten(point: Mapping[str, Any]) -> np.ndarray:
        return np.concatenate([np.asarray(point[n], dtype=float).reshape(-1) for n in names])

    return flatten, unflatten


def map_estimate(
    pm_model: Any,
    start: dict[str, np.ndarray] | None = None,
    maxiter: int = 2000,
    progress: bool = False,
    every_s: float = 10.0,
    max_step: float = 2.0,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Maximum a posteriori estimate (L-BFGS on the JAX-compiled log-density).

    The optimisation runs on the unconstrained scale (log for positive parameters), where PyMC's
    log-density includes the Jacobian of the transforms: this is the mode PyMC's samplers see.
    The optimiser is `pkpd.inference.optimize.lbfgs`: a failed solve shortens the step, and no
    step moves a coordinate by more than `max_step` (a factor e^2 on a positive parameter, 2 SD
    on a random effect), which keeps the path out of stiff corners where one solve takes minutes.

    Parameters
    ----------
    pm_model : pymc.Model
        A model from `build_model`.
    start : dict, optional
        Starting point on the unconstrained scale (value-variable names); default the model's
        initial point (prior medians, ``z = 0``).
    maxiter : int, optional
        Iteration limit of L-BFGS (evaluations are limited to 4x that).
    progress : bool, optional
        Print a line to stderr at most every `every_s` seconds (iterations, log-density
        evaluations, the current log-density, elapsed time) and one at the end (why it stopped,
        failed evaluations).
    every_s : float, optional
        Seconds between progress lines.
    max_step : float, optional
        Largest change of any unconstrained coordinate in one iteration.

    Returns
    -------
    point : dict of str to numpy.ndarray
        Every free variable, deterministic and value variable at the optimum, by name.
    report : dict
        ``logp`` (at the optimum), ``success``, ``message``, ``nit`` (iterations), ``nfev``
        (log-density and gradient evaluations), ``failed`` (evaluations whose log-density or
        gradient was not finite, e.g. a failed ODE solve: the step was shortened), ``capped``
        (iterations whose step was cut to `max_step`), ``wall_s``.

    Raises
    ------
    ValueError
        When the log-density or its gradient is not finite at the start.
    """
    import jax
    import jax.numpy as jnp
    from pymc.sampling.jax import get_jaxified_graph

    logp, names, shapes = _flat_fn(pm_model)
    start = pm_model.initial_point() if start is None else start
    _, unflatten = flat_view(names, shapes)

    @jax.jit
    def neg(x: Any) -> Any:
        return -logp(*unflatten(x))[0]

    value_and_grad = jax.jit(jax.value_and_grad(neg))
    t0 = time.perf_counter()
    shown = [t0]

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        v, g = value_and_grad(jnp.asarray(x))
        return float(v), np.asarray(g, dtype=float)

    def callback(_x: np.ndarray, value: float, nit: int, nfev: int) -> None:
        now = time.perf_counter()
        if progress and now - shown[0] >= every_s:
            shown[0] = now
            print(
                f"MAP: iteration {nit}, {nfev} evaluations, logp {-value:.6g}, {now - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    x0 = np.concatenate([np.ravel(np.asarray(start[n], dtype=float)) for n in names])
    try:
        res = lbfgs(objective, x0, maxiter=maxiter, max_step=max_step, callback=callback)
    except ValueError as err:
        raise ValueError(
            f"MAP: {err} (the log-density at the start: a failed ODE solve or "
            "data impossible under the start values?)"
        ) from err
    if progress:
        print(
            f"MAP: {res.message} after {res.nit} iterations, {res.nfev} evaluations "
            f"({res.failed} failed), logp {-res.fun:.6g}, "
            f"{time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    values = unflatten(jnp.asarray(res.x))
    expand = get_jaxified_graph(inputs=pm_model.value_vars, outputs=pm_model.unobserved_value_vars)
    out = {
        v.name: np.asarray(val)
        for v, val in zip(pm_model.unobserved_value_vars, expand(*values), strict=True)
    }
    report = {
        "logp": -float(res.fun),
        "success": bool(res.success),
        "message": str(res.message),
        "nit": int(res.nit),
        "nfev": int(res.nfev),
        "failed": int(res.failed),
        "capped": int(res.capped),
        "wall_s": time.perf_counter() - t0,
    }
    return out, report


def _smooth_start(
    spec: Any,
    cohort: Any,
    same_model: dict[str, Any],
    pm_model: Any,
    start: dict[str, np.ndarray] | None,
    progress: bool,
) -> dict[str, np.ndarray] | None:
    """Where a MAP of a model with per-subject grade offsets should start.

    The likelihood of an ordinal endpoint with ``offset = "subject"`` is zero wherever some
    subject's grades cannot be ordered by its latent course (e.g. a latent that peaks after the
    worst grade), so prior medians are usually outside its support. Two optimisations lead
    there: the MAP of the same model with independent grades (``offset = "record"``, positive
    everywhere), which puts each subject's latent course near its grades; from it, the MAP of
    the per-subject likelihood extended past its support
    (`pkpd.inference.likelihood.EXTENDED_SUBJECT`), whose gradient leads to where every course
    can be ordered. Other models: `start` unchanged.
    """
    import dataclasses

    subject = {n: spec.observations[n] for n in _subject_offsets(spec)}
    if not subject:
        return start
    from pkpd.inference.likelihood import EXTENDED_SUBJECT

    kw = {k: v for k, v in same_model.items() if k != "aggregate"}
    for offset, what in (
        ("record", "the grades as independent records"),
        (EXTENDED_SUBJECT, "the per-subject grade likelihood extended past its support"),
    ):
        other = dataclasses.replace(
            spec,
            observations={
                **spec.observations,
                **{n: dataclasses.replace(o, offset=offset) for n, o in subject.items()},
            },
        )
        other_model, _ = build_model(other, cohort, **kw)
        if progress:
            print(f"MAP start: with {what}", file=sys.stderr, flush=True)
        point, _ = map_estimate(other_model, start=start, progress=progress)
        start = {v.name: point[v.name] for v in other_model.value_vars}
    return {v.name: start[v.name] for v in pm_model.value_vars}


def _subject_offsets(spec: Any) -> list[str]:
    """Ordinal endpoints whose likelihood is zero where the latent cannot order the grades.

    Those with one offset per subject and no noise per record (a ``record_scale`` makes the
    likelihood positive everywhere).
    """
    return [
        n
        for n, o in spec.observations.items()
        if o.error == "ordinal" and o.offset == "subject" and not o.record_scale
    ]


def _feasible_starts(
    pm_model: Any, start: dict[str, np.ndarray], chains: int, seed: int, retries: int = 10
) -> list[dict[str, np.ndarray]]:
    """One start per chain: PyMC's uniform(-1, 1) jitter around ``start``, halved until finite.

    For a likelihood that is zero outside a narrow region (grades with one offset per subject),
    where a full jitter of hundreds of coordinates almost never lands; after ``retries``
    halvings the chain starts at ``start`` itself. Returned on the constrained scale
    (``initvals``), for samplers told not to jitter again.
    """
    from pymc.initial_point import make_initial_point_fn

    from pkpd.inference.resumable import jitter_until_finite

    centre = make_initial_point_fn(
        model=pm_model, overrides=start, jitter_rvs=set(), return_transformed=True
    )(seed)
    names = list(centre)
    shapes = [np.shape(centre[k]) for k in names]
    sizes = [int(np.prod(sh)) for sh in shapes]
    flat = np.concatenate([np.ravel(np.asarray(centre[k], dtype=float)) for k in names])

    def unflatten(x: np.ndarray) -> dict[str, np.ndarray]:
        parts = np.split(x, np.cumsum(sizes)[:-1])
        return {k: p.reshape(sh) for k, p, sh in zip(names, parts, shapes, strict=True)}

    logp = pm_model.compile_logp()
    rng = np.random.default_rng([seed, 0xF1A7])
    return [
        _constrained(
            pm_model,
            unflatten(
                jitter_until_finite(
                    flat, 1.0, rng, lambda x: np.isfinite(logp(unflatten(x))), retries
                )
            ),
        )
        for _ in range(chains)
    ]


def _map_from(
    pm_model: Any, start: dict[str, np.ndarray] | None, progress: bool, info: Any
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`map_estimate`, naming the subjects whose data are impossible at the start."""
    try:
        return map_estimate(pm_model, start=start, progress=progress)
    except ValueError as err:
        bad = _impossible_subjects(pm_model, start, info)
        if not bad:
            raise
        raise ValueError(
            f"{err}; the data of subject(s) {bad} have probability 0 there (ordinal grades "
            'with offset = "subject" that the latent course cannot order?)'
        ) from err


def _impossible_subjects(pm_model: Any, start: dict[str, np.ndarray] | None, info: Any) -> list:
    """IDs of the subjects with an observation of log-likelihood -inf at ``start``."""
    try:
        point = pm_model.initial_point() if start is None else start
        fn = pm_model.compile_logp(vars=pm_model.observed_RVs, sum=False)
        lp = np.ravel(np.asarray(fn(point)[0]))
        ids = np.asarray(info.coords["subject"])[info.observations.subject]
    except Exception:  # noqa: BLE001 - a diagnosis only; the original error stands
        return []
    if ids.size != lp.size:
        return []
    return sorted({str(s) for s in ids[np.isneginf(lp)]})


def start_point(pm_model: Any, values: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Return the model's initial point with some parameters set to given values.

    Parameters
    ----------
    pm_model : pymc.Model
        A model from `build_model`.
    values : mapping of str to float
        Values on the natural scale of estimated parameters (typical values by their model-file
        name, IIV SDs as ``omega_<name>``). A parameter with a log-normal or logit-normal prior
        is set through its free ``log_``/``logit_`` variable.

    Returns
    -------
    dict of str to numpy.ndarray
        The initial point on the unconstrained scale (value-variable names, what `map_estimate`
        takes); the others stay at the prior medians (``z = 0``).

    Raises
    ------
    KeyError
        For a name that is not a scalar free parameter of the model (fixed, unknown, or one of
        the ordered cutpoint vectors' elements).
    ValueError
        For a value outside the parameter's support (non-finite, <= 0 on a log scale, not in
        (0, 1) on a logit scale).
    """
    point = {k: np.array(v, dtype=float) for k, v in pm_model.initial_point().items()}
    free = {rv.name: rv for rv in pm_model.free_RVs}
    # A ratio is set once its divisors are (pkpd.inference.ratios).
    ratios = {n: float(v) for n, v in values.items() if ratio_name(n) in free}
    for name, value in values.items():
        if name in ratios:
            continue
        x = float(value)
        if f"log_{name}" in free and f"log_{name}" in point:
            key, u = f"log_{name}", np.log(x) if x > 0 else np.nan
        elif f"logit_{name}" in free and f"logit_{name}" in point:
            key, u = f"logit_{name}", np.log(x / (1 - x)) if 0 < x < 1 else np.nan
        elif name in free:
            rv = free[name]
            key = pm_model.rvs_to_values[rv].name
            transform = pm_model.rvs_to_transforms.get(rv)
            if np.ndim(point[key]) != 0:
                raise KeyError(
                    f"{name!r} is not a scalar parameter; start values are for "
                    "typical values and IIV SDs"
                )
            if transform is None:
                u = x
            else:
                u = float(transform.forward(np.asarray(x), *rv.owner.inputs).eval())
        else:
            targets = {ratio_name(n): n for n in pm_model.named_vars if ratio_name(n) in free}
            known = sorted(
                targets[n]
                if n in targets
                else n[4:]
                if n.startswith("log_")
                else n[6:]
                if n.startswith("logit_")
                else n
                for n in free
                if n != "z" and np.ndim(point.get(pm_model.rvs_to_values[free[n]].name, 0)) == 0
            )
            raise KeyError(
                f"no free parameter {name!r} to start from; estimated: {', '.join(known)}"
            )
        if not np.isfinite(u):
            raise ValueError(f"start value {x!r} of {name!r} is outside its support")
        point[key] = np.asarray(u, dtype=float)
    for name, x in ratios.items():
        if not x > 0:
            raise ValueError(f"start value {x!r} of {name!r} is outside its support")
        key = ratio_name(name)
        now = float(_at_point(pm_model, pm_model[name], point))  # exp(ratio + log divisors)
        point[key] = np.asarray(np.log(x) - (np.log(now) - point[key]), dtype=float)
    if values and "phi" in point:  # every subject typical at the new typical values
        point = _with_centred_eta(pm_model, point, 0.0)
    return point


def _at_point(pm_model: Any, variable: Any, point: Mapping[str, Any]) -> np.ndarray:
    """Evaluate a variable of the model (e.g. a deterministic) at a point of its values."""
    expr = pm_model.replace_rvs_by_values([variable])[0]
    fn = pm_model.compile_fn(
        expr, inputs=pm_model.value_vars, on_unused_input="ignore", point_fn=False
    )
    return np.asarray(fn(*[point[v.name] for v in pm_model.value_vars]))


def _with_centred_eta(
    pm_model: Any, point: dict[str, np.ndarray], eta: Any
) -> dict[str, np.ndarray]:
    """Move ``phi`` so that the centred random effects are ``eta`` (its centred columns).

    ``phi`` is centred on the typical values, so a point whose typical values changed, or a
    point of the non-centred model, needs it moved to keep the random effects it means.
    """
    now = _at_point(pm_model, pm_model["eta"], point)
    iiv = list(pm_model.coords["iiv"])
    names = list(pm_model.coords["iiv_centered"]) if "iiv_centered" in pm_model.coords else iiv
    cols = [iiv.index(n) for n in names]
    target = np.broadcast_to(np.asarray(eta, dtype=float), now.shape)
    return {**point, "phi": point["phi"] + target[:, cols] - now[:, cols]}


def centred_point(pm_model: Any, nc_point: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Write a point of the non-centred model in a model with centred random effects.

    The same typical values, IIV SDs, residual parameters and random effects ``eta`` (what
    `map_estimate` returns for the non-centred model), with ``phi`` set so that the centred
    model's ``eta`` equals them. A centred model has no MAP of its own (its joint density grows
    without bound as ``omega -> 0``), so ``init="map"`` starts it at the non-centred mode.

    Returns
    -------
    dict of str to numpy.ndarray
        The point by value-variable name and by free-variable name (constrained).
    """
    point = {k: np.array(v, dtype=float) for k, v in pm_model.initial_point().items()}
    for key in point:
        if key in nc_point and np.shape(nc_point[key]) == np.shape(point[key]):
            point[key] = np.array(nc_point[key], dtype=float)
    if "iiv_noncentered" in pm_model.coords:  # mixed: z keeps the non-centred columns
        iiv = list(pm_model.coords["iiv"])
        point["z"] = np.asarray(nc_point["z"])[
            :, [iiv.index(n) for n in pm_model.coords["iiv_noncentered"]]
        ]
    point = _with_centred_eta(pm_model, point, nc_point["eta"])
    return {**point, **_constrained(pm_model, point)}


def _constrained(pm_model: Any, point: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Free variables on their constrained scale at an unconstrained point."""
    # unobserved_value_vars: the value variables, then each transformed one back on its
    # constrained scale under the free variable's name, then the deterministics.
    by_name = {v.name: v for v in pm_model.unobserved_value_vars}
    names = [rv.name for rv in pm_model.free_RVs]
    fn = pm_model.compile_fn(
        [by_name[n] for n in names],
        inputs=pm_model.value_vars,
        on_unused_input="ignore",
        point_fn=False,
    )
    out = fn(*[point[v.name] for v in pm_model.value_vars])
    return {n: np.asarray(v) for n, v in zip(names, out, strict=True)}


def _initvals(pm_model: Any, point: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Constrained values of the free variables (what PyMC's ``initvals`` take)."""
    return {rv.name: np.asarray(point[rv.name]) for rv in pm_model.free_RVs}


def log_likelihood(pm_model: Any, posterior: Any, chunk: int = 1000) -> dict[str, np.ndarray]:
    """Per-observation log-likelihood of every posterior draw, computed in JAX.

    Parameters
    ----------
    pm_model : pymc.Model
        The model the draws come from.
    posterior : xarray.Dataset
        Posterior draws (dims ``chain, draw, ...``) of the free variables, constrained scale.
    chunk : int, optional
        Draws evaluated per vectorised batch.

    Returns
    -------
    dict of str to numpy.ndarray
        ``{"y": (chain, draw, n_obs)}``.
    """
    observed = list(pm_model.observed_RVs)
    values = _over_draws(pm_model, posterior, pm_model.logp(vars=observed, sum=False), chunk)
    return {rv.name: v for rv, v in zip(observed, values, strict=True)}


def _over_draws(pm_model: Any, posterior: Any, outputs: list, chunk: int = 1000) -> list:
    """Evaluate PyTensor expressions of the model at every posterior draw, in JAX.

    Parameters
    ----------
    pm_model : pymc.Model
        The model the draws come from.
    posterior : xarray.Dataset
        Draws (dims ``chain, draw, ...``) of the free variables on their constrained scale.
    outputs : list of TensorVariable
        Expressions of the model's value variables.
    chunk : int, optional
        Draws evaluated per vectorised batch.

    Returns
    -------
    list of numpy.ndarray
        One ``(chain, draw, ...)`` array per output.
    """
    import jax
    import jax.numpy as jnp
    import pytensor
    from pymc.sampling.jax import get_jaxified_graph

    # Inputs on the constrained scale: each value variable of a transformed variable is
    # replaced by the forward transform of a new constrained input.
    inputs, replace, names = [], {}, []
    for rv in pm_model.free_RVs:
        value = pm_model.rvs_to_values[rv]
        transform = pm_model.rvs_to_transforms.get(rv)
        constrained = rv.type(name=rv.name)
        inputs.append(constrained)
        names.append(rv.name)
        if transform is not None:
            replace[value] = transform.forward(constrained, *rv.owner.inputs)
        else:
            replace[value] = constrained
    outputs = pytensor.graph.replace.graph_replace(list(outputs), replace, strict=False)
    fn = get_jaxified_graph(inputs=inputs, outputs=outputs)
    n_chain, n_draw = posterior.sizes["chain"], posterior.sizes["draw"]
    arrays = [
        np.asarray(posterior[n].values).reshape(n_chain * n_draw, *posterior[n].shape[2:])
        for n in names
    ]
    batched = jax.jit(jax.vmap(lambda *a: fn(*a)))
    outs = []
    for start in range(0, n_chain * n_draw, chunk):
        part = [jnp.asarray(a[start : start + chunk]) for a in arrays]
        outs.append([np.asarray(o) for o in batched(*part)])
    result = []
    for k in range(len(outputs)):
        values = np.concatenate([o[k] for o in outs], axis=0)
        result.append(values.reshape(n_chain, n_draw, *values.shape[1:]))
    return result


def _fill_deterministics(pm_model: Any, posterior: Any) -> Any:
    """Add the model's deterministics that a sampler did not record, computed from the draws."""
    missing = [d for d in pm_model.deterministics if d.name not in posterior]
    if not missing:
        return posterior
    values = _over_draws(
        pm_model, posterior, [pm_model.replace_rvs_by_values([d])[0] for d in missing]
    )
    dims = pm_model.named_vars_to_dims
    for d, v in zip(missing, values, strict=True):
        names = (
            "chain",
            "draw",
            *(dims.get(d.name) or [f"{d.name}_dim_{i}" for i in range(v.ndim - 2)]),
        )
        posterior = posterior.assign({d.name: (names, v)})
        coords = {
            n: list(pm_model.coords[n])
            for n in names[2:]
            if n in pm_model.coords and n not in posterior.coords
        }
        posterior = posterior.assign_coords(coords)
    return posterior


def _sample_nutpie(pm_model, start, chains, draws, tune, seed, progressbar, target_accept, kw):
    import nutpie

    # initial_points by name; no jitter_rvs: nutpie freezes the model into a copy whose
    # variables are not ours, and its default jitters every free variable of that copy.
    t0 = time.perf_counter()
    # nutpie 0.16 fails on the LKJ deterministics of correlated IIV ("Unexpected expand
    # key: expected chol_iiv_corr") and drops corr_iiv: leave them out of its trace;
    # `_standardise` computes them from the draws.
    square = {"chol_iiv_corr", "chol_iiv_stds", "corr_iiv"}
    var_names = None
    if square & {d.name for d in pm_model.deterministics}:
        var_names = [v.name for v in pm_model.unobserved_value_vars if v.name not in square]
    fixed = isinstance(start, list)  # starts drawn by `_feasible_starts`: no jitter of its own
    compiled = nutpie.compile_pymc_model(
        pm_model,
        backend="jax",
        gradient_backend="jax",
        initial_points=start[0] if fixed else start,
        var_names=var_names,
        **({"jitter_rvs": set()} if fixed else {}),
    )
    _compile_logp_now(compiled)
    compile_s = time.perf_counter() - t0
    idata = nutpie.sample(
        compiled,
        draws=draws,
        tune=tune,
        chains=chains,
        seed=seed,
        progress_bar=progressbar,
        target_accept=target_accept,
        save_warmup=False,
        **kw,
    )
    # Seconds of the sampling step spent compiling (PyTensor -> JAX, then XLA).
    idata.sample_stats.attrs["pkpd_compile_s"] = compile_s
    return idata


def _compile_logp_now(compiled: Any) -> None:
    """Call nutpie's log-density once so that XLA compiles it before sampling starts.

    Otherwise the first chain to call it compiles it inside the sampling loop; compiling first
    lets fits report compilation and sampling separately. Best effort: nutpie's model object is
    not a public API, so any failure here is ignored (sampling compiles it then).
    """
    try:
        logp = compiled._make_logp_func()
        logp(np.zeros(compiled.n_dim), **compiled._shared_data)
    except Exception:  # private API of nutpie: sampling compiles it anyway
        pass


def _sample_numpyro(pm_model, start, chains, draws, tune, seed, progressbar, target_accept, kw):
    from pymc.sampling.jax import sample_jax_nuts

    # "parallel" needs one device per chain and fails with diffrax's checkpointed adjoint;
    # "vectorized" makes every chain wait for the slowest solve. Sequential is the one that works.
    kw = dict(kw)
    chain_method = kw.pop("chain_method", "sequential")
    return sample_jax_nuts(
        draws=draws,
        tune=tune,
        chains=chains,
        target_accept=target_accept,
        random_seed=seed,
        initvals=start,
        jitter=not isinstance(start, list),  # a list: `_feasible_starts`, one per chain
        model=pm_model,
        progressbar=progressbar,
        chain_method=chain_method,
        idata_kwargs={"log_likelihood": False},
        compute_convergence_checks=False,
        nuts_sampler="numpyro",
        **kw,
    )


def _sample_pymc(pm_model, start, chains, draws, tune, seed, progressbar, target_accept, kw):
    import pymc as pm

    kw = dict(kw)
    # One process: JAX does not survive fork, and the op is already multi-threaded by XLA.
    cores = kw.pop("cores", 1)
    return pm.sample(
        draws=draws,
        tune=tune,
        chains=chains,
        cores=cores,
        random_seed=seed,
        initvals=start,
        init="adapt_diag" if isinstance(start, list) else "jitter+adapt_diag",
        target_accept=target_accept,
        progressbar=progressbar,
        model=pm_model,
        idata_kwargs={"log_likelihood": False},
        compute_convergence_checks=False,
        **kw,
    )


#: Optimisation steps of the variational methods unless ``sampler_kwargs={"n": ...}``.
VI_STEPS = 20_000


def _fit_variational(pm_model, method, start, draws, seed, progressbar, kw):
    import pymc as pm

    kw = dict(kw)
    n = int(kw.pop("n", VI_STEPS))
    with pm_model:
        approx = pm.fit(
            n=n, method=method, random_seed=seed, start=start, progressbar=progressbar, **kw
        )
        idata = approx.sample(draws, random_seed=seed)
    idata.posterior.attrs["pkpd_variational"] = method
    return idata, {"elbo_last": float(-approx.hist[-1]) if len(approx.hist) else np.nan}


def _map_idata(pm_model: Any, point: dict[str, np.ndarray]) -> Any:
    """Return an InferenceData with one chain of one draw: the MAP point."""
    import arviz as az

    names = [rv.name for rv in pm_model.free_RVs] + [d.name for d in pm_model.deterministics]
    dims = {name: list(pm_model.named_vars_to_dims.get(name, ())) for name in names}
    posterior = {name: np.asarray(point[name])[None, None] for name in names}
    coords = {k: list(v) for k, v in pm_model.coords.items()}
    return az.from_dict(posterior=posterior, coords=coords, dims=dims)


_SAMPLE = {"nutpie": _sample_nutpie, "numpyro": _sample_numpyro, "pymc": _sample_pymc}


def fit(
    spec: Any,
    cohort: Any,
    *,
    sampler: str = "auto",
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    seed: int = 0,
    init: str | Mapping[str, float] = "prior",
    solver: Solver | None = None,
    progressbar: bool = True,
    target_accept: float = 0.8,
    correlated_iiv: bool = False,
    censoring: str = "m3",
    gradient: str = "auto",
    integrator: str = "auto",
    log_likelihood_group: bool = True,
    sampler_kwargs: dict[str, Any] | None = None,
    aggregate: Any = None,
    iiv_parameterization: str | Mapping[str, str] = "noncentered",
    checkpoint: str | Path | None = None,
    map_start: Mapping[str, float] | None = None,
    ratio_parameterization: Mapping[str, Sequence[str]] | None = None,
) -> Any:
    """Fit a model to a cohort.

    Parameters
    ----------
    spec : ModelSpec or str or Path
        The model (loaded, a library name or a file).
    cohort : Cohort or str or Path
        The data (a Cohort, a bundled dataset name or a CSV file).
    sampler : str, optional
        ``"auto"`` (`DEFAULT_SAMPLER`), ``"nutpie"`` (JAX backend), ``"numpyro"`` (sequential
        chains), ``"pymc"`` (PyMC's NUTS), ``"advi"`` / ``"fullrank_advi"`` (variational, with
        `pymc.fit`: `VI_STEPS` optimisation steps, or ``sampler_kwargs={"n": ...}``, then
        ``draws`` draws; approximate, always flagged), ``"pathfinder"`` (pymc-extras'
        multi-path Pathfinder, `pkpd.inference.pathfinder`: ``draws`` importance-resampled
        draws in one chain; approximate, always flagged; options in ``sampler_kwargs``) or
        ``"map"`` (the joint posterior mode only; flagged).
    chains, draws, tune : int, optional
        Chains, kept draws per chain, warm-up iterations per chain.
    seed : int, optional
        Random seed: the same seed gives the same draws.
    init : {"prior", "map", "pathfinder"}, optional
        Where chains start before PyMC's uniform(-1, 1) jitter on the unconstrained scale: the
        prior medians with ``z = 0`` (default), or the joint MAP estimate. The joint mode of a
        hierarchical posterior can be degenerate (large omega, small residual error): on a
        simulated 60-subject study a chain started there never moved (step size 1e-29), so
        ``"map"`` is not the default. With centred random effects the chains start at the
        mode of the non-centred model (`centred_point`). ``"pathfinder"`` starts from the
        median of Pathfinder draws (`pkpd.inference.pathfinder.pathfinder_start`). A mapping
        ``{name: value}`` starts from those typical values (natural scale; IIV SDs as
        ``omega_<name>``) and the prior medians for the rest (`start_point`), e.g. an earlier,
        simpler fit's estimates; with ``sampler="map"`` the optimisation starts there.
    solver : Solver, optional
        ODE solver of the likelihood (default: closed form when available, else Tsit5,
        rtol 1e-6, atol 1e-14, 4096 steps per interval; `pkpd.inference.default_solver`).
    progressbar : bool, optional
        Show the sampler's progress bar.
    target_accept : float, optional
        NUTS target acceptance rate (raise it, e.g. 0.95, when there are divergences).
    correlated_iiv, censoring, gradient, integrator, iiv_parameterization, ratio_parameterization
        Passed to `build_model`. A centred random effect (``iiv_parameterization``) cannot go
        with ``sampler="map"``: the joint mode of a centred hierarchy is at ``omega -> 0``;
        with ``init="map"`` the chains start at the non-centred mode, moved to centred
        coordinates.
    log_likelihood_group : bool, optional
        Store the per-observation log-likelihood (needed for PSIS-LOO).
    sampler_kwargs : dict, optional
        Extra keyword arguments of the sampler.
    aggregate : AggregateLikelihood, optional
        Published summary data fitted jointly with the cohort (`pkpd.inference.aggregate`;
        passed to `build_model`).
    checkpoint : str or Path, optional
        A folder where NUTS saves every chain's state as it goes
        (`pkpd.inference.resumable.sample_resumable`, numpyro's kernel, chains in parallel
        threads, a progress line per chain and minute when ``progressbar``): a fit
        interrupted, or stopped by ``sampler_kwargs={"max_seconds": ...}`` (which raises
        `SamplingPaused`), goes on from there when called again with the same folder, model,
        data and settings. Needs ``sampler`` ``"auto"`` or ``"numpyro"``; ``sampler_kwargs``
        may also set ``max_tree_depth``, ``checkpoint_every_s`` and ``progress_every_s``.
    map_start : dict of str to float, optional
        Typical values (natural scale, IIV SDs as ``omega_<name>``) where the MAP optimisation
        of ``init="map"`` starts, e.g. an earlier, simpler fit's estimates; prior medians for
        the rest (default: prior medians for all). Recorded as the fit's ``init_values``.
        Only with ``init="map"`` (with ``sampler="map"``, ``init={...}`` does the same).

    Returns
    -------
    Fit
        Posterior draws (``idata``), the model, the cohort and the settings.
    """
    from pkpd.inference.fitresult import Fit

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    init_values: dict[str, float] = {}
    if isinstance(init, Mapping):
        init_values = {str(k): float(v) for k, v in init.items()}
        init = "values"
    elif init not in ("map", "prior", "pathfinder"):
        raise ValueError(
            f"init must be 'map', 'prior', 'pathfinder' or a mapping of start values, got {init!r}"
        )
    if map_start is not None:
        if init != "map":
            raise ValueError(
                f"map_start is where init='map' starts its optimisation; got init {init!r}"
            )
        init_values = {str(k): float(v) for k, v in map_start.items()}
    chosen = DEFAULT_SAMPLER if sampler == "auto" else sampler
    if checkpoint is not None:
        if sampler not in ("auto", "numpyro"):
            raise ValueError(
                f"checkpoint needs NUTS by numpyro (sampler 'auto' or 'numpyro'), "
                f"got sampler {sampler!r}"
            )
        chosen = "numpyro"
    seed = int(seed)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    # The same model, whatever the random effects' form (a centred fit's MAP start builds the
    # non-centred one too).
    same_model = dict(
        solver=solver,
        correlated_iiv=correlated_iiv,
        censoring=censoring,
        gradient=gradient,
        integrator=integrator,
        aggregate=aggregate,
        ratio_parameterization=ratio_parameterization,
    )
    pm_model, info = build_model(
        spec, cohort, iiv_parameterization=iiv_parameterization, **same_model
    )
    parameterization = resolve_parameterization(iiv_parameterization, info.iiv)
    centred = "centered" in parameterization.values()
    if centred and chosen == "map":
        # Density -> infinity as omega -> 0 with eta = 0: the optimiser would chase that.
        raise ValueError(
            f"a MAP (sampler 'map') needs non-centred random effects; got {parameterization}"
        )
    timing["build"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    map_report: dict[str, Any] = {}
    # Checked before any sampling: a wrong name fails fast.
    given = start_point(pm_model, init_values) if init_values else None
    resuming = checkpoint is not None and (Path(checkpoint) / "run.json").is_file()
    if resuming:  # the chains go on from their saved states: no start to compute
        point, start = None, None
        map_report = {"skipped": f"chains resumed from {checkpoint}"}
    elif init == "map" or chosen == "map":
        if centred:
            # The mode of the same posterior written non-centred, moved to these coordinates.
            nc_model, _ = build_model(spec, cohort, **same_model)
            nc_given = start_point(nc_model, init_values) if init_values else None
            nc_given = _smooth_start(info.spec, cohort, same_model, nc_model, nc_given, progressbar)
            nc_point, map_report = _map_from(nc_model, nc_given, progressbar, info)
            point = centred_point(pm_model, nc_point)
        else:
            given = _smooth_start(info.spec, cohort, same_model, pm_model, given, progressbar)
            point, map_report = _map_from(pm_model, given, progressbar, info)
        if not map_report["success"]:
            warnings.warn(
                f"MAP optimisation did not converge: {map_report['message']}", stacklevel=2
            )
        start = _initvals(pm_model, point)
    elif init == "pathfinder" and chosen != "pathfinder":
        from pkpd.inference.pathfinder import pathfinder_start

        point = None
        start, pf_report = pathfinder_start(pm_model, seed)
        map_report = {"init_" + k: v for k, v in pf_report.items()}
    elif given is not None:
        point = None
        start = _constrained(pm_model, given)
    else:
        point = None
        start = None
    timing["init"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if chosen == "map":
        idata = _map_idata(pm_model, point)
        n_chains, n_draws, n_tune = 1, 1, 0
    elif chosen in VARIATIONAL:
        idata, extra = _fit_variational(
            pm_model, chosen, start, draws, seed, progressbar, sampler_kwargs or {}
        )
        n_chains, n_draws, n_tune = 1, draws, int((sampler_kwargs or {}).get("n", VI_STEPS))
    elif chosen == "pathfinder":
        from pkpd.inference.pathfinder import run_pathfinder

        idata, extra = run_pathfinder(pm_model, draws, seed, progressbar, start, sampler_kwargs)
        n_chains, n_draws, n_tune = 1, draws, 0
    elif checkpoint is not None:
        from pkpd.inference.resumable import sample_resumable

        idata = sample_resumable(
            pm_model,
            checkpoint,
            chains=chains,
            draws=draws,
            tune=tune,
            seed=seed,
            start=start,
            target_accept=target_accept,
            progress=progressbar,
            **dict(sampler_kwargs or {}),
        )
        n_chains, n_draws, n_tune = chains, draws, tune
        extra["checkpoint"] = {
            "directory": str(checkpoint),
            "calls": int(idata.sample_stats.attrs["pkpd_calls"]),
            "sampling_s": float(idata.sample_stats.attrs["pkpd_sampling_s"]),
        }
    else:
        if start is not None and _subject_offsets(info.spec):
            start = _feasible_starts(pm_model, start, chains, seed)
        idata = _SAMPLE[chosen](
            pm_model,
            start,
            chains,
            draws,
            tune,
            seed,
            progressbar,
            target_accept,
            dict(sampler_kwargs or {}),
        )
        n_chains, n_draws, n_tune = chains, draws, tune
    timing["sample"] = time.perf_counter() - t0
    counter = getattr(info.predict, "adjoint_counter", None)
    if counter is not None:
        extra["adjoint"] = {
            "capacity": int(counter.capacity),
            "gradients": counter.gradients,
            "fallbacks": counter.fallbacks,
        }
        if counter.fallbacks:
            warnings.warn(
                f"{counter.fallbacks} of {counter.gradients} gradients needed more solver loop "
                f"iterations than the adjoint's record holds ({counter.capacity}) "
                "and took forward mode (exact, slower); see pkpd.inference.predict.ADJOINT_MARGIN",
                stacklevel=2,
            )

    t0 = time.perf_counter()
    idata = _standardise(idata, pm_model, info, log_likelihood_group and chosen != "map")
    timing["postprocess"] = time.perf_counter() - t0
    settings = FitSettings(
        sampler=chosen,
        chains=n_chains,
        draws=n_draws,
        tune=n_tune,
        seed=seed,
        init=init,
        target_accept=float(target_accept),
        solver=repr(info.solver),
        correlated_iiv=correlated_iiv,
        censoring=censoring,
        gradient=info.gradient,
        integrator=info.integrator,
        iiv_parameterization=parameterization,
        ratio_parameterization={k: list(v) for k, v in (ratio_parameterization or {}).items()},
        wall_time=timing,
        sampler_kwargs=dict(sampler_kwargs or {}),
        init_values=init_values,
    )
    return Fit(
        idata=idata,
        spec=info.spec,
        cohort=info.cohort,
        settings=settings,
        info=info,
        extra={"map": map_report, **extra},
    )


def _standardise(idata: Any, pm_model: Any, info: ModelInfo, with_loglik: bool) -> Any:
    """Give every fit the same groups, whatever the sampler.

    ``posterior``, ``sample_stats``, ``log_likelihood``, ``observed_data`` and
    ``constant_data`` (what each observation is: subject, time, endpoint, censoring).
    """
    import xarray as xr

    obs = info.observations
    keep = [rv.name for rv in pm_model.free_RVs] + [d.name for d in pm_model.deterministics]
    post = _fill_deterministics(pm_model, idata.posterior)
    post = post[[n for n in keep if n in post]]
    groups = {"posterior": post}
    if "sample_stats" in idata.groups():
        groups["sample_stats"] = idata.sample_stats
    if "warmup_sample_stats" in idata.groups():
        groups["warmup_sample_stats"] = idata.warmup_sample_stats
    coords = {"obs_id": np.arange(len(obs))}
    groups["observed_data"] = xr.Dataset({"y": ("obs_id", obs.value)}, coords=coords)
    groups["constant_data"] = xr.Dataset(
        {
            "obs_subject": ("obs_id", np.asarray(info.bound.subjects)[obs.subject]),
            "obs_subject_index": ("obs_id", obs.subject),
            "obs_time": ("obs_id", obs.time),
            "obs_endpoint": ("obs_id", np.asarray(info.model.endpoints)[obs.endpoint]),
            "obs_dv": ("obs_id", obs.dv),
            "obs_cens": ("obs_id", obs.cens.astype(np.int8)),
            "obs_limit": ("obs_id", obs.limit),
            "obs_line": ("obs_id", obs.line),
        },
        coords=coords,
    )
    if with_loglik:
        ll = log_likelihood(pm_model, post)
        groups["log_likelihood"] = xr.Dataset(
            {"y": (("chain", "draw", "obs_id"), ll["y"])},
            coords={"chain": post["chain"].values, "draw": post["draw"].values, **coords},
        )
    import arviz as az

    return az.InferenceData(**groups)


def compare_samplers(
    spec: Any,
    cohort: Any,
    samplers: tuple[str, ...] = ("numpyro", "nutpie", "pymc"),
    *,
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    seed: int = 0,
    solver: Solver | None = None,
) -> Any:
    """Fit the same model and data with several NUTS samplers and time them.

    Parameters
    ----------
    spec, cohort
        As in `fit`.
    samplers : tuple of str, optional
        Samplers to compare.
    chains, draws, tune, seed, solver
        As in `fit` (the same for every sampler).

    Returns
    -------
    pandas.DataFrame
        One row per sampler: ``sample_s`` (wall time of sampling, compilation included),
        ``total_s``, ``rhat_max``, ``ess_bulk_min``, ``ess_tail_min``, ``ess_per_s`` (min bulk
        ESS per second of sampling), ``divergences``, ``mean_tree_depth``, ``ok``.
    """
    import pandas as pd

    rows = []
    for name in samplers:
        t0 = time.perf_counter()
        result = fit(
            spec,
            cohort,
            sampler=name,
            chains=chains,
            draws=draws,
            tune=tune,
            seed=seed,
            solver=solver,
            progressbar=False,
        )
        total = time.perf_counter() - t0
        diag = result.diagnostics()
        stats = result.idata.sample_stats
        depth = next((stats[k] for k in ("tree_depth", "depth") if k in stats), None)
        sample_s = result.settings.wall_time["sample"]
        rows.append(
            {
                "sampler": name,
                "sample_s": sample_s,
                "total_s": total,
                "rhat_max": diag["rhat_max"],
                "ess_bulk_min": diag["ess_bulk_min"],
                "ess_tail_min": diag["ess_tail_min"],
                "ess_per_s": diag["ess_bulk_min"] / sample_s,
                "divergences": diag["divergences"],
                "mean_tree_depth": float(depth.mean()) if depth is not None else np.nan,
                "ok": diag["ok"],
            }
        )
    return pd.DataFrame(rows).set_index("sampler")
