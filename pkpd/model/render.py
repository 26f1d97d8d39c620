"""Render a `ModelSpec` for people: LaTeX equations and a markdown description.

Equations are rendered as written (``raw``), without the unit-conversion factors the compiled
form carries; units are listed next to every quantity instead.
"""

from __future__ import annotations

import sympy as sp

from pkpd.model.spec import ModelSpec


def _latex(expr: sp.Expr) -> str:
    return sp.latex(expr, mul_symbol="dot")


def _name(name: str) -> str:
    return sp.latex(sp.Symbol(name))


def latex_system(spec: ModelSpec) -> str:
    """LaTeX ``align*`` block: derived quantities, then one ODE per state.

    Parameters
    ----------
    spec : ModelSpec

    Returns
    -------
    str
    """
    lines = []
    for d in spec.derived.values():
        lines.append(rf"{_name(d.name)} &= {_latex(d.raw)}")
    for state, (_, raw) in spec.equations.items():
        lines.append(rf"\frac{{d\,{_name(state)}}}{{dt}} &= {_latex(raw)}")
    return "\\begin{align*}\n" + " \\\\\n".join(lines) + "\n\\end{align*}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def describe(spec: ModelSpec) -> str:
    """Markdown description of a model: equations, states, parameters, doses, observations.

    Parameters
    ----------
    spec : ModelSpec

    Returns
    -------
    str
    """
    out = [f"# {spec.name}", ""]
    if spec.description:
        out += [spec.description, ""]
    out += [f"Time unit: {spec.time_unit}. Source: `{spec.main_file}`.", ""]
    out += ["## Equations", "", "$$", latex_system(spec), "$$", ""]
    out += ["## States", "", "| state | unit | initial | description |", "|---|---|---|---|"]
    for s in spec.states.values():
        out.append(f"| {s.name} | {s.unit} | ${_latex(s.initial_raw)}$ | {_cell(s.description)} |")
    out += ["", "## Parameters", ""]
    out += ["| parameter | unit | typical | prior | IIV (SD) | covariates | source |"]
    out += ["|---|---|---|---|---|---|---|"]
    for p in spec.parameters.values():
        prior = "fixed" if p.fixed else str(p.prior)
        iiv = f"{p.iiv} ({p.iiv_scale})" if p.iiv is not None else ""
        covs = "; ".join(str(c) for c in p.covariates)
        desc = f" — {p.description}" if p.description else ""
        out.append(
            f"| {p.name}{_cell(desc)} | {p.unit} | {p.typical:.4g} | {prior} | {iiv} | "
            f"{_cell(covs)} | {_cell(p.source)} |"
        )
    if spec.covariates:
        out += ["", "## Covariates", "", "| covariate | unit | default | description |"]
        out += ["|---|---|---|---|"]
        for c in spec.covariates.values():
            default = "required" if c.default != c.default else f"{c.default:g}"
            out.append(f"| {c.name} | {c.unit} | {default} | {_cell(c.description)} |")
    if spec.doses:
        out += [
            "",
            "## Dose routes",
            "",
            "| route | into | AMT unit | lag | F |",
            "|---|---|---|---|---|",
        ]
        for d in spec.doses.values():
            unit = f"{d.amount_unit} per {d.per}" if d.per else d.amount_unit
            out.append(
                f"| {d.name} | {d.compartment} | {unit} | ${_latex(d.lag_raw)}$ | "
                f"${_latex(d.bioavailability_raw)}$ |"
            )
    if spec.observations:
        out += ["", "## Observations", "", "| endpoint | DVID | expression | unit | error |"]
        out += ["|---|---|---|---|---|"]
        for o in spec.observations.values():
            roles = ", ".join(f"{k}={v}" for k, v in o.sigma.items())
            if o.cutpoints:
                roles = (
                    f"cutpoints {', '.join(o.cutpoints)}; levels {list(o.levels)}; "
                    f"offset per {o.offset}"
                )
                if o.record_scale:
                    roles += f", plus per-record noise of scale {o.record_scale}"
            out.append(
                f"| {o.name} | {o.dvid} | ${_latex(o.raw)}$ | {o.unit} | {o.error}"
                f"{' (' + roles + ')' if roles else ''} |"
            )
    if spec.references:
        out += ["", "## References", ""] + [f"- {r}" for r in spec.references]
    return "\n".join(out) + "\n"
