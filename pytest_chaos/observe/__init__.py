"""Observers: load generation, recovery measurement, data-loss checks."""
