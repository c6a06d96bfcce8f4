"""Run model-written Python in a separate, limited process (for HumanEval-style code evals).

    result = run_program("assert 1 + 1 == 2", limits=Limits(timeout_s=5))
    result.status  # "passed" | "failed" | "timed_out" | "error", with result.reason

What holds, layer by layer (`isolation()` reports which layers this machine offers):

- Always (POSIX): a fresh process in its own session, killed as a whole process group when it
  finishes or overruns the wall-clock timeout; rlimits on address space (RLIMIT_AS), CPU seconds,
  file size, open files and core dumps; `python -I` (no user site, no PYTHON* variables); a
  minimal environment with HOME and TMPDIR inside a private temporary directory that is deleted
  afterwards.
- When `unshare` works (root, or unprivileged user namespaces): a new network namespace (no
  interface but a down loopback, so no connection leaves) and a new PID namespace (every
  descendant dies with the program, even one that left the process group), inside a user
  namespace when available (root inside it lacks the host's capabilities, so it cannot raise its
  hard rlimits). The program is then PID 1 of its namespace: a signal it sends itself is ignored.
- Process count: RLIMIT_NPROC counts all processes of the user and is not enforced for root, so
  as root a pids cgroup (v1 or v2, when writable) bounds the program's processes instead; as
  another user NPROC is set to the user's current count plus `max_processes`.
- In-process (`sandbox_guard.py`, an audit hook installed before the program runs): sockets,
  new processes (unless allowed), signals to other processes, raising rlimits and ctypes are
  refused; files may be written, deleted or renamed only inside the work dir; the home
  directory of the evaluating user may not be read or listed (except the interpreter's own
  library). Native code can bypass this layer; it is a guard against accidents and ordinary
  mistakes of model-written code, not against a determined attacker, which the OS layers above
  only partly stop (no seccomp, no read-only filesystem: the program runs as the same user).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STATUSES = ("passed", "failed", "timed_out", "error")
_GUARD = Path(__file__).with_name("sandbox_guard.py")
_OUTPUT_CHARS = 4000  # of stdout and stderr kept in a Result
_UNSHARE_CANDIDATES = (  # strongest first
    ("-r", "-n", "-p", "-f", "--kill-child"),
    ("-n", "-p", "-f", "--kill-child"),
    ("-r", "-n"),
    ("-n",),
)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-program limits. Memory is address space, so leave room for the interpreter (~50 MB)."""

    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30
    cpu_s: int = 10
    file_size_bytes: int = 16 << 20
    max_processes: int = 16
    max_open_files: int = 64
    allow_subprocess: bool = False  # the audit hook refuses fork/exec/subprocess unless True
    guard: bool = True  # install the in-process audit hook (off only to test the OS layers alone)

    def __post_init__(self):
        for name in ("timeout_s", "memory_bytes", "cpu_s", "file_size_bytes", "max_processes", "max_open_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class Result:
    status: str  # one of STATUSES
    reason: str  # short: "AssertionError: ...", "timed out after 2.0 s", "killed by SIGKILL", ...
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclasses.dataclass(frozen=True)
class Isolation:
    """Which OS-level mechanisms this machine offers (probed once per process)."""

    unshare_flags: tuple[str, ...] | None  # network (+ PID, + user) namespaces via unshare(1)
    pids_cgroup: Path | None  # parent dir where a per-run pids cgroup can be made (root only)
    nproc_rlimit: bool  # RLIMIT_NPROC bounds processes (not for root)

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
    return Isolation(
        unshare_flags=_probe_unshare(), pids_cgroup=_probe_pids_cgroup(), nproc_rlimit=os.geteuid() != 0,
    )


def _user_process_count() -> int:
    uid, count = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


def _preexec(limits: Limits, cgroup: Path | None, nproc: int | None):
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


def _kill_all(proc: subprocess.Popen, cgroup: Path | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if cgroup is None:
        return
    for _ in range(100):  # processes that left the group (without a PID namespace) are still here
        try:
            pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _remove_cgroup(cgroup: Path) -> None:
    for _ in range(200):  # rmdir fails with EBUSY until the killed processes are reaped
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(1 << 20).decode("utf-8", "replace")


def _verdict(stdout: str, nonce: str) -> tuple[str, str] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(nonce + " "):
            _, status, reason = line.split(" ", 2)
            return status, json.loads(reason)
    return None


def _signal_reason(returncode: int) -> str:
    sig = -returncode if returncode < 0 else returncode - 128
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    hint = {"SIGKILL": " (memory or CPU limit, or killed)", "SIGXCPU": " (CPU time limit)",
            "SIGXFSZ": " (file size limit)", "SIGSEGV": " (memory limit or crash)"}.get(name, "")
    return f"killed by {name}{hint}"


def _command(work: Path, limits: Limits, iso: Isolation) -> list[str]:
    """The guarded interpreter's command line for `work/program.py`, inside unshare when it works."""
    policy = {
        "program": str(work / "program.py"),
        "work_dir": str(work),
        "allow_subprocess": limits.allow_subprocess,
        "guard": limits.guard,
        "forbidden_read_roots": sorted({str(Path.home()), os.path.expanduser("~" + _user_name())}),
        "allowed_read_roots": sorted({sys.prefix, sys.base_prefix, sys.exec_prefix}),
    }
    command = [sys.executable, "-I", str(_GUARD), json.dumps(policy)]
    if iso.unshare_flags is not None:
        command = [shutil.which("unshare") or "unshare", *iso.unshare_flags, "--", *command]
    return command


def _run(command: list[str], *, root: Path, work: Path, limits: Limits, cgroup: Path | None,
         nproc: int | None, nonce: str) -> tuple[int, bool]:
    """Runs the program to its end or its timeout, then kills what is left of it; (return code,
    whether it timed out). Its output goes to root/stdout and root/stderr."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
        proc = subprocess.Popen(
            command, cwd=work, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
            start_new_session=True, preexec_fn=_preexec(limits, cgroup, nproc),  # noqa: PLW1509 - see _preexec
        )
        try:
            proc.stdin.write(nonce.encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_all(proc, cgroup)
        proc.wait()
    return proc.returncode, timed_out


def _result(root: Path, *, returncode: int, timed_out: bool, nonce: str, limits: Limits, seconds: float) -> Result:
    """The program's status and reason, from its verdict line (the guard's) and its exit."""
    stdout, stderr = _read(root / "stdout"), _read(root / "stderr")
    verdict = _verdict(stdout, nonce)
    if timed_out:
        status, reason = "timed_out", f"timed out after {limits.timeout_s:g} s"
    elif verdict is not None and (verdict[0] != "passed" or returncode == 0):
        status, reason = verdict
    elif returncode != 0 and (returncode < 0 or returncode > 128):
        status, reason = "error", _signal_reason(returncode)
    else:
        status, reason = "error", f"exited with status {returncode} before the program's end"
    cut = stdout.rfind(f"\n{nonce} ")
    stdout = stdout[:cut] if cut >= 0 else stdout  # the verdict line is not the program's output
    return Result(status, reason, returncode, stdout[-_OUTPUT_CHARS:], stderr[-_OUTPUT_CHARS:], seconds)


def run_program(source: str, *, limits: Limits = Limits()) -> Result:
    """Runs `source` as a Python program under `limits`; never raises for what the program does."""
    if not isinstance(source, str):
        raise TypeError(f"run_program needs the program as a str, got {type(source).__name__}")
    iso = isolation()
    root = Path(tempfile.mkdtemp(prefix="gemini-jax-sandbox-"))
    work = root / "work"
    work.mkdir()
    cgroup = None
    try:
        (work / "program.py").write_text(source, encoding="utf-8")
        if iso.pids_cgroup is not None:
            cgroup = iso.pids_cgroup / root.name
            cgroup.mkdir()
            # +1: unshare's own process lives in the cgroup too.
            (cgroup / "pids.max").write_text(str(limits.max_processes + 1))
        nproc = _user_process_count() + limits.max_processes if iso.nproc_rlimit else None
        nonce = secrets.token_hex(16)
        start = time.monotonic()
        returncode, timed_out = _run(_command(work, limits, iso), root=root, work=work, limits=limits,
                                     cgroup=cgroup, nproc=nproc, nonce=nonce)
        return _result(root, returncode=returncode, timed_out=timed_out, nonce=nonce, limits=limits,
                       seconds=time.monotonic() - start)
    finally:
        if cgroup is not None:
            _remove_cgroup(cgroup)
        shutil.rmtree(root, ignore_errors=True)


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return ""
