"""Per-observation log-likelihood: residual error models, censoring (Beal M3), ordinal grades.

`collect_observations` turns a cohort into one flat table of the observations that carry
information (missing ones, MDV=1 or NaN DV without censoring, are left out), each with its
subject, endpoint, censoring flag and limit. `observation_logp` gives the log-likelihood of each
of them as a PyTensor vector, so PyMC stores it per observation and PSIS-LOO works.

Residual error models (``ObservationSpec.error``), with ``f`` the prediction:

=================  ==========================================================================
``additive``       ``DV ~ Normal(f, a)``
``proportional``   ``DV ~ Normal(f, b |f|)``
``combined``       ``DV ~ Normal(f, sqrt(a^2 + (b f)^2))``
``lognormal``      ``log DV ~ Normal(log f, s)`` (the density of DV, i.e. with ``-log DV``, so
                   log-likelihoods compare across error models)
``ordinal``        ordered logistic: ``P(Y <= level_k) = logistic(c_k - f)``, ``f`` the latent
                   prediction, ``c`` the increasing cutpoint parameters
=================  ==========================================================================

An ordinal endpoint's noise is independent per record (``offset = "record"``, the default) or
one logistic offset per subject for all its records (``offset = "subject"``): then the
likelihood is that of the subject's whole course, ``F(hi) - F(lo)`` with ``(lo, hi)`` the
offsets that give every one of its grades (`_subject_offset_logp`), zero where the latent
cannot order them; it sits on the subject's first record of the endpoint. With a
``record_scale`` ``s`` the subject's offset is joined by an independent logistic noise of scale
``s`` per record, and the course's likelihood, integrated over the offset by quadrature
(`_subject_noise_logp`), is smooth and positive everywhere.

Censoring (Beal's M3): an observation below its limit ``L`` (``obs_cens == 1``) contributes
``log P(DV < L) = log Phi((L - f) / sd)``; above an upper limit (``obs_cens == -1``)
``log P(DV > L)``; for the log-normal model on the log scale. Each (endpoint, censoring) group is
computed on its own observations only, so a branch that is undefined for other observations
(``log f`` at a zero prediction) never poisons a gradient.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from pkpd.errors import DatasetError, Problem

#: Ways of handling censored observations.
CENSORING_MODES = ("m3", "drop")


@dataclass(frozen=True)
class Observations:
    """The observations a fit uses, flat, in cohort order (subject, then record).

    Attributes
    ----------
    subject, column : numpy.ndarray
        ``(n,)`` row in the cohort and observation column of each.
    endpoint : numpy.ndarray
        ``(n,)`` index into ``model.endpoints``.
    time : numpy.ndarray
        ``(n,)`` time, model time unit.
    dv : numpy.ndarray
        ``(n,)`` DV as recorded (may be NaN for a censored record).
    value : numpy.ndarray
        ``(n,)`` what the likelihood reads: DV, or the limit of a censored record.
    cens : numpy.ndarray
        ``(n,)`` int8: 0, 1 (below the limit), -1 (above).
    limit : numpy.ndarray
        ``(n,)`` censoring limit (NaN when none).
    category : numpy.ndarray
        ``(n,)`` ordinal endpoints: index of the level, else -1.
    line : numpy.ndarray
        ``(n,)`` line in the dataset file.
    n_missing : int
        Observation records left out because their DV is missing (MDV=1, NaN).
    n_dropped : int
        Censored records left out (``censoring="drop"``).
    """

    subject: np.ndarray
    column: np.ndarray
    endpoint: np.ndarray
    time: np.ndarray
    dv: np.ndarray
    value: np.ndarray
    cens: np.ndarray
    limit: np.ndarray
    category: np.ndarray
    line: np.ndarray
    n_missing: int = 0
    n_dropped: int = 0

    def __len__(self) -> int:
        return int(self.subject.size)

    @property
    def censored_fraction(self) -> float:
        """Fraction of the used observations that are censored."""
        return float(np.mean(self.cens != 0)) if len(self) else 0.0


def collect_observations(
    spec: Any, model: Any, cohort: Any, bound: Any, censoring: str = "m3"
) -> Observations:
    """Select and check the observations a fit uses.

    Parameters
    ----------
    spec : ModelSpec
        The model (error models, ordinal levels, default LLOQ per endpoint).
    model : CompiledModel
        Its compiled form.
    cohort : Cohort
        The dataset (``obs_dv``, ``obs_mdv``, ``obs_cens``, ``obs_limit``, ``obs_line``).
    bound : BoundCohort
        The cohort bound to the model (endpoints, times in model units).
    censoring : {"m3", "drop"}, optional
        ``"m3"``: censored records enter through the censored likelihood; ``"drop"``: they are
        left out (biased; for comparison).

    Returns
    -------
    Observations

    Raises
    ------
    DatasetError
        A non-positive DV under a log-normal error model, an ordinal DV that is not one of the
        endpoint's levels, or a censored ordinal record (each naming file and line).
    """
    if censoring not in CENSORING_MODES:
        raise ValueError(f"censoring must be one of {CENSORING_MODES}, got {censoring!r}")
    ds = cohort.ds
    mask = np.asarray(bound.obs_mask, dtype=bool)
    mdv = np.asarray(ds["obs_mdv"].values, dtype=bool)
    dv_all = np.asarray(ds["obs_dv"].values, dtype=float)
    cens_all = np.asarray(ds["obs_cens"].values, dtype=np.int8)
    limit_all = np.asarray(ds["obs_limit"].values, dtype=float)
    line_all = np.asarray(ds["obs_line"].values)
    obs_specs = [spec.observations[name] for name in model.endpoints]
    errors = np.array([o.error for o in obs_specs], dtype=object)

    # An endpoint's default LLOQ applies to records for which the dataset gives no limit.
    for e, ospec in enumerate(obs_specs):
        if ospec.lloq is None or ospec.error == "ordinal":
            continue
        here = mask & (bound.obs_endpoint == e) & (cens_all == 0) & np.isnan(limit_all)
        below = here & ~mdv & (dv_all < ospec.lloq)
        cens_all = np.where(below, np.int8(1), cens_all)
        limit_all = np.where(here, ospec.lloq, limit_all)

    used = mask & ~mdv
    used &= errors[bound.obs_endpoint] != "none"
    n_missing = int((mask & mdv).sum())
    n_dropped = 0
    if censoring == "drop":
        n_dropped = int((used & (cens_all != 0)).sum())
        used &= cens_all == 0
    rows, cols = np.nonzero(used)
    endpoint = np.asarray(bound.obs_endpoint[rows, cols], dtype=np.int64)
    dv = dv_all[rows, cols]
    cens = cens_all[rows, cols]
    limit = limit_all[rows, cols]
    line = line_all[rows, cols]
    value = np.where(cens != 0, limit, dv)
    category = np.full(rows.size, -1, dtype=np.int64)

    problems: list[Problem] = []
    for e, ospec in enumerate(obs_specs):
        here = endpoint == e
        if ospec.error == "lognormal":
            bad = here & (cens == 0) & ~(dv > 0)
            for k in np.flatnonzero(bad)[:20]:
                problems.append(
                    Problem(
                        f"endpoint {ospec.name!r} has a log-normal error model but DV is "
                        f"{dv[k]:g}; flag values below the LLOQ as censored (CENS/BLQ)",
                        file=cohort.source,
                        row=int(line[k]),
                        column="DV",
                    )
                )
            bad = here & (cens != 0) & ~(limit > 0)
            for k in np.flatnonzero(bad)[:20]:
                problems.append(
                    Problem(
                        f"endpoint {ospec.name!r}: a censoring limit must be positive under a "
                        "log-normal error model",
                        file=cohort.source,
                        row=int(line[k]),
                        column="LIMIT",
                    )
                )
        if ospec.error == "ordinal":
            levels = np.asarray(ospec.levels, dtype=float)
            for k in np.flatnonzero(here):
                if cens[k] != 0:
                    problems.append(
                        Problem(
                            f"ordinal endpoint {ospec.name!r} cannot be censored",
                            file=cohort.source,
                            row=int(line[k]),
                            column="CENS",
                        )
                    )
                    continue
                hit = np.flatnonzero(levels == dv[k])
                if hit.size != 1:
                    problems.append(
                        Problem(
                            f"ordinal endpoint {ospec.name!r}: DV {dv[k]:g} is not one of its "
                            f"levels {list(ospec.levels)}",
                            file=cohort.source,
                            row=int(line[k]),
                            column="DV",
                        )
                    )
                    continue
                category[k] = int(hit[0])
    if problems:
        raise DatasetError(problems)
    time = np.asarray(bound.obs_time[rows, cols], dtype=float)
    _warn_several_grades_a_day(model, obs_specs, endpoint, rows, time)
    return Observations(
        subject=rows.astype(np.int64),
        column=cols.astype(np.int64),
        endpoint=endpoint,
        time=time,
        dv=dv,
        value=value.astype(float),
        cens=cens.astype(np.int8),
        limit=limit,
        category=category,
        line=line,
        n_missing=n_missing,
        n_dropped=n_dropped,
    )


def residual_parameters(spec: Any, model: Any) -> list[str]:
    """Parameters the observation models use (residual SDs, cutpoints, grade noise scales).

    In model order.

    Parameters
    ----------
    spec : ModelSpec
        The model.
    model : CompiledModel
        Its compiled form.

    Returns
    -------
    list of str
    """
    names: set[str] = set()
    for ospec in spec.observations.values():
        names.update(ospec.sigma.values())
        names.update(ospec.cutpoints)
        if ospec.record_scale:
            names.add(ospec.record_scale)
    return [n for n in model.parameters if n in names]


#: Below this z, log Phi(z) uses its asymptotic series (erfc underflows near z = -38).
_TAIL_Z = -30.0


def log_ndtr(z: Any) -> Any:
    """``log Phi(z)``, the log of the standard normal CDF, accurate for every ``z``.

    Written with ``erfc`` only, which every PyTensor backend has (PyMC's ``normal_lcdf`` uses
    ``erfcx``, which the JAX backend lacks without TensorFlow Probability). Three branches, each
    fed a clipped input so that the branch not taken cannot produce NaN gradients:
    ``log1p(-erfc(z / sqrt 2) / 2)`` for ``z >= 0`` (no cancellation when Phi is near 1),
    ``log(erfc(-z / sqrt 2) / 2)`` for ``-30 <= z < 0``, and the asymptotic series
    ``-z^2/2 - log(-z) - log(2 pi)/2 + log(1 - z^-2 + 3 z^-4 - 15 z^-6 + 105 z^-8)`` below -30
    (relative error below 1e-12 there).

    Parameters
    ----------
    z : TensorVariable
        Standardised values.

    Returns
    -------
    TensorVariable
    """
    import pytensor.tensor as pt

    sqrt2 = np.sqrt(2.0)
    z_pos = pt.maximum(z, 0.0)
    upper = pt.log1p(-0.5 * pt.erfc(z_pos / sqrt2))
    z_mid = pt.clip(z, _TAIL_Z, 0.0)
    middle = pt.log(0.5 * pt.erfc(-z_mid / sqrt2))
    z_low = pt.minimum(z, _TAIL_Z)
    w = 1.0 / z_low**2
    series = 1.0 - w + 3.0 * w**2 - 15.0 * w**3 + 105.0 * w**4
    tail = -0.5 * z_low**2 - pt.log(-z_low) - 0.5 * np.log(2 * np.pi) + pt.log(series)
    return pt.switch(z >= 0.0, upper, pt.switch(z >= _TAIL_Z, middle, tail))


def observation_logp(
    value: Any, pred: Any, params: dict[str, Any], obs: Observations, spec: Any, model: Any
) -> Any:
    """Log-likelihood of every observation, as a PyTensor vector.

    Parameters
    ----------
    value : TensorVariable
        ``(n,)`` the observed values (`Observations.value`).
    pred : TensorVariable
        ``(n,)`` predictions (the latent severity for ordinal endpoints).
    params : dict of str to TensorVariable
        The residual error and cutpoint parameters by name (`residual_parameters`).
    obs : Observations
        Which observation is which (endpoint, censoring, limits, levels).
    spec : ModelSpec
        The model (error models).
    model : CompiledModel
        Its compiled form (endpoint order).

    Returns
    -------
    TensorVariable
        ``(n,)`` log-likelihood, in the order of ``obs``.
    """
    import pytensor.tensor as pt

    pieces: list[Any] = []
    order: list[np.ndarray] = []
    half_log_2pi = 0.5 * np.log(2 * np.pi)
    for e, name in enumerate(model.endpoints):
        ospec = spec.observations[name]
        here = obs.endpoint == e
        if not here.any():
            continue
        noisy = getattr(ospec, "record_scale", None)  # specs written by hand may lack it
        if ospec.error == "ordinal" and ospec.offset == "subject" and noisy:
            cut = pt.stack([params[c] for c in ospec.cutpoints])
            idx = np.flatnonzero(here)
            scale = params[noisy]
            n_cut = len(ospec.cutpoints)
            pieces.append(_subject_noise_logp(pred, cut, scale, n_cut, obs, idx))
            order.append(idx)
            continue
        if ospec.error == "ordinal" and ospec.offset in ("subject", EXTENDED_SUBJECT):
            cut = pt.stack([params[c] for c in ospec.cutpoints])
            idx = np.flatnonzero(here)
            extend = ospec.offset == EXTENDED_SUBJECT
            pieces.append(_subject_offset_logp(pred, cut, len(ospec.cutpoints), obs, idx, extend))
            order.append(idx)
            continue
        if ospec.error == "ordinal":
            cut = pt.stack([params[c] for c in ospec.cutpoints])
            n_cut = len(ospec.cutpoints)
            for kind in ("first", "middle", "last"):
                cat = obs.category
                sel = {
                    "first": here & (cat == 0),
                    "last": here & (cat == n_cut),
                    "middle": here & (cat > 0) & (cat < n_cut),
                }[kind]
                idx = np.flatnonzero(sel)
                if idx.size == 0:
                    continue
                f = pred[idx]
                if kind == "first":
                    lp = -pt.softplus(f - cut[0])
                elif kind == "last":
                    lp = -pt.softplus(cut[n_cut - 1] - f)
                else:
                    k = cat[idx]
                    hi, lo = cut[k], cut[k - 1]
                    # log(logistic(hi - f) - logistic(lo - f)), stable for any f.
                    lp = (hi - f) + pt.log1mexp(lo - hi) - pt.softplus(hi - f) - pt.softplus(lo - f)
                pieces.append(lp)
                order.append(idx)
            continue
        for flag in (0, 1, -1):
            idx = np.flatnonzero(here & (obs.cens == flag))
            if idx.size == 0:
                continue
            f = pred[idx]
            v = value[idx]
            positive = None
            if ospec.error == "lognormal" and flag == 1:
                # A prediction of exactly 0 (e.g. CAR-T cells before the infusion) is below any
                # LLOQ with probability 1: log-likelihood 0 and no gradient. log(0) would give
                # the right value but a 0 * inf = NaN gradient (double-where keeps it finite).
                positive = f > 0
                f = pt.switch(positive, f, 1.0)
            if ospec.error == "lognormal":
                mu, sd, x = pt.log(f), params[ospec.sigma["sigma"]], pt.log(v)
            else:
                mu, x = f, v
                if ospec.error == "additive":
                    sd = params[ospec.sigma["sigma"]]
                elif ospec.error == "proportional":
                    sd = params[ospec.sigma["sigma_prop"]] * pt.abs(f)
                elif ospec.error == "combined":
                    a = params[ospec.sigma["sigma"]]
                    b = params[ospec.sigma["sigma_prop"]]
                    sd = pt.sqrt(a**2 + (b * f) ** 2)
                else:  # pragma: no cover - the loader validates error models
                    raise ValueError(f"unknown error model {ospec.error!r}")
            if flag == 0:
                lp = -0.5 * ((x - mu) / sd) ** 2 - pt.log(sd) - half_log_2pi
                if ospec.error == "lognormal":
                    lp = lp - x  # density of DV, not of log DV
            elif flag == 1:
                lp = log_ndtr((x - mu) / sd)
                if positive is not None:
                    lp = pt.switch(positive, lp, 0.0)
            else:
                lp = log_ndtr((mu - x) / sd)
            pieces.append(pt.broadcast_to(lp, (idx.size,)))
            order.append(idx)
    if not pieces:
        raise ValueError("no observations to fit")
    perm = np.concatenate(order)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size)
    return pt.concatenate(pieces)[inverse]


#: Stands in for -inf in the padded per-subject maxima (never the maximum of a real bound).
_NO_BOUND = 1e30

#: Internal offset of an ordinal endpoint (not for model files): the per-subject likelihood,
#: extended below a gap of `_EXTEND_GAP` between the offset's bounds by a straight line in the
#: gap, so that it is finite where grades cannot be ordered and its gradient points to where
#: they can. Only for finding a start (`pkpd.inference.sample.fit`), never sampled.
EXTENDED_SUBJECT = "subject (extended, for a start)"
_EXTEND_GAP = 0.05


def _course_bounds(pred: Any, cut: Any, n_cut: int, obs: Observations, idx: np.ndarray) -> tuple:
    """Each subject's records of an ordinal endpoint as a padded (subjects, records) table.

    Returns ``first`` (position in ``idx`` of each subject's first record), the masks
    ``has_lo``, ``has_hi`` (the record's grade has a lower / upper cutpoint) and the tensors
    ``lower = c_g - f``, ``upper = c_{g+1} - f``: the offsets ``e`` between them give the
    record's grade (``-+_NO_BOUND`` where there is no cutpoint, and on padding).
    """
    import pytensor.tensor as pt

    subjects, first, counts = np.unique(obs.subject[idx], return_index=True, return_counts=True)
    width = int(counts.max())
    # (subjects, width) positions into idx, padded with the subject's first record.
    rows = np.repeat(np.arange(subjects.size), counts)
    order = np.argsort(obs.subject[idx], kind="stable")
    cols = np.arange(idx.size) - np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.repeat(first[:, None], width, axis=1)
    pos[rows, cols] = order
    filled = np.zeros((subjects.size, width), dtype=bool)
    filled[rows, cols] = True
    cat = obs.category[idx][pos]
    has_lo = filled & (cat > 0)
    has_hi = filled & (cat < n_cut)
    f = pred[idx][pos]
    lower = pt.switch(has_lo, cut[np.clip(cat - 1, 0, None)] - f, -_NO_BOUND)
    upper = pt.switch(has_hi, cut[np.clip(cat, 0, n_cut - 1)] - f, _NO_BOUND)
    return first, has_lo, has_hi, lower, upper


def _subject_offset_logp(
    pred: Any, cut: Any, n_cut: int, obs: Observations, idx: np.ndarray, extend: bool = False
) -> Any:
    """Log-likelihood of an ordinal endpoint's records with one logistic offset per subject.

    A subject's grades are ``g_t = #{k: f_t + e > c_k}`` with one ``e ~ Logistic(0, 1)`` for all
    its records, so they are jointly possible exactly when ``e`` lies in
    ``(lo, hi) = (max_t c_{g_t} - f_t, min_t c_{g_t + 1} - f_t)`` (``c_0 = -inf``,
    ``c_K = inf``) and their probability is ``F(hi) - F(lo)``, ``F`` the logistic CDF. Zero
    (``-inf``) when the interval is empty: grades that the latent cannot order.

    Parameters
    ----------
    pred : TensorVariable
        ``(n,)`` latent predictions of all observations.
    cut : TensorVariable
        ``(K - 1,)`` increasing cutpoints.
    n_cut : int
        ``K - 1``.
    obs : Observations
        All observations (subject, category).
    idx : numpy.ndarray
        The endpoint's observations.
    extend : bool, optional
        Below a gap ``hi - lo`` of `_EXTEND_GAP`, continue linearly in the gap (with the slope
        ``1 / _EXTEND_GAP`` of the log-probability there) instead of falling to ``-inf``: a
        surrogate for finding a start (`EXTENDED_SUBJECT`).

    Returns
    -------
    TensorVariable
        ``(idx.size,)``: each subject's log-probability on its first record of the endpoint, 0 on
        the others (the sum is the likelihood; pointwise, the first record stands for all).
    """
    import pytensor.tensor as pt

    first, has_lo, has_hi, lower, upper = _course_bounds(pred, cut, n_cut, obs, idx)
    # Pick one element (argmax): PyTensor's max passes the gradient to every tied element, so
    # two records with the same latent (e.g. before any dose) would count twice.
    here = np.arange(first.size)
    lo_all = lower[here, pt.argmax(lower, axis=1)]
    hi_all = upper[here, pt.argmin(upper, axis=1)]
    lo_any, hi_any = has_lo.any(axis=1), has_hi.any(axis=1)
    out = pt.zeros((first.size,))
    both = np.flatnonzero(lo_any & hi_any)
    if both.size:
        lo, hi = lo_all[both], hi_all[both]
        if extend:
            width = hi - lo
            narrow = width < _EXTEND_GAP
            mid = 0.5 * (hi + lo)
            lo = pt.switch(narrow, mid - 0.5 * _EXTEND_GAP, lo)
            hi = pt.switch(narrow, mid + 0.5 * _EXTEND_GAP, hi)
        lp = _log_interval(lo, hi)  # -inf where lo >= hi
        if extend:
            lp = lp + pt.switch(narrow, (width - _EXTEND_GAP) / _EXTEND_GAP, 0.0)
        out = pt.set_subtensor(out[both], lp)
    only_hi = np.flatnonzero(~lo_any & hi_any)
    if only_hi.size:
        out = pt.set_subtensor(out[only_hi], -pt.softplus(-hi_all[only_hi]))
    only_lo = np.flatnonzero(lo_any & ~hi_any)
    if only_lo.size:
        out = pt.set_subtensor(out[only_lo], -pt.softplus(lo_all[only_lo]))
    return pt.set_subtensor(pt.zeros((idx.size,))[first], out)


#: Logistic arguments are clipped to +-_FAR where only ``F`` near 0 or 1 matters
#: (F(-_FAR) = 9e-27), to +-_FAR_OUT where a log-probability below -_FAR_OUT does.
_FAR = 60.0
_FAR_OUT = 600.0
#: Log of a weight that is not there (finite: JAX differentiates -inf terms into NaN).
_NONE = -1e4

#: Gauss-Legendre nodes per panel of `_subject_noise_logp`.
_PANEL_NODES = 40
#: Panels reach ``_TAIL_E * s / (1 - s)`` beyond the offset's bounds: the integrand left out
#: beyond them is below ``exp(-_TAIL_E)`` of the mass at the bound.
_TAIL_E = 14.0


def _log_interval(lo: Any, hi: Any) -> Any:
    """``log(F(hi) - F(lo))`` for the logistic CDF ``F``; ``-inf`` where ``hi <= lo``."""
    import pytensor.tensor as pt

    ok = lo < hi
    gap = pt.switch(ok, lo - hi, -1.0)
    return pt.switch(ok, pt.log1mexp(gap) - pt.softplus(-hi) - pt.softplus(lo), -np.inf)


def _warn_several_grades_a_day(
    model: Any, obs_specs: list, endpoint: np.ndarray, subject: np.ndarray, time: np.ndarray
) -> None:
    """Warn when an endpoint with a ``record_scale`` has several grades of a subject on one day.

    The likelihood takes the noise independent per record, while the simulators of new patients
    (strategies, aggregate likelihood) draw one number per grading day: with several grades a
    day, the fitted ``s`` and the simulated worst grades would not describe the same thing.
    """
    from pkpd import units as U

    for e, ospec in enumerate(obs_specs):
        if not getattr(ospec, "record_scale", None):
            continue
        here = endpoint == e
        day = np.floor(time[here] * U.factor(model.time_unit, "day") + 1e-9)
        _, counts = np.unique(np.stack([subject[here], day], axis=1), axis=0, return_counts=True)
        if (counts > 1).any():
            warnings.warn(
                f"ordinal endpoint {ospec.name!r} has a record_scale (noise per record) and "
                f"{int((counts > 1).sum())} subject-days with several grades: its noise is "
                f"independent per record in the likelihood but one number per day in "
                f"simulations of new patients; give one grade per day (the day's worst: "
                f"Cohort.worst_per_day)",
                UserWarning,
                stacklevel=3,
            )


def _subject_noise_logp(
    pred: Any, cut: Any, scale: Any, n_cut: int, obs: Observations, idx: np.ndarray
) -> Any:
    """Log-likelihood of an ordinal endpoint's records: a subject offset plus noise per record.

    A subject's grades are ``g_t = #{k: f_t + e + s d_t > c_k}`` with one ``e ~ Logistic(0, 1)``
    for all its records and an independent ``d_t ~ Logistic(0, 1)`` per record, so

        P(grades) = integral of  l(e) prod_t [F((h_t - e) / s) - F((l_t - e) / s)]  de

    with ``l_t = c_{g_t} - f_t``, ``h_t = c_{g_t+1} - f_t`` and ``l``, ``F`` the logistic density
    and CDF. The integrand is log-concave, close to ``l(e)`` on ``(lo, hi) = (max_t l_t,
    min_t h_t)`` and falls off outside at rate ``1 / s``. It is integrated by Gauss-Legendre
    rules (`_PANEL_NODES` nodes) on four panels at the two bounds, ``[lo - L, lo]``,
    ``[lo, lo + L']``, ``[hi - L'', hi]``, ``[hi, hi + L]`` (``L = _TAIL_E s / (1 - s)``; the inner
    ones at most half the gap), plus the middle: ``F(hi - L) - F(lo + L)`` in closed form where
    the integrand is ``l(e)`` to within ``exp(-L / s)``, and a fifth rule where the bounds cross
    (``lo > hi``: grades that only the per-record noise can order). The panels are placed with
    no gradient: the integral does not depend on where it is split, so the gradient is that of
    the integrand on fixed panels (to the quadrature's accuracy, checked against dense
    integration in the tests). Smooth in the parameters and finite everywhere, unlike the
    limit ``s -> 0`` (`_subject_offset_logp`).

    Parameters
    ----------
    pred : TensorVariable
        ``(n,)`` latent predictions of all observations.
    cut : TensorVariable
        ``(K - 1,)`` increasing cutpoints.
    scale : TensorVariable
        Scalar ``s`` in ``(0, MAX_RECORD_SCALE]`` (the model file's ``record_scale``).
    n_cut : int
        ``K - 1``.
    obs : Observations
        All observations (subject, category).
    idx : numpy.ndarray
        The endpoint's observations.

    Returns
    -------
    TensorVariable
        ``(idx.size,)``: each subject's log-probability on its first record of the endpoint, 0 on
        the others.
    """
    import pytensor.tensor as pt
    from pytensor.gradient import zero_grad

    first, has_lo, has_hi, lower, upper = _course_bounds(pred, cut, n_cut, obs, idx)
    lo_any, hi_any = has_lo.any(axis=1), has_hi.any(axis=1)
    s_fix = zero_grad(pt.clip(scale, 1e-3, 0.8))
    tail = _TAIL_E * s_fix / (1.0 - s_fix)
    lo = zero_grad(pt.max(lower, axis=1))
    hi = zero_grad(pt.min(upper, axis=1))
    feasible = pt.or_(lo < hi, np.array(~(lo_any & hi_any)))
    a = pt.switch(lo_any & hi_any, pt.minimum(lo, hi), pt.switch(lo_any, lo, hi - 2 * tail - 1))
    b = pt.switch(lo_any & hi_any, pt.maximum(lo, hi), pt.switch(hi_any, hi, lo + 2 * tail + 1))
    inner = pt.minimum(tail, 0.5 * (b - a))
    # (subjects, 5) panel ends and whether each panel is used.
    start = pt.stack([a - tail, a, b - inner, b, a + inner], axis=1)
    stop = pt.stack([a, a + inner, b, b + tail, b - inner], axis=1)
    real = np.stack([lo_any, lo_any, hi_any, hi_any], axis=1)
    used = pt.concatenate([pt.as_tensor(real), (~feasible)[:, None]], axis=1)
    x, w = np.polynomial.legendre.leggauss(_PANEL_NODES)
    half = 0.5 * (stop - start)
    nodes = (0.5 * (stop + start))[:, :, None] + half[:, :, None] * x  # (S, 5, K)
    log_w = pt.switch(
        used[:, :, None] & (half[:, :, None] > 0),
        pt.log(pt.maximum(half, 1e-300))[:, :, None] + np.log(w),
        _NONE,
    )
    e = nodes.reshape((first.size, -1))  # (S, 5K)
    # log(F(up) - F(down)) = log F(up) + log F(-down) + log(1 - exp(down - up)) per record, 0 on
    # padding (bounds +-_NO_BOUND). down - up = (c_g - c_{g+1}) / s does not depend on e. The
    # arguments are clipped where F is 0 or 1 to double precision on one side, and at
    # -+_FAR_OUT on the other (a record below exp(-_FAR_OUT) there), so that softplus has
    # finite derivatives in every branch (JAX differentiates the branches it does not take).
    up = pt.clip((upper[:, None, :] - e[:, :, None]) / scale, -_FAR_OUT, _FAR)
    down = pt.clip((lower[:, None, :] - e[:, :, None]) / scale, -_FAR, _FAR_OUT)
    gap = pt.switch(has_lo & has_hi, (lower - upper) / scale, -2 * _FAR)[:, None, :]
    log_g = pt.log1mexp(gap) - pt.softplus(-up) - pt.softplus(down)
    log_f = -pt.softplus(e) - pt.softplus(-e) + log_g.sum(axis=2)
    terms = log_f + log_w.reshape((first.size, -1))
    # Where there is no middle (bounds crossed, or closer than 2 L) its ends meet to rounding:
    # safe stand-ins there (JAX differentiates the branch a switch does not take).
    there = feasible & (b - a > 2 * tail)
    middle_lo = pt.switch(there, pt.maximum(pt.switch(lo_any, a + inner, -_FAR), -_FAR), 0.0)
    middle_hi = pt.switch(there, pt.minimum(pt.switch(hi_any, b - inner, _FAR), _FAR), 1.0)
    middle = pt.switch(there, _log_interval(middle_lo, middle_hi), _NONE)
    out = pt.logsumexp(pt.concatenate([terms, middle[:, None]], axis=1), axis=1)
    return pt.set_subtensor(pt.zeros((idx.size,))[first], out)
