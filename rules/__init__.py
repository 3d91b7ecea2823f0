"""Vigil's rules engine: decides which device data deserves a human's attention."""
