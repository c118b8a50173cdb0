import ast
from pathlib import Path

import pytest

import pytest_chaos


def test_all_is_sorted_and_complete():
    """Three lists name the public API (``__all__``, where each lives, and the imports
    type checkers read): they agree, and every name resolves."""
    assert pytest_chaos.__all__ == sorted(pytest_chaos.__all__)
    assert set(pytest_chaos._HOME) == set(pytest_chaos.__all__)
    tree = ast.parse(Path(pytest_chaos.__file__).read_text())
    typed = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        for stmt in node.body
        if isinstance(stmt, ast.ImportFrom)
        for alias in stmt.names
    }
    assert typed == set(pytest_chaos.__all__)
    for name in pytest_chaos.__all__:
        assert getattr(pytest_chaos, name).__name__ == name
    assert set(pytest_chaos.__all__) <= set(dir(pytest_chaos))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pytest_chaos.nope  # noqa: B018


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


def test_the_readmes_examples_import_only_public_names():
    """The README's code is what a stranger copies: every name it imports from
    pytest_chaos must be public API, and every block must parse."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    blocks = readme.read_text().split("```python\n")[1:]
    assert blocks
    imported = set()
    for block in blocks:
        tree = ast.parse(block.split("```", 1)[0])
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "pytest_chaos":
                imported |= {alias.name for alias in node.names}
    assert imported
    assert imported <= set(pytest_chaos.__all__), imported - set(pytest_chaos.__all__)
