"""The child side of the sandbox: jail, then an audit hook, then the untrusted program.

This file is not imported by the evaluating process: `sandbox.py` runs it as a script
(`python -I sandbox_guard.py POLICY`, as root inside fresh namespaces when the machine offers
them). It reads the program, enters the jail (`sandbox_jail.py`: read-only filesystem, private
tmpfs work dir, an unprivileged user), installs the hook and runs the program in one of two modes:

- "program": runs it to its end and reports `<nonce> <status> <reason as JSON>` on the verdict
  pipe. This verdict is the program's own account of itself, made harder to forge (the nonce
  lives only in the hook's closure and is written only when the guard's own frames ask, through
  an `os.write` saved before the program ran) but not impossible: never use it as a score.
- "serve": defines the program's functions, then answers calls to `entry_point` from the judge
  (`sandbox_judge.py`) with return values (`sandbox_wire.py`). The judge runs the tests and
  decides; nothing this process says can make a test pass except right return values.

Why an audit hook (PEP 578, `sys.addaudithook`): every file open, deletion, rename, directory
listing, socket and process creation in CPython raises an audit event *before* it happens, and
a hook that raises refuses it. It cannot be removed once added, but native code bypasses it, so
the jail's OS mechanisms are what hold; the hook turns ordinary mistakes into clear refusals.
Standard library only (the child runs in isolated mode).
"""

import builtins
import importlib.util
import json
import os
import sys
import traceback
import types

import _thread

