"""Vigil device simulators: synthetic devices and scenes with ground truth."""
