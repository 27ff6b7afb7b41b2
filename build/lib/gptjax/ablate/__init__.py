"""Ablations: grids of runs over config keys, seeds, and reports with significance tests."""
