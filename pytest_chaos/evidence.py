"""What a person investigating an experiment reads, kept in the report directory
beside its page: the test's history (JSON lines, and its Elle export), each
service's container log for the test's window, the kernel log lines of the window
(OOM kills, among others), and the raw events of every BPF session.

Written by the ``chaos`` fixture at the end of each test when ``--chaos-report`` is
given; each piece that cannot be read says why in its place instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .targets.compose import ComposeProject
    from .timeline import Timeline


def slug(nodeid: str) -> str:
    """A file name for a test id (``tests/x.py::test_y[a]`` -> ``tests-x.py--test_y-a``)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in nodeid).strip("-.")


def save(done: Timeline, directory: Path, project: ComposeProject | None) -> dict[str, str]:
    """Write the test's evidence under ``directory``; return each file's path
    relative to ``directory``, by kind (``history``, ``elle``, ``log:<service>``,
    ``kernel``, ``bpf:<session>``)."""
    name = slug(done.nodeid)
    folder = directory / "evidence" / name
    written: dict[str, Path] = {}
    ended = time.time()
    if done.history is not None and len(done.history):
        from .observe.history import export_elle

        written["history"] = done.history.write_jsonl(folder / "history.jsonl")
        written["elle"] = export_elle(done.history.events, folder / "history.elle.json")
    for i, (label, kept) in enumerate(done.kept_histories, 1):
        if kept is done.history:
            continue
        written[f"history:{label}"] = kept.write_jsonl(folder / f"history-kept-{i}.jsonl")
    if project is not None:
        for service, text in _container_logs(project, done.start_wall, ended).items():
            written[f"log:{service}"] = _write(folder / f"{service}.log", text)
    kernel = kernel_lines(done.start, time.monotonic())
    if kernel is not None:
        written["kernel"] = _write(folder / "kernel.log", "\n".join(kernel) + "\n")
    for label, observation in done.observations:
        written[f"bpf:{label}"] = _write(
            folder / f"bpf-{slug(label)}.json",
            json.dumps(_plain(observation), indent=1, default=str),
        )
    return {kind: str(path.relative_to(directory)) for kind, path in written.items()}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _container_logs(project: ComposeProject, since: float, until: float) -> dict[str, str]:
    """Each service's log lines stamped in [since, until] (Docker's timestamps)."""
    out = {}
    for container in project.containers():
        service = str(container.labels.get("com.docker.compose.service") or container.name)
        try:
            raw = container.logs(
                stdout=True, stderr=True, timestamps=True,
                since=int(since), until=int(until) + 1,
            )  # fmt: skip
            out[service] = raw.decode("utf-8", "replace")
        except Exception as exc:  # noqa: BLE001 - the evidence says why it is missing
            out[service] = f"(the log could not be read: {type(exc).__name__}: {exc})\n"
    return out


def kernel_lines(since: float, until: float) -> list[str] | None:
    """The kernel log's lines stamped between two ``time.monotonic()`` readings (the
    kernel stamps its log with the same clock, in microseconds), as
    ``[seconds] text``; None when the log cannot be read (not root)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    lines = []
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: the oldest records were overwritten meanwhile
                continue
            head, _, text = record.partition(";")
            fields = head.split(",")
            if len(fields) < 3 or not fields[2].isdigit():
                continue
            stamp = int(fields[2]) / 1e6
            if since - 1.0 <= stamp <= until + 1.0:  # a second's margin: clocks differ a bit
                lines.append(f"[{stamp:.6f}] {text.splitlines()[0] if text else ''}")
    finally:
        os.close(fd)
    return lines


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value
