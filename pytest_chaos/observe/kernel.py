"""Can BPF run here, and with what: root, bcc importable from this Python, tracefs
mounted, kernel headers for bcc to compile against, and the BPF C sources shipped
inside the package. Also the two set-up steps a user may need (``python -m
pytest_chaos kernel-headers`` and ``link-bcc``)."""

from __future__ import annotations

import importlib.resources
import os
import platform
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnvironmentProblem

MERGED_HEADERS = Path("/var/lib/pytest-chaos/kernel-headers")
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")
HEADERS_HINT = (
    "install the headers of the running kernel (apt-get install linux-headers-$(uname -r)); "
    "where no package matches it, apt-get install linux-headers-{arch} and run "
    "python -m pytest_chaos kernel-headers"
)
BCC_HINT = (
    "apt-get install python3-bpfcc, then python -m pytest_chaos link-bcc with the Python "
    "that runs pytest (never pip install bcc: an unrelated package)"
)


@dataclass(frozen=True)
class BpfSupport:
    available: bool
    reason: str = ""
    kernel_source: str | None = None


def bpf_support() -> BpfSupport:
    if os.geteuid() != 0:
        return BpfSupport(False, "BPF needs root: run pytest with sudo")
    try:
        import bcc  # noqa: F401
    except ImportError:
        return BpfSupport(False, f"bcc does not import: {BCC_HINT}")
    if not any(
        Path(p, "events").is_dir() for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    ):
        return BpfSupport(
            False, "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing"
        )
    source, problem = kernel_source()
    if problem:
        return BpfSupport(False, problem)
    return BpfSupport(True, kernel_source=source)


def kernel_source(
    release: str | None = None,
    *,
    modules: Path = Path("/lib/modules"),
    merged_root: Path = MERGED_HEADERS,
    environ: dict[str, str] | None = None,
) -> tuple[str | None, str]:
    """Headers bcc can compile against: BCC_KERNEL_SOURCE if set, the running
    kernel's own (a host with real headers: None, bcc's default), else the merged
    Debian headers :func:`merge_headers` prepares. Returns (path, problem)."""
    release = release or os.uname().release
    env = os.environ if environ is None else environ
    if env.get("BCC_KERNEL_SOURCE"):
        return env["BCC_KERNEL_SOURCE"], ""
    if (modules / release / "build" / "include").exists():
        return None, ""
    merged = merged_root / release
    if (merged / ".complete").exists():
        return str(merged), ""
    return None, (
        f"no kernel headers for {release} (/lib/modules/{release}/build is missing): "
        + HEADERS_HINT.format(arch=_debian_arch())
    )


def merge_headers(
    release: str | None = None,
    *,
    modules: Path = Path("/lib/modules"),
    merged_root: Path = MERGED_HEADERS,
    sources: Path = Path("/usr/src"),
) -> Path | None:
    """Where the running kernel has no headers (a custom or cloud kernel), merge
    Debian's linux-headers common and arch trees into one folder of symlinks, which
    bcc accepts as BCC_KERNEL_SOURCE: tracepoint programs need headers consistent with
    each other, not with the running kernel (their arguments come from tracefs).
    Returns the folder, or None where the kernel's own headers exist."""
    release = release or os.uname().release
    if (modules / release / "build" / "include").exists():
        return None
    dest = merged_root / release
    if (dest / ".complete").exists():
        return dest
    commons = sorted(sources.glob("linux-headers-*-common"), key=_version_key)
    if not commons:
        raise EnvironmentProblem(
            f"no {sources}/linux-headers-*-common to merge: "
            f"apt-get install linux-headers-{_debian_arch()}."
        )
    common = commons[-1]
    arch = common.with_name(common.name.removesuffix("-common") + f"-{_debian_arch()}")
    if not arch.is_dir():
        raise EnvironmentProblem(f"{arch} is missing next to {common}: reinstall linux-headers.")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    # A tree of symlinks; the arch tree's files win over the common ones.
    for tree, extra in ((common, []), (arch, ["--remove-destination"])):
        subprocess.run(["cp", "-rs", *extra, f"{tree}/.", f"{dest}/"], check=True)
    (dest / ".complete").touch()
    return dest


def link_bcc(site: Path | None = None, source: Path = DEBIAN_BCC) -> Path:
    """Make Debian's bcc (built for Debian's Python) importable from this Python by a
    link in its site-packages. Returns the link."""
    if not source.is_dir():
        raise EnvironmentProblem(f"{source} is missing: apt-get install python3-bpfcc.")
    site = site or Path(sysconfig.get_paths()["purelib"])
    link = site / "bcc"
    if not link.exists():
        link.symlink_to(source)
    return link


def program_source(name: str) -> Path:
    """The path of a BPF C source shipped in the package (CHAOS_BPF_PROGRAMS, a
    folder, overrides it for development)."""
    configured = os.environ.get("CHAOS_BPF_PROGRAMS")
    if configured:
        return Path(configured) / name
    resource = importlib.resources.files("pytest_chaos.bpf_programs") / name
    if not resource.is_file():
        raise EnvironmentProblem(
            f"the BPF program {name} is missing from the installed package: reinstall pytest-chaos."
        )
    # Installed from a wheel or used from a checkout, the sources are real files.
    return Path(str(resource))


def _debian_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _version_key(path: Path) -> tuple[int | str, ...]:
    parts = path.name.removeprefix("linux-headers-").removesuffix("-common").replace("-", ".")
    return tuple(int(p) if p.isdigit() else p for p in parts.split("."))
