"""The ``bpf`` fixture's object: sessions scoped to services of the compose project
under test, whose figures become JUnit properties."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .. import timeline
from ..errors import ConfigurationError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .bpf import PROBES, BpfSession, scope_of
from .kernel import bpf_support


class BpfProbes:
    """What the ``bpf`` fixture hands a test: ``watch`` opens a session scoped to
    services of the compose project; its figures become JUnit properties
    ``bpf_<service>_...`` when it closes."""

    def __init__(self, project: Any, record: Any, on_interrupt: Any = None) -> None:
        self._project = project
        self._record = record
        #: Called when an interruption unwinds through a session, before the session
        #: closes (its probes take seconds to detach): lifts the faults first.
        self._on_interrupt = on_interrupt
        self.support = bpf_support()

    @contextmanager
    def watch(
        self, *services: str, probes: Sequence[str] = PROBES, label: str | None = None
    ) -> Iterator[BpfSession]:
        """Observe ``services`` while the block runs. ``label`` tells sessions of the
        same services apart in the figures (e.g. "before" and "during" a fault)."""
        if not services:
            raise ConfigurationError("watch which service? e.g. bpf.watch('trading-api').")
        targets = [self._project().service(name) for name in services]
        session = BpfSession(
            pid=targets[0].init_pid(), probes=probes, support=self.support, scope=scope_of(targets)
        )
        with session:
            try:
                yield session
            except KeyboardInterrupt:
                if self._on_interrupt is not None:
                    self._on_interrupt()
                raise
        prefix = "bpf_" + "_".join(name.replace("-", "_") for name in services)
        if label:
            prefix += "_" + re.sub(r"\W+", "_", label).strip("_")
        timeline.note_observation(prefix, session.observation)
        for key, value in session.observation.figures(prefix=prefix).items():
            self._record(key, value)
