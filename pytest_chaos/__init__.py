"""pytest-chaos: chaos experiments as pytest tests."""

from __future__ import annotations

from .chaos import Chaos
from .errors import (
    ChaosError,
    ConfigurationError,
    DataLossDetected,
    DockerUnavailable,
    EnvironmentProblem,
    FaultError,
    FaultVanished,
    ForeignTarget,
    PermissionProblem,
    RecoveryTimeout,
    StackStartError,
    TargetError,
    UndoFailed,
    UnknownService,
    UnsafeTarget,
)
from .faults.base import FaultHandle
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
from .observe.dataloss import DataLossReport, check_no_data_loss
from .observe.load import Flow, LoadGenerator, Request, RequestRecord
from .observe.recovery import Recovery, wait_for_recovery
from .targets.compose import ComposeProject, Service
from .units import parse_duration, parse_signal

__all__ = [
    "CascadeHandle",
    "Chaos",
    "ChaosError",
    "ComposeProject",
    "ConfigurationError",
    "DataLossDetected",
    "DataLossReport",
    "DockerUnavailable",
    "EnvironmentProblem",
    "FaultError",
    "FaultHandle",
    "FaultVanished",
    "Flow",
    "ForeignTarget",
    "Journal",
    "KillHandle",
    "LoadGenerator",
    "PauseHandle",
    "PermissionProblem",
    "Recovery",
    "RecoveryTimeout",
    "Request",
    "RequestRecord",
    "Service",
    "StackStartError",
    "StopHandle",
    "TargetError",
    "UndoFailed",
    "UnknownService",
    "UnsafeTarget",
    "cascade",
    "check_no_data_loss",
    "kill",
    "parse_duration",
    "parse_signal",
    "pause",
    "stop",
    "wait_for_recovery",
]
