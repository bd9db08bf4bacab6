"""Containment of a worker's whole process tree: how to launch it so that it cannot reach out.

On Linux the worker runs under ``setpriv --pdeathsig KILL -- unshare --pid --mount --net
--uts --ipc --fork --kill-child --mount-proc -- sh -c SCRIPT``: its own pid namespace (it
cannot see or signal the engine or other workers; when the namespace's first process dies the
kernel kills every process left in it), its own mount namespace (a fresh /proc with its kernel
knobs read-only, a fresh read-only /sys without the cgroup tree, a private /tmp and /dev/shm,
chosen engine folders hidden), a network namespace with only a loopback that is down (no
outbound traffic; the engine's 127.0.0.1 ports are unreachable), its own IPC and host name, and
no capabilities (so it cannot undo any of it). The rest of the file system is shared as it is
today: a function can read and write what the engine's user can.
The parent-death signals chain the engine to the namespace: the engine dies, even by SIGKILL ->
``unshare`` gets SIGKILL -> the namespace's init (the shell) gets SIGKILL -> the kernel kills
the rest. Where a memory cgroup can be made under the engine's own, the tree gets one memory
limit that also holds while the worker is idle.

Where a piece is missing (not Linux, no ``unshare``, namespaces refused, no writable memory
cgroup) the worker runs as before and :class:`Containment` says, one sentence each, what is not
enforced and why; the engine prints that once at start-up. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import anyio
import attrs

__all__ = ["Containment", "Launch", "ProcessTree", "Sandbox", "decode_returncode"]

_PRIVATE_DIRS = ("/tmp", "/dev/shm")  # replaced by an empty, writable tmpfs of the worker's own
# Kernel knobs a process with uid 0 may write by file mode alone, capabilities or not (global
# sysctls, the magic SysRq key): bound read-only over themselves. /sys gets a fresh read-only
# sysfs, which also hides the cgroup tree (no way out of the memory limit).
_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/fs", "/proc/irq")
_PROBE_TIMEOUT = 10.0
_MEMBERS_TTL = 1.0  # without a cgroup, how long a scan of the tree's members is reused
_RELEASE_TIMEOUT = 5.0  # a SIGKILLed tree is gone at once; this bounds the pathological case
_CGROUP_PREFIX = "minapp-"
_FSTAB_PREFIX = "minapp-sandbox-"
_CGROUP_NUMBERS = itertools.count(1)
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@attrs.frozen
class Containment:
    """What the launcher enforces on this machine, and what it cannot, with the reason."""

    #: Own pid namespace: the engine and other workers are invisible and cannot be signalled.
    pid_namespace: bool
    #: Own network namespace: no network at all, not even the engine's 127.0.0.1 ports.
    net_namespace: bool
    #: Own mount namespace: private /tmp and /dev/shm, cgroup tree and engine paths hidden.
    private_tmp: bool
    #: Every descendant dies with the worker (time limit, retirement) and with the engine.
    tree_kill: bool
    #: One memory limit for the whole tree, busy or idle (a memory cgroup).
    tree_memory_limit: bool
    #: "v1" or "v2" when tree_memory_limit.
    cgroup_version: str | None
    #: One sentence per thing that is not enforced, naming the reason.
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        """The line the engine logs once at start-up."""
        if not self.missing:
            return (
                "functions are contained: own pid, mount and network namespaces, private /tmp, "
                f"whole-tree kill, tree memory limit (cgroup {self.cgroup_version})"
            )
        return "function containment is incomplete: " + "; ".join(self.missing)


def decode_returncode(returncode: int | None) -> int | None:
    """A contained worker's exit status as Popen would give it uncontained.

    The namespace's init is a shell, which turns a worker killed by signal N into exit status
    128+N; this gives -N back so the engine can say "killed by signal SIGSEGV".
    """
    if returncode is not None and 128 < returncode < 128 + 65:
        return -(returncode - 128)
    return returncode


# -- memory cgroups ------------------------------------------------------------------------


@attrs.frozen
class _CgroupParent:
    """The engine's own memory cgroup, under which each worker tree gets one of its own."""

    version: Literal["v1", "v2"]
    path: Path


