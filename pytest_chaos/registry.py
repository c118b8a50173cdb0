"""The one registry of fault kinds. A fault is declared once, where it is defined, and
everything else is derived from that declaration or checked against it: what
``chaos.<name>(...)`` applies, what the dry run lists and says a fault needs, the
values a schedule may draw, how the journal undoes an entry after ``kill -9``, what
``--chaos-cleanup`` sweeps, and the table of faults in the docs.

- ``@fault("name", grid=..., journal=..., leaves=..., requires=..., example=...)`` on a
  function ``(chaos, *args, **kwargs) -> context manager`` makes it
  ``chaos.name(*args, **kwargs)``: the ``chaos`` fixture applies it, holds it, and
  undoes it when the test ends. The keywords declare the rest (see :class:`FaultKind`).
- ``@undoer("kind")`` on a function ``(data) -> sentence`` undoes a journal entry of
  that kind from its data alone, in a later session (after ``kill -9`` of pytest).
- ``@sweeper("leftover")`` on a function ``(dead) -> lines`` removes what runs whose
  pytest is gone left of that kind and the journal has no entry for (teardown's last
  layer): every leftover a fault declares has one.

The built-in faults are the modules of the ``pytest_chaos.faults`` package; a package
of its own adds modules to the entry-point group ``pytest_chaos.faults``. All are
imported before the journal is replayed, before the first test, whatever a session
collects. A fault in a ``conftest.py`` is known as soon as pytest loads it; one in a
test module once collection imported it (a journal entry of an unknown kind is
replayed again after collection, and named if it still cannot be undone).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .errors import ConfigurationError, UnknownFault
from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401

ENTRY_POINTS = "pytest_chaos.faults"
BUILT_IN = "pytest_chaos.faults"
Builder = Callable[..., AbstractContextManager[Any]]
Undo = Callable[[dict[str, Any]], str]
Param = str | int | float
B = TypeVar("B", bound=Builder)
U = TypeVar("U", bound=Undo)

#: What a fault may need, and what a user does when it is missing. A fault names
#: these in ``requires``; the dry run and the docs say them.
REQUIREMENTS: dict[str, str] = {
    "root": "pytest runs as root (sudo): it enters namespaces and writes cgroups",
    "this-kernel": "the target's engine runs its containers on this machine "
    "(refused on a remote engine: the fault acts through this kernel)",
    "nfqueue": "netfilterqueue installed (pip install 'pytest-chaos[nfqueue]'): "
    "packets pass through a userspace worker of ours",
    "stress-ng": "stress-ng installed on this machine (apt-get install stress-ng)",
    "postgres": "the target runs PostgreSQL (psql inside it)",
    "local-swarm": "a swarm pytest-chaos made on this machine (--chaos-backend swarm)",
}

#: What a fault may leave behind if pytest dies and its journal entry is lost; each
#: has a sweeper (``@sweeper``) that finds it by the run's id.
LEFTOVERS: dict[str, str] = {
    "nft-table": "an nft table in a container's network namespace",
    "iptables-chain": "an iptables chain in a container's network namespace",
    "qdisc": "a root qdisc on a container's interface",
    "cgroup-limit": "a limit written to a container's cgroup",
    "own-cgroup": "a cgroup of ours holding processes we started, and their scratch files",
    "container-state": "a container left stopped, paused or with a stopped process",
    "postgres-setting": "a PostgreSQL setting changed by ALTER SYSTEM",
    "postgres-connection": "connections held to PostgreSQL",
    "swarm-node": "a node of a local swarm cut off, frozen or crashed",
}


class Session(Protocol):
    """What a fault is applied through: the ``chaos`` fixture's object."""

    def inject(self, fault: AbstractContextManager[Any], *, label: str | None = None) -> Any: ...


