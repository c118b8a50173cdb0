"""Errors raised by pytest-chaos. Every one names what was expected, what was seen,
and what to do about it. The tree:

    ChaosError
    ├── ConfigurationError          bad arguments to a fault or helper (also ValueError)
    │   └── UnknownFault            chaos.<name> names no registered fault (also AttributeError)
    ├── EnvironmentProblem          the machine cannot do what was asked
    │   ├── DockerUnavailable       no Docker daemon to talk to (or not the one named)
    │   ├── PermissionProblem       root (or a capability) is needed
    │   └── RemoteEngine            the engine's pids are not this kernel's (dind, a VM...)
    ├── TargetError                 the target cannot be resolved or is not ours
    │   ├── UnknownService          no such service in the compose project
    │   ├── ForeignTarget           the container belongs to another project
    │   └── UnsafeTarget            a pid or namespace that must never be touched
    │       └── TargetStopped       the container has no running process to act on
    ├── FaultError                  applying or undoing a fault failed
    │   ├── FaultVanished           a fault was gone before its undo (someone removed it)
    │   └── UndoFailed              one or more undos failed (all were attempted)
    ├── StackStartError             the compose project did not come up
    ├── RecoveryTimeout             a steady state did not return in time (also TimeoutError)
    ├── DataLossDetected            acknowledged writes are missing (also AssertionError)
    └── HistoryCheckFailed          a checker found the history invalid (also AssertionError)
"""

from __future__ import annotations


class ChaosError(Exception):
    """Root of every error pytest-chaos raises."""


class ConfigurationError(ChaosError, ValueError):
    """An argument is invalid; nothing was applied."""


class UnknownFault(ConfigurationError, AttributeError):
    """``chaos.<name>``: no fault of that name is registered."""


class EnvironmentProblem(ChaosError):
    """This machine lacks something the request needs."""


class DockerUnavailable(EnvironmentProblem):
    """The Docker daemon cannot be reached."""


class PermissionProblem(EnvironmentProblem, PermissionError):
    """The operation needs privileges this process does not have."""


class RemoteEngine(EnvironmentProblem):
    """The Docker engine does not run its containers on this kernel and pid namespace
    (an engine in a container, a VM or on another machine): faults that act through
    the kernel cannot reach them, and its pids would name other processes here."""


class TargetError(ChaosError):
    """A target could not be resolved to something safe to act on."""


class UnknownService(TargetError, LookupError):
    """The compose project has no service of that name."""


class ForeignTarget(TargetError):
    """The container does not belong to the compose project under test."""


class UnsafeTarget(TargetError):
    """A pid or namespace that pytest-chaos refuses to touch."""


class TargetStopped(UnsafeTarget):
    """The container is not running: it has no process, namespace or cgroup to act
    on (and whatever a fault put there went with them)."""


class FaultError(ChaosError):
    """Applying or undoing a fault failed."""


class FaultVanished(FaultError):
    """A fault in force was removed by something else before its undo: the test did
    not run under the fault it asked for, so its verdict cannot stand."""


class FaultDidNotTakeEffect(FaultError):
    """The fault was applied but did not act on its target (no packet dropped, no
    period throttled...): the test says nothing about the system under that fault.
    Reported as its own verdict ("no effect"), never as a pass or a failure. Raise
    it from a test whose own criterion of effect (e.g. how much a quota must bind)
    was not met."""


class UndoFailed(FaultError):
    """At least one undo failed; every undo was still attempted."""

    def __init__(self, message: str, errors: list[BaseException]) -> None:
        super().__init__(message)
        self.errors = errors


class StackStartError(ChaosError):
    """The system under test did not start."""


class RecoveryTimeout(ChaosError, TimeoutError):
    """A steady-state check did not pass before its deadline."""


class DataLossDetected(ChaosError, AssertionError):
    """Writes that were acknowledged are missing. ``report`` counts them."""

    report: object = None


class HistoryCheckFailed(ChaosError, AssertionError):
    """A checker judged the history of an experiment invalid; ``result`` holds its
    :class:`~pytest_chaos.observe.checkers.CheckResult` with every figure."""

    result: object = None


def hide_chaos_errors(excinfo: object) -> bool:
    """pytest's ``__tracebackhide__`` for the modules of this package: frames inside
    pytest-chaos are hidden when the error is a ChaosError (a clear message about the
    user's input or machine, reported at the user's line), shown for anything else
    (a bug of ours, whose frames matter)."""
    return isinstance(getattr(excinfo, "value", None), ChaosError)


__tracebackhide__ = hide_chaos_errors