_write = os.write  # the program may replace os.write; the verdict does not go through its version
_HERE = os.path.dirname(os.path.abspath(__file__))
_VERDICT_EVENT = "gemini_jax.sandbox.verdict"
_PROCESS_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
    "subprocess.Popen", "pty.spawn",
})
_PROCESS_MODULES = frozenset({"_posixsubprocess"})  # fork_exec raises no audit event of its own
_INTROSPECTION_EVENTS = frozenset({  # ways to reach the guard's frames and objects
    "sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
})
# Events that change the filesystem: (index of a path argument, index of its dir_fd or None), as
# CPython raises them (see "Audit events table" in the docs). Only paths inside the work dir pass.
_WRITE_PATH_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.truncate": ((0, None),),
    "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
    "shutil.rmtree": ((0, 1),), "shutil.copyfile": ((1, None),), "shutil.copytree": ((1, None),),
    "shutil.move": ((0, None), (1, None)), "sqlite3.connect": ((0, None),),
}
_LIST_EVENTS = frozenset({"os.listdir", "os.scandir"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class SandboxRefusal(PermissionError):
    """Raised inside the program when the sandbox refuses an operation."""


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resolve(path, dir_fd=None) -> str:
    if isinstance(path, int):
        return os.readlink(f"/proc/self/fd/{path}")
    path = os.fsdecode(path)
    # dir_fd is None or -1 (AT_FDCWD-like "no directory") when the path is not relative to one
    base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None and dir_fd >= 0 else os.getcwd()
    return os.path.realpath(os.path.join(base, path))


def _path_rules(policy):
    """check(event, args) for the filesystem events: writes only in the work dir, no home reads."""
    work = os.path.realpath(policy["work_dir"])
    forbidden_reads = [os.path.realpath(p) for p in policy["forbidden_read_roots"]]
    # The interpreter reads its own library (which may live under a forbidden home dir).
    allowed_reads = [work] + [os.path.realpath(p) for p in policy["allowed_read_roots"]]
    writable = [work, "/dev/null"]

    def check_read(event, path):
        if _under(path, forbidden_reads) and not _under(path, allowed_reads):
            raise SandboxRefusal(f"sandbox refused {event} of {path!r}: reading the home directory")

    def check_write(event, path):
        if not _under(path, writable):
            raise SandboxRefusal(f"sandbox refused {event} of {path!r}: outside the work dir {work!r}")

    def check(event, args):
        if event == "open" and args[0] is not None:
            path, mode, flags = args
            resolved = _resolve(path)
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & _WRITE_FLAGS)
            (check_write if writing else check_read)(event, resolved)
            if os.path.isdir(resolved) and not _under(resolved, writable):
                # The "open" event does not carry dir_fd, so a directory fd from outside would let
                # os.open(name, ..., dir_fd=fd) write there unseen.
                raise SandboxRefusal(f"sandbox refused opening directory {resolved!r} outside the work dir")
        elif event in _LIST_EVENTS and args and args[0] is not None:
            check_read(event, _resolve(args[0]))
        elif event == "sqlite3.connect" and os.fsdecode(args[0]) in ("", ":memory:"):
            return
        elif event in _WRITE_PATH_EVENTS:
            for path_index, fd_index in _WRITE_PATH_EVENTS[event]:
                dir_fd = args[fd_index] if fd_index is not None and fd_index < len(args) else None
                check_write(event, _resolve(args[path_index], dir_fd))

    return check


def _make_hook(policy, nonce: str, finish_code):
    """The audit hook. It holds the verdict's nonce (nowhere else in the process) and writes the
    verdict once, when called from `_finish` called from `main` at the bottom of the stack."""
    check_path = _path_rules(policy)
    allow_processes = policy["allow_subprocess"]
    active = policy["guard"]
    verdict_fd = policy.get("verdict_fd")
    busy = set()  # threads inside the hook: its own file checks must not recurse; per thread, so
    sent = []     # that one thread's check never lets another thread's event through

    def write_verdict(args):
        caller = sys._getframe(2)  # 0: this, 1: hook, 2: the frame that called sys.audit
        chain = [caller.f_code, caller.f_back and caller.f_back.f_code]
        bottom = caller.f_back and caller.f_back.f_back
        if sent or chain != [finish_code, main.__code__] or bottom is None or bottom.f_back is not None \
                or bottom.f_globals is not globals():
            raise SandboxRefusal("sandbox refused a verdict from the program")
        sent.append(True)
        status, reason = args
        _write(verdict_fd, f"{nonce} {status} {json.dumps(reason[:500])}\n".encode())

    def hook(event, args):
        me = _thread.get_ident()
        if me in busy:
            return
        busy.add(me)
        try:
            if event == _VERDICT_EVENT:
                write_verdict(args)
            elif not active:
                return
            elif event.startswith("socket."):
                raise SandboxRefusal(f"sandbox refused {event}: no network access")
            elif (event in _PROCESS_EVENTS or event == "import" and args[0] in _PROCESS_MODULES) \
                    and not allow_processes:
                raise SandboxRefusal(f"sandbox refused {event}{' ' + args[0] if event == 'import' else ''}: "
                                     "no new processes")
            elif event in ("os.kill", "os.killpg") and args[0] != os.getpid():
                raise SandboxRefusal(f"sandbox refused {event} of process {args[0]}")
            elif event in ("resource.setrlimit", "resource.prlimit") or event.startswith("ctypes.") \
                    or event in _INTROSPECTION_EVENTS:
                raise SandboxRefusal(f"sandbox refused {event}")
            else:
                check_path(event, args)
        finally:
            busy.discard(me)

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


def _finish(status: str, reason: str) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:  # the program may have closed or replaced its streams
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - whatever it did, the verdict still goes out
            pass
    sys.audit(_VERDICT_EVENT, status, reason)


def _fresh_main() -> dict:
    """A new __main__ module for the program, so sys.modules does not lead it to this file."""
    module = types.ModuleType("__main__")
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    return module.__dict__


def _serve(source: bytes, policy, wire) -> None:
    """Defines the program, then answers the judge's calls until the judge closes the pipe."""
    reader, out = wire.LineReader(policy["call_fd"]), policy["reply_fd"]
    try:
        namespace = _fresh_main()
        exec(compile(source, "program.py", "exec"), namespace)  # noqa: S102 - the point of it
        function = namespace[policy["entry_point"]]
    except BaseException as e:  # noqa: BLE001 - reported to the judge, which decides
        traceback.print_exc()
        wire.write_all(out, wire.dump({"raised": _classify(e)[1][:500]}), _write)
        return
    wire.write_all(out, wire.dump({"ready": True}), _write)
    while (line := reader.read()) is not None:
        request = wire.parse(line)
        try:
            value = function(*wire.decode(request["args"]))
            reply = {"returned": wire.encode(value)}
        except BaseException as e:  # noqa: BLE001 - a raised exception is an answer too
            reply = {"raised": f"{type(e).__name__}: {e}"[:500]}
        wire.write_all(out, wire.dump(reply), _write)


def _read_line(fd: int) -> str:
    """A line read unbuffered, so that no buffer keeps a copy for the program to find."""
    line = b""
    while not line.endswith(b"\n") and len(line) < 256 and (byte := os.read(fd, 1)):
        line += byte
    return line.decode().strip()


def main():
    policy = json.loads(sys.argv[1])
    nonce = _read_line(0) if policy["mode"] == "program" else ""
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    with open(policy["program"], "rb") as f:
        source = f.read()
    wire = _sibling("sandbox_wire")
    try:
        _sibling("sandbox_jail").enter(policy, source)
    except OSError as e:
        sys.stderr.write(f"sandbox setup failed: {e}\n")
        os._exit(125)
    sys.addaudithook(_make_hook(policy, nonce, _finish.__code__))
    del nonce
    if policy["mode"] == "serve":
        _serve(source, policy, wire)
        return
    status, reason = "passed", ""
    try:
        exec(compile(source, "program.py", "exec"), _fresh_main())  # noqa: S102 - the point of it
    except BaseException as e:  # noqa: BLE001 - whatever the program raises is its verdict
        status, reason = _classify(e)
        sys.stderr.write(traceback.format_exc())
    _finish(status, reason)


if __name__ == "__main__":
    main()
