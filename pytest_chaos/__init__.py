"""pytest-chaos: chaos experiments as pytest tests.

The public names are loaded on first use (PEP 562), so a project that has the plugin
installed but runs no chaos test does not import the fault library at start-up."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chaos import Chaos
    from .errors import (
        ChaosError,
        ConfigurationError,
        DataLossDetected,
        DockerUnavailable,
        EnvironmentProblem,
        FaultDidNotTakeEffect,
        FaultError,
        FaultVanished,
        ForeignTarget,
        HistoryCheckFailed,
        PermissionProblem,
        RecoveryTimeout,
        RemoteEngine,
        StackStartError,
        TargetError,
        TargetStopped,
        UndoFailed,
        UnknownFault,
        UnknownService,
        UnsafeTarget,
    )
    from .faults.base import Effect, FaultHandle
    from .faults.process import (
        CascadeHandle,
        KillHandle,
        PauseHandle,
        StopHandle,
        cascade,
        kill,
        pause,
        stop,
    )
    from .journal import Journal
    from .observe.backoff import BackoffAnalysis, analyze_backoff, assert_backoff
    from .observe.checkers import CheckResult, availability, conservation, set_full, unique_ids
    from .observe.dataloss import DataLossReport, check_no_data_loss
    from .observe.history import History, Op, Operation, export_elle, read_jsonl
    from .observe.load import Flow, LoadGenerator, Request, RequestRecord
    from .observe.recovery import Recovery, wait_for_recovery
    from .registry import fault, undoer
    from .schedule import Schedule, Step, StepKind, schedules
    from .search import ScheduleFailed, SearchResult
    from .targets.compose import ComposeProject, Service
    from .units import parse_duration, parse_signal

#: Where each public name lives.
_HOME = {
    "BackoffAnalysis": ".observe.backoff",
    "CascadeHandle": ".faults.process",
    "Chaos": ".chaos",
    "ChaosError": ".errors",
    "CheckResult": ".observe.checkers",
    "ComposeProject": ".targets.compose",
    "ConfigurationError": ".errors",
    "DataLossDetected": ".errors",
    "DataLossReport": ".observe.dataloss",
    "DockerUnavailable": ".errors",
    "Effect": ".faults.base",
    "EnvironmentProblem": ".errors",
    "FaultDidNotTakeEffect": ".errors",
    "FaultError": ".errors",
    "FaultHandle": ".faults.base",
    "FaultVanished": ".errors",
    "Flow": ".observe.load",
    "ForeignTarget": ".errors",
    "History": ".observe.history",
    "HistoryCheckFailed": ".errors",
    "Journal": ".journal",
    "KillHandle": ".faults.process",
    "LoadGenerator": ".observe.load",
    "Op": ".observe.history",
    "Operation": ".observe.history",
    "PauseHandle": ".faults.process",
    "PermissionProblem": ".errors",
    "Recovery": ".observe.recovery",
    "RecoveryTimeout": ".errors",
    "RemoteEngine": ".errors",
    "Request": ".observe.load",
    "Schedule": ".schedule",
    "ScheduleFailed": ".search",
    "SearchResult": ".search",
    "Step": ".schedule",
    "StepKind": ".schedule",
    "RequestRecord": ".observe.load",
    "Service": ".targets.compose",
    "StackStartError": ".errors",
    "StopHandle": ".faults.process",
    "TargetError": ".errors",
    "TargetStopped": ".errors",
    "UndoFailed": ".errors",
    "UnknownFault": ".errors",
    "UnknownService": ".errors",
    "UnsafeTarget": ".errors",
    "availability": ".observe.checkers",
    "cascade": ".faults.process",
    "check_no_data_loss": ".observe.dataloss",
    "conservation": ".observe.checkers",
    "export_elle": ".observe.history",
    "fault": ".registry",
    "kill": ".faults.process",
    "parse_duration": ".units",
    "parse_signal": ".units",
    "pause": ".faults.process",
    "read_jsonl": ".observe.history",
    "schedules": ".schedule",
    "set_full": ".observe.checkers",
    "stop": ".faults.process",
    "undoer": ".registry",
    "unique_ids": ".observe.checkers",
    "analyze_backoff": ".observe.backoff",
    "assert_backoff": ".observe.backoff",
    "wait_for_recovery": ".observe.recovery",
}

__all__ = [
    "BackoffAnalysis",
    "CascadeHandle",
    "Chaos",
    "ChaosError",
    "CheckResult",
    "ComposeProject",
    "ConfigurationError",
    "DataLossDetected",
    "DataLossReport",
    "DockerUnavailable",
    "Effect",
    "EnvironmentProblem",
    "FaultDidNotTakeEffect",
    "FaultError",
    "FaultHandle",
    "FaultVanished",
    "Flow",
    "ForeignTarget",
    "History",
    "HistoryCheckFailed",
    "Journal",
    "KillHandle",
    "LoadGenerator",
    "Op",
    "Operation",
    "PauseHandle",
    "PermissionProblem",
    "Recovery",
    "RecoveryTimeout",
    "RemoteEngine",
    "Request",
    "RequestRecord",
    "Schedule",
    "ScheduleFailed",
    "SearchResult",
    "Service",
    "StackStartError",
    "Step",
    "StepKind",
    "StopHandle",
    "TargetError",
    "TargetStopped",
    "UndoFailed",
    "UnknownFault",
    "UnknownService",
    "UnsafeTarget",
    "analyze_backoff",
    "assert_backoff",
    "availability",
    "cascade",
    "check_no_data_loss",
    "conservation",
    "export_elle",
    "fault",
    "kill",
    "parse_duration",
    "parse_signal",
    "pause",
    "read_jsonl",
    "schedules",
    "set_full",
    "stop",
    "undoer",
    "unique_ids",
    "wait_for_recovery",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'pytest_chaos' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
