"""The ``pkpd`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from pkpd.data import Cohort

app = typer.Typer(
    name="pkpd",
    help="Bayesian pharmacodynamic intervention modelling (CAR-T, cytokines, CRS).",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load_model(model: str):
    from pkpd.errors import ModelError
    from pkpd.model import load_model

    try:
        return load_model(model)
    except ModelError as exc:
        _fail(f"model file is invalid:\n{exc}")
    except FileNotFoundError as exc:
        _fail(str(exc))


def _load_data(data: str, time_unit: str | None):
    from pkpd.data import list_datasets, load_dataset, read_dataset
    from pkpd.errors import DatasetError

    try:
        if not Path(data).exists() and data in list_datasets():
            return load_dataset(data)
        return read_dataset(data, time_unit=time_unit)
    except DatasetError as exc:
        _fail(f"dataset is invalid:\n{exc}")
    except FileNotFoundError as exc:
        _fail(str(exc))


def _parse_params(values: list[str] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in values or []:
        name, sep, val = item.partition("=")
        if not sep:
            _fail(f"--param takes NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            _fail(f"--param {name}: {val!r} is not a number")
    return out


def _parse_grid(grid: str | None, tmax: float) -> np.ndarray:
    if grid is None:
        return np.linspace(0.0, tmax, 241)
    try:
        start, stop, step = (float(x) for x in grid.split(":"))
    except ValueError:
        _fail(f"--grid takes START:STOP:STEP, got {grid!r}")
    if step <= 0 or stop <= start:
        _fail("--grid needs STOP > START and STEP > 0")
    return np.arange(start, stop + step / 2, step)


@app.callback()
def _main(
    compilation_cache: Annotated[
        bool,
        typer.Option(
            "--compilation-cache/--no-compilation-cache",
            help="Keep JAX's compiled programs on disk ($JAX_COMPILATION_CACHE_DIR, else "
            "~/.cache/pkpd/jax), so a later call on the same model and data skips compiling "
            "them.",
        ),
    ] = True,
) -> None:
    """Bayesian pharmacodynamic intervention modelling (CAR-T, cytokines, CRS)."""
    if compilation_cache:
        from pkpd._jax import use_compilation_cache

        use_compilation_cache()


@app.command("models")
def models_cmd() -> None:
    """List the models of the bundled library."""
    from pkpd.model.library import list_models

    for name, description in list_models():
        typer.echo(f"{name:<28} {description}")


@app.command("datasets")
def datasets_cmd() -> None:
    """List the bundled datasets."""
    from pkpd.data import DATASETS, list_datasets

    for name in list_datasets():
        typer.echo(f"{name:<20} {DATASETS[name].description}")


@app.command("check")
def check_cmd(
    model: Annotated[str, typer.Argument(help="Model file or library name.")],
) -> None:
    """Load, unit-check and compile a model file, then describe it."""
    spec = _load_model(model)
    try:
        spec.compile()
    except Exception as exc:  # a compile error is the user's model, report it plainly
        _fail(f"model does not compile: {exc}")
    typer.echo(spec.describe())


@app.command("simulate")
def simulate_cmd(
    model: Annotated[str, typer.Argument(help="Model file or library name (see `pkpd models`).")],
    data: Annotated[str, typer.Argument(help="NONMEM-style CSV or bundled dataset name.")],
    out: Annotated[Path, typer.Option(help="CSV of predictions at the observations.")] = Path(
        "predictions.csv"
    ),
    plot: Annotated[Path | None, typer.Option(help="PNG/PDF of individual curves.")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="Override a typical value: NAME=VALUE (repeatable).")
    ] = None,
    solver: Annotated[str, typer.Option(help="tsit5, dopri5, dopri8, kvaerno5, analytic, auto")] = (
        "auto"
    ),
    rtol: Annotated[float, typer.Option(help="Relative tolerance.")] = 1e-8,
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-10,
    grid: Annotated[
        str | None, typer.Option(help="Plot grid START:STOP:STEP (model time).")
    ] = None,
    time_unit: Annotated[
        str | None, typer.Option(help="Time unit of the dataset (default: the model's).")
    ] = None,
) -> None:
    """Simulate a model over a dataset's dosing history at typical parameter values."""
    from pkpd.solve import Solver

    spec = _load_model(model)
    compiled = spec.compile()
    cohort = _load_data(data, time_unit)
    params = _parse_params(param)
    unknown = sorted(set(params) - set(compiled.parameters))
    if unknown:
        _fail(f"unknown parameter(s) {unknown}; the model has {list(compiled.parameters)}")
    try:
        cfg = Solver(method=solver, rtol=rtol, atol=atol)
        cfg.uses_analytic(compiled)  # "analytic" for a model without a closed form raises
    except ValueError as exc:
        _fail(str(exc))
    result = _run_simulation(compiled, cohort, params, cfg, out, plot, grid)
    typer.echo(result)


