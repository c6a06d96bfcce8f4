"""The judge: runs trusted test code against a sandboxed program, and alone decides pass or fail.

`sandbox.py` runs this file as a script (`python -I sandbox_judge.py JOB`, JOB a JSON file)
beside the sandboxed program (`sandbox_guard.py` in "serve" mode). The tests run here; the
function under test is a stand-in that sends its arguments to the program over a pipe and returns
what comes back, parsed strictly (`sandbox_wire.py`): plain values, never code. The program cannot
reach this process (another user, another PID namespace, no shared memory or file), so the only
way for it to pass is to return the values the tests accept. The verdict is one JSON object on
this process's original stdout; the tests' own prints go to stderr.

Standard library only; no untrusted code ever runs here.
"""

import importlib.util
import json
import os
import sys
import traceback


class ProgramRaised(Exception):
    """The program raised while defining itself or while answering a call."""


class ProgramGone(Exception):
    """The program's end of the pipe closed: it exited, crashed or was killed."""


def _wire():
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("sandbox_wire", os.path.join(here, "sandbox_wire.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stand_in(wire, *, call_fd: int, reply_fd: int, name: str):
    """The function the tests call: (the first message of the program, the stand-in)."""
    reader = wire.LineReader(reply_fd)

    def receive() -> dict:
        line = reader.read()
        if line is None:
            raise ProgramGone("the program ended or was killed before it answered")
        return wire.parse(line)

    def answer(reply: dict):
        if set(reply) == {"returned"}:
            return wire.decode(reply["returned"])
        if set(reply) == {"raised"} and isinstance(reply["raised"], str):
            raised = reply["raised"][:500]
            # The reference harness counts an assert failing inside the function as a failure too.
            raise AssertionError(raised) if raised.startswith("AssertionError") else ProgramRaised(raised)
        raise wire.WireError(f"unexpected reply with keys {sorted(reply)[:5]}")

    def stand_in(*args, **kwargs):
        if kwargs:
            raise TypeError(f"{name}() is called with positional arguments only in the sandbox")
        try:
            wire.write_all(call_fd, wire.dump({"args": wire.encode(list(args))}))
        except BrokenPipeError:
            raise ProgramGone("the program ended or was killed before it was called") from None
        return answer(receive())

    stand_in.__name__ = name
    first = receive()
    if first != {"ready": True}:
        answer(first)  # raises: the program could not be defined
    return stand_in


def _verdict(e: BaseException | None) -> dict:
    if e is None:
        return {"status": "passed", "reason": ""}
    described = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, AssertionError):
        return {"status": "failed", "reason": described[:500]}
    if isinstance(e, ProgramRaised):
        return {"status": "error", "reason": f"the program raised {e}"[:500]}
    if isinstance(e, ProgramGone):
        return {"status": "error", "reason": str(e)}
    return {"status": "error", "reason": described[:500]}


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    verdict_fd = os.dup(1)
    os.dup2(2, 1)  # the tests' prints go to stderr; stdout carries the verdict only
    wire = _wire()
    namespace = {"__name__": "__judge__"}
    error = None
    try:
        exec(job["context"], namespace)  # noqa: S102 - trusted: the task's own definitions
        namespace[job["entry_point"]] = _stand_in(wire, call_fd=job["call_fd"], reply_fd=job["reply_fd"],
                                                  name=job["entry_point"])
        exec(job["tests"], namespace)  # noqa: S102 - trusted: the task's tests
    except BaseException as e:  # noqa: BLE001 - every outcome is a verdict
        error = e
        traceback.print_exc()
    os.close(job["call_fd"])  # the program's loop ends
    wire.write_all(verdict_fd, json.dumps(_verdict(error)).encode())


if __name__ == "__main__":
    main()
