"""``pkpd fit``, ``summary``, ``vpc``, ``fit-progress``: fit, read, check and follow fits.

``pkpd fit`` fits a model, ``pkpd summary`` reads a saved fit, ``pkpd vpc`` checks it visually,
``pkpd fit-progress`` says where a fit run in pieces stands.

A fit that fails its convergence checks (R-hat <= 1.01, bulk and tail ESS >= 400, no
divergences) is saved anyway (to be inspected), but every command that uses it says so on
stderr and exits with status 1. Errors in the inputs exit with status 2. A fit run in pieces
(``--checkpoint``) that reaches ``--max-seconds`` first exits with status 3: the same command
goes on from where it stopped; ``pkpd fit-progress FOLDER`` reads its folder between calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

#: Exit status of a command whose fit is flagged by its convergence checks.
EXIT_FLAGGED = 1
#: Exit status of ``pkpd fit --checkpoint`` stopped by ``--max-seconds`` before its last draw.
EXIT_PAUSED = 3


def _flagged_exit(fit: Any) -> None:
    if not fit.ok:
        typer.secho(f"{fit.verdict}", fg=typer.colors.RED, err=True)
        message = _unidentified(fit)
        if message:
            typer.secho(message, fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_FLAGGED)


def _unidentified(fit: Any) -> str | None:
    """Name flagged parameters whose posterior is their prior, if any."""
    from pkpd.inference.identifiability import unidentified_message

    try:
        return unidentified_message(fit)
    except Exception as exc:  # an aid: never hide the verdict behind a crash
        return f"(could not check the flagged parameters against their priors: {exc})"


def _load(path: Path, model: str | None) -> Any:
    from pkpd.cli import _fail
    from pkpd.inference import ModelChangedError, load_fit

    if not path.is_file():
        _fail(f"no fit file {path}")
    try:
        return load_fit(path, model=model)
    except (ModelChangedError, ValueError, OSError) as exc:
        _fail(str(exc))


def fit_cmd(
    model: Annotated[str, typer.Argument(help="Model file or library name.")],
    data: Annotated[str, typer.Argument(help="NONMEM-style CSV or bundled dataset name.")],
    out: Annotated[Path, typer.Option(help="Where to save the fit (NetCDF).")] = Path("fit.nc"),
    sampler: Annotated[
        str, typer.Option(help="auto, nutpie, numpyro, pymc, advi, fullrank_advi, map, pathfinder")
    ] = "auto",
    chains: Annotated[int, typer.Option(help="Chains.")] = 4,
    draws: Annotated[int, typer.Option(help="Kept draws per chain.")] = 1000,
    tune: Annotated[int, typer.Option(help="Warm-up iterations per chain.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    init: Annotated[
        str | None,
        typer.Option(
            help="Chain starts: prior (medians; with --profile the earlier stages' "
            "estimates), map or pathfinder. Default: prior, or the profile's."
        ),
    ] = None,
    target_accept: Annotated[float, typer.Option(help="NUTS target acceptance.")] = 0.8,
    correlated_iiv: Annotated[
        bool, typer.Option("--correlated-iiv", help="LKJ prior on IIV correlations.")
    ] = False,
    censoring: Annotated[str, typer.Option(help="m3 (censored likelihood) or drop.")] = "m3",
    centered: Annotated[
        list[str] | None,
        typer.Option(
            help="Centre the random effect of this parameter (repeatable; 'all' for "
            "every one; 'none' for none): for random effects each subject's data pin "
            "down. Default: none, or the profile's."
        ),
    ] = None,
    ratio: Annotated[
        str | None,
        typer.Option(
            help="Sample parameters through their ratio to others, e.g. 'p6=K_kill*k6' "
            "(comma-separated; 'none' for none): for a combination the data pin down "
            "better than its parts; the same posterior. Default: none, or the profile's."
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Fit in the stages of a fitting profile (pkpd.inference.profiles: "
            "cart_kinetics, cart_crs_core): estimate only what it names, the last "
            "stage with the sampler options above."
        ),
    ] = None,
    solver: Annotated[
        str, typer.Option(help="auto (closed form when available), tsit5, kvaerno5, ...")
    ] = "auto",
    rtol: Annotated[
        float | None,
        typer.Option(help="Relative tolerance of the ODE solver (default: fitting's, 1e-6)."),
    ] = None,
    atol: Annotated[
        float | None,
        typer.Option(help="Absolute tolerance, state units (default: fitting's, 1e-14)."),
    ] = None,
    time_unit: Annotated[
        str | None, typer.Option(help="Time unit of the dataset (default: the model's).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the sampler's progress bar.")] = True,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Folder where NUTS (numpyro) saves every chain's state as it goes; "
            "the same command goes on from there after an interruption."
        ),
    ] = None,
    max_seconds: Annotated[
        float | None,
        typer.Option(
            help="With --checkpoint: stop sampling after this many seconds and exit "
            "with status 3 (run the same command again to go on)."
        ),
    ] = None,
) -> None:
    """Fit a model to a dataset and save the posterior; exit 1 if the fit is flagged."""
    from pkpd.cli import _fail, _load_data, _load_model
    from pkpd.errors import DatasetError
    from pkpd.inference import fit
    from pkpd.inference.builder import FIT_ATOL, FIT_MAX_STEPS, FIT_RTOL
    from pkpd.solve import Solver

    spec = _load_model(model)
    cohort = _load_data(data, time_unit)
    # The library's fitting tolerances unless told otherwise (the command used atol 1e-9 and
    # 100,000 steps per interval until 2026-11-23, unlike `fit`).
    try:
        cfg = Solver(
            method=solver,
            rtol=FIT_RTOL if rtol is None else rtol,
            atol=FIT_ATOL if atol is None else atol,
            max_steps=FIT_MAX_STEPS,
        )
    except ValueError as exc:
        _fail(str(exc))
    if not out.parent.exists():
        _fail(f"output folder {out.parent} does not exist")
    if max_seconds is not None and checkpoint is None:
        _fail("--max-seconds needs --checkpoint (a folder to save the chains in)")
    names = list(centered or [])
    parameterization: Any = (
        "centered"
        if "all" in names
        else "noncentered"
        if names == ["none"]
        else {n: "centered" for n in names}
    )
    from pkpd.inference.profiles import PROFILES
    from pkpd.inference.ratios import parse_ratios

    try:
        ratios = None if ratio is None else parse_ratios(ratio)
    except ValueError as exc:
        _fail(str(exc))
    if profile is not None and profile not in PROFILES:
        _fail(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    if profile is not None and (correlated_iiv or censoring != "m3"):
        _fail(
            "--profile fits with uncorrelated IIV and the M3 likelihood: leave out "
            "--correlated-iiv and --censoring"
        )
    how = f" in the stages of profile {profile}," if profile else ""
    typer.echo(
        f"fitting {spec.name} to {cohort.source} ({cohort.n_subjects} subjects){how} with "
        f"{sampler}, {chains} chains x {draws} draws (+{tune} warm-up), seed {seed}"
    )
    from pkpd.inference.resumable import SamplingPaused

    sampler_kwargs = None if max_seconds is None else {"max_seconds": max_seconds}
    try:
        if profile is None:
            result = fit(
                spec,
                cohort,
                sampler=sampler,
                chains=chains,
                draws=draws,
                tune=tune,
                seed=seed,
                init=init or "prior",
                solver=cfg,
                progressbar=progress,
                target_accept=target_accept,
                correlated_iiv=correlated_iiv,
                censoring=censoring,
                iiv_parameterization=parameterization,
                checkpoint=checkpoint,
                sampler_kwargs=sampler_kwargs,
                ratio_parameterization=ratios,
            )
        else:
            from pkpd.inference.profiles import fit_staged

            # None: the profile's own start and random-effect form for its last stage.
            result = fit_staged(
                spec,
                cohort,
                profile,
                sampler=sampler,
                chains=chains,
                draws=draws,
                tune=tune,
                seed=seed,
                init=init,
                solver=cfg,
                progressbar=progress,
                target_accept=target_accept,
                iiv_parameterization=parameterization if names else None,
                checkpoint=checkpoint,
                sampler_kwargs=sampler_kwargs,
                ratio_parameterization=ratios,
            )
    except SamplingPaused as paused:
        typer.secho(str(paused), err=True)
        raise typer.Exit(EXIT_PAUSED) from None
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    except KeyError as exc:  # fit_staged: a profile's parameter or endpoint the model lacks
        if profile is None:
            raise
        _fail(str(exc.args[0]) if exc.args else repr(exc))
    result.save(out)
    typer.echo(result.summary_text())
    wall = result.settings.wall_time
    typer.echo(f"sampling took {wall.get('sample', float('nan')):.1f} s; saved to {out}")
    _flagged_exit(result)


def summary_cmd(
    fit_file: Annotated[Path, typer.Argument(help="A fit saved by `pkpd fit`.")],
    model: Annotated[
        str | None, typer.Option(help="Use this model file instead of the saved one.")
    ] = None,
    loo: Annotated[bool, typer.Option(help="Also print PSIS-LOO.")] = False,
) -> None:
    """Print the summary of a saved fit; exit 1 if the fit is flagged."""
    import warnings

    result = _load(fit_file, model)
    typer.echo(result.summary_text())
    if loo:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            typer.echo(str(result.loo()))
    _flagged_exit(result)


def vpc_cmd(
    fit_file: Annotated[Path, typer.Argument(help="A fit saved by `pkpd fit`.")],
    out: Annotated[Path, typer.Option(help="Figure file (PNG, PDF, SVG).")] = Path("vpc.png"),
    n_sim: Annotated[int, typer.Option(help="Simulated studies.")] = 200,
    bins: Annotated[int, typer.Option(help="Time bins.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed of the simulation.")] = 0,
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic y axis.")] = False,
    model: Annotated[
        str | None, typer.Option(help="Use this model file instead of the saved one.")
    ] = None,
) -> None:
    """Draw a visual predictive check of a saved fit; exit 1 if the fit is flagged."""
    from pkpd.inference.plots import plot_vpc

    result = _load(fit_file, model)
    plot_vpc(result, out, n_sim=n_sim, n_bins=bins, seed=seed, log_y=log_y)
    typer.echo(f"wrote {out}")
    _flagged_exit(result)


def progress_cmd(
    folder: Annotated[Path, typer.Argument(help="Checkpoint folder of `pkpd fit --checkpoint`.")],
    worst: Annotated[int, typer.Option(help="Coordinates listed, worst R-hat first.", min=0)] = 10,
) -> None:
    """Say where a fit run in pieces stands and how its draws so far mix (reads the folder only)."""
    import pandas as pd

    from pkpd.cli import _fail
    from pkpd.inference.checkpoint_report import checkpoint_progress, interim_diagnostics

    try:
        table = checkpoint_progress(folder)
    except FileNotFoundError as exc:
        _fail(str(exc))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        shown = table.assign(
            seconds=table["seconds"].round().astype(int),
            remaining_s=table["remaining_s"].round().astype("Int64"),
        )
        typer.echo(shown.to_string(float_format=lambda v: f"{v:.3g}"))
        left = table["remaining_s"].max()
        if left > 0:
            typer.echo(
                f"about {_duration(left)} of sampling left for the slowest chain at its rate so "
                "far (less once other chains finish, when chains outnumber cores)"
            )
        try:
            diag = interim_diagnostics(folder)
        except ValueError as exc:
            typer.echo(f"no interim diagnostics yet: {exc}")
            return
        n, chains = diag.attrs["draws"], diag.attrs["chains"]
        typer.echo(
            f"draws so far: {n} per chain x {chains} chains ({diag.attrs['divergent']} "
            f"divergent); max R-hat {diag['rhat'].max():.3f} ({diag['rhat'].idxmax()}), "
            f"min bulk ESS {diag['ess_bulk'].min():.0f} ({diag['ess_bulk'].idxmin()}), "
            f"min tail ESS {diag['ess_tail'].min():.0f} ({diag['ess_tail'].idxmin()}); "
            "on the unconstrained coordinates"
        )
        if worst:
            typer.echo(diag.head(worst).to_string(float_format=lambda v: f"{v:.3g}"))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def register(app: Any) -> None:
    """Add ``fit``, ``summary``, ``vpc`` and ``fit-progress`` to the CLI."""
    app.command("fit")(fit_cmd)
    app.command("summary")(summary_cmd)
    app.command("vpc")(vpc_cmd)
    app.command("fit-progress")(progress_cmd)
