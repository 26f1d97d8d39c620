"""Suite-wide fixtures and settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from compiled_code import release_compiled_code

#: JAX's persistent compilation cache of the test run, in pytest's cache folder: shared by the
#: xdist workers and the subprocesses (notebooks, CLI), and kept between local runs. Many tests
#: compile the same programs again (a NUTS fit of one model in several tests, each through new
#: closures, so JAX's in-memory caches miss), and a disk hit takes milliseconds against seconds
#: of XLA compilation: tests/inference/test_resumable.py ran in 250 s without it and 93 s with an
#: empty one, the whole suite in 2662 s instead of 3499 s (2026-12-07, 2 cores, a fit beside
#: both; benchmarks/RESULTS.md). A cache folder set by the user (JAX_COMPILATION_CACHE_DIR) wins.
JAX_CACHE = "jax-compilation-cache"
#: Bytes the cache may hold; JAX evicts the least recently used entries past it (with a file lock
#: around every read and write, so the workers never read a half-written entry: filelock, a
#: development dependency). pkpd's default (`pkpd._jax.COMPILATION_CACHE_BYTES`), not imported:
#: importing pkpd imports JAX, before this file has set its flags.
JAX_CACHE_MAX_SIZE = 2 * 1024**3


def pytest_configure(config: pytest.Config) -> None:
    folder = Path(config.rootpath) / ".pytest_cache" / JAX_CACHE
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(folder))
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(JAX_CACHE_MAX_SIZE))
    if "jax" in sys.modules:  # imported already (a plugin): its flags were read then
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update(
            "jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"])
        )


@pytest.fixture(autouse=True)
def _release_compiled_code():
    yield
    release_compiled_code()
