"""One sandbox run's directory, user and processes: start them under rlimits, wait, kill, clean up.

    with RunDir(source, limits=limits, iso=isolation()) as run:
        proc = run.spawn(command, name="program", pass_fds=(fd,))
        finished = wait(proc, deadline=time.monotonic() + 5)
        run.kill_all(proc)
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

_FIRST_RUN_UID = 0x1000_0000  # per-run uids come from far above any account's
_RUN_UIDS = 0x4000_0000


def _user_process_count() -> int:
    uid, count = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


def _preexec(limits, cgroup: Path | None, nproc: int | None):
    """What the child does between fork and exec. Raw system calls only (os.open, os.write,
    setrlimit), prepared here beforehand: with several threads (parallel HumanEval) a fork may
    copy a lock another thread held, so the child must not touch buffered files or import."""
    procs = os.fsencode(cgroup / "cgroup.procs") if cgroup is not None else None
    # hard = soft (+1 s of CPU so that SIGXCPU comes first): the program cannot raise them again.
    rlimits = [
        (resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)),
        (resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1)),
        (resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes)),
        (resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
    ] + ([(resource.RLIMIT_NPROC, (nproc, nproc))] if nproc is not None else [])

    def apply():
        if procs is not None:
            fd = os.open(procs, os.O_WRONLY)
            os.write(fd, b"0")  # "0": the writing process itself (cgroup v1 and v2)
            os.close(fd)
        for which, value in rlimits:
            resource.setrlimit(which, value)

    return apply


def wait(proc: subprocess.Popen, *, deadline: float) -> bool:
    """Whether `proc` ended before `deadline` (a time.monotonic() value)."""
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        return True
    except subprocess.TimeoutExpired:
        return False


def read_available(fd: int, limit: int = 1 << 16) -> bytes:
    """What a pipe holds now, without waiting for writers that may linger."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) < limit:
        try:
            chunk = os.read(fd, limit - len(data))
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


class RunDir:
    """A private directory (root-only, except the work dir) and, as root, a uid of its own."""

    def __init__(self, source: str, *, limits, iso):
        self.limits, self.iso = limits, iso
        self.root = Path(tempfile.mkdtemp(prefix="gemini-jax-sandbox-"))
        self.work = self.root / "work"
        self.uid = _FIRST_RUN_UID + secrets.randbelow(_RUN_UIDS) if iso.own_uid else os.getuid()
        self.cgroup: Path | None = None
        try:
            self.root.chmod(0o711)  # the program's user passes through to its work dir, sees nothing else
            self.work.mkdir(mode=0o700)
            if iso.own_uid:
                os.chown(self.work, self.uid, self.uid)
            self.write_private("program.py", source.encode("utf-8"))
            if iso.pids_cgroup is not None:
                self.cgroup = iso.pids_cgroup / self.root.name
                self.cgroup.mkdir()
                # +1: unshare's own process lives in the cgroup too.
                (self.cgroup / "pids.max").write_text(str(limits.max_processes + 1))
        except BaseException:
            self.close()
            raise

    def write_private(self, name: str, data: bytes) -> None:
        fd = os.open(self.root / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as f:
            f.write(data)

    def spawn(self, command: list[str], *, name: str, pass_fds: tuple[int, ...], stdin_bytes: bytes | None = None,
              sandboxed: bool = True) -> subprocess.Popen:
        """Starts `command` in its own session; output to root/<name>.out and .err (root-only)."""
        if sandboxed:
            # As root the program is alone under its uid; otherwise it shares the count with the user.
            nproc = self.limits.max_processes if self.iso.own_uid else _user_process_count() + self.limits.max_processes
            preexec = _preexec(self.limits, self.cgroup, nproc)
        else:
            preexec = _preexec(self.limits, None, None)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.work), "TMPDIR": str(self.work), "LANG": "C.UTF-8"}
        out = os.open(self.root / f"{name}.out", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        err = os.open(self.root / f"{name}.err", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            proc = subprocess.Popen(
                command, cwd=self.root, env=env, stdin=subprocess.PIPE if stdin_bytes is not None else subprocess.DEVNULL,
                stdout=out, stderr=err, pass_fds=pass_fds, start_new_session=True,
                preexec_fn=preexec,  # noqa: PLW1509 - see _preexec
            )
        finally:
            os.close(out)
            os.close(err)
        if stdin_bytes is not None:
            try:
                proc.stdin.write(stdin_bytes)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        return proc

    def kill_all(self, proc: subprocess.Popen) -> None:
        """Kills `proc`'s process group and whatever is left in the run's cgroup, then reaps it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for _ in range(100 if self.cgroup is not None else 0):  # processes that left the group
            try:
                pids = [int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()]
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.01)
        proc.wait()

    def close(self) -> None:
        if self.cgroup is not None:
            for _ in range(200):  # rmdir fails with EBUSY until the killed processes are reaped
                try:
                    self.cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
