"""The bundled model library (``models/`` in the source tree, ``pkpd/_models`` in a wheel)."""

from __future__ import annotations

import tomllib
from pathlib import Path


def library_path() -> Path:
    """Folder of the bundled model files.

    Returns
    -------
    pathlib.Path
        ``pkpd/_models`` inside an installed wheel, else ``models/`` of the source checkout.
    """
    here = Path(__file__).resolve().parent.parent
    installed = here / "_models"
    if installed.is_dir():
        return installed
    return here.parent / "models"


def list_models() -> list[tuple[str, str]]:
    """Names and one-line descriptions of the library's model files.

    Returns
    -------
    list of (str, str)
        Sorted by name.
    """
    out = []
    for path in sorted(library_path().glob("*.toml")):
        try:
            model = tomllib.loads(path.read_text(encoding="utf-8")).get("model", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            model = {"description": "(invalid model file)"}
        desc = str(model.get("description", "")).strip().splitlines()
        out.append((path.stem, desc[0] if desc else ""))
    return out
