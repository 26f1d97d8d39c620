from pathlib import Path

import pytest


@pytest.fixture
def write_csv(tmp_path):
    """Write CSV text (lines given without indentation) to a file and return its path."""

    def write(text: str, name: str = "data.csv") -> Path:
        path = tmp_path / name
        lines = [line.strip() for line in text.strip("\n").splitlines()]
        path.write_text("\n".join(lines) + "\n")
        return path

    return write
