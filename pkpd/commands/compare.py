"""``pkpd compare``: strategies over the posterior (or the priors) of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def compare_cmd(
    model_or_fit: Annotated[
        str, typer.Argument(help="A saved fit (.nc) or a model (file or library name: priors).")
    ],
    strategies_file: Annotated[Path, typer.Argument(help="TOML file of [[strategy]] tables.")],
    patients: Annotated[int, typer.Option(help="Virtual patients per draw.")] = 200,
    draws: Annotated[int, typer.Option(help="Parameter draws.")] = 100,
    out: Annotated[Path, typer.Option(help="Simulation and summary (NetCDF).")] = Path(
        "comparison.nc"
    ),
    cohort: Annotated[
        str | None,
        typer.Option(help="Resample patients' covariates (and base doses) from this dataset."),
    ] = None,
    base_route: Annotated[
        list[str] | None,
        typer.Option(
            help="Dose route every patient keeps from the cohort (e.g. the CAR-T "
            "infusion); repeatable. Default: routes named cart*."
        ),
    ] = None,
    covariate: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=VALUE for every patient when no cohort is given (e.g. WT=70); repeatable."
        ),
    ] = None,
    base: Annotated[
        list[str] | None,
        typer.Option(
            help="ROUTE=AMOUNT[@DAY]: a dose every patient gets in every strategy (e.g. "
            "the CAR-T infusion cart_iv=1e8, in the route's unit); repeatable."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random number.")] = 0,
    horizon: Annotated[float, typer.Option(help="Days simulated.")] = 28.0,
    plots: Annotated[Path | None, typer.Option(help="Folder for the figures.")] = None,
    typical: Annotated[
        bool, typer.Option(help="Typical parameter values instead of random draws.")
    ] = False,
) -> None:
    """Compare dosing strategies: decision table with 95% intervals, figures, NetCDF output."""
    import pandas as pd
    from rich.progress import Progress

    from pkpd.errors import PkpdError
    from pkpd.model import load_model
    from pkpd.strategies import (
        compare,
        decision_table,
        load_strategies,
        make_population,
        simulate_strategies,
    )

    fit = None
    try:
        if model_or_fit.endswith(".nc"):
            from pkpd.inference import load_fit

            fit = load_fit(model_or_fit)
            spec = fit.spec
        else:
            spec = load_model(model_or_fit)
        model = spec.compile()
        strategies = load_strategies(strategies_file)
        data = None
        if cohort is not None:
            from pkpd.data import list_datasets, load_dataset, read_dataset

            data = (
                load_dataset(cohort)
                if cohort in list_datasets() and not Path(cohort).exists()
                else read_dataset(cohort)
            )
        routes = base_route
        if routes is None:
            routes = [r for r in model.dose_targets if r.lower().startswith("cart")]
        if data is None:
            routes = []
        values = {}
        for item in covariate or []:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--covariate takes NAME=VALUE, got {item!r}")
            values[name.strip()] = float(value)
        fixed_doses = []
        for item in base or []:
            route, sep, rest = item.partition("=")
            amount, _, day = rest.partition("@")
            if not sep:
                raise ValueError(f"--base takes ROUTE=AMOUNT[@DAY], got {item!r}")
            fixed_doses.append((route.strip(), float(day or 0.0), float(amount)))
        pop = make_population(
            model,
            n_patients=patients,
            n_draws=draws,
            seed=seed,
            fit=fit,
            cohort=data,
            covariates=values,
            base=fixed_doses,
            base_routes=routes,
            typical=typical,
        )
        cart = [r for r in model.dose_targets if r.lower().startswith("cart")]
        if cart and not pop.base:
            typer.secho(
                f"warning: no dose into {cart} (no --cohort, no --base): the patients "
                "get no CAR-T cells",
                fg=typer.colors.YELLOW,
                err=True,
            )
        with Progress(transient=True) as bar:
            task = bar.add_task("simulating", total=patients * draws)
            sim = simulate_strategies(
                model,
                pop,
                strategies,
                horizon=horizon,
                progress=lambda done, total: bar.update(task, completed=done),
            )
    except (PkpdError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    summary = compare(sim)
    table = decision_table(summary)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        typer.echo(
            f"{len(strategies)} strategies x {draws} draws ({pop.source}) x {patients} "
            f"patients of model {model.name!r}; reference: {summary.attrs['reference']}\n"
        )
        typer.echo(table.T.to_string())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    sim.merge(
        summary.rename({"strategy": "strategy"}), compat="override", combine_attrs="drop_conflicts"
    ).to_netcdf(tmp)
    tmp.replace(out)
    typer.echo(f"\nwrote {out}")
    if plots is not None:
        from pkpd.strategies.plots import forest, ribbons

        plots.mkdir(parents=True, exist_ok=True)
        forest(summary, path=plots / "forest.png")
        ribbons(sim, path=plots / "trajectories.png")
        typer.echo(f"wrote figures to {plots}/")


def register(app: typer.Typer) -> None:
    """Add ``compare`` to the CLI."""
    app.command("compare")(compare_cmd)
