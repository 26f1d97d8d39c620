"""JAX configuration shared by every pkpd module that touches JAX."""

from __future__ import annotations


def enable_x64() -> None:
    """Switch JAX to float64 (the ODE engine and the likelihoods need it).

    Must run before the first JAX array is created; importing `pkpd` does it.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
