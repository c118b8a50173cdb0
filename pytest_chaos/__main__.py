"""``python -m pytest_chaos``: a host's set-up helpers and what it offers the plugin."""

from __future__ import annotations

import subprocess
import sys

from .errors import EnvironmentProblem
from .observe.kernel import link_bcc, merge_headers


def main(argv: list[str] | None = None) -> int:
    """``python -m pytest_chaos kernel-headers | link-bcc | doctor | faults``."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else ""
    out = sys.stdout.write
    try:
        if command == "kernel-headers":
            merged = merge_headers()
            out(f"{merged}\n" if merged else "")
        elif command == "link-bcc":
            out(f"{link_bcc()}\n")
        elif command == "faults":
            from . import registry

            out("\n".join(registry.docs_table(built_in_only=False)) + "\n")
        elif command == "doctor":
            from .environment import environment

            out("\n".join(environment().header_lines()) + "\n")
        else:
            known = command in ("", "-h", "--help")
            stream = sys.stdout if known else sys.stderr
            if not known:
                stream.write(f"pytest-chaos: unknown command {command!r}.\n")
            stream.write(
                "usage: python -m pytest_chaos COMMAND\n"
                "  doctor           what this host offers pytest-chaos (Docker, root, cgroup,"
                " BPF, netem)\n"
                "  faults           every fault registered here (a package's own too, through "
                "its entry points), as a Markdown table\n"
                "  kernel-headers   merge Debian's kernel headers for bcc where the running "
                "kernel has none; prints the folder\n"
                "  link-bcc         make Debian's python3-bpfcc importable from this Python\n"
            )
            return 0 if known else 2
    except (EnvironmentProblem, OSError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"pytest-chaos {command}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
