import types

import pytest_chaos


def test_all_is_sorted_and_complete():
    # Submodules become attributes of the package when imported: they are not API.
    public = {
        name
        for name, value in vars(pytest_chaos).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert pytest_chaos.__all__ == sorted(pytest_chaos.__all__)
    assert set(pytest_chaos.__all__) == public - {"annotations"}


def test_every_error_is_a_chaos_error():
    for name in pytest_chaos.__all__:
        obj = getattr(pytest_chaos, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, pytest_chaos.ChaosError), name


def test_importing_the_plugin_loads_no_heavy_library():
    """`pytest --help` and collection must work on a machine without Docker."""
    import subprocess
    import sys

    code = (
        "import sys, pytest_chaos, pytest_chaos.plugin; "
        "heavy = {'docker', 'httpx', 'psycopg', 'redis', 'bcc', 'pyroute2'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
