"""The one registry of fault kinds: what ``chaos.<name>(...)`` applies, what the dry
run lists, and how the journal undoes what a dead run left in force.

A fault is registered once, where it is defined, with two decorators:

- ``@fault("name")`` on a function ``(chaos, *args, **kwargs) -> context manager``
  makes it ``chaos.name(*args, **kwargs)``: the ``chaos`` fixture applies it, holds it,
  and undoes it when the test ends; ``--chaos-dry-run`` lists calls to it.
- ``@undoer("kind")`` on a function ``(data) -> sentence`` undoes a journal entry of
  that kind from its data alone, in a later session (after ``kill -9`` of pytest).

The built-in faults, and a package's own, are modules named in the entry-point group
``pytest_chaos.faults``: they are imported before the journal is replayed, before the
first test, whatever a session collects. A fault in a ``conftest.py`` is known as soon
as pytest loads it; one in a test module once collection imported it (a journal
entry of an unknown kind is replayed again after collection, and named if it still
cannot be undone).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .errors import ConfigurationError, UnknownFault
from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401

ENTRY_POINTS = "pytest_chaos.faults"
Builder = Callable[..., AbstractContextManager[Any]]
Undo = Callable[[dict[str, Any]], str]
B = TypeVar("B", bound=Builder)
U = TypeVar("U", bound=Undo)


class Session(Protocol):
    """What a fault is applied through: the ``chaos`` fixture's object."""

    def inject(self, fault: AbstractContextManager[Any], *, label: str | None = None) -> Any: ...


@dataclass(frozen=True)
class FaultKind:
    """A registered fault: ``chaos.<name>`` calls ``build(chaos, ...)``."""

    name: str
    build: Builder

    @property
    def module(self) -> str:
        return str(getattr(self.build, "__module__", "?"))


_FAULTS: dict[str, FaultKind] = {}
_UNDOS: dict[str, Undo] = {}
_loaded = False


def fault(name: str) -> Callable[[B], B]:
    """Register ``chaos.<name>``: the decorated function takes the chaos session
    first, then the call's arguments, validates them, and returns the fault's context
    manager (not yet entered)."""
    if not name.isidentifier() or name.startswith("_"):
        raise ConfigurationError(f"a fault's name is a public Python name, not {name!r}.")

    def register(build: B) -> B:
        known = _FAULTS.get(name)
        if known is not None and known.module != build.__module__:
            raise ConfigurationError(
                f"fault {name!r} is registered twice: by {known.module} and {build.__module__}."
            )
        _FAULTS[name] = FaultKind(name, build)
        return build

    return register


def undoer(kind: str) -> Callable[[U], U]:
    """Register the function that undoes a ``kind`` journal entry from its data
    alone. It returns a sentence saying what it did."""

    def register(fn: U) -> U:
        _UNDOS[kind] = fn
        return fn

    return register


def load() -> None:
    """Import the modules of the ``pytest_chaos.faults`` entry points (once)."""
    global _loaded
    if _loaded:
        return
    for point in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            point.load()
        except Exception as exc:
            raise ConfigurationError(
                f"the fault module {point.value!r} (entry point {point.name!r} of group "
                f"{ENTRY_POINTS!r}) does not import: {type(exc).__name__}: {exc}."
            ) from exc
    _loaded = True


def faults() -> dict[str, FaultKind]:
    """Every registered fault, by name."""
    load()
    return dict(_FAULTS)


def find(name: str) -> FaultKind:
    load()
    kind = _FAULTS.get(name)
    if kind is None:
        raise UnknownFault(
            f"chaos has no fault {name!r}; the faults there are: {', '.join(sorted(_FAULTS))} "
            "(a fault of your own is registered with @pytest_chaos.fault)."
        )
    return kind


def undo_for(kind: str) -> Undo | None:
    """The undo of ``kind``, the entry points' modules imported first."""
    load()
    return _UNDOS.get(kind)


def registered_undo(kind: str) -> Undo | None:
    """The undo of ``kind`` as registered so far (nothing imported)."""
    return _UNDOS.get(kind)


def bound(kind: FaultKind, chaos: Session) -> Callable[..., Any]:
    """``chaos.<name>``: the builder with the session bound, applying through
    ``chaos.inject``; its signature and docstring are the builder's, less ``chaos``."""

    signature = inspect.signature(kind.build)

    @functools.wraps(kind.build)
    def apply(*args: Any, **kwargs: Any) -> Any:
        every = _every_task(signature, chaos, args, kwargs)
        if every is None:
            return chaos.inject(kind.build(chaos, *args, **kwargs))
        # One fault per task; all are built (their arguments checked) before the
        # first is applied, so a bad argument changes nothing.
        built = [kind.build(*call.args, **call.kwargs) for call in every]
        return [chaos.inject(fault) for fault in built]

    apply.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:]
    )
    return apply


EVERY_TASK = ".*"


def _every_task(
    signature: inspect.Signature, chaos: Session, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[inspect.BoundArguments] | None:
    """A fault's call once per task when its ``service`` argument is ``"<name>.*"``
    (every task of the service: each replica, or each Swarm task), else None."""
    if "service" not in signature.parameters:
        return None
    try:
        call = signature.bind(chaos, *args, **kwargs)
    except TypeError:
        return None  # the builder itself reports the bad call
    service = call.arguments.get("service")
    if not (isinstance(service, str) and service.endswith(EVERY_TASK)):
        return None
    names = chaos.project.task_names(service[: -len(EVERY_TASK)])  # type: ignore[attr-defined]
    calls = []
    for name in names:
        each = signature.bind(chaos, *args, **kwargs)
        each.arguments["service"] = name
        calls.append(each)
    return calls
