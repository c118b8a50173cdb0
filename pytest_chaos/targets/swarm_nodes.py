"""A Docker Swarm of several nodes on this one machine.

Each node is a ``dockerd`` of its own, in a network namespace of its own, with its own
data root, exec root, socket, pid file, cgroup parent and host name; the nodes' namespaces
are joined by a bridge in a hub namespace. Nothing is added to the host's own network
namespace: the host speaks to each engine through its unix socket. Every task a node
runs is a process of this kernel, so the faults that act on a compose container (a
signal by pidfd, rules in its namespace, cgroup limits) act on a task the same way.

Everything is named after the run and journaled (kind ``swarm-cluster``) before it is
made, so a cluster left by a pytest that died is torn down by the next session or by
``pytest --chaos-cleanup``: engines, their containers, cgroups, mounts (they live in
the engines' own mount namespaces and go with them), namespaces and files.

What an engine needs inside ``ip netns exec`` (which remounts /sys): the host's cgroup
hierarchies mounted again under a tmpfs on /sys/fs/cgroup (the same hierarchies, so
the host sees the tasks' cgroups where it sees any container's), and a UTS namespace
for a distinct node name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigurationError,
    EnvironmentProblem,
    PermissionProblem,
    StackStartError,
    UnknownService,
)
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from . import linux
from .cgroup import OwnCgroup, cgroup_procs, cgroup_roots, kill_cgroup_tree, own_cgroup_path
from .swarm_dns import NameAnswerer
from .swarm_teardown import RUN_DIR, STATE_DIR, teardown

if TYPE_CHECKING:
    import docker

    from ..journal import Entry, Journal

#: The hub's /24, inside our own namespaces only (Docker's own pools are 10/8 for
#: overlays and 172.17-31 for bridges: no overlap).
SUBNET = "192.168.213"
SWARM_PORT = 2377
#: A node with no heartbeat for about three of these is marked Down (swarmkit's
#: grace is 3 periods; measured 3.4-3.6 s at 1 s, 13.3 s at the default 5 s).
HEARTBEAT_S = 1.0
#: The slowest rate at which a node's engine may store an image archive before its
#: load is taken for stuck (5 MB/s; measured here about 60 MB/s per node, three
#: nodes at once).
LOAD_BYTES_PER_S = 5e6

_BOOT = r"""
set -e
hostname "$1"; shift
if [ "$1" = tmpfs ]; then mount -t tmpfs -o mode=755 pytest-chaos /sys/fs/cgroup; fi
shift
while [ "$1" != -- ]; do
  case "$1" in
    mount) mkdir -p "$2"
           if [ "$3" = cgroup2 ]; then mount -t cgroup2 none "$2"
           else mount -t cgroup -o "$4" none "$2"; fi
           shift 4 ;;
    link)  ln -s "$3" "$2"; shift 3 ;;
  esac
done
shift
exec "$@"
"""


@dataclass(frozen=True)
class Node:
    """One engine of the cluster, and everything of it that teardown must find."""

    name: str
    netns: str
    address: str
    run_dir: str
    data_root: str
    cgroup_parent: str
    own_cgroup: str
    pid: int = 0
    start: str = ""

    @property
    def socket(self) -> str:
        return f"{self.run_dir}/docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return Path(self.run_dir) / "dockerd.log"


class ClusterView:
    """What every swarm backend answers from its managers: which nodes are ready, which
    one leads, a node by name. Subclasses give ``nodes`` and ``manager()``."""

    nodes: list[Any]
    #: The namespace joining a local swarm's nodes (None: their addresses are reachable).
    hub: str | None
    #: Nodes a fault cut off, froze or crashed now, and those crashed.
    unavailable: set[str]
    crashed: set[str]

    def manager(self) -> docker.DockerClient:
        raise NotImplementedError

    def client(self, node: str) -> docker.DockerClient:
        raise NotImplementedError

    def ready_nodes(self) -> set[str]:
        """The nodes the managers see as ready."""
        try:
            listed = self.manager().nodes.list()
        except Exception:  # noqa: BLE001 - not formed yet, or no leader at this moment
            return set()
        return {
            str(n.attrs["Description"]["Hostname"])
            for n in listed
            if n.attrs.get("Status", {}).get("State") == "ready"
        }

    def leader(self) -> str | None:
        """The node whose manager leads the swarm's Raft now (None: no leader now)."""
        with contextlib.suppress(Exception):  # no manager answers, or an election
            for listed in self.manager().nodes.list():
                if (listed.attrs.get("ManagerStatus") or {}).get("Leader"):
                    return str(listed.attrs["Description"]["Hostname"])
        return None

    def node(self, name: str) -> Any:
        found = next((n for n in self.nodes if n.name == name), None)
        if found is None:
            raise ConfigurationError(
                f"the swarm has no node {name!r}; "
                f"its nodes: {', '.join(n.name for n in self.nodes)}."
            )
        return found


