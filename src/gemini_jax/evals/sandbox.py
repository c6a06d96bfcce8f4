"""Run model-written Python in a separate, limited process (for HumanEval-style code evals).

    result = run_judged(program=prompt + completion, entry_point="f", context=prompt,
                        tests=test + "check(f)", limits=Limits(timeout_s=5))
    result.status  # Status.PASSED | FAILED | TIMED_OUT | ERROR, with result.reason

Two ways to run a program:
- `run_judged` is the one to score with: the tests run in a separate trusted process (the judge,
  `sandbox_judge.py`), which calls the program's function through a pipe and gets plain values
  back; only the judge's asserts decide. The program cannot forge the verdict.
- `run_program` runs a whole program and reports whether it reached its end without an
  exception. That report comes from inside the program's process: harder to forge than a line on
  stdout, but a determined program can, so it is for trusted or diagnostic runs, never a score.

What holds around the program, by platform (`isolation()` says which; docs/sandbox.md has the
design and its residual risks):
- Always (POSIX): its own session and process group, killed as a whole at its end or timeout;
  rlimits on address space, CPU seconds, file size, open files, core dumps and processes;
  `python -I`; a minimal environment; the in-process audit hook (`sandbox_guard.py`).
- As root: a fresh uid and gid per run (they own no file, so RLIMIT_NPROC counts only the run).
- With `unshare` (util-linux): network and PID namespaces, and a mount namespace in which every
  mount is read-only, scratch dirs and the home dir are emptied, and the work dir is a tmpfs of
  `disk_bytes` (`sandbox_jail.py`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gemini_jax.evals import sandbox_process
from gemini_jax.evals.sandbox_isolation import Isolation, isolation

__all__ = ["Limits", "Result", "Status", "STATUSES", "Isolation", "isolation", "run_program", "run_judged"]

_HERE = Path(__file__).parent
_OUTPUT_CHARS = 4000  # of stdout and stderr kept in a Result
_SETUP_FAILED = 125  # the guard's exit status when the jail could not be built


class Status(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # an assert failed
    TIMED_OUT = "timed_out"
    ERROR = "error"  # anything else: an exception, a refusal, a crash, a limit


STATUSES = tuple(s.value for s in Status)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-program limits. Memory is address space, so leave room for the interpreter (~50 MB)."""

    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30
    cpu_s: int = 10
    file_size_bytes: int = 16 << 20
    disk_bytes: int = 64 << 20  # all files in the work dir together (where a tmpfs work dir exists)
    max_processes: int = 16
    max_open_files: int = 64
    allow_subprocess: bool = False  # the audit hook refuses fork/exec/subprocess unless True
    guard: bool = True  # install the in-process audit hook (off only to test the OS layers alone)

    def __post_init__(self):
        for name in ("timeout_s", "memory_bytes", "cpu_s", "file_size_bytes", "disk_bytes", "max_processes",
                     "max_open_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class Result:
    status: Status
    reason: str  # short: "AssertionError: ...", "timed out after 2.0 s", "killed by SIGKILL", ...
    returncode: int | None  # the program's process
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == Status.PASSED


def _signal_reason(returncode: int) -> str:
    sig = -returncode if returncode < 0 else returncode - 128
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    hint = {"SIGKILL": " (memory or CPU limit, or killed)", "SIGXCPU": " (CPU time limit)",
            "SIGXFSZ": " (file size limit)", "SIGSEGV": " (memory limit or crash)"}.get(name, "")
    return f"killed by {name}{hint}"


def _exit_reason(returncode: int, stderr: str) -> str:
    if returncode == _SETUP_FAILED and "sandbox setup failed" in stderr:
        return stderr.strip().splitlines()[-1]
    if returncode < 0 or returncode > 128:
        return _signal_reason(returncode)
    return f"exited with status {returncode} before the program's end"


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(1 << 20).decode("utf-8", "replace")


def _policy(run: sandbox_process.RunDir, limits: Limits, iso: Isolation, **extra) -> dict:
    home = str(Path.home())
    prefixes = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    return {
        "program": str(run.root / "program.py"), "work_dir": str(run.work), "stage_dir": str(run.root / "stage"),
        "jail": iso.jail, "uid": run.uid, "gid": run.uid, "disk_bytes": limits.disk_bytes,
        "home": home, "read_roots": prefixes, "hidden": [],
        "allow_subprocess": limits.allow_subprocess, "guard": limits.guard,
        "forbidden_read_roots": sorted({home, os.path.expanduser("~" + _user_name())}),
        "allowed_read_roots": prefixes, **extra,
    }


def _guard_command(policy: dict, iso: Isolation) -> list[str]:
    command = [sys.executable, "-I", str(_HERE / "sandbox_guard.py"), json.dumps(policy)]
    if iso.unshare_flags is not None:
        command = [shutil.which("unshare") or "unshare", *iso.unshare_flags, "--", *command]
    return command


def _program_verdict(data: bytes, nonce: str) -> tuple[Status, str] | None:
    parts = data.decode("utf-8", "replace").split("\n", 1)[0].split(" ", 2)
    if len(parts) != 3 or parts[0] != nonce or parts[1] not in STATUSES:
        return None
    try:
        reason = json.loads(parts[2])
    except ValueError:
        return None
    return Status(parts[1]), str(reason)


def run_program(source: str, *, limits: Limits = Limits()) -> Result:
    """Runs `source` as a Python program under `limits`; never raises for what the program does.
    Its status is the program's own account (see the module docstring): not for scoring."""
    if not isinstance(source, str):
        raise TypeError(f"run_program needs the program as a str, got {type(source).__name__}")
    iso = isolation()
    with sandbox_process.RunDir(source, limits=limits, iso=iso) as run:
        nonce = secrets.token_hex(16)
        verdict_r, verdict_w = os.pipe()
        policy = _policy(run, limits, iso, mode="program", verdict_fd=verdict_w)
        start = time.monotonic()
        guard = run.spawn(_guard_command(policy, iso), name="program", pass_fds=(verdict_w,),
                          stdin_bytes=nonce.encode() + b"\n")
        os.close(verdict_w)
        timed_out = not sandbox_process.wait(guard, deadline=start + limits.timeout_s)
        run.kill_all(guard)
        data = sandbox_process.read_available(verdict_r)
        os.close(verdict_r)
        seconds = time.monotonic() - start
        stdout, stderr = _read(run.root / "program.out"), _read(run.root / "program.err")
    verdict = _program_verdict(data, nonce)
    if timed_out:
        status, reason = Status.TIMED_OUT, f"timed out after {limits.timeout_s:g} s"
    elif verdict is not None and (verdict[0] != Status.PASSED or guard.returncode == 0):
        status, reason = verdict
    else:
        status, reason = Status.ERROR, _exit_reason(guard.returncode, stderr)
    return Result(status, reason, guard.returncode, stdout[-_OUTPUT_CHARS:], stderr[-_OUTPUT_CHARS:], seconds)


def run_judged(*, program: str, entry_point: str, context: str, tests: str, limits: Limits = Limits(),
               hidden: Sequence[str | os.PathLike] = ()) -> Result:
    """Runs `program` sandboxed and `tests` in the judge, where `entry_point` names a stand-in
    that calls the program's function of that name. `context` (trusted definitions the tests use,
    e.g. the task's prompt) runs in the judge first. `hidden` dirs appear empty to the program
    (e.g. the benchmark's own data, which holds the reference solutions)."""
    for name, value in (("program", program), ("context", context), ("tests", tests), ("entry_point", entry_point)):
        if not isinstance(value, str):
            raise TypeError(f"run_judged needs {name} as a str, got {type(value).__name__}")
    iso = isolation()
    with sandbox_process.RunDir(program, limits=limits, iso=iso) as run:
        call_r, call_w = os.pipe()
        reply_r, reply_w = os.pipe()
        policy = _policy(run, limits, iso, mode="serve", entry_point=entry_point, call_fd=call_r, reply_fd=reply_w,
                         hidden=[os.path.realpath(h) for h in hidden])
        job = {"context": context, "tests": tests, "entry_point": entry_point, "call_fd": call_w,
               "reply_fd": reply_r}
        run.write_private("job.json", json.dumps(job).encode())
        start = time.monotonic()
        guard = run.spawn(_guard_command(policy, iso), name="program", pass_fds=(call_r, reply_w))
        judge = run.spawn([sys.executable, "-I", str(_HERE / "sandbox_judge.py"), str(run.root / "job.json")],
                          name="judge", pass_fds=(call_w, reply_r), sandboxed=False)
        for fd in (call_r, call_w, reply_r, reply_w):
            os.close(fd)
        deadline = start + limits.timeout_s
        timed_out = not sandbox_process.wait(judge, deadline=deadline)
        if not timed_out:  # the judge closed the call pipe: the program's loop ends by itself
            sandbox_process.wait(guard, deadline=min(deadline, time.monotonic() + 1.0))
        run.kill_all(guard)
        run.kill_all(judge)
        seconds = time.monotonic() - start
        stdout, stderr = _read(run.root / "program.out"), _read(run.root / "program.err")
        judged, judge_err = _read(run.root / "judge.out"), _read(run.root / "judge.err")
    status, reason = _judge_verdict(judged, judge.returncode)
    if timed_out:
        status, reason = Status.TIMED_OUT, f"timed out after {limits.timeout_s:g} s"
    elif status == Status.ERROR and reason.startswith("the program ended") and guard.returncode not in (0, None):
        reason = f"{reason}: {_exit_reason(guard.returncode, stderr)}"
    if judge_err.strip():
        stderr = f"{stderr}\n--- judge ---\n{judge_err}"
    return Result(status, reason, guard.returncode, stdout[-_OUTPUT_CHARS:], stderr[-_OUTPUT_CHARS:], seconds)


def _judge_verdict(text: str, returncode: int | None) -> tuple[Status, str]:
    try:
        verdict = json.loads(text)
        return Status(verdict["status"]), str(verdict["reason"])
    except (ValueError, KeyError, TypeError):
        return Status.ERROR, f"the judge gave no verdict (exit status {returncode})"


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return ""
