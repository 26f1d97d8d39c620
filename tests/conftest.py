"""Suite-wide fixtures."""

from __future__ import annotations

import pytest
from compiled_code import release_compiled_code


@pytest.fixture(autouse=True)
def _release_compiled_code():
    yield
    release_compiled_code()
