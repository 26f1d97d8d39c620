"""A fit: posterior draws with the model and data they belong to; saved as one NetCDF file.

`Fit` holds the ArviZ ``InferenceData`` (``posterior``: one variable per parameter named as in
the model file, ``omega_<name>``, ``eta (chain, draw, subject, iiv)``; ``sample_stats``;
``log_likelihood`` per observation; ``observed_data``; ``constant_data``), the `ModelSpec`, the
`Cohort` and the settings. `Fit.save` writes everything to one NetCDF file:

- the InferenceData groups, with provenance in the attributes of the ``posterior`` group
  (``pkpd_*``): the text of every model file and the model hash, a hash of the dataset, the
  versions of pkpd and its numerical stack, the CPU model, the seed and the sampler settings;
- the cohort (group ``pkpd_cohort``), so plots and predictive checks work from the file alone.

Writes are atomic (a temporary file in the same folder, then `os.replace`): an interrupted save
never leaves a corrupt fit. `load_fit` re-attaches the model: from the file on disk when it is
still there, and then only if its hash is unchanged (`ModelChangedError` otherwise, unless the
model is given explicitly); from the saved text when the file is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pkpd._jax import host_cpu
from pkpd.errors import PkpdError

#: Attribute prefix of pkpd's provenance in the posterior group.
_PREFIX = "pkpd_"
_COHORT_GROUP = "pkpd_cohort"
#: Version of the file layout, bumped when it changes incompatibly.
FORMAT_VERSION = 1


class ModelChangedError(PkpdError):
    """The model file on disk is not the one a saved fit was made with."""


def dataset_hash(cohort: Any) -> str:
    """SHA-256 of a cohort's records (as written back to CSV): identifies the data of a fit.

    Parameters
    ----------
    cohort : Cohort
        The dataset.

    Returns
    -------
    str
    """
    text = cohort.to_dataframe().to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of Python, pkpd and the numerical stack, and the CPU (`host_cpu`).

    Returns
    -------
    dict of str to str
    """
    import importlib.metadata as md

    out = {"python": platform.python_version(), "cpu": host_cpu()}
    for name in (
        "pkpd",
        "numpy",
        "jax",
        "diffrax",
        "pymc",
        "pytensor",
        "arviz",
        "nutpie",
        "numpyro",
        "xarray",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


class Fit:
    """Posterior draws of a model fitted to a cohort.

    Parameters
    ----------
    idata : arviz.InferenceData
        The draws (see the module docstring for the groups).
    spec : ModelSpec
        The model.
    cohort : Cohort
        The data.
    settings : FitSettings
        How the fit was run.
    info : ModelInfo, optional
        The prepared model (rebuilt on demand after loading).
    extra : dict, optional
        Sampler-specific results (MAP report, ELBO).
    provenance : dict, optional
        Versions, hashes, dates (filled in by `save` / `load_fit`).
    """

    def __init__(
        self,
        idata: Any,
        spec: Any,
        cohort: Any,
        settings: Any,
        info: Any = None,
        extra: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
    ):
        self.idata = idata
        self.spec = spec
        self.cohort = cohort
        self.settings = settings
        self._info = info
        self.extra = dict(extra or {})
        self.provenance = dict(provenance or {})
        self._diag: dict[str, Any] | None = None

    # -- the model behind the draws -------------------------------------------------------------

    @property
    def info(self) -> Any:
        """The prepared model (`ModelInfo`): compiled model, bound data, prediction function."""
        if self._info is None:
            from pkpd.inference.builder import prepare_model

            self._info = prepare_model(
                self.spec,
                self.cohort,
                solver=solver_from_settings(self.settings),
                correlated_iiv=self.settings.correlated_iiv,
                censoring=self.settings.censoring,
                gradient=self.settings.gradient,
                integrator=self.settings.integrator,
            )
        return self._info

    @property
    def posterior(self) -> Any:
        """The posterior group (`xarray.Dataset`)."""
        return self.idata.posterior

    def draws(
        self, thin: int | None = None, max_draws: int | None = None, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Typical-value vectors and random effects of the draws, flattened over chains.

        Parameters
        ----------
        thin : int, optional
            Keep every ``thin``-th draw.
        max_draws : int, optional
            Keep at most this many draws, chosen at random (seeded).
        seed : int, optional
            Seed of that choice.

        Returns
        -------
        theta : numpy.ndarray
            ``(D, P)`` typical values in the model's parameter order (fixed ones included).
        eta : numpy.ndarray
            ``(D, N, K)`` random effects.
        """
        info = self.info
        post = self.posterior
        stacked = {
            n: np.asarray(post[n].values).reshape(-1, *post[n].shape[2:]) for n in info.estimated
        }
        theta = info.theta_from(stacked)
        n_draws = theta.shape[0]
        if "eta" in post:
            eta = np.asarray(post["eta"].values).reshape(n_draws, *post["eta"].shape[2:])
        else:
            eta = np.zeros((n_draws, info.n_subjects, 0))
        idx = np.arange(n_draws)
        if thin:
            idx = idx[::thin]
        if max_draws is not None and idx.size > max_draws:
            idx = np.sort(np.random.default_rng(seed).choice(idx, max_draws, replace=False))
        return theta[idx], eta[idx]

    # -- diagnostics and summaries --------------------------------------------------------------

    def diagnostics(self) -> dict[str, Any]:
        """Convergence diagnostics and the verdict.

        Returns
        -------
        dict
            ``rhat_max``, ``ess_bulk_min``, ``ess_tail_min``, ``divergences``, ``ebfmi_min``,
            ``treedepth_hits``, ``ok``, ``problems``, ``verdict`` and more
            (`pkpd.inference.diagnostics.convergence`).
        """
        if self._diag is None:
            from pkpd.inference.diagnostics import convergence, verdict

            method = (
                "nuts"
                if self.settings.sampler in ("nutpie", "numpyro", "pymc")
                else (self.settings.sampler)
            )
            diag = convergence(self.idata, method=method)
            diag["verdict"] = verdict(diag)
            self._diag = diag
        return dict(self._diag)

    @property
    def ok(self) -> bool:
        """Whether the fit passes its convergence checks."""
        return bool(self.diagnostics()["ok"])

    @property
    def verdict(self) -> str:
        """One line: ``"OK: ..."`` or ``"FLAGGED, do not trust this fit: ..."``."""
        return self.diagnostics()["verdict"]

    def _warn_if_flagged(self) -> None:
        if not self.ok:
            from pkpd.inference.diagnostics import FitWarning

            warnings.warn(self.verdict, FitWarning, stacklevel=3)

    def summary(self, mass: float = 0.95) -> pd.DataFrame:
        """Pharmacometric summary: typical values, IIV (%CV, shrinkage), residual error.

        Parameters
        ----------
        mass : float, optional
            Mass of the credible intervals.

        Returns
        -------
        pandas.DataFrame
            See `pkpd.inference.diagnostics.parameter_table`; ``attrs["verdict"]`` holds the
            verdict, and a `FitWarning` is issued when the fit is flagged.
        """
        from pkpd.inference.diagnostics import parameter_table

        table = parameter_table(self.idata, self.spec, self.info.roles, self.info.iiv, mass)
        table.attrs["verdict"] = self.verdict
        table.attrs["ok"] = self.ok
        self._warn_if_flagged()
        return table

    def summary_text(self) -> str:
        """Return the summary as text, the verdict on its first line.

        Returns
        -------
        str
        """
        from pkpd.inference.diagnostics import format_table

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = self.summary()
        head = (
            f"model {self.spec.name} fitted to {self.cohort.source} "
            f"({self.cohort.n_subjects} subjects, {len(self.info.observations)} observations, "
            f"{int((self.info.observations.cens != 0).sum())} censored); sampler "
            f"{self.settings.sampler}, seed {self.settings.seed}"
        )
        return format_table(table, self.verdict) + "\n" + head

    def __repr__(self) -> str:
        return (
            f"<Fit {self.spec.name} on {self.cohort.source}: {self.settings.sampler}, "
            f"{self.settings.chains} chains x {self.settings.draws} draws; {self.verdict}>"
        )

    def loo(self, **kwargs: Any) -> Any:
        """PSIS-LOO cross-validation (`arviz.loo`) on the per-observation log-likelihood.

        Parameters
        ----------
        **kwargs
            Passed to `arviz.loo` (e.g. ``pointwise=True``).

        Returns
        -------
        arviz.ELPDData
        """
        import arviz as az

        if "log_likelihood" not in self.idata.groups():
            raise ValueError(
                "this fit has no log_likelihood group (fit with log_likelihood_group=True)"
            )
        self._warn_if_flagged()
        return az.loo(self.idata, var_name="y", **kwargs)

    # -- saving -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fit to one NetCDF file, atomically.

        Parameters
        ----------
        path : str or os.PathLike
            Output file (``.nc``). Its folder must exist.

        Returns
        -------
        Path
            The file written.
        """
        path = Path(path)
        idata = self.idata.copy()
        attrs = dict(idata.posterior.attrs)
        provenance = {
            "format_version": FORMAT_VERSION,
            "model_name": self.spec.name,
            "model_hash": self.spec.hash,
            "model_files": json.dumps(self.spec.files),
            "dataset_hash": dataset_hash(self.cohort),
            "dataset_source": str(self.cohort.source),
            "versions": json.dumps(self.provenance.get("versions") or package_versions()),
            "created": self.provenance.get("created") or pd.Timestamp.now("UTC").isoformat(),
            "settings": json.dumps(asdict(self.settings), default=_jsonable),
            "seed": int(self.settings.seed),
            "sampler": self.settings.sampler,
            "extra": json.dumps(self.extra, default=float),
        }
        attrs.update({_PREFIX + k: v for k, v in provenance.items()})
        idata.posterior.attrs = attrs
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            idata.to_netcdf(tmp)
            self.cohort.to_netcdf(tmp, mode="a", group=_COHORT_GROUP)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.provenance.update(provenance)
        return path


def _jsonable(value: Any) -> Any:
    """JSON stand-in for a setting JSON cannot write (numpy scalars; anything else by repr)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return repr(value)


def solver_from_settings(settings: Any) -> Any:
    """Rebuild the `Solver` of a fit from its saved ``repr`` (method, rtol, atol, max_steps).

    Parameters
    ----------
    settings : FitSettings
        The fit's settings.

    Returns
    -------
    Solver or None
        None (the default fitting solver) when the repr cannot be read back.
    """
    import re

    from pkpd.solve import Solver

    text = settings.solver
    method = re.search(r"method='([a-z0-9]+)'", text)
    if method is None:
        return None
    kwargs: dict[str, Any] = {"method": method.group(1)}
    for key in ("rtol", "atol"):
        m = re.search(rf"{key}=([0-9.eE+-]+)", text)
        if m:
            kwargs[key] = float(m.group(1))
    m = re.search(r"max_steps=(\d+)", text)
    if m:
        kwargs["max_steps"] = int(m.group(1))
    return Solver(**kwargs)


def load_fit(path: str | os.PathLike, model: Any = None) -> Fit:
    """Load a fit saved by `Fit.save`.

    Parameters
    ----------
    path : str or os.PathLike
        The NetCDF file.
    model : ModelSpec or str or Path, optional
        Use this model instead of the saved one (e.g. after editing a source comment). Without
        it, the model file named in the fit is loaded from disk and must be unchanged; when the
        file no longer exists, the model is rebuilt from the text saved in the fit.

    Returns
    -------
    Fit

    Raises
    ------
    ModelChangedError
        If the model file on disk differs from the one the fit was made with (hash mismatch)
        and no ``model`` is given.
    ValueError
        If the file is not a pkpd fit, or its saved dataset does not match its hash.
    """
    import arviz as az

    from pkpd.data.cohort import Cohort
    from pkpd.inference.sample import FitSettings
    from pkpd.model import load_model, load_model_texts

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the extra pkpd_cohort group
        idata = az.from_netcdf(path)
    if _COHORT_GROUP in idata.groups():
        delattr(idata, _COHORT_GROUP)
        idata._groups = [g for g in idata._groups if g != _COHORT_GROUP]
    attrs = idata.posterior.attrs if "posterior" in idata.groups() else {}
    if _PREFIX + "model_hash" not in attrs:
        raise ValueError(f"{path} is not a pkpd fit (no {_PREFIX}model_hash attribute)")
    prov = {k[len(_PREFIX) :]: v for k, v in attrs.items() if k.startswith(_PREFIX)}
    files = json.loads(prov["model_files"])
    saved_hash = prov["model_hash"]

    if model is not None:
        spec = load_model(model) if isinstance(model, str | Path) else model
        if spec.hash != saved_hash:
            warnings.warn(
                f"{path}: using the model given ({spec.name}), which differs from the one the "
                "fit was made with (model hash mismatch)",
                stacklevel=2,
            )
    else:
        main = next(iter(files))
        if Path(main).is_file():
            spec = load_model(main)
            if spec.hash != saved_hash:
                raise ModelChangedError(
                    f"{path} was fitted with model file {main} as it was then; that file (or "
                    "a file it includes) has changed since (hash "
                    f"{saved_hash[:12]} -> {spec.hash[:12]}). Restore it, refit, or load with "
                    "load_fit(path, model=...) to use a model explicitly."
                )
        else:
            spec = load_model_texts(files)

    cohort = Cohort.from_netcdf(path, group=_COHORT_GROUP)
    if dataset_hash(cohort) != prov["dataset_hash"]:
        raise ValueError(f"{path}: the saved dataset does not match its hash (corrupt file)")
    settings = FitSettings(**json.loads(prov["settings"]))
    prov["versions"] = json.loads(prov["versions"])
    extra = json.loads(prov.pop("extra", "{}"))
    return Fit(
        idata=idata, spec=spec, cohort=cohort, settings=settings, extra=extra, provenance=prov
    )
