"""pkpd._jax: float64, the persistent compilation cache and the host CPU's name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pkpd._jax import default_compilation_cache

# A fresh process that compiles one program with pkpd's cache and reports the cache hits.
SCRIPT = """
import sys
import jax
import jax.numpy as jnp
import pkpd

hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None
)
folder = pkpd.use_compilation_cache(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
print(folder, float(jax.jit(lambda x: jnp.sin(x) ** 2 + x)(0.5)), len(hits))
"""


def _fresh(*args: str, env: dict[str, str] | None = None) -> str:
    run = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_a_second_process_reads_the_program_back(tmp_path):
    folder = tmp_path / "cache"
    first = _fresh("-c", SCRIPT, str(folder)).split()
    assert first[0] == str(folder) and first[2] == "0"
    assert any(folder.iterdir())
    second = _fresh("-c", SCRIPT, str(folder)).split()
    assert second[1] == first[1]  # the same number
    assert int(second[2]) >= 1  # from the cache, not compiled again


def test_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert default_compilation_cache() == tmp_path / "mine"
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_compilation_cache() == tmp_path / "xdg" / "pkpd" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_compilation_cache() == Path.home() / ".cache" / "pkpd" / "jax"


def test_the_command_line_uses_the_cache_unless_told_not_to(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "off")
    _fresh("-m", "pkpd.cli", "--no-compilation-cache", "version", env=env)
    assert not (tmp_path / "off").exists()
    env["XDG_CACHE_HOME"] = str(tmp_path / "on")
    assert "pkpd" in _fresh("-m", "pkpd.cli", "version", env=env)
    assert (tmp_path / "on" / "pkpd" / "jax").is_dir()


def test_host_cpu_names_the_processor(monkeypatch, tmp_path):
    from pkpd import _jax

    assert _jax.host_cpu() != ""
    # Linux: the first "model name" of /proc/cpuinfo; elsewhere platform.processor().
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nmodel name\t: other\n")
    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k),
    )
    assert _jax.host_cpu() == "Some CPU 9000"
    cpuinfo.unlink()
    monkeypatch.setattr(_jax.platform, "processor", lambda: "arm")
    assert _jax.host_cpu() == "arm"
    monkeypatch.setattr(_jax.platform, "processor", lambda: "")
    assert _jax.host_cpu() == "unknown"


def test_the_suite_caches_as_much_as_pkpd_does(pytestconfig: pytest.Config):
    # Found through pytest, not `from conftest import`: that name is whichever conftest.py was
    # imported last (tests/solve/conftest.py in CI, 2026-12-07), not this folder's.
    from pkpd._jax import COMPILATION_CACHE_BYTES

    root = pytestconfig.rootpath / "tests" / "conftest.py"
    (suite,) = [
        plugin
        for plugin in pytestconfig.pluginmanager.get_plugins()
        if getattr(plugin, "__file__", None) and Path(plugin.__file__) == root
    ]
    assert suite.JAX_CACHE_MAX_SIZE == COMPILATION_CACHE_BYTES
