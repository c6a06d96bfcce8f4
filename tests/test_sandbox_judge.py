"""run_judged: the tests run in the judge, the program only answers calls; and the wire format."""

import math

import pytest

from gemini_jax.evals import sandbox_wire as wire
from gemini_jax.evals.sandbox import Limits, Status, run_judged

FAST = Limits(timeout_s=5.0)
CONTEXT = "def f(x):\n    '''The function under test.'''\n"


def judged(program: str, tests: str, limits: Limits = FAST):
    return run_judged(program=program, entry_point="f", context=CONTEXT, tests=tests, limits=limits)


def test_right_values_pass_and_wrong_ones_fail():
    assert judged("def f(x):\n    return x + 1\n", "assert f(1) == 2\nassert f(2.5) == 3.5").status == Status.PASSED
    result = judged("def f(x):\n    return x + 2\n", "assert f(1) == 2, 'off by one'")
    assert result.status == Status.FAILED and result.reason == "AssertionError: off by one"


def test_values_keep_their_types():
    tests = ("assert f(None) == (1, [2.0], {'a': {3}}, frozenset({4}), b'5', True)\n"
             "assert f(None) != [1, [2.0], {'a': {3}}, frozenset({4}), b'5', True]\n"
             "assert type(f(None)[-1]) is bool and math.isnan(f(float('nan'))[1][0])\n")
    program = "def f(x):\n    return (1, [2.0 if x is None else x], {'a': {3}}, frozenset({4}), b'5', True)\n"
    assert judged(program, "import math\n" + tests).status == Status.PASSED


def test_an_always_equal_object_cannot_pass():
    program = ("class Yes:\n    def __eq__(self, other):\n        return True\n"
               "def f(x):\n    return Yes()\n")
    result = judged(program, "assert f(1) == 2")
    assert result.status == Status.ERROR and "cannot pass a value of type Yes" in result.reason, result


def test_forged_verdicts_and_early_exits_do_not_pass():
    forgeries = [
        "import os\nos._exit(0)\n",
        "import sys\nsys.exit(0)\n",
        "print('{\"status\": \"passed\", \"reason\": \"\"}')\n",
        "import os\nfor fd in range(1, 30):\n    try:\n        os.write(fd, b'{\"status\": \"passed\", \"reason\": \"\"}\\n')\n"
        "    except OSError:\n        pass\n",
    ]
    for forgery in forgeries:
        result = judged(forgery + "def f(x):\n    return 0\n", "assert f(1) == 2")
        assert result.status != Status.PASSED, (forgery, result)
        result = judged("def f(x):\n    " + forgery.replace("\n", "\n    ") + "return 0\n", "assert f(1) == 2")
        assert result.status != Status.PASSED, (forgery, result)


def test_a_program_that_raises_or_dies_is_an_error():
    result = judged("def f(x):\n    return {}[x]\n", "assert f(1) == 2")
    assert result.status == Status.ERROR and "the program raised KeyError" in result.reason
    result = judged("def f(x):\n    assert x > 5, 'too small'\n", "f(1)")
    assert result.status == Status.FAILED  # as in the reference harness: an assert in the function fails
    result = judged("syntax error here", "assert f(1) == 2")
    assert result.status == Status.ERROR and "SyntaxError" in result.reason
    result = judged("def f(x):\n    return bytearray(10 * 1024**3)\n", "f(1)")
    assert result.status == Status.ERROR and ("MemoryError" in result.reason or "killed" in result.reason), result


def test_a_program_that_never_answers_times_out():
    result = judged("def f(x):\n    while True:\n        pass\n", "f(1)", limits=Limits(timeout_s=1.0))
    assert result.status == Status.TIMED_OUT


def test_garbage_on_the_reply_pipe_is_an_error():
    program = ("import os\ndef f(x):\n    for fd in range(3, 30):\n        try:\n"
               "            os.write(fd, b'{\"returned\": {\"pickle\": \"...\"}}\\n')\n"
               "        except OSError:\n            pass\n    return 2\n")
    result = judged(program, "assert f(1) == 2")
    assert result.status == Status.ERROR and "malformed" in result.reason or "unknown" in result.reason, result


def test_hidden_dirs_look_empty(tmp_path, request):
    secret_dir = request.config.rootpath / ".pytest_cache" / "sandbox-hidden"
    secret_dir.mkdir(parents=True, exist_ok=True)
    (secret_dir / "answers.txt").write_text("42")
    # Where the repository lies under /tmp, the jail's empty /tmp hides the whole dir: also "nothing".
    program = (f"import os\ndef f(x):\n    d = {str(secret_dir)!r}\n"
               f"    return sorted(os.listdir(d)) if os.path.isdir(d) else []\n")
    result = run_judged(program=program, entry_point="f", context=CONTEXT, tests="assert f(0) == []",
                        limits=FAST, hidden=[secret_dir])
    from gemini_jax.evals.sandbox import isolation

    assert result.status == (Status.PASSED if isolation().jail else Status.FAILED), result


@pytest.mark.parametrize("value", [None, True, 0, -7, 10**40, 1.5, -0.0, math.inf, "é\n", [1, (2, [3])],
                                   {"k": (1,), 2: None}, {1, 2}, frozenset({"a"}), b"\x00"])
def test_wire_values_round_trip_exactly(value):
    line = wire.dump({"returned": wire.encode(value)})
    back = wire.decode(wire.parse(line.rstrip(b"\n"))["returned"])
    assert back == value and type(back) is type(value)
    assert math.copysign(1, back) == math.copysign(1, value) if isinstance(value, float) else True


@pytest.mark.parametrize("line", [b"NaN", b'{"returned": NaN}', b"[1]", b'{"returned": {"pickle": "x"}}',
                                  b'{"returned": {"float": 1}}', b"\xff", b"[" * 100_000])
def test_wire_rejects_what_is_not_a_value(line):
    with pytest.raises(wire.WireError):
        message = wire.parse(line)
        wire.decode(message["returned"])


def test_wire_refuses_oversized_messages_and_unknown_types():
    with pytest.raises(wire.WireError):
        wire.parse(b"1" * (wire.MAX_LINE_BYTES + 1))
    with pytest.raises(wire.WireError, match="cannot pass"):
        wire.encode(object())
