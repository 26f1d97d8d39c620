"""JAX configuration shared by every pkpd module that touches JAX, and the host CPU's name."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def host_cpu() -> str:
    """Name the CPU model of this machine, e.g. ``"AMD EPYC"`` (``platform.processor()`` off Linux).

    XLA compiles for the host's instruction set (AVX2, AVX-512, ...), so the last digits of a
    log-density, and an optimiser's or sampler's path through them, can differ between CPUs:
    the same seed gives the same numbers on the same kind of CPU.

    Returns
    -------
    str
        ``"unknown"`` when the system does not say.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def enable_x64() -> None:
    """Switch JAX to float64 (the ODE engine and the likelihoods need it).

    Must run before the first JAX array is created; importing `pkpd` does it.
    """
    import jax

    jax.config.update("jax_enable_x64", True)


#: Bytes the compilation cache of `use_compilation_cache` may hold by default; JAX evicts the
#: least recently used programs past it.
COMPILATION_CACHE_BYTES = 2 * 1024**3


def default_compilation_cache() -> Path:
    """Folder of `use_compilation_cache` when none is given.

    ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/pkpd/jax``
    (``~/.cache/pkpd/jax`` without it).
    """
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pkpd" / "jax"


def use_compilation_cache(
    folder: str | os.PathLike[str] | None = None, max_bytes: int = COMPILATION_CACHE_BYTES
) -> Path:
    """Keep JAX's compiled programs on disk, so that a later process skips their compilation.

    Each new process compiles its XLA programs again: a fit resumed from its checkpoint, the
    command line called again on the same model, a notebook restarted. With the cache, a program
    compiled before (same model, data shapes, settings and versions) is read back in
    milliseconds instead of compiled in seconds to minutes. The ``pkpd`` command line uses it
    unless given ``--no-compilation-cache``; in Python, call this before the first fit or
    simulation of the process.

    Parameters
    ----------
    folder : path, optional
        Cache folder (created). Default: `default_compilation_cache`.
    max_bytes : int, optional
        Size limit; the least recently used programs are evicted past it (-1: no limit).

    Returns
    -------
    pathlib.Path
        The folder in use.

    Notes
    -----
    JAX caches programs whose compilation took at least
    ``jax_persistent_cache_min_compile_time_secs`` (1 s by default). The folder is trusted code:
    do not share it with users you do not trust (JAX's documentation).
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    path = Path(folder) if folder is not None else default_compilation_cache()
    path.mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir not in (None, str(path)):
        compilation_cache.reset_cache()  # the process opened another folder: use this one
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    return path
