"""Fixtures of the model-layer tests: write model files into tmp_path, load errors."""

import sys
import textwrap
from pathlib import Path

import pytest

from pkpd.errors import ModelError
from pkpd.model import load_model

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def write(tmp_path):
    """write(name, text) -> path of a model file in tmp_path (text is dedented)."""

    def _write(name, text):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


@pytest.fixture
def load_error(write):
    """load_error(text, name) -> (ModelError, path): the error that loading the file raises."""

    def _load_error(text, name="bad.toml"):
        path = write(name, text)
        with pytest.raises(ModelError) as exc:
            load_model(path)
        return exc.value, path

    return _load_error
