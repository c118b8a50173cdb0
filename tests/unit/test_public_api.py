import pytest_chaos


def test_all_is_sorted_and_complete():
    public = {name for name in vars(pytest_chaos) if not name.startswith("_")}
    modules = {"annotations", "chaos", "errors", "faults", "observe", "targets", "units", "plugin"}
    assert pytest_chaos.__all__ == sorted(pytest_chaos.__all__)
    assert set(pytest_chaos.__all__) == public - modules


def test_every_error_is_a_chaos_error():
    for name in pytest_chaos.__all__:
        obj = getattr(pytest_chaos, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, pytest_chaos.ChaosError), name
