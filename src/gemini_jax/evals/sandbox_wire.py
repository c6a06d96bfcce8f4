"""Values between the judge and the sandboxed program: one JSON object per line, parsed strictly.

The judge (trusted) sends a function's arguments and gets its return value back, so the encoding
keeps what an `==` in a test can tell apart: tuple from list, int from float and bool, sets and
dicts with any encodable keys, and every float bit for bit (as float.hex, NaN and infinities
included). Anything else is refused on both sides: a reply is data, never code (no pickle).

Standard library only; `sandbox_guard.py` and `sandbox_judge.py` load this file by path.
"""

import json
import os

MAX_LINE_BYTES = 4 << 20  # a longer reply is a protocol error, not a value
MAX_DEPTH = 64


class WireError(ValueError):
    """A malformed or oversized message."""


def encode(value, depth: int = 0):
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, str)) or type(value) is int:
        return value
    if isinstance(value, int):  # an int subclass other than bool (an IntEnum): its plain value
        return int(value)
    if isinstance(value, float):
        return {"float": float(value).hex()}
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, (tuple, set, frozenset)):
        tag = "tuple" if isinstance(value, tuple) else "frozenset" if isinstance(value, frozenset) else "set"
        items = value if tag == "tuple" else sorted(value, key=repr)
        return {tag: [encode(v, depth + 1) for v in items]}
    if isinstance(value, dict):
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    raise WireError(f"cannot pass a value of type {type(value).__name__}")


def decode(data, depth: int = 0):
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH}")
    if data is None or isinstance(data, (bool, int, str)):
        return data
    if isinstance(data, list):
        return [decode(v, depth + 1) for v in data]
    if not (isinstance(data, dict) and len(data) == 1):
        raise WireError(f"not an encoded value: {type(data).__name__}")
    (tag, body), = data.items()
    if tag == "float" and isinstance(body, str):
        return float.fromhex(body)
    if tag == "bytes" and isinstance(body, str):
        return bytes.fromhex(body)
    if tag in ("tuple", "set", "frozenset") and isinstance(body, list):
        items = [decode(v, depth + 1) for v in body]
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict" and isinstance(body, list) and all(isinstance(p, list) and len(p) == 2 for p in body):
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
    raise WireError(f"unknown or malformed tag {tag!r}")


def _reject_constant(name):
    raise WireError(f"bare {name} is not allowed (floats travel as float.hex)")


def parse(line: bytes) -> dict:
    """One message: a JSON object with string keys. Raises WireError for anything else."""
    if len(line) > MAX_LINE_BYTES:
        raise WireError(f"message over {MAX_LINE_BYTES} bytes")
    try:
        message = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise WireError(f"malformed message: {type(e).__name__}") from None
    if not isinstance(message, dict):
        raise WireError("a message must be a JSON object")
    return message


def dump(message: dict) -> bytes:
    return json.dumps(message, allow_nan=False, separators=(",", ":")).encode() + b"\n"


class LineReader:
    """Reads newline-terminated messages from a pipe fd, at most MAX_LINE_BYTES each."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def read(self) -> bytes | None:
        """The next line without its newline; None at end of file."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE_BYTES:
                raise WireError(f"message over {MAX_LINE_BYTES} bytes")
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


def write_all(fd: int, data: bytes, write=os.write) -> None:
    while data:
        data = data[write(fd, data):]
