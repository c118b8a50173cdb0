"""The simulated exchange's trading API: the system under test, not part of the plugin."""
