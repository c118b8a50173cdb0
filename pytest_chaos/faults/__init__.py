"""Faults: context managers that validate, apply, yield a handle, and undo."""