@dataclass(frozen=True)
class FaultKind:
    """A registered fault: ``chaos.<name>`` calls ``build(chaos, ...)``; the rest is
    what the system derives from it."""

    name: str
    build: Builder
    #: A schedule may draw it, on a service, with these parameters' values (each
    #: list the mildest first); None: schedules never draw it (its target is not
    #: one service, or it needs an argument a schedule cannot choose).
    grid: Mapping[str, tuple[Param, ...]] | None = None
    #: The journal entry kinds applying it writes (each undone by an ``@undoer``).
    journal: tuple[str, ...] = ()
    #: What it can leave behind, by :data:`LEFTOVERS` name (each swept).
    leaves: tuple[str, ...] = ()
    #: What it needs, by :data:`REQUIREMENTS` name.
    requires: tuple[str, ...] = ()
    #: A call for the tests that apply every fault: ``{service}`` is the target,
    #: ``{peer}`` another service, ``{node}`` a swarm node, ``{dsn}`` a PostgreSQL
    #: address of the target.
    example: str = ""

    @property
    def module(self) -> str:
        return str(getattr(self.build, "__module__", "?"))

    @property
    def summary(self) -> str:
        """What its docstring says it does (before ``Undo:``), on one line."""
        return self._doc().split("Undo:")[0].strip()

    @property
    def undo(self) -> str:
        """What its docstring says its undo does (after ``Undo:``)."""
        parts = self._doc().split("Undo:", 1)
        return parts[1].strip() if len(parts) == 2 else ""

    def _doc(self) -> str:
        return " ".join((inspect.getdoc(self.build) or "").split())

    def signature(self) -> str:
        """``name(arguments)`` as a user calls it (``chaos`` left out)."""
        parts = []
        star = False
        for p in list(inspect.signature(self.build).parameters.values())[1:]:
            if p.kind is p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            if p.kind is p.VAR_POSITIONAL:
                star = True
                parts.append(f"*{p.name}")
            elif p.kind is p.VAR_KEYWORD:
                parts.append(f"**{p.name}")
            elif p.default is p.empty:
                parts.append(p.name)
            else:
                default = getattr(p.default, "name", p.default)  # a signal by its name
                parts.append(f"{p.name}={default!r}")
        return f"{self.name}({', '.join(parts)})"

    @property
    def schedulable(self) -> bool:
        return self.grid is not None

    def call(self, **roles: str) -> str:
        """:attr:`example` with its roles filled (``service="postgres"``, ...)."""
        return self.example.format(**{k: repr(v) for k, v in roles.items()})


@dataclass(frozen=True)
class DeadRuns:
    """What a sweeper is given: runs of this journal whose pytest is gone (run id ->
    the compose projects each touched) and a Docker client. What carries such a
    run's id, in a container of a project it touched, is ours to remove."""

    runs: Mapping[str, Collection[str]]
    client: Any = field(repr=False, default=None)
    #: The runs of this journal whose pytest still runs: what carries their id stays.
    alive: frozenset[str] = frozenset()

    @property
    def projects(self) -> list[str]:
        return sorted({p for touched in self.runs.values() for p in touched})

    def owns(self, run_id: str, project: str) -> bool:
        return project in self.runs.get(run_id, ())


Sweep = Callable[[DeadRuns], list[str]]
S = TypeVar("S", bound=Sweep)

_FAULTS: dict[str, FaultKind] = {}
_UNDOS: dict[str, Undo] = {}
_SWEEPERS: dict[str, Sweep] = {}
_loaded = False


def fault(
    name: str,
    *,
    grid: Mapping[str, Sequence[Param]] | None = None,
    journal: Sequence[str] = (),
    leaves: Sequence[str] = (),
    requires: Sequence[str] = (),
    example: str = "",
) -> Callable[[B], B]:
    """Register ``chaos.<name>``: the decorated function takes the chaos session
    first, then the call's arguments, validates them, and returns the fault's context
    manager (not yet entered). The keywords are :class:`FaultKind`'s fields."""
    if not name.isidentifier() or name.startswith("_"):
        raise ConfigurationError(f"a fault's name is a public Python name, not {name!r}.")
    for word, known, what in ((leaves, LEFTOVERS, "leftover"), (requires, REQUIREMENTS, "need")):
        unknown = sorted(set(word) - set(known))
        if unknown:
            raise ConfigurationError(
                f"fault {name!r} declares an unknown {what} {', '.join(unknown)}; the known "
                f"ones are: {', '.join(sorted(known))}."
            )
    if grid is not None and not all(values for values in grid.values()):
        raise ConfigurationError(f"fault {name!r} has a schedule parameter with no value.")

    def register(build: B) -> B:
        known = _FAULTS.get(name)
        if known is not None and known.module != build.__module__:
            raise ConfigurationError(
                f"fault {name!r} is registered twice: by {known.module} and {build.__module__}."
            )
        _FAULTS[name] = FaultKind(
            name,
            build,
            grid=None if grid is None else {k: tuple(v) for k, v in grid.items()},
            journal=tuple(journal),
            leaves=tuple(leaves),
            requires=tuple(requires),
            example=example,
        )
        return build

    return register