@dataclass
class LocalSwarm(ClusterView):
    """``size`` engines on this machine forming one Swarm: the first ``managers`` are
    managers (three keep a quorum when any one node is cut off or lost), the rest
    workers. :meth:`up` brings it up, :meth:`down` removes every trace of it."""

    run_id: str
    size: int = 3
    managers: int = 3
    journal: Journal | None = None
    heartbeat_s: float = HEARTBEAT_S
    nodes: list[Node] = field(default_factory=list)
    #: How long each part of the bring-up took, in seconds.
    timings: dict[str, float] = field(default_factory=dict)
    _entry: Entry | None = None
    _clients: dict[str, docker.DockerClient] = field(default_factory=dict)
    _engines: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _answerer: NameAnswerer | None = None
    #: Nodes a fault cut off or froze now: their engines are not asked (a frozen
    #: engine would not answer before the client's timeout).
    unavailable: set[str] = field(default_factory=set)
    #: Nodes crashed now (:meth:`crash`): no engine listens there.
    crashed: set[str] = field(default_factory=set)
    #: The hub namespace's name (set from the run id).
    hub: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if not 1 <= self.size <= 9:
            raise StackStartError(f"a local swarm has 1 to 9 nodes, not {self.size}.")
        if not 1 <= self.managers <= self.size:
            raise StackStartError(
                f"a swarm of {self.size} nodes has 1 to {self.size} managers, not {self.managers}."
            )
        tag = f"pcs-{self.run_id}"
        self.hub = f"{tag}-hub"
        self.nodes = [
            Node(
                name=f"node{i}",
                netns=f"{tag}-node{i}",
                address=f"{SUBNET}.{10 + i}",
                run_dir=str(RUN_DIR / self.run_id / f"node{i}"),
                data_root=str(STATE_DIR / self.run_id / f"node{i}"),
                cgroup_parent=f"pytest-chaos-swarm-{self.run_id}-node{i}",
                own_cgroup=str(own_cgroup_path(f"pytest-chaos-swarm-{self.run_id}-node{i}-engine")),
            )
            for i in range(1, self.size + 1)
        ]

    # -- what teardown needs --------------------------------------------------------

    def data(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "hub": self.hub,
            "state_dir": str(STATE_DIR / self.run_id),
            "run_dir": str(RUN_DIR / self.run_id),
            "nodes": [asdict(n) for n in self.nodes],
        }

    def _journal(self) -> None:
        if self.journal is None:
            return
        if self._entry is None:
            self._entry = self.journal.write(
                "swarm-cluster", f"a local swarm of {self.size} nodes", self.data()
            )
        else:
            self._entry = self.journal.update(self._entry, self.data())

    # -- bring-up -------------------------------------------------------------------

    def up(self, *, timeout: float = 90.0) -> None:
        """Make the namespaces, start the engines, form the swarm; on any failure,
        remove what was made and raise."""
        for tool in ("ip", "unshare", "dockerd"):
            if shutil.which(tool) is None:
                raise EnvironmentProblem(
                    f"{tool} is not installed, and a local swarm needs it: "
                    "apt-get install iproute2 util-linux docker.io."
                )
        if os.geteuid() != 0:
            raise PermissionProblem("a local swarm starts engines of its own: run pytest as root.")
        self._journal()
        try:
            with self._timed("network"):
                self._make_network()
                self._answerer = NameAnswerer(self.hub, f"{SUBNET}.1")
            with self._timed("engines"):
                self._start_engines(timeout)
            with self._timed("swarm"):
                self._form_swarm(timeout)
        except BaseException:
            self.down()
            raise

    @contextlib.contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        began = time.monotonic()
        yield
        self.timings[what] = round(time.monotonic() - began, 3)

    def _make_network(self) -> None:
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "hub", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", f"{SUBNET}.1/24", "dev", "hub")
        _ip("-n", self.hub, "link", "set", "hub", "up")
        for i, node in enumerate(self.nodes, start=1):
            _ip("netns", "add", node.netns)
            _ip("-n", self.hub, "link", "add", f"v{i}", "type", "veth",
                "peer", "name", "eth0", "netns", node.netns)  # fmt: skip
            _ip("-n", self.hub, "link", "set", f"v{i}", "master", "hub", "up")
            _ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
            _ip("-n", node.netns, "link", "set", "eth0", "up")
            _ip("-n", node.netns, "link", "set", "lo", "up")

    def _start_engines(self, timeout: float) -> None:
        mounts = _cgroup_mounts()
        for node in self.nodes:
            Path(node.run_dir).mkdir(parents=True, mode=0o700)
            Path(node.data_root).mkdir(parents=True, mode=0o700)
            (Path(node.run_dir) / "daemon.json").write_text("{}\n")
            self._start_engine(node, mounts)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            self._clients[node.name] = _wait_for_engine(node, deadline)

    def _start_engine(self, node: Node, mounts: list[str]) -> Node:
        """Start ``node``'s dockerd in its namespace and cgroup (its folders exist);
        the node, with the engine's pid, is journaled before this returns."""
        run_dir = Path(node.run_dir)
        group = OwnCgroup(node.own_cgroup)
        group.create()
        argv = [
            *group.exec_prefix(),
            "ip", "netns", "exec", node.netns,
            "unshare", "--uts", "sh", "-c", _BOOT, "boot", node.name, *mounts, "--",
            "dockerd",
            f"--config-file={run_dir / 'daemon.json'}",
            f"--data-root={node.data_root}",
            f"--exec-root={run_dir / 'exec'}",
            f"--pidfile={run_dir / 'dockerd.pid'}",
            f"--host={node.url}",
            f"--cgroup-parent=/{node.cgroup_parent}",
            "--log-level=warn",
            # Names Docker's embedded DNS does not know go here, and get "no such
            # name" at once (see NameAnswerer).
            f"--dns={SUBNET}.1",
        ]  # fmt: skip
        with node.log.open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._engines[node.name] = proc
        started = _replace(node, pid=proc.pid, start=linux.start_time(proc.pid))
        self.nodes = [started if n.name == node.name else n for n in self.nodes]
        self._journal()
        return started

    def crash(self, name: str) -> int:
        """Lose node ``name`` as a machine loses its power: every process of it (engine,
        containerd, shims, tasks) is killed at once; its namespace, disk and swarm
        membership stay. How many processes were killed."""
        node = self.node(name)
        self.unavailable.add(name)
        self.crashed.add(name)
        client = self._clients.pop(name, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        groups = [Path(node.own_cgroup)] + [b / node.cgroup_parent for b in cgroup_roots()]
        # Counted before: containerd dies with the engine (its parent-death signal).
        below = [d for g in groups if g.is_dir() for d in g.rglob("*") if d.is_dir()]
        running = {p for g in groups + below for p in cgroup_procs(g)}
        engine = self._engines.pop(name, None)
        if engine is not None:
            engine.kill()
        kill_cgroup_tree(Path(node.own_cgroup), Path(node.own_cgroup).name)
        if engine is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                engine.wait(timeout=15)
        for base in cgroup_roots():
            kill_cgroup_tree(base / node.cgroup_parent, node.cgroup_parent)
        return len(running)

    def boot(self, name: str, *, timeout: float = 90.0) -> None:
        """Start node ``name``'s engine again after :meth:`crash`, and wait until it
        answers: it rejoins the swarm by itself (its membership is on its disk). Its
        run folder is emptied first, as a reboot empties /run: the sockets and state
        the killed engine and containerd left there would stop them starting."""
        node = self.node(name)
        shutil.rmtree(Path(node.run_dir) / "exec", ignore_errors=True)
        (Path(node.run_dir) / "dockerd.pid").unlink(missing_ok=True)
        node = self._start_engine(node, _cgroup_mounts())
        client = _wait_for_engine(node, time.monotonic() + timeout)
        stale = self._clients.pop(name, None)
        if stale is not None:
            stale.close()
        self._clients[name] = client
        self.crashed.discard(name)
        self.unavailable.discard(name)

    def _form_swarm(self, timeout: float) -> None:
        first = self.client(self.nodes[0].name)
        first.swarm.init(
            advertise_addr=self.nodes[0].address,
            listen_addr=f"{self.nodes[0].address}:{SWARM_PORT}",
            dispatcher_heartbeat_period=int(self.heartbeat_s * 1e9),
        )
        tokens = first.swarm.attrs["JoinTokens"]
        for i, node in enumerate(self.nodes[1:], start=2):
            self.client(node.name).swarm.join(
                remote_addrs=[f"{self.nodes[0].address}:{SWARM_PORT}"],
                join_token=tokens["Manager" if i <= self.managers else "Worker"],
                listen_addr=f"{node.address}:{SWARM_PORT}",
                advertise_addr=node.address,
            )
        _poll(
            lambda: self.ready_nodes() == {n.name for n in self.nodes},
            timeout,
            lambda: (
                f"the swarm's nodes were not all ready within {timeout:g} s "
                f"(ready: {sorted(self.ready_nodes())})"
            ),
        )

    # -- use ------------------------------------------------------------------------

    def client(self, node: str) -> docker.DockerClient:
        """The Docker client of one node's engine (UnknownService while the node is
        crashed: a client would only meet a socket nobody listens on)."""
        if node in self.crashed:
            raise UnknownService(f"swarm node {node!r} is down (crashed): no engine answers.")
        known = self._clients.get(node)
        if known is None:
            import docker

            found = next((n for n in self.nodes if n.name == node), None)
            if found is None:
                raise StackStartError(
                    f"the swarm has no node {node!r}; its nodes: "
                    f"{', '.join(n.name for n in self.nodes)}."
                )
            known = self._clients[node] = docker.DockerClient(base_url=found.url, timeout=30)
        return known

    def manager(self) -> docker.DockerClient:
        """A client of a manager that answers (the first one that does)."""
        for node in self.nodes[: self.managers]:
            if node.name in self.unavailable:
                continue
            with contextlib.suppress(Exception):
                client = self.client(node.name)
                if client.info().get("Swarm", {}).get("ControlAvailable"):
                    return client
        raise StackStartError("no manager of the local swarm answers.")

    def load_images(self, names: list[str]) -> None:
        """Copy ``names`` from this host's engine into every node, in one archive for
        all (layers they share are written once)."""
        with self._timed("images"):
            archive = Path(self.nodes[0].run_dir).parent / "images.tar"
            try:
                _save(names, archive)
                errors: list[str] = []
                size = archive.stat().st_size
                # The engine answers once it has stored the whole archive: the wait
                # scales with its size (a fixed 30 s ran out on a busy 2-core machine
                # loading 712 MB into three engines at once). Measured here: 1.5 GB
                # into three nodes in 22-27 s, about 60 MB/s each; allowed: 5 MB/s.
                wait_s = max(60, round(size / LOAD_BYTES_PER_S))

                def load(node: Node) -> None:
                    import docker

                    try:
                        client = docker.DockerClient(base_url=node.url, timeout=wait_s)
                        with contextlib.closing(client), archive.open("rb") as data:
                            client.images.load(data)
                    except Exception as exc:  # noqa: BLE001 - gathered and raised below
                        errors.append(
                            f"{node.name}: {exc} (loading {size / 2**20:.0f} MiB, allowed "
                            f"{wait_s:.0f} s)"
                        )

                threads = [threading.Thread(target=load, args=(n,)) for n in self.nodes]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                if errors:
                    raise StackStartError(
                        f"images did not load into the swarm: {'; '.join(errors)}"
                    )
            finally:
                archive.unlink(missing_ok=True)

    # -- teardown -------------------------------------------------------------------

    def down(self) -> str:
        """Remove every trace of the cluster; say what was done."""
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        # The engines are our children: killed and reaped first, so that no zombie of
        # theirs keeps their cgroups from being removed (the pid is ours until reaped).
        for engine in self._engines.values():
            engine.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                engine.wait(timeout=15)
        self._engines.clear()
        said = teardown(self.data())
        if self._answerer is not None:
            self._answerer.close()
            self._answerer = None
        if self.journal is not None and self._entry is not None:
            self.journal.clear(self._entry)
            self._entry = None
        return said


def _replace(node: Node, **changes: Any) -> Node:
    return Node(**{**asdict(node), **changes})


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=False)
    if done.returncode != 0:
        raise StackStartError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def _cgroup_mounts() -> list[str]:
    """The arguments of the boot script that mount the host's cgroup hierarchies again
    (``tmpfs|none``, then ``mount DIR TYPE OPTIONS`` and ``link NAME TARGET`` each)."""
    root = "/sys/fs/cgroup"
    specs: list[str] = []
    whole = "none"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, kind, options, *_ = line.split()
        if where == root and kind == "tmpfs":
            whole = "tmpfs"
        if kind not in ("cgroup", "cgroup2") or not (where == root or where.startswith(root + "/")):
            continue
        keep = [o for o in options.split(",") if o not in _MOUNT_FLAGS]
        specs += ["mount", where, kind, ",".join(keep) or "none"]
    if whole == "tmpfs":
        with contextlib.suppress(OSError):
            for entry in os.scandir(root):
                if entry.is_symlink():
                    specs += ["link", entry.path, os.readlink(entry.path)]
    return [whole, *specs]