def _run_simulation(compiled, cohort, params, cfg, out: Path, plot: Path | None, grid: str | None):
    from pkpd.errors import DatasetError, SolverError
    from pkpd.plots import plot_individual
    from pkpd.solve import simulate
    from pkpd.summary import residual_table

    try:
        sim = simulate(compiled, cohort, params=params, solver=cfg)
    except (SolverError, DatasetError) as exc:
        _fail(str(exc))
    table = sim_to_table(sim, cohort)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    lines = [f"wrote {len(table)} predictions for {cohort.n_subjects} subjects to {out}"]
    summary = residual_table(table)
    lines.append("residuals (DV - PRED) at typical values:")
    lines.append(summary.to_string(float_format=lambda v: f"{v:.3g}"))
    if plot is not None:
        tmax = float(np.nanmax(sim["obs_time"].values)) if sim["obs_time"].size else 1.0
        times = _parse_grid(grid, tmax)
        dense = simulate(compiled, cohort, params=params, solver=cfg, times=times)
        endpoint = compiled.endpoints[0]
        curves = dense["pred_grid"].sel(endpoint=endpoint).to_dataset(name=endpoint)
        curves[endpoint].attrs["unit"] = compiled.endpoint_units[0]
        curves["time"].attrs["unit"] = compiled.time_unit
        observed = sim.assign(
            time=sim["obs_time"],
            dv=(("subject", "obs"), np.asarray(cohort.ds["obs_dv"].values, dtype=float)),
            mask=sim["obs_mask"] & (sim["obs_endpoint"] == endpoint),
        )
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_individual(
            observed, curves, endpoint, plot, title=f"{compiled.name}: typical-value predictions"
        )
        lines.append(f"wrote plot to {plot}")
    return "\n".join(lines)