def _find_cgroup_parent() -> tuple[_CgroupParent | None, str]:
    """The engine's memory cgroup if children with a memory limit can be made in it."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        membership = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None, "/proc is not available"
    v1_mount = v2_mount = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype, _source, options = line.split(" - ", 1)[1].split()[:3]
        if fstype == "cgroup2" and v2_mount is None:
            v2_mount = fields[4]
        elif fstype == "cgroup" and "memory" in options.split(",") and v1_mount is None:
            v1_mount = fields[4]
    v1_path = v2_path = None
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    reasons: list[str] = []
    if v2_mount is not None and v2_path is not None:
        own = Path(v2_mount + v2_path.rstrip("/"))
        try:
            if "memory" not in (own / "cgroup.controllers").read_text().split():
                raise OSError("the memory controller is not enabled for the engine's cgroup")
            if "memory" not in (own / "cgroup.subtree_control").read_text().split():
                # Fails (EBUSY) when the engine's cgroup holds processes and is not the root:
                # the engine then needs a delegated cgroup (systemd-run --scope -p Delegate=yes).
                (own / "cgroup.subtree_control").write_text("+memory")
            if _can_make_child(own):
                return _CgroupParent("v2", own), ""
        except OSError as exc:
            reasons.append(f"cgroup v2 at {own}: {exc.strerror or exc}")
    if v1_mount is not None and v1_path is not None:
        own = Path(v1_mount + v1_path.rstrip("/"))
        try:
            if _can_make_child(own):
                return _CgroupParent("v1", own), ""
        except OSError as exc:
            reasons.append(f"cgroup v1 memory at {own}: {exc.strerror or exc}")
    if not reasons:
        reasons.append("no memory cgroup is mounted")
    return None, ", ".join(reasons)


def _can_make_child(own: Path) -> bool:
    probe = own / f"{_CGROUP_PREFIX}{os.getpid()}-probe"
    probe.mkdir()
    probe.rmdir()
    return True


def _remove_stale_cgroups(parent: _CgroupParent, also: Iterable[str] = ()) -> None:
    # Left behind by an engine that was SIGKILLed: empty once its tree died with it.
    own = set(also)
    with contextlib.suppress(OSError):
        for entry in parent.path.iterdir():
            name = entry.name
            if not name.startswith(_CGROUP_PREFIX):
                continue
            pid_text = name[len(_CGROUP_PREFIX) :].split("-", 1)[0]
            dead = pid_text.isdigit() and not Path(f"/proc/{pid_text}").exists()
            if dead or name in own:
                with contextlib.suppress(OSError):
                    entry.rmdir()


def _remove_stale_fstabs() -> None:
    # The fstab folders of engines that were SIGKILLed.
    if not os.path.isdir("/proc/self"):
        return  # no way to tell a dead engine's from a live one's
    tmp = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(tmp):
            if name.startswith(_FSTAB_PREFIX):
                pid_text = name[len(_FSTAB_PREFIX) :].split("-", 1)[0]
                if pid_text.isdigit() and not os.path.exists(f"/proc/{pid_text}"):
                    shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


class _TreeCgroup:
    """One worker tree's memory cgroup."""

    def __init__(self, parent: _CgroupParent, name: str, limit: int) -> None:
        self.version = parent.version
        self.path = parent.path / name
        # The files read on every job stay open: one pread()/pwrite() per figure. (On v2 the
        # peak must be reset and read through the same open file anyway.)
        self._fds: dict[str, int] = {}
        self.path.mkdir()
        try:
            if self.version == "v2":
                self._write("memory.max", str(limit))
                with contextlib.suppress(OSError):  # no swap to escape to
                    self._write("memory.swap.max", "0")
                with contextlib.suppress(OSError):  # out of memory: the whole tree goes
                    self._write("memory.oom.group", "1")
            else:
                self._write("memory.limit_in_bytes", str(limit))
                with contextlib.suppress(OSError):  # only with swap accounting
                    self._write("memory.memsw.limit_in_bytes", str(limit))
        except BaseException:
            self.path.rmdir()
            raise

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            # Read-only files refuse O_RDWR; the peak is written (reset) and read.
            writable = name in ("memory.peak", "memory.max_usage_in_bytes")
            flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
            fd = os.open(self.path / name, flags)
            self._fds[name] = fd
        return fd

    def _pread(self, name: str) -> bytes:
        return os.pread(self._fd(name), 4096, 0)

    def usage(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            name = "memory.current" if self.version == "v2" else "memory.usage_in_bytes"
            return int(self._pread(name))
        return 0

    def peak(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            name = "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes"
            return int(self._pread(name))
        return self.usage()

    def reset_peak(self) -> None:
        with contextlib.suppress(OSError):  # v2 needs Linux >= 6.12 for this
            name = "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes"
            os.pwrite(self._fd(name), b"reset" if self.version == "v2" else b"0", 0)

    def oom_kills(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            name = "memory.events" if self.version == "v2" else "memory.oom_control"
            for line in self._pread(name).decode("ascii", "replace").splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(p) for p in self._read("cgroup.procs").split()]
        return []

    def kill(self) -> None:
        if self.version == "v2":
            with contextlib.suppress(OSError):
                self._write("cgroup.kill", "1")
                return
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def try_remove(self) -> bool:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:  # EBUSY: processes still exiting
            self.kill()
            return False
        return True


# -- the launch ----------------------------------------------------------------------------


def _kept_dirs(paths: Iterable[str], covered: Sequence[str]) -> list[str]:
    """Directories the worker needs that lie under a private or hidden dir, outermost only."""
    found: set[str] = set()
    for raw in paths:
        if not os.path.isabs(raw):
            continue
        # The file's real folder, and the folder of every link on the way to it: a venv's
        # bin/python is a symlink, exec'd by its own path, and may point into another venv
        # (Python 3.10 links a venv made by a venv's Python to that Python); with each venv's
        # root, so pyvenv.cfg is found too.
        candidates = [os.path.realpath(raw)]
        for hop in _links(raw):
            folder = os.path.realpath(os.path.dirname(hop))
            candidates.append(folder)
            if os.path.isfile(os.path.join(os.path.dirname(folder), "pyvenv.cfg")):
                candidates.append(os.path.dirname(folder))
        for path in candidates:
            if not os.path.isdir(path):
                path = os.path.dirname(path)
                if not os.path.isdir(path):
                    continue
            if any(path == d or path.startswith(d.rstrip("/") + "/") for d in covered):
                found.add(path)
    outermost = sorted(found)
    return [p for p in outermost if not any(p.startswith(q + "/") for q in outermost if q != p)]


def _links(path: str) -> list[str]:
    """*path* and every path its symlink chain passes through (at most 40, as the kernel)."""
    chain = [path]
    while os.path.islink(path) and len(chain) <= 40:
        path = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))
        chain.append(path)
    return chain


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _fstab_field(text: str) -> str:
    # fstab separates fields by whitespace; libmount reads these octal escapes back.
    for char, escape in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        text = text.replace(char, escape)
    return text


