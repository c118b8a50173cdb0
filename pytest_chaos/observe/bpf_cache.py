"""Compiled BPF programs kept between sessions.

bcc compiles a program with clang each time it is loaded: about 0.17 s per program
here, whatever its size (the headers), so 1.35 s for the seven probes. The result
depends only on the source, the flags, bcc and the running kernel (tracepoint
layouts), so the first session keeps it: each function's instructions (with the
places where they name a map), each map's definition and the C types of its keys
and values. A later session with the same inputs creates the maps, loads the
instructions and attaches them to their tracepoints through libbcc's own loader,
with no compiler: :class:`CachedProgram` offers what :mod:`bpf` uses of a bcc
``BPF`` object (tables by name, perf buffers, cleanup).

The cache is ``/var/lib/pytest-chaos/bpf-cache`` (root's, mode 0700), or the folder
in ``CHAOS_BPF_CACHE`` (``off``: always compile). An entry that does not load is
removed and the program compiled again.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes as ct
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("/var/lib/pytest-chaos/bpf-cache")
_TRACEPOINT_PREFIX = b"tracepoint__"
_PROG_TYPE_TRACEPOINT = 5
_MAP_TYPE_PERF_EVENT_ARRAY = 4
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1
_VERSION = 1  # of the entry's layout


def cache_dir() -> Path | None:
    """Where compiled programs are kept (None: not kept)."""
    configured = os.environ.get("CHAOS_BPF_CACHE", "")
    if configured.lower() in ("off", "0", "no"):
        return None
    return Path(configured) if configured else DEFAULT_DIR


def cache_key(source: bytes, cflags: Sequence[str], tracefs: Path | None) -> str:
    """What the compiled program depends on: its source and flags, bcc's version,
    the running kernel's build, the number of CPUs (perf buffers have one slot per
    CPU) and the layout of each tracepoint it attaches to."""
    import bcc

    digest = hashlib.sha256()
    for part in (
        str(_VERSION),
        getattr(bcc, "__version__", "?"),
        _read("/proc/version"),
        str(os.cpu_count()),
        *cflags,
    ):
        digest.update(part.encode() + b"\0")
    digest.update(source)
    for category, event in sorted(_tracepoints(source)):
        layout = _read(str(tracefs / "events" / category / event / "format")) if tracefs else ""
        digest.update(f"{category}:{event}\0{layout}\0".encode())
    return digest.hexdigest()[:32]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _tracepoints(source: bytes) -> set[tuple[str, str]]:
    import re

    return {
        (m.group(1).decode(), m.group(2).decode())
        for m in re.finditer(rb"TRACEPOINT_PROBE\(\s*(\w+)\s*,\s*(\w+)\s*\)", source)
    }


# -- libbcc, declared for our calls -----------------------------------------------------


def _libbcc() -> ct.CDLL:
    """Our own handle on bcc's library, with the signatures of the calls we make
    (bcc's Python module leaves some undeclared)."""
    from bcc.libbcc import lib as bcc_lib

    lib = ct.CDLL(bcc_lib._name, use_errno=True)
    vp, sz, cp, i = ct.c_void_p, ct.c_size_t, ct.c_char_p, ct.c_int
    for name, restype in (
        ("bpf_table_name", cp),
        ("bpf_table_fd_id", i),
        ("bpf_table_type_id", i),
        ("bpf_table_max_entries_id", sz),
        ("bpf_table_flags_id", i),
        ("bpf_table_key_desc_id", cp),
        ("bpf_table_leaf_desc_id", cp),
        ("bpf_table_key_size_id", sz),
        ("bpf_table_leaf_size_id", sz),
    ):
        getattr(lib, name).restype = restype
        getattr(lib, name).argtypes = [vp, sz]
    lib.bpf_num_tables.restype, lib.bpf_num_tables.argtypes = sz, [vp]
    lib.bpf_num_functions.restype, lib.bpf_num_functions.argtypes = sz, [vp]
    lib.bpf_function_name.restype, lib.bpf_function_name.argtypes = cp, [vp, sz]
    lib.bpf_module_license.restype, lib.bpf_module_license.argtypes = cp, [vp]
    lib.bpf_module_kern_version.restype, lib.bpf_module_kern_version.argtypes = ct.c_uint, [vp]
    lib.bcc_create_map.restype = i
    lib.bcc_create_map.argtypes = [i, cp, i, i, i, i]
    lib.bcc_prog_load.restype = i
    lib.bcc_prog_load.argtypes = [i, cp, vp, i, cp, ct.c_uint, i, cp, ct.c_uint]
    lib.bpf_attach_tracepoint.restype = i
    lib.bpf_attach_tracepoint.argtypes = [i, cp, cp]
    lib.bpf_close_perf_event_fd.restype = i
    lib.bpf_close_perf_event_fd.argtypes = [i]
    return lib


# -- keeping a compiled program ---------------------------------------------------------


def extract(bpf: Any) -> dict[str, Any]:
    """What a later session needs of ``bpf`` (a bcc BPF object just compiled) to load
    the same program without compiling it."""
    lib = _libbcc()
    module = bpf.module
    tables = []
    by_fd: dict[int, str] = {}
    for i in range(lib.bpf_num_tables(module)):
        name = lib.bpf_table_name(module, i).decode()
        by_fd[lib.bpf_table_fd_id(module, i)] = name
        tables.append(
            {
                "name": name,
                "type": lib.bpf_table_type_id(module, i),
                "key_size": lib.bpf_table_key_size_id(module, i),
                "leaf_size": lib.bpf_table_leaf_size_id(module, i),
                "max_entries": lib.bpf_table_max_entries_id(module, i),
                "flags": lib.bpf_table_flags_id(module, i),
                "key_desc": lib.bpf_table_key_desc_id(module, i).decode(),
                "leaf_desc": lib.bpf_table_leaf_desc_id(module, i).decode(),
            }
        )
    functions = []
    for i in range(lib.bpf_num_functions(module)):
        name = lib.bpf_function_name(module, i)
        if not name.startswith(_TRACEPOINT_PREFIX):
            continue
        insns = bytes(bpf.dump_func(name))
        maps = []
        for index in range(0, len(insns) // 8):
            code, regs, _off, imm = struct.unpack_from("<BBhi", insns, index * 8)
            if code == _LD_IMM64 and regs >> 4 == _PSEUDO_MAP_FD:
                if imm not in by_fd:
                    raise ValueError(f"{name.decode()} names map fd {imm}, which is no table")
                maps.append([index, by_fd[imm]])
        functions.append(
            {"name": name.decode(), "insns": base64.b64encode(insns).decode(), "maps": maps}
        )
    return {
        "version": _VERSION,
        "license": lib.bpf_module_license(module).decode(),
        "kern_version": lib.bpf_module_kern_version(module),
        "tables": tables,
        "functions": functions,
    }


def store(directory: Path, key: str, entry: dict[str, Any]) -> None:
    """Keep ``entry`` under ``key``: written whole or not at all."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory / f"{key}.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, directory / f"{key}.json")


def lookup(directory: Path, key: str) -> dict[str, Any] | None:
    try:
        entry = json.loads((directory / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("version") == _VERSION else None


def forget(directory: Path, key: str) -> None:
    with contextlib.suppress(OSError):
        (directory / f"{key}.json").unlink()


# -- loading a kept program -------------------------------------------------------------


class CachedTable:
    """A map of a cached program, as the parts of bcc's tables :mod:`bpf` uses: ``Key``
    and ``Leaf`` types, ``t[key]``, ``t[key] = leaf``, ``items()``, ``values()``, and
    ``open_perf_buffer`` for a perf event array."""

    def __init__(self, program: CachedProgram, spec: dict[str, Any], fd: int) -> None:
        from bcc import BPF

        self._program = program
        self.fd = fd
        self.name = spec["name"]
        self.ttype = int(spec["type"])
        self.max_entries = int(spec["max_entries"])
        self.Key: Any = BPF._decode_table_type(json.loads(spec["key_desc"]))
        self.Leaf: Any = BPF._decode_table_type(json.loads(spec["leaf_desc"]))

    def _key(self, key: Any) -> Any:
        return self.Key(key) if isinstance(key, int) else key

    def __getitem__(self, key: Any) -> Any:
        from bcc.libbcc import lib

        leaf = self.Leaf()
        if lib.bpf_lookup_elem(self.fd, ct.byref(self._key(key)), ct.byref(leaf)) < 0:
            raise KeyError(key)
        return leaf

    def __setitem__(self, key: Any, leaf: Any) -> None:
        from bcc.libbcc import lib

        if lib.bpf_update_elem(self.fd, ct.byref(self._key(key)), ct.byref(leaf), 0) < 0:
            errno = ct.get_errno()
            raise OSError(errno, f"could not update map {self.name}: {os.strerror(errno)}")

    def keys(self) -> Iterator[Any]:
        from bcc.libbcc import lib

        key = self.Key()
        following = self.Key()
        found = lib.bpf_get_next_key(self.fd, None, ct.byref(following)) == 0
        while found:
            ct.memmove(ct.byref(key), ct.byref(following), ct.sizeof(key))
            yield self.Key.from_buffer_copy(key)
            found = lib.bpf_get_next_key(self.fd, ct.byref(key), ct.byref(following)) == 0

    def items(self) -> list[tuple[Any, Any]]:
        out = []
        for key in self.keys():
            with contextlib.suppress(KeyError):
                out.append((key, self[key]))
        return out

    def values(self) -> list[Any]:
        return [leaf for _, leaf in self.items()]

    def open_perf_buffer(self, callback: Callable[[int, Any, int], None], page_cnt: int) -> None:
        """One perf ring per CPU slot of this perf event array, read by
        :meth:`CachedProgram.perf_buffer_poll`; ``callback(cpu, data, size)``."""
        from bcc.libbcc import _LOST_CB_TYPE, _RAW_CB_TYPE, lib
        from bcc.utils import get_online_cpus

        if self.ttype != _MAP_TYPE_PERF_EVENT_ARRAY:
            raise TypeError(f"map {self.name} is not a perf event array")
        for cpu in get_online_cpus():
            if cpu >= self.max_entries:
                continue
            raw = _RAW_CB_TYPE(lambda _cookie, data, size, cpu=cpu: callback(cpu, data, size))
            lost = _LOST_CB_TYPE(lambda _cookie, _count: None)
            reader = lib.bpf_open_perf_buffer(raw, lost, None, -1, cpu, page_cnt)
            if not reader:
                raise OSError(f"could not open the perf buffer of {self.name} on CPU {cpu}")
            self._program._readers.append((reader, raw, lost))
            self[self.Key(cpu)] = self.Leaf(lib.perf_reader_fd(reader))


@dataclass
class _Attached:
    prog_fd: int
    perf_fd: int


class CachedProgram:
    """A program loaded from the cache: maps created, functions loaded and attached to
    their tracepoints (as bcc does for ``TRACEPOINT_PROBE`` functions)."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self._lib = _libbcc()
        self._tables: dict[bytes, CachedTable] = {}
        self._attached: list[_Attached] = []
        #: The attached functions' names, in the order of ``_attached``.
        self._names: list[str] = []
        self._readers: list[tuple[int, Any, Any]] = []
        try:
            self._load(entry)
        except BaseException:
            self.cleanup()
            raise

    def _load(self, entry: dict[str, Any]) -> None:
        lib = self._lib
        fds: dict[str, int] = {}
        for spec in entry["tables"]:
            fd = lib.bcc_create_map(
                int(spec["type"]),
                spec["name"].encode(),
                int(spec["key_size"]),
                int(spec["leaf_size"]),
                int(spec["max_entries"]),
                int(spec["flags"]),
            )
            if fd < 0:
                raise OSError(-fd, f"could not create map {spec['name']}: {os.strerror(-fd)}")
            fds[spec["name"]] = fd
            self._tables[spec["name"].encode()] = CachedTable(self, spec, fd)
        license_ = entry["license"].encode()
        for function in entry["functions"]:
            insns = bytearray(base64.b64decode(function["insns"]))
            for index, table in function["maps"]:
                code, regs, off, _imm = struct.unpack_from("<BBhi", insns, index * 8)
                struct.pack_into("<BBhi", insns, index * 8, code, regs, off, fds[table])
            buffer = (ct.c_char * len(insns)).from_buffer(insns)
            name = function["name"].encode()
            prog_fd = lib.bcc_prog_load(
                _PROG_TYPE_TRACEPOINT, name[:15], buffer, len(insns), license_,
                int(entry["kern_version"]), 0, None, 0,
            )  # fmt: skip
            if prog_fd < 0:
                errno = ct.get_errno()
                raise OSError(errno, f"could not load {function['name']}: {os.strerror(errno)}")
            category, event = name[len(_TRACEPOINT_PREFIX) :].split(b"__", 1)
            perf_fd = lib.bpf_attach_tracepoint(prog_fd, category, event)
            if perf_fd < 0:
                os.close(prog_fd)
                raise OSError(f"could not attach {function['name']} to {category!r}:{event!r}")
            self._attached.append(_Attached(prog_fd, perf_fd))
            self._names.append(function["name"])

    def __getitem__(self, name: bytes) -> CachedTable:
        return self._tables[name]

    def program_fds(self) -> dict[str, int]:
        """Each attached function's program, by the function's name."""
        return {name: a.prog_fd for name, a in zip(self._names, self._attached, strict=True)}

    def perf_buffer_poll(self, timeout: int = -1) -> None:
        from bcc.libbcc import lib

        if not self._readers:
            return
        readers = (ct.c_void_p * len(self._readers))(*(r for r, _, _ in self._readers))
        lib.perf_reader_poll(len(self._readers), readers, timeout)

    def cleanup(self) -> None:
        from bcc.libbcc import lib

        for reader, _, _ in self._readers:
            lib.perf_reader_free(reader)
        self._readers.clear()
        for attached in self._attached:
            self._lib.bpf_close_perf_event_fd(attached.perf_fd)
            with contextlib.suppress(OSError):
                os.close(attached.prog_fd)
        self._attached.clear()
        self._names.clear()
        for table in self._tables.values():
            with contextlib.suppress(OSError):
                os.close(table.fd)
        self._tables.clear()
