"""Executable specs: one file per component, run against exercises, solutions and reference."""