def _fstab(
    *,
    kept: Sequence[tuple[int, str]],
    private: Sequence[str],
    hidden: Sequence[str],
    tmp_size_mb: int,
) -> str:
    """The worker's mounts, in order, for one `mount --all` (one exec instead of one each).

    The source name is ours, so `mount --all` never takes a host tmpfs for "already mounted".
    """
    lines = []
    private = [d for d in private if os.path.isdir(d)]
    for directory in private:
        options = f"size={tmp_size_mb}m,mode=1777,nosuid,nodev"
        lines.append(f"minapp-sandbox {_fstab_field(directory)} tmpfs {options} 0 0")
    for fd, path in kept:
        # Bound back from the descriptor that still reaches the covered original.
        lines.append(f"/proc/self/fd/{fd} {_fstab_field(path)} none bind,X-mount.mkdir 0 0")
    if os.path.isdir("/sys"):
        lines.append("minapp-sandbox /sys sysfs ro,nosuid,nodev,noexec 0 0")
    for path in _READ_ONLY:
        if os.path.exists(path):
            lines.append(f"{path} {path} none bind,ro 0 0")
    for directory in hidden:
        if not os.path.isdir(directory):
            continue
        if any(_under(directory, d) for d in private) and not any(
            _under(directory, path) for _, path in kept
        ):
            continue  # covered by a private tmpfs already
        lines.append(f"minapp-sandbox {_fstab_field(directory)} tmpfs ro,size=4k,mode=0555 0 0")
    return "".join(line + "\n" for line in lines)


