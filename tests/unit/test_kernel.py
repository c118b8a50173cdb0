"""What BPF needs from the host, and the set-up helpers an installed plugin offers
(``python -m pytest_chaos ...``) in place of this repository's scripts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_chaos
from pytest_chaos import EnvironmentProblem
from pytest_chaos.observe import kernel
from pytest_chaos.observe.bpf import _SOURCES


def _headers_tree(src: Path, version: str, arch: str) -> None:
    common = src / f"linux-headers-{version}-common"
    (common / "include" / "linux").mkdir(parents=True)
    (common / "include" / "linux" / "types.h").write_text("common")
    (common / "Makefile").write_text("common")
    own = src / f"linux-headers-{version}-{arch}"
    (own / "include" / "generated").mkdir(parents=True)
    (own / "include" / "generated" / "autoconf.h").write_text(version)
    (own / "Makefile").write_text(arch)


def test_merged_headers_take_the_newest_common_tree_and_its_arch_files_win(tmp_path):
    arch = kernel._debian_arch()
    src, merged = tmp_path / "src", tmp_path / "merged"
    _headers_tree(src, "6.1.0-9", arch)
    _headers_tree(src, "6.1.0-27", arch)
    folder = kernel.merge_headers(
        "6.18.0-custom", modules=tmp_path / "modules", merged_root=merged, sources=src
    )
    assert folder == merged / "6.18.0-custom"
    assert (folder / "include/generated/autoconf.h").read_text() == "6.1.0-27"
    assert (folder / "Makefile").read_text() == arch
    assert (folder / "include/linux/types.h").is_symlink()
    assert kernel.kernel_source(
        "6.18.0-custom", modules=tmp_path / "modules", merged_root=merged, environ={}
    ) == (str(folder), "")


def test_no_merge_where_the_kernel_has_its_own_headers(tmp_path):
    (tmp_path / "modules/6.1/build/include").mkdir(parents=True)
    assert kernel.merge_headers("6.1", modules=tmp_path / "modules", sources=tmp_path) is None


def test_missing_debian_headers_name_the_package_to_install(tmp_path):
    with pytest.raises(EnvironmentProblem, match=r"apt-get install linux-headers-\w+"):
        kernel.merge_headers(
            "6.1", modules=tmp_path, merged_root=tmp_path / "m", sources=tmp_path / "none"
        )


def test_link_bcc_links_debians_bcc_once(tmp_path):
    debian = tmp_path / "dist-packages" / "bcc"
    debian.mkdir(parents=True)
    site = tmp_path / "site"
    site.mkdir()
    link = kernel.link_bcc(site, debian)
    assert link.resolve() == debian
    assert kernel.link_bcc(site, debian) == link  # a second run changes nothing
    with pytest.raises(EnvironmentProblem, match="apt-get install python3-bpfcc"):
        kernel.link_bcc(site, tmp_path / "missing")


def test_every_bpf_program_is_package_data():
    for name in _SOURCES.values():
        path = kernel.program_source(name)
        assert path.is_file()
        assert "BPF" in path.read_text() or "bpf" in path.read_text()


def test_the_command_line_helpers_explain_themselves():
    run = [sys.executable, "-m", "pytest_chaos"]
    done = subprocess.run([*run, "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    for command in ("doctor", "kernel-headers", "link-bcc"):
        assert command in done.stdout
    done = subprocess.run([*run, "frobnicate"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "unknown command 'frobnicate'" in done.stderr


def _messages(tree: ast.AST) -> list[str]:
    return [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def test_no_hint_names_a_script_of_this_repository():
    """An installed plugin's user has no scripts/ folder: hints name packages and
    commands."""
    package = Path(pytest_chaos.__file__).parent
    for path in package.rglob("*.py"):
        for text in _messages(ast.parse(path.read_text())):
            assert "scripts/" not in text, f"{path.name}: {text!r}"