def undoer(kind: str) -> Callable[[U], U]:
    """Register the function that undoes a ``kind`` journal entry from its data
    alone. It returns a sentence saying what it did."""

    def register(fn: U) -> U:
        _UNDOS[kind] = fn
        return fn

    return register


def sweeper(leftover: str) -> Callable[[S], S]:
    """Register the sweep of a :data:`LEFTOVERS` kind: ``(dead) -> lines``, a line per
    thing removed or left alone (and why)."""
    if leftover not in LEFTOVERS:
        raise ConfigurationError(f"{leftover!r} is not one of {', '.join(sorted(LEFTOVERS))}.")

    def register(fn: S) -> S:
        _SWEEPERS[leftover] = fn
        return fn

    return register


def load() -> None:
    """Import the built-in fault modules and those of the ``pytest_chaos.faults``
    entry points (once)."""
    import importlib.metadata
    import pkgutil

    global _loaded
    if _loaded:
        return
    package = importlib.import_module(BUILT_IN)
    for module in pkgutil.iter_modules(package.__path__, f"{BUILT_IN}."):
        importlib.import_module(module.name)
    for point in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if point.value.startswith(f"{BUILT_IN}."):
            continue  # imported above (an older install may still list them)
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
    """The undo of ``kind``, the fault modules imported first."""
    load()
    return _UNDOS.get(kind)


def registered_undo(kind: str) -> Undo | None:
    """The undo of ``kind`` as registered so far (nothing imported)."""
    return _UNDOS.get(kind)


def undos() -> dict[str, Undo]:
    """Every journal kind that has an undo."""
    load()
    return dict(_UNDOS)


def sweepers() -> dict[str, Sweep]:
    """Every leftover kind that has a sweep, in :data:`LEFTOVERS`' order."""
    load()
    return {name: _SWEEPERS[name] for name in LEFTOVERS if name in _SWEEPERS}


def gaps() -> list[str]:
    """What the declarations promise and the registry cannot keep: a journal kind
    without an undo, a leftover without a sweep, a schedule grid whose parameter the
    fault does not take. One sentence each; none on a sound registry."""
    load()
    said = []
    for kind in sorted(_FAULTS.values(), key=lambda k: k.name):
        params = inspect.signature(kind.build).parameters
        for entry in kind.journal:
            if entry not in _UNDOS:
                said.append(f"{kind.name}: journal kind {entry!r} has no @undoer")
        for leftover in kind.leaves:
            if leftover not in _SWEEPERS:
                said.append(f"{kind.name}: leftover {leftover!r} has no @sweeper")
        if kind.grid is not None:
            takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
            if "service" not in params:
                said.append(f"{kind.name}: has a schedule grid but takes no service")
            for name in kind.grid:
                if name not in params and not takes_any:
                    said.append(f"{kind.name}: schedule parameter {name!r} is not an argument")
        try:
            kind.call(service="s", peer="p", node="n", dsn="d")
        except (KeyError, IndexError, ValueError) as exc:
            said.append(f"{kind.name}: its example names an unknown role {exc}")
    return said


def docs_table(*, built_in_only: bool = True) -> list[str]:
    """The docs' table of faults, a Markdown line each, from the registrations (the
    README's is this, kept current by a test; ``python -m pytest_chaos faults``
    prints it with a project's own faults too)."""
    lines = [
        "| `chaos.` call | what it does | undo | needs | a schedule draws |",
        "|---|---|---|---|---|",
    ]
    for kind in sorted(faults().values(), key=lambda k: k.name):
        if built_in_only and not kind.module.startswith(f"{BUILT_IN}."):
            continue
        if kind.grid is None:
            grid = "-"
        else:
            drawn = ", ".join(f"{k} {' / '.join(map(str, v))}" for k, v in kind.grid.items())
            grid = drawn or "the service"
        needs = ", ".join(kind.requires) or "-"
        cells = [f"`{kind.signature()}`", _md(kind.summary), _md(kind.undo) or "-", needs, grid]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def _md(text: str) -> str:
    """A docstring's reST literals as Markdown ones."""
    return text.replace("``", "`")


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
