"""What the machine offers the sandbox, probed once per process (`isolation()`).

docs/sandbox.md says what each platform gets from these.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

_UNSHARE_CANDIDATES = (  # strongest first
    # root: mount, network and PID namespaces, no user namespace, so setuid to the run's own uid works
    ("-m", "-n", "-p", "-f", "--kill-child", "--mount-proc"),
    # another user with unprivileged user namespaces: the same, as the mapped root of a user namespace
    ("-r", "-m", "-n", "-p", "-f", "--kill-child", "--mount-proc"),
    ("-n", "-p", "-f", "--kill-child"),
    ("-r", "-n"),
    ("-n",),
)


@dataclasses.dataclass(frozen=True)
class Isolation:
    """Which OS-level mechanisms this machine offers (probed once per process)."""

    unshare_flags: tuple[str, ...] | None  # network (+ PID, + mount, + user) namespaces via unshare(1)
    pids_cgroup: Path | None  # parent dir where a per-run pids cgroup can be made (root only)
    nproc_rlimit: bool  # RLIMIT_NPROC bounds processes (not for root, so only when the program has its own uid)
    root: bool  # the evaluator runs as root
    # The program runs as a fresh uid and gid that own no file: as root, when the jail can show it the
    # interpreter or the interpreter's dirs are open to every user anyway.
    own_uid: bool

    @property
    def jail(self) -> bool:
        """A private mount namespace: read-only filesystem, tmpfs work dir with a size cap."""
        return self.unshare_flags is not None and "-m" in self.unshare_flags

    @property
    def network_namespace(self) -> bool:
        return self.unshare_flags is not None

    @property
    def pid_namespace(self) -> bool:
        return self.unshare_flags is not None and "-p" in self.unshare_flags

    @property
    def process_limit(self) -> str | None:
        return "pids cgroup" if self.pids_cgroup else "RLIMIT_NPROC" if self.nproc_rlimit else None


def _probe_unshare() -> tuple[str, ...] | None:
    exe = shutil.which("unshare")
    if exe is None:
        return None
    for flags in _UNSHARE_CANDIDATES:
        try:
            done = subprocess.run([exe, *flags, "--", "true"], capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return flags
    return None


def _own_cgroup(controller: str) -> Path | None:
    """This process's cgroup dir for `controller` (v1 hierarchy, or v2 when it is enabled there)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup", controller) / path.lstrip("/")
        if controllers == "":  # v2: usable when the controller is enabled for children here
            v2 = Path("/sys/fs/cgroup") / path.lstrip("/")
            try:
                if controller in (v2 / "cgroup.subtree_control").read_text().split():
                    return v2
            except OSError:
                pass
    return None


def _probe_pids_cgroup() -> Path | None:
    if os.geteuid() != 0:
        return None
    parent = _own_cgroup("pids")
    if parent is None:
        return None
    probe = parent / f"gemini-jax-probe-{os.getpid()}"
    try:
        probe.mkdir()
        (probe / "pids.max").write_text("4")
        return parent
    except OSError:
        return None
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass


@functools.cache
def isolation() -> Isolation:
    flags, root = _probe_unshare(), os.geteuid() == 0
    jail = flags is not None and "-m" in flags
    own_uid = root and (jail or all(_open_to_all(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)))
    return Isolation(unshare_flags=flags, pids_cgroup=_probe_pids_cgroup(), nproc_rlimit=own_uid or not root,
                     root=root, own_uid=own_uid)


def _open_to_all(path: str) -> bool:
    """Whether every user may enter each directory down to `path`."""
    path = os.path.realpath(path)
    parts = [p for p in path.split("/") if p]
    return all(os.stat("/" + "/".join(parts[:i])).st_mode & 0o001 for i in range(1, len(parts) + 1))
