"""Release JAX's compiled code in long test processes (used by tests/conftest.py)."""

from __future__ import annotations

import gc
from pathlib import Path

#: Clear JAX's caches after a test once the process holds this many memory maps.
#: Each XLA:CPU executable costs ~3 maps (code, read-only data, data) and is kept until its
#: cache is cleared; Linux refuses new maps past vm.max_map_count (65530 by default), and XLA
#: then segfaults while compiling. A suite worker peaked at 58,591 maps (measured
#: 2026-12-04), and CI's worker crashed that way near the end of the suite. Checked after every
#: test, not every module: one module (tests/model/test_library.py) added ~33,000 maps on its own.
#: The check reads /proc/self/maps, ~1 ms per 1,000 maps.
MAP_LIMIT = 20_000


def memory_maps() -> int:
    """Number of memory maps of this process (0 where /proc is not available)."""
    path = Path("/proc/self/maps")
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def release_compiled_code(limit: int = MAP_LIMIT) -> bool:
    """Clear JAX's compilation caches if this process holds more than `limit` maps."""
    if memory_maps() <= limit:
        return False
    import jax

    jax.clear_caches()
    gc.collect()
    return True
