"""The test command's own settings (pyproject's pytest options, conftest) keep CI from hanging.

Regression: on 2026-12-04 a worker segfaulted inside XLA's compiler near the end of the suite and
pytest-xdist (``--dist loadfile``) replaced it and then waited for ever, so CI ran out of its
90 minutes instead of failing with the test's name.
"""

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def run_with_project_settings(folder: Path, *options: str) -> tuple[int, str]:
    """Run pytest on `folder` with this project's pytest settings; (return code, output)."""
    cmd = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml")]
    cmd += ["--rootdir", str(folder), "-p", "no:cacheprovider", *options, str(folder)]
    # The old settings never return on a crash; 120 s is ~10x what a crash-and-stop takes.
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=folder)
    return run.returncode, run.stdout + run.stderr


def test_a_crashing_worker_fails_the_run_quickly_and_names_its_test(tmp_path):
    crash = "import os, signal\n\ndef test_crash():\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
    (tmp_path / "test_1_crash.py").write_text(crash)
    (tmp_path / "test_2_ok.py").write_text("def test_ok():\n    pass\n")
    (tmp_path / "test_3_crash.py").write_text(crash)
    code, out = run_with_project_settings(tmp_path)
    assert code != 0
    assert "crashed while running" in out and "test_crash" in out, textwrap.shorten(out, 2000)


def test_a_hung_test_is_stopped_by_the_timeout(tmp_path):
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hang():\n    time.sleep(600)\n")
    code, out = run_with_project_settings(tmp_path, "--timeout", "3")
    assert code != 0
    # The thread method ends the worker (xdist drops its stack dump), so the run names the test.
    assert "crashed while running 'test_hang.py::test_hang'" in out, textwrap.shorten(out, 2000)
    # The suite's own limit: set, and far above its slowest test (~3 min on 2 cores).
    with (ROOT / "pyproject.toml").open("rb") as f:
        options = tomllib.load(f)["tool"]["pytest"]["ini_options"]
    assert options["timeout"] == 1200


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_compiled_code_is_released_between_tests():
    # Regression: CI's worker segfaulted in XLA's compiler with the process at the kernel's
    # map limit; conftest clears JAX's caches after a test past MAP_LIMIT maps.
    import jax
    import jax.numpy as jnp
    from compiled_code import MAP_LIMIT, memory_maps, release_compiled_code

    assert MAP_LIMIT <= 65530 // 3
    functions = [jax.jit(lambda x, k=k: jnp.sin(x) * k) for k in range(100)]
    for f in functions:
        f(jnp.ones(2)).block_until_ready()
    before = memory_maps()
    assert not release_compiled_code(limit=before + 1000)
    assert release_compiled_code(limit=0)
    assert memory_maps() < before - 200  # ~3 maps per executable, 100 executables


def test_the_suite_shares_one_persistent_compilation_cache():
    # conftest points JAX (and every subprocess, through the environment) at one cache folder:
    # the suite compiles many programs more than once (tests/conftest.py, JAX_CACHE).
    import os

    import jax

    folder = os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert jax.config.jax_compilation_cache_dir == folder
    assert int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]) > 0  # eviction, so a file lock