def _script(*, cgroup: Path | None, kept: Sequence[tuple[int, str]], fstab: str | None) -> str:
    """The namespace init: set the mounts up as root, then run the worker with no capabilities.

    It stays the namespace's pid 1 (it reaps orphans; signals from inside cannot kill it, and
    without capabilities the worker cannot read its memory or environment).
    """
    q = shlex.quote
    lines = ["set -e"]
    if cgroup is not None:
        # "0" is the writer itself, whatever pid namespace it sees; children inherit the cgroup.
        lines.append(f"echo 0 > {q(str(cgroup / 'cgroup.procs'))}")
    # Directories the worker needs but a private tmpfs will cover (its own code under /tmp):
    # held open by descriptor, then bound back at the same path inside the new tmpfs.
    lines += [f"exec {fd}<{q(path)}" for fd, path in kept]
    if fstab is not None:
        lines.append(f"mount --no-canonicalize --all --fstab {q(fstab)}")
    lines += [f"exec {fd}<&-" for fd, _ in kept]
    lines.append("set +e")
    # Not exec: the shell stays pid 1. No new privileges, no capabilities, now or after exec.
    lines.append(
        'setpriv --no-new-privs --inh-caps=-all --ambient-caps=-all --bounding-set=-all -- "$@"'
    )
    lines.append("exit $?")
    return "\n".join(lines)


@attrs.frozen
class Launch:
    """How to start one worker: give these to subprocess.Popen (with start_new_session=True)."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...]
    #: Call tree.started(popen.pid) right after Popen, and await tree.aclose() when done (also
    #: when Popen failed).
    tree: ProcessTree


class ProcessTree:
    """One launched worker's whole process tree: its memory, and its end."""

    def __init__(self, cgroup: _TreeCgroup | None, contained: bool) -> None:
        self._cgroup = cgroup
        self.contained = contained
        self.pid: int | None = None
        self._released = cgroup is None
        self._members_cache: list[int] = []
        self._members_at = -math.inf

    def started(self, pid: int) -> None:
        """The Popen pid: the launcher in contained mode, the worker itself otherwise."""
        self.pid = pid

    def memory(self) -> int:
        """Bytes the whole tree uses (cgroup), or the RSS of the tree's processes (best effort,
        0 when unknown)."""
        if self._cgroup is not None:
            return self._cgroup.usage()
        return sum(_rss(pid) for pid in self._members())

    def peak(self) -> int:
        """The tree's peak memory since reset_peak() (cgroup), else the current figure."""
        if self._cgroup is not None:
            return self._cgroup.peak()
        return self.memory()

    def reset_peak(self) -> None:
        if self._cgroup is not None:
            self._cgroup.reset_peak()

    def oom_killed(self) -> bool:
        """The kernel killed a process of the tree for exceeding the tree's memory limit."""
        return self._cgroup is not None and self._cgroup.oom_kills() > 0

    @property
    def memory_enforced(self) -> bool:
        return self._cgroup is not None

    def kill(self) -> None:
        """SIGKILL the whole tree at once (idempotent). Call it before the Popen is reaped:
        until then the launcher's group id cannot belong to a stranger."""
        if self.pid is not None:
            # The launcher is a session and group leader; killing the group takes the
            # namespace's init, and with it the namespace.
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
        if self._cgroup is not None:
            self._cgroup.kill()

    def _members(self) -> list[int]:
        if self.pid is None:
            return []
        if self._cgroup is not None:
            return self._cgroup.pids()
        # A scan of all /proc: done at most once a second, the watchdog polls far more often.
        now = time.monotonic()
        if now - self._members_at > _MEMBERS_TTL:
            self._members_cache = _descendants(self.pid)
            self._members_at = now
        return self._members_cache

    async def aclose(self) -> None:
        """After the Popen was reaped: kill what is left of the tree through its cgroup and
        remove the cgroup. Idempotent; call it shielded from cancellation."""
        if self._cgroup is None or self._released:
            return
        with anyio.move_on_after(_RELEASE_TIMEOUT):
            while not self._cgroup.try_remove():  # noqa: ASYNC110 - nothing to wait on but rmdir
                await anyio.sleep(0.01)  # the kernel is tearing the namespace down
        self._released = True

    def close_now(self) -> None:
        """aclose() without waiting, for interpreter exit: best effort."""
        if self._cgroup is not None and not self._released:
            self._released = self._cgroup.try_remove()


