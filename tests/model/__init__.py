"""Tests of pkpd.model, pkpd.expr and pkpd.units (a package: its module names are unique)."""
