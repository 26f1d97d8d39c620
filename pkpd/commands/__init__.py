"""Sub-commands of the ``pkpd`` CLI, one module per workflow (layer 8).

Each module defines ``register(app)`` adding its commands to the Typer app. Modules import their
heavy dependencies (PyMC, ArviZ) inside the command functions, so ``pkpd --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def register_all(app: Any) -> None:
    """Add the commands of every module in this package to ``app``."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(app)