def _rss(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/statm").read_bytes().split()
    except OSError:
        return 0
    return int(fields[1]) * _PAGE_SIZE if len(fields) > 1 else 0


def _descendants(root: int) -> list[int]:
    """root and every process below it, from /proc (empty where there is no /proc)."""
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            parents[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree += children
        frontier += children
    return tree


class Sandbox:
    """Decides once how workers are contained here, and prepares each launch.

    ``enabled=False`` forces the uncontained mode (for platforms without it, and its test).
    ``hidden`` are engine directories a function must not see (its state folder, say): each is
    covered by an empty read-only tmpfs inside the worker's mount namespace.
    """

    def __init__(
        self,
        *,
        memory_limit_mb: int,
        enabled: bool = True,
        hidden: Sequence[str | os.PathLike[str]] = (),
        tmp_size_mb: int | None = None,
    ) -> None:
        if memory_limit_mb < 1:
            raise ValueError(f"memory_limit_mb must be positive, got {memory_limit_mb!r}")
        self._limit = memory_limit_mb * 1024 * 1024
        self._tmp_size_mb = tmp_size_mb or memory_limit_mb
        self._hidden = [os.path.realpath(p) for p in hidden]
        self._made: set[str] = set()  # names of the cgroups this sandbox made
        self._tools: tuple[str, str, str] | None = None
        self._cgroup_parent: _CgroupParent | None = None
        self._fstab_dir: str | None = None
        self._fstabs: dict[str, str] = {}
        _remove_stale_fstabs()
        self.report = self._decide(enabled)

    def __repr__(self) -> str:
        return f"<Sandbox {self.report.summary()!r}>"

    def _decide(self, enabled: bool) -> Containment:
        missing: list[str] = []
        memory_reason = "the tree memory limit needs a Linux memory cgroup"
        contained = False
        if not enabled:
            missing.append("containment is turned off")
        elif not sys.platform.startswith("linux"):
            missing.append(f"namespaces need Linux, this is {sys.platform}")
        else:
            tools = (shutil.which("setpriv"), shutil.which("unshare"), shutil.which("sh"))
            if not all(tools):
                missing.append("util-linux setpriv and unshare are not on PATH")
            else:
                self._tools = (tools[0] or "", tools[1] or "", tools[2] or "")
                why_not = self._probe()
                if why_not:
                    missing.append(f"namespaces are not available ({why_not})")
                    self._tools = None
                else:
                    contained = True
            parent, reason = _find_cgroup_parent()
            if parent is not None:
                _remove_stale_cgroups(parent)
                self._cgroup_parent = parent
            else:
                memory_reason = f"no memory cgroup can be made: {reason}"
        if not contained:
            missing.append(
                "functions can see and signal the engine and each other, use the network, "
                "share /tmp, and children they detach outlive the worker and the engine"
            )
        if self._cgroup_parent is None:
            missing.append(
                f"{memory_reason}, so the memory limit is per process (RSS watchdog, Python "
                "address space) and not for the whole tree while idle"
            )
        return Containment(
            pid_namespace=contained,
            net_namespace=contained,
            private_tmp=contained,
            tree_kill=contained,
            tree_memory_limit=self._cgroup_parent is not None,
            cgroup_version=self._cgroup_parent.version if self._cgroup_parent else None,
            missing=tuple(missing),
        )

    def _probe(self) -> str:
        """Run the real wrapper once around `true`: '' when it works, else why not."""
        launch = self._wrap(["true"], cgroup=None, cwd=None, pass_fds=())
        try:
            done = subprocess.run(
                launch,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_PROBE_TIMEOUT,
                env={"PATH": os.environ.get("PATH", os.defpath)},
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        if done.returncode != 0:
            text = done.stderr.decode("utf-8", "replace").strip().splitlines()
            return text[-1] if text else f"exit status {done.returncode}"
        return ""

    def _wrap(
        self,
        argv: Sequence[str],
        *,
        cgroup: Path | None,
        cwd: str | None,
        pass_fds: Sequence[int],
    ) -> list[str]:
        assert self._tools is not None
        setpriv, unshare, sh = self._tools
        covered = [*_PRIVATE_DIRS, *self._hidden]
        needed = [*argv, *([cwd] if cwd else []), setpriv, sh]
        kept_dirs = _kept_dirs(needed, covered)
        free_fds = [fd for fd in range(3, 10) if fd not in pass_fds]
        if len(kept_dirs) > len(free_fds):
            raise OSError("too many worker directories lie under /tmp to keep them visible")
        kept = list(zip(free_fds, kept_dirs, strict=False))
        fstab = _fstab(
            kept=kept, private=_PRIVATE_DIRS, hidden=self._hidden, tmp_size_mb=self._tmp_size_mb
        )
        fstab_file = self._fstab_file(fstab) if fstab else None  # (empty: mount would fail)
        script = _script(cgroup=cgroup, kept=kept, fstab=fstab_file)
        userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
        return [
            setpriv,
            "--pdeathsig",
            "KILL",  # the engine dies, even by SIGKILL: so does unshare ...
            "--",
            unshare,
            *userns,
            "--pid",
            "--mount",
            "--net",
            "--uts",  # its own host name
            "--ipc",  # its own System V IPC and POSIX message queues
            "--fork",
            "--kill-child",  # ... and with it the namespace's init, and so the namespace
            "--mount-proc",
            "--propagation",
            "private",
            "--",
            sh,
            "-c",
            script,
            "minapp-sandbox",
            *argv,
        ]

    def _fstab_file(self, content: str) -> str:
        """A file holding this fstab (read by `mount` before /tmp is covered), made once."""
        path = self._fstabs.get(content)
        if path is None:
            if self._fstab_dir is None:
                self._fstab_dir = tempfile.mkdtemp(prefix=f"{_FSTAB_PREFIX}{os.getpid()}-")
            path = os.path.join(self._fstab_dir, f"fstab{len(self._fstabs)}")
            with open(path, "w", encoding="utf-8") as file:
                file.write(content)
            self._fstabs[content] = path
        return path

    def prepare(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        pass_fds: Sequence[int] = (),
        cwd: str | None = None,
    ) -> Launch:
        """The contained launch of ``argv`` (which must not need a tty or set-user-ID bits).

        Raises OSError when the worker's cgroup cannot be made; nothing is left behind then.
        """
        cgroup = None
        if self._cgroup_parent is not None:
            # One counter per process: several engines in one process never share a name.
            name = f"{_CGROUP_PREFIX}{os.getpid()}-{next(_CGROUP_NUMBERS)}"
            self._made.add(name)
            cgroup = _TreeCgroup(self._cgroup_parent, name, self._limit)
        tree = ProcessTree(cgroup, contained=self._tools is not None)
        if self._tools is None:
            if cgroup is not None:
                # Uncontained: the worker joins its cgroup through a tiny shell step.
                procs = shlex.quote(str(cgroup.path / "cgroup.procs"))
                launch_argv = ["sh", "-c", f'echo 0 > {procs} && exec "$@"', "sh", *argv]
            else:
                launch_argv = list(argv)
        else:
            launch_argv = self._wrap(
                argv, cgroup=cgroup.path if cgroup else None, cwd=cwd, pass_fds=pass_fds
            )
        return Launch(argv=launch_argv, env=dict(env), pass_fds=tuple(pass_fds), tree=tree)

    def close(self) -> None:
        """At engine shutdown, after every tree's aclose(): removes any cgroup left over."""
        if self._cgroup_parent is not None:
            _remove_stale_cgroups(self._cgroup_parent, also=self._made)
            self._made.clear()
        if self._fstab_dir is not None:
            shutil.rmtree(self._fstab_dir, ignore_errors=True)
            self._fstab_dir = None
            self._fstabs.clear()
