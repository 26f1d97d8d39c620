"""Fixtures of the conformance suite: every case runs for both models and both solvers."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import MODELS, SOLVERS  # noqa: E402


@pytest.fixture(params=list(MODELS), scope="session")
def model(request):
    return MODELS[request.param]


@pytest.fixture(params=list(SOLVERS), scope="session")
def solver(request):
    return SOLVERS[request.param]