_MOUNT_FLAGS = frozenset(
    {"rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime", "seclabel", "nsdelegate"}
)


def _wait_for_engine(node: Node, deadline: float) -> docker.DockerClient:
    import docker

    made: list[docker.DockerClient] = []

    def answers() -> bool:
        if not linux.is_alive(node.pid, node.start):
            tail = node.log.read_text(errors="replace").strip().splitlines()[-5:]
            raise StackStartError(
                f"the engine of swarm {node.name} exited while starting: {' | '.join(tail)}"
            )
        if not _pings(node.socket):
            return False
        # The client asks the engine its API version as it is made (a client whose
        # making failed could not be closed: hence the ping first).
        made.append(docker.DockerClient(base_url=node.url, timeout=30))
        return True

    _poll(answers, deadline - time.monotonic(), lambda: f"{node.name}'s engine did not answer")
    return made[0]


def _pings(path: str) -> bool:
    """Whether the engine listening on unix socket ``path`` answers its API's ping."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False


def _poll(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise StackStartError(f"{what()}.")
        time.sleep(0.1)  # poll interval while an engine or the swarm comes up


def _save(names: list[str], archive: Path) -> None:
    """One archive of several images from the host's engine (the SDK saves one)."""
    if shutil.which("docker") is None:
        raise EnvironmentProblem("the docker CLI is not installed: apt-get install docker.io.")
    done = subprocess.run(
        ["docker", "save", "-o", str(archive), *names],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise StackStartError(f"docker save {' '.join(names)} failed: {done.stderr.strip()}")
