"""Solver configuration objects."""

import diffrax
import pytest
from handmodels import one_cmt

from pkpd.solve import Solver
from pkpd.solve.erk import UnrolledDopri8, UnrolledTsit5


def test_defaults_and_constructors():
    s = Solver()
    assert (s.method, s.rtol, s.atol, s.max_steps, s.dt0) == ("tsit5", 1e-8, 1e-10, 100_000, None)
    # Explicit methods are diffrax's tableaus with the stages unrolled (pkpd.solve.erk).
    assert isinstance(s.diffrax_solver(), UnrolledTsit5)
    assert isinstance(Solver.stiff().diffrax_solver(), diffrax.Kvaerno5)
    assert isinstance(Solver.stiff("kvaerno3").diffrax_solver(), diffrax.Kvaerno3)
    assert isinstance(Solver.nonstiff("dopri8").diffrax_solver(), UnrolledDopri8)
    assert isinstance(Solver(diffrax.Dopri5()).diffrax_solver(), diffrax.Dopri5)
    assert isinstance(s.diffrax_adjoint(), diffrax.RecursiveCheckpointAdjoint)
    assert hash(Solver()) == hash(Solver())  # static argument of the compiled solve


@pytest.mark.parametrize(
    "kwargs",
    [dict(method="rk4"), dict(rtol=0.0), dict(atol=-1.0), dict(max_steps=0), dict(method=3)],
)
def test_invalid(kwargs):
    with pytest.raises(ValueError):
        Solver(**kwargs)
    with pytest.raises(ValueError):
        Solver.stiff("tsit5")
    with pytest.raises(ValueError):
        Solver.nonstiff("kvaerno5")


def test_auto_and_analytic_selection():
    with_form, without = one_cmt(), one_cmt(analytic=False)
    assert Solver("auto").uses_analytic(with_form)
    assert not Solver("auto").uses_analytic(without)
    assert Solver("analytic").uses_analytic(with_form)
    with pytest.raises(ValueError, match="no analytic solution"):
        Solver("analytic").uses_analytic(without)
    assert not Solver().uses_analytic(with_form)
