"""The in-process layer of the sandbox: a Python audit hook installed before untrusted code runs.

This file is not imported by the evaluating process: `sandbox.py` runs it as a script
(`python -I sandbox_guard.py POLICY`) in the child, where it reads the program, installs the hook
and runs the program.
It uses the standard library only (the child runs in isolated mode).

Why an audit hook (PEP 578, `sys.addaudithook`): every file open, deletion, rename, directory
listing, socket and process creation in CPython raises an audit event *before* it happens, and
a hook that raises refuses it. A hook cannot be removed once added. It can be bypassed by native
code (ctypes, a C extension), so the hook also refuses loading native libraries through ctypes;
the OS-level limits in `sandbox.py` are what bound time, memory and processes.

Protocol with the parent: argv[1] is a JSON policy; the first line of stdin is a nonce. The last
line this file writes to stdout is `<nonce> <status> <reason as JSON>`, so a program that exits
early (`os._exit(0)`) or prints a fake verdict cannot pass: it does not know the nonce.
"""

import contextlib
import json
import os
import sys
import traceback

_PROCESS_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
    "subprocess.Popen", "pty.spawn",
})
# Events that change the filesystem: (index of a path argument, index of its dir_fd or None), as
# CPython raises them (see "Audit events table" in the docs). Only paths inside the work dir pass.
_WRITE_PATH_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.truncate": ((0, None),),
    "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
    "shutil.rmtree": ((0, 1),), "shutil.copyfile": ((1, None),), "shutil.copytree": ((1, None),),
    "shutil.move": ((0, None), (1, None)),
}
_LIST_EVENTS = frozenset({"os.listdir", "os.scandir"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class SandboxRefusal(PermissionError):
    """Raised inside the program when the sandbox refuses an operation."""


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _make_hook(policy):
    work = os.path.realpath(policy["work_dir"])
    forbidden_reads = [os.path.realpath(p) for p in policy["forbidden_read_roots"]]
    # The interpreter reads its own library (which may live under a forbidden home dir).
    allowed_reads = [work] + [os.path.realpath(p) for p in policy["allowed_read_roots"]]
    writable = [work, "/dev/null"]
    allow_processes = policy["allow_subprocess"]
    busy = [False]

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            return os.readlink(f"/proc/self/fd/{path}")
        path = os.fsdecode(path)
        # dir_fd is None or -1 (AT_FDCWD-like "no directory") when the path is not relative to one
        base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None and dir_fd >= 0 else os.getcwd()
        return os.path.realpath(os.path.join(base, path))

    def check_read(event, path):
        if _under(path, forbidden_reads) and not _under(path, allowed_reads):
            raise SandboxRefusal(f"sandbox refused {event} of {path!r}: reading the home directory")

    def check_write(event, path):
        if not _under(path, writable):
            raise SandboxRefusal(f"sandbox refused {event} of {path!r}: outside the work dir {work!r}")

    def hook(event, args):
        if busy[0]:
            return
        busy[0] = True
        try:
            if event.startswith("socket."):
                raise SandboxRefusal(f"sandbox refused {event}: no network access")
            if event in _PROCESS_EVENTS and not allow_processes:
                raise SandboxRefusal(f"sandbox refused {event}: no new processes")
            if event in ("os.kill", "os.killpg") and args[0] != os.getpid():
                raise SandboxRefusal(f"sandbox refused {event} of process {args[0]}")
            if event in ("resource.setrlimit", "resource.prlimit", "ctypes.dlopen", "ctypes.dlsym"):
                raise SandboxRefusal(f"sandbox refused {event}")
            if event == "open":
                path, mode, flags = args
                if path is None:
                    return
                resolved = resolve(path)
                writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & _WRITE_FLAGS)
                (check_write if writing else check_read)(event, resolved)
                if os.path.isdir(resolved) and not _under(resolved, writable):
                    # The "open" event does not carry dir_fd, so a directory fd from outside would let
                    # os.open(name, ..., dir_fd=fd) write there unseen.
                    raise SandboxRefusal(f"sandbox refused opening directory {resolved!r} outside the work dir")
            elif event in _LIST_EVENTS and args and args[0] is not None:
                check_read(event, resolve(args[0]))
            elif event in _WRITE_PATH_EVENTS:
                for path_index, fd_index in _WRITE_PATH_EVENTS[event]:
                    dir_fd = args[fd_index] if fd_index is not None and fd_index < len(args) else None
                    check_write(event, resolve(args[path_index], dir_fd))
        finally:
            busy[0] = False

    return hook


def _classify(e: BaseException) -> tuple[str, str]:
    """A failed assert is a failed test; anything else (a crash, a refusal, exit()) is an error."""
    described = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, AssertionError):
        return "failed", described
    if isinstance(e, SystemExit):
        return "error", f"exit({e.code!r}) before the program's end"
    if isinstance(e, SandboxRefusal):
        return "error", f"refused: {e}"
    return "error", described


def main():
    policy = json.loads(sys.argv[1])
    nonce = sys.stdin.readline().strip()
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    with open(policy["program"], encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    if policy["guard"]:
        sys.addaudithook(_make_hook(policy))
    status, reason, trace = "passed", "", ""
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102 - the point of it
    except BaseException as e:  # noqa: BLE001 - whatever the program raises is its verdict
        status, reason = _classify(e)
        trace = traceback.format_exc()
    if trace:
        sys.stderr.write(trace)
    verdict = f"\n{nonce} {status} {json.dumps(reason[:500])}\n".encode()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # the program may have closed or replaced its streams
            stream.flush()
    os.write(1, verdict)  # not print(): the program may have replaced sys.stdout


if __name__ == "__main__":
    main()
