"""``pkpd identify``: which parameters of a saved fit the data inform.

Prints the identifiability report (`pkpd.inference.identifiability.identifiability_report`):
per population parameter the prior and posterior SD on the sampling scale, the contraction
``1 - var_post / var_prior``, the posterior shift in prior SDs, a verdict (informed, weakly
informed, prior-dominated) and its most correlated partner. Like the other commands that read a
fit, it exits with status 1 when the fit fails its convergence checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def identify_cmd(
    fit_file: Annotated[Path, typer.Argument(help="A fit saved by `pkpd fit`.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Figure: posterior z-score against contraction (PNG, PDF, SVG)."),
    ] = None,
    pairs: Annotated[
        Path | None, typer.Option(help="Figure: draws of the most correlated parameter pairs.")
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Report parameter pairs with |correlation| >= this.")
    ] = 0.5,
    model: Annotated[
        str | None, typer.Option(help="Use this model file instead of the saved one.")
    ] = None,
) -> None:
    """Report which parameters the data inform and which stay at their priors."""
    import pandas as pd

    from pkpd.commands.fit import EXIT_FLAGGED, _load
    from pkpd.inference.identifiability import (
        identifiability_report,
        plot_contraction,
        plot_pairs,
    )

    result = _load(fit_file, model)
    report = identifiability_report(result, threshold=threshold)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        typer.echo(report.text)
    if out is not None:
        plot_contraction(result, out, report=report)
        typer.echo(f"wrote {out}")
    if pairs is not None:
        plot_pairs(result, pairs)
        typer.echo(f"wrote {pairs}")
    if not result.ok:
        typer.secho(result.verdict, fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_FLAGGED)


def register(app: Any) -> None:
    """Add ``identify`` to the CLI."""
    app.command("identify")(identify_cmd)