def sim_to_table(sim: xr.Dataset, cohort: Cohort) -> pd.DataFrame:
    """Flatten a simulation at the observations to a NONMEM-style table (ID, TIME, DVID, DV, PRED).

    Parameters
    ----------
    sim : xarray.Dataset
        Output of `pkpd.solve.simulate` without a grid.
    cohort : Cohort
        The simulated cohort (for the observed DV).

    Returns
    -------
    pandas.DataFrame
        One row per real observation, in cohort order; TIME in the model's time unit.
    """
    import pandas as pd

    mask = sim["obs_mask"].values.astype(bool)
    ids = np.broadcast_to(sim["subject"].values[:, None], mask.shape)
    return pd.DataFrame(
        {
            "ID": ids[mask],
            "TIME": sim["obs_time"].values[mask],
            "ENDPOINT": sim["obs_endpoint"].values[mask],
            "DV": np.asarray(cohort.ds["obs_dv"].values, dtype=float)[mask],
            "PRED": sim["pred"].values[mask],
        }
    )


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Folder for the demo outputs.")] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Seed of the fit and the virtual patients.")] = 1,
    quick: Annotated[
        bool, typer.Option(help="Smaller fit and comparison (for smoke tests).")
    ] = False,
) -> None:
    """Run the main job on bundled data, in three steps (a few minutes on 2 cores).

    1. Theophylline (12 real subjects) simulated under the 1-compartment oral model at the
       published typical values (nlmixr2 SAEM: ka 1.59 /h, CL 2.74 L/h, V 31.7 L).
    2. The same model fitted to the same data as a hierarchical Bayesian model (NUTS): summary,
       diagnostics, visual predictive check and the saved fit.
    3. The default strategy set (reactive and prophylactic tocilizumab, anakinra, disulfiram,
       dexamethasone) compared on the CAR-T/CRS model for virtual patients resampled from the
       bundled synthetic cohort, over prior draws: decision table and figures.
    """
    from pkpd.solve import Solver

    out.mkdir(parents=True, exist_ok=True)
    spec = _load_model("pk_1cmt_oral")
    compiled = spec.compile()
    cohort = _load_data("theophylline", None)
    params = {"ka": 1.59, "CL": 2.74, "V": 31.7}
    typer.secho("1. simulation at the published typical values", bold=True)
    typer.echo(f"{cohort}\n")
    typer.echo(
        "model pk_1cmt_oral at the published nlmixr2 SAEM typical values "
        "(ka 1.59 /h, CL 2.74 L/h, V 31.7 L)"
    )
    result = _run_simulation(
        compiled,
        cohort,
        params,
        Solver(method="tsit5"),
        out / "theophylline_predictions.csv",
        out / "theophylline_predictions.png",
        "0:25:0.1",
    )
    typer.echo(result)

    typer.secho("\n2. hierarchical Bayesian fit", bold=True)
    from pkpd.inference import fit
    from pkpd.inference.plots import plot_vpc

    draws = 200 if quick else 500
    f = fit(
        spec,
        cohort,
        chains=4 if not quick else 2,
        draws=draws,
        tune=draws,
        seed=seed,
        progressbar=False,
    )
    typer.echo(f.summary_text())
    path = f.save(out / "theophylline_fit.nc")
    plot_vpc(f, out / "theophylline_vpc.png")
    typer.echo(
        f"published (nlmixr2 SAEM): ka 1.59 /h, CL 2.74 L/h, V 31.7 L; "
        f"wrote {path} and {out / 'theophylline_vpc.png'}"
    )

    typer.secho("\n3. strategy comparison on the CAR-T/CRS model (prior draws)", bold=True)
    import pandas as pd

    from pkpd.strategies import (
        compare,
        decision_table,
        load_strategies,
        make_population,
        simulate_strategies,
        subgroup_masks,
    )
    from pkpd.strategies.plots import forest, ribbons

    cart = _load_model("cart_crs").compile()
    virtual = _load_data("virtual_cart", None)
    n_patients, n_draws = (20, 3) if quick else (60, 8)
    pop = make_population(
        cart,
        n_patients=n_patients,
        n_draws=n_draws,
        seed=seed,
        cohort=virtual,
        base_routes=["cart_iv"],
    )
    sim = simulate_strategies(cart, pop, load_strategies("cart_default"))
    groups = subgroup_masks(sim, {"high tumour burden": ("TUMOR", ">=q", 2 / 3)})
    summary = compare(sim, subgroups=groups)
    table = decision_table(summary)
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        typer.echo(
            f"{n_patients} virtual patients x {n_draws} prior draws; reference: "
            f"{summary.attrs['reference']} (95% intervals over draws)"
        )
        typer.echo(table.T.to_string())
    table.to_csv(out / "strategies_decision_table.csv")
    forest(summary, path=out / "strategies_forest.png")
    ribbons(
        sim,
        ["cart_blood", "il6", "il1", "crp", "net", "toc_conc"],
        log_y=["cart_blood", "il6"],
        path=out / "strategies_trajectories.png",
    )
    typer.echo(
        f"wrote {out / 'strategies_decision_table.csv'}, strategies_forest.png and "
        "strategies_trajectories.png"
    )


@app.command("version")
def version_cmd() -> None:
    """Print the versions of pkpd and its engine, and the CPU (results can differ between CPUs)."""
    import diffrax
    import jax

    import pkpd
    from pkpd._jax import host_cpu

    typer.echo(
        f"pkpd {pkpd.__version__} (jax {jax.__version__}, diffrax {diffrax.__version__}; "
        f"CPU {host_cpu()})"
    )


def _register_subcommands() -> None:
    from pkpd.commands import register_all

    register_all(app)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    app()
