"""Vigil: the `vigil` program, its configuration, runtime and demo."""
