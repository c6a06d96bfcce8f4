"""AlphaCode-2-style selection of programs (`--protocol cluster@N/K`): sample N programs, keep
those that pass the public examples in the prompt, cluster the survivors by what they return on
generated inputs, and submit one program from each of the K largest clusters.

    examples = docstring_examples(problem.prompt, problem.entry_point)   # the docstring's >>> lines
    inputs = generated_inputs(examples, seed=problem.prompt)  # their arguments, perturbed
    inputs = inputs or annotated_inputs(problem.prompt, problem.entry_point, seed=problem.prompt)
    chosen = select([probe(problem, s, examples, inputs) for s in samples], k=1)
    solved = any(passed[i] for i in chosen.submitted)   # passed: each sample's hidden tests

`select` is pure (probes in, indices out), so the ranking is tested with scripted probes; `probe`
runs one program in the sandbox (`sandbox.run_judged`): the program answers calls, and the judge,
trusted code, evaluates the examples and records each generated input's outcome (the repr of the
value returned, or the name of the exception raised). Nothing the program writes is read, so it
cannot choose its own cluster beyond the values it returns.

Where the docstring has no `>>>` example nothing is filtered, and the inputs are drawn from the
entry point's type annotations instead (`annotated_inputs`: `List[int]`, `str`, `Optional[T]`,
...). A parameter without an annotation, or with one that says too little (`Any`, a class), leaves
no inputs at all: the programs then split only into those that define themselves and those that
cannot, and the first sample of the larger group is submitted. A sample that fails the examples
is dropped, unless every sample does (a docstring's example can be wrong: HumanEval/47's is).
"""

from __future__ import annotations

import ast
import builtins
import copy
import dataclasses
import doctest
import hashlib
import json
import math
import random
import re
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from gemini_jax.evals.protocols import pass_at_k
from gemini_jax.evals.sandbox import Limits, run_judged

GENERATED_INPUTS = 24  # beside the examples' own arguments
CALL_SECONDS = 1.0  # per call; a program that overruns answers nothing more (its pipe is out of step)
_LITERALS = (bool, int, float, str, bytes, type(None), list, tuple, dict, set)


class CodeProblem(Protocol):
    prompt: str  # signature and docstring: the model continues from here
    entry_point: str  # the function the examples call

    @property
    def hidden(self) -> Sequence[str]:
        """Dirs that appear empty to the program (the benchmark's own files)."""
        ...


# --- the docstring's examples ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Example:
    """One `>>>` example: `source` an expression (it calls the function, maybe inside `round(...)`),
    `want` the output the docstring shows; `arguments` the literal positional arguments of the
    function's call in `source`, None when they are not all literals."""

    source: str
    want: str
    arguments: tuple | None


def _function(prompt: str, entry_point: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The entry point's definition; a prompt ends at its docstring, so a body is added to parse it."""
    try:
        tree = ast.parse(prompt + "\n    pass\n")
    except SyntaxError:
        return None
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                 and n.name == entry_point]
    return functions[-1] if functions else None


def _arguments(source: str, function: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple | None:
    """The literal positional arguments of the one call of `function` in `source`; keyword
    arguments are put in their places (the defaults, literals too, fill the gaps before them),
    since the sandbox calls functions with positional arguments only."""
    calls = [n for n in ast.walk(ast.parse(source, mode="eval")) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == function.name]
    if len(calls) != 1:
        return None
    params = [a.arg for a in [*function.args.posonlyargs, *function.args.args]]
    defaults = dict(zip(params[len(params) - len(function.args.defaults):], function.args.defaults))
    try:
        values = [ast.literal_eval(a) for a in calls[0].args]
        keywords = {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords}
        for name in params[len(values):]:
            if not keywords:
                break
            values.append(keywords.pop(name) if name in keywords else ast.literal_eval(defaults[name]))
    except (ValueError, KeyError, TypeError):  # a name or an expression, not a literal; no such parameter
        return None
    return None if keywords else tuple(values)


def _split_comparison(source: str) -> tuple[str, str]:
    """("f(x)", "y") for the source "f(x) == y"; (source, "") for anything else."""
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError:
        return source, ""
    if isinstance(tree, ast.Compare) and len(tree.ops) == 1 and isinstance(tree.ops[0], ast.Eq):
        return ast.get_source_segment(source, tree.left), ast.get_source_segment(source, tree.comparators[0])
    return source, ""


def _defined(prompt: str) -> set[str]:
    """The names the prompt's module level defines (its functions, imports and assignments)."""
    try:
        tree = ast.parse(prompt + "\n    pass\n")
    except SyntaxError:
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _stands_alone(source: str, known: set[str]) -> bool:
    """Whether an example needs only what the prompt defines and builtins (not a name an earlier
    example line set, nor `print`, whose output the judge does not read)."""
    return all(n.id in known for n in ast.walk(ast.parse(source, mode="eval")) if isinstance(n, ast.Name))


def docstring_examples(prompt: str, entry_point: str) -> list[Example]:
    """The `>>>` examples of `entry_point`'s docstring (read by `doctest`'s own parser) whose
    source is one expression that calls `entry_point`, needs nothing but the prompt's names and
    builtins, and whose output is shown. A malformed
    example (a string with a raw newline, HumanEval/51) is left out, not the whole docstring;
    examples that expect an exception are left out too."""
    function = _function(prompt, entry_point)
    text = ast.get_docstring(function) if function else None
    if not text:
        return []
    parser, out = doctest.DocTestParser(), []
    known = _defined(prompt) | set(dir(builtins)) - {"print"}
    for block in re.split(r"(?m)^(?=\s*>>>)", text):  # one example per block: one bad one costs only itself
        try:
            parsed = parser.get_examples(block)
        except ValueError:
            continue
        for example in parsed:
            source, want = example.source.strip(), example.want.strip()
            if not want:  # ">>> f(x) == y" with nothing below (six HumanEval prompts): y is the output
                source, want = _split_comparison(source)
            if not want or example.exc_msg is not None:
                continue
            try:
                calls = _arguments(source, function)
            except SyntaxError:
                continue
            if re.search(rf"\b{re.escape(entry_point)}\s*\(", source) and _stands_alone(source, known):
                out.append(Example(source, want, calls))
    return out


# --- generated inputs --------------------------------------------------------------------------


def _seed(seed: str | int) -> int:
    return seed if isinstance(seed, int) else int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")


def _pools(values: Sequence[Any]) -> tuple[str, list]:
    """The characters of every string and the items of every list among `values` (nested): what a
    perturbation draws new characters and items from, so that inputs stay in the examples' alphabet."""
    chars, items = set(), []

    def walk(v):
        if isinstance(v, str):
            chars.update(v)
        elif isinstance(v, list | tuple | set | frozenset):
            ordered = sorted(v, key=repr) if isinstance(v, set | frozenset) else v  # not in hash order
            items.extend(ordered)
            for x in ordered:
                walk(x)
        elif isinstance(v, dict):
            for x in (*v.keys(), *v.values()):
                walk(x)

    for v in values:
        walk(v)
    return "".join(sorted(chars)) or "ab", items


def perturb(value: Any, rng: random.Random, chars: str = "ab", items: Sequence[Any] = ()) -> Any:
    """A value of the same type near `value`: a number moved a little (keeping its sign), a string
    or list edited one to three times (an item dropped, repeated, changed, swapped with another, one
    of its own or of `items` or `chars` inserted anywhere, or the whole reversed), a dict with a
    value changed. Other values come back unchanged."""
    match value:
        case bool():
            return not value
        case int():
            moved = rng.choice([value + 1, value - 1, value + rng.randint(2, 5), value * 2, value // 2, -value])
            return abs(moved) if value >= 0 else moved
        case float():
            moved = round(value + rng.uniform(-1.0, 1.0) * max(1.0, abs(value)) / 2, 2)
            return abs(moved) if value >= 0 else moved
        case str():
            return "".join(_edits(list(value), rng, lambda: rng.choice(chars)))
        case list() | tuple():
            pool = list(value) or list(items)
            new = (lambda: copy.deepcopy(rng.choice(pool))) if pool else None
            change = lambda v: perturb(v, rng, chars, items)  # noqa: E731
            return type(value)(_edits(list(value), rng, new, change))
        case dict() if value:
            key = rng.choice(list(value))
            return {**value, key: perturb(value[key], rng, chars, items)}
    return value


def _edits(seq: list, rng: random.Random, new: Callable[[], Any] | None,
           change: Callable[[Any], Any] | None = None) -> list:
    """One to three edits of `seq` (see `_edit`)."""
    for _ in range(rng.randint(1, 3)):
        seq = _edit(seq, rng, new, change)
    return seq


def _edit(seq: list, rng: random.Random, new: Callable[[], Any] | None,
          change: Callable[[Any], Any] | None = None) -> list:
    """One edit of `seq`: insert `new()`, reverse, drop, repeat, change (`change(item)`, else a
    `new()` in its place) or swap two items."""
    ops = (["insert"] if new else []) + (["reverse", "drop", "repeat", "change", "swap"] if seq else [])
    if not ops:
        return seq
    op = rng.choice(ops)
    at = rng.randrange(len(seq)) if seq else 0
    match op:
        case "insert":
            return seq[:at] + [new()] + seq[at:]
        case "reverse":
            return seq[::-1]
        case "drop":
            return seq[:at] + seq[at + 1:]
        case "repeat":
            return seq[:at] + [seq[at]] + seq[at:]
        case "change":
            return seq[:at] + [change(seq[at]) if change else new()] + seq[at + 1:]
        case _:
            other = rng.randrange(len(seq))
            seq[at], seq[other] = seq[other], seq[at]
            return seq


def is_plain(value: Any) -> bool:
    """True for plain data (what the sandbox's wire carries and `repr` writes as a literal), without
    NaN or infinities."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple | set):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(is_plain(k) and is_plain(v) for k, v in value.items())
    return isinstance(value, _LITERALS)


def generated_inputs(examples: Sequence[Example], *, count: int = GENERATED_INPUTS,
                     seed: str | int = 0) -> list[tuple]:
    """The examples' own argument tuples, then up to `count` new ones, each an example's arguments
    with one or two perturbed (see `perturb`); the same `seed` (e.g. the prompt) gives the same
    inputs on every machine. Empty when no example calls the function with literal arguments."""
    calls = list(dict.fromkeys(repr(e.arguments) for e in examples if e.arguments is not None))
    bases = [ast.literal_eval(c) for c in calls]
    if not bases:
        return []
    rng = random.Random(_seed(seed))
    chars, items = _pools([v for args in bases for v in args])
    seen, out = set(calls), list(bases)
    for attempt in range(count * 10):
        if len(out) >= len(bases) + count:
            break
        args = list(copy.deepcopy(bases[attempt % len(bases)]))
        if not args:
            break
        for at in rng.sample(range(len(args)), k=min(len(args), rng.choice([1, 1, 2]))):
            args[at] = perturb(args[at], rng, chars, items)
        key = repr(tuple(args))
        if key not in seen and is_plain(tuple(args)):
            seen.add(key)
            out.append(tuple(args))
    return out


# --- inputs drawn from the type annotations ----------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyz "
_MAX_ITEMS = 6  # lists, tuples, dicts and sets of 0 to 6 items: calls stay fast
Draw = Callable[[random.Random], Any]

# Small values, 0 and negatives included, so that a program's edge cases show in its outcomes.
_SCALARS: dict[str, Draw] = {
    "int": lambda rng: rng.randint(-10, 10),
    "float": lambda rng: round(rng.uniform(-10.0, 10.0), 2),
    "bool": lambda rng: rng.random() < 0.5,
    "str": lambda rng: "".join(rng.choices(_LETTERS, k=rng.randint(0, 8))),
}


def _name(node: ast.expr) -> str | None:
    """The name an annotation spells: "List" for both `List` and `typing.List`."""
    match node:
        case ast.Name(id=name) | ast.Attribute(attr=name):
            return name
    return None


def _alternatives(node: ast.expr) -> list[ast.expr]:
    """The members of a union (`A | B | None`, `Union[A, B]`, `Optional[A]`), flattened; [node] otherwise."""
    match node:
        case ast.BinOp(op=ast.BitOr()):
            return _alternatives(node.left) + _alternatives(node.right)
        case ast.Subscript(slice=ast.Tuple(elts=items)) if _name(node.value) == "Union":
            return [a for item in items for a in _alternatives(item)]
        case ast.Subscript(slice=item) if _name(node.value) in ("Union", "Optional"):
            none = [ast.Constant(None)] if _name(node.value) == "Optional" else []
            return _alternatives(item) + none
    return [node]


def _spells(node: ast.expr, name: str) -> bool:
    """Whether the annotation `node` mentions `name` anywhere (inside string annotations too)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            try:
                if _spells(ast.parse(n.value, mode="eval").body, name):
                    return True
            except SyntaxError:
                pass
        elif _name(n) == name:
            return True
    return False


def _drawer(node: ast.expr | None, *, hashable: bool = False) -> Draw | None:
    """What draws a value of the type `node` annotates (`hashable`: to be a dict key or a set
    item); None for a type it cannot draw without guessing: no annotation, `Any`, a class of the
    prompt's own, a bare `list` whose items are unknown, a list where a hashable value is needed."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation: "List[int]"
        try:
            return _drawer(ast.parse(node.value, mode="eval").body, hashable=hashable)
        except SyntaxError:
            return None
    alternatives = _alternatives(node)
    if alternatives != [node]:
        draws = [_drawer(a, hashable=hashable) for a in alternatives]
        return None if None in draws else (lambda rng: rng.choice(draws)(rng))
    if isinstance(node, ast.Constant) and node.value is None:
        return lambda rng: None
    if not isinstance(node, ast.Subscript):
        return _SCALARS.get(_name(node))
    kind = (_name(node.value) or "").lower()
    items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    if kind == "tuple" and len(items) == 2 and isinstance(items[1], ast.Constant) and items[1].value is ...:
        item = _drawer(items[0], hashable=hashable)  # Tuple[T, ...]
        if item is None:
            return None
        return lambda rng: tuple(item(rng) for _ in range(rng.randint(0, _MAX_ITEMS)))
    if kind == "set" and _spells(items[0], "str"):
        return None  # a set of strings iterates in an order each process draws anew (hash randomization)
    draws = [_drawer(i, hashable=hashable or kind in ("dict", "set") and at == 0) for at, i in enumerate(items)]
    if None in draws:
        return None
    match kind, draws:
        case "tuple", _:
            return lambda rng: tuple(d(rng) for d in draws)
        case "list", [item] if not hashable:
            return lambda rng: [item(rng) for _ in range(rng.randint(0, _MAX_ITEMS))]
        case "set", [item] if not hashable:
            return lambda rng: {item(rng) for _ in range(rng.randint(0, _MAX_ITEMS))}
        case "dict", [key, value] if not hashable:
            return lambda rng: {key(rng): value(rng) for _ in range(rng.randint(0, _MAX_ITEMS))}
    return None


def annotated_inputs(prompt: str, entry_point: str, *, count: int = GENERATED_INPUTS,
                     seed: str | int = 0) -> list[tuple]:
    """Up to `count` distinct argument tuples for `entry_point`, each parameter's value drawn at
    random from its annotation (read from the prompt's syntax tree, never run): small ints and
    floats, 0 and negatives included; strings of 0-8 lowercase letters and spaces; bools; lists,
    sets, dicts and `Tuple[T, ...]`s of 0-6 items; fixed tuples; a member of a union or
    `Optional`. The same `seed` gives the same inputs. Empty when any parameter the positional
    call must fill has no annotation it can draw from (see `_drawer`): better no inputs than
    inputs of a type the program never meant to take."""
    function = _function(prompt, entry_point)
    if function is None or any(d is None for d in function.args.kw_defaults):  # a keyword-only argument to fill
        return []
    draws = [_drawer(a.annotation) for a in [*function.args.posonlyargs, *function.args.args]]
    if None in draws:
        return []
    rng = random.Random(_seed(seed))
    seen, out = set(), []
    for _ in range(count * 10):
        if len(out) >= count:
            break
        args = tuple(d(rng) for d in draws)
        if repr(args) not in seen and is_plain(args):
            seen.add(repr(args))
            out.append(args)
    return out


# --- one program's behaviour, judged in the sandbox ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Probe:
    """What one program did: whether it passed every public example, and a digest of its outcomes
    on the generated inputs (equal digests: the same behaviour)."""

    passed_examples: bool
    behaviour: str


# Runs in the judge (trusted): each call of the program under a per-call deadline; the outcomes
# come back in the verdict's reason, behind a nonce the program never sees.
_PROBE_TESTS = """
import ast as _ast, hashlib as _hashlib, inspect as _inspect, json as _json, math as _math, signal as _signal

class _Stopped(Exception):
    pass

class _Probe(Exception):
    pass

def _alarm(signum, frame):
    raise _Stopped("TimedOut")

_signal.signal(_signal.SIGALRM, _alarm)
_stopped = None

# The sandbox calls the program with positional arguments only: keyword arguments of an example
# ("f(x, precisionBits=14)") are bound to their places by the prompt's own signature.
_program, _scratch = globals()[_JOB["entry_point"]], {}
try:
    exec(_JOB["prompt"] + "\\n    pass\\n", _scratch)
    _signature = _inspect.signature(_scratch[_JOB["entry_point"]])
except BaseException:
    _signature = None

def _positional(*args, **kwargs):
    if kwargs and _signature is not None:
        bound = _signature.bind(*args, **kwargs)
        bound.apply_defaults()
        args, kwargs = bound.args, bound.kwargs
    return _program(*args, **kwargs)

globals()[_JOB["entry_point"]] = _positional

def _outcome(source):
    global _stopped
    if _stopped:
        return "!" + _stopped
    _signal.setitimer(_signal.ITIMER_REAL, _JOB["call_seconds"])
    try:
        return "=" + repr(eval(source, globals()))
    except _Stopped:
        _stopped = "TimedOut"
    except BaseException as e:
        name = type(e).__name__
        if name == "ProgramGone":
            _stopped = name
        elif name in ("ProgramRaised", "AssertionError") and str(e)[:1].isalpha():
            return "!" + str(e).split(":", 1)[0].strip()
        else:
            return "!" + name
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
    return "!" + _stopped

def _same(got, want):
    if type(got) in (int, float) and type(want) in (int, float):
        return _math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(got, (list, tuple)) and type(got) is type(want) and len(got) == len(want):
        return all(_same(g, w) for g, w in zip(got, want))
    return got == want

def _matches(outcome, want):
    if not outcome.startswith("="):
        return False
    text = outcome[1:]
    if " ".join(text.split()) == " ".join(want.split()):
        return True
    try:
        return _same(_ast.literal_eval(text), eval(want, globals()))
    except BaseException:
        return False

_passed = all([_matches(_outcome(source), want) for source, want in _JOB["examples"]])
_outcomes = [_outcome(_JOB["entry_point"] + "(*" + args + ")") for args in _JOB["inputs"]]
_digest = _hashlib.sha256("\\n".join(_outcomes).encode()).hexdigest()[:16]
raise _Probe(_JOB["nonce"] + " " + _json.dumps({"passed": _passed, "behaviour": _digest}))
"""


def probe(problem: CodeProblem, completion: str, examples: Sequence[Example], inputs: Sequence[tuple], *,
          call_seconds: float = CALL_SECONDS) -> Probe:
    """Runs `prompt + completion` in the sandbox on the examples, then on `inputs`."""
    nonce = secrets.token_hex(16)
    job = {"examples": [(e.source, e.want) for e in examples], "inputs": [repr(args) for args in inputs],
           "entry_point": problem.entry_point, "prompt": problem.prompt, "call_seconds": call_seconds, "nonce": nonce}
    calls = len(examples) + len(inputs)
    limits = Limits(timeout_s=5.0 + call_seconds * calls, cpu_s=math.ceil(5.0 + call_seconds * calls))
    result = run_judged(program=f"{problem.prompt}{completion}\n", entry_point=problem.entry_point,
                        context=problem.prompt, tests=f"_JOB = __import__('json').loads({json.dumps(job)!r})\n"
                        + _PROBE_TESTS, limits=limits, hidden=list(problem.hidden))
    marker = f"_Probe: {nonce} "
    if result.reason.startswith(marker):
        reported = json.loads(result.reason[len(marker):])
        return Probe(bool(reported["passed"]), str(reported["behaviour"]))
    # The program could not be defined, or the run ran out of time: no example passed.
    return Probe(not examples, f"{result.status}")


# --- selection -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Selection:
    passed_examples: int  # how many samples passed the public examples
    survivors: tuple[int, ...]  # the samples that did (all of them, when none did)
    clusters: tuple[tuple[int, ...], ...]  # survivors by behaviour: largest first, ties to the earliest sample
    submitted: tuple[int, ...]  # the first sample of each of the top K clusters


def select(probes: Sequence[Probe], *, k: int) -> Selection:
    """Drops the samples that failed the public examples, groups the rest by behaviour, ranks the
    groups by size (ties: the group whose first sample came first) and submits each of the top
    `k` groups' first sample. When no sample passes the examples every sample is kept: a
    docstring's example can be wrong (HumanEval/47's median of [-10, 4, 6, 1000, 10, 20] is 8.0,
    its docstring says 15.0), and a filter that drops everything would submit nothing."""
    if k < 1:
        raise ValueError(f"k (programs submitted) must be >= 1, got {k}")
    passed = tuple(i for i, p in enumerate(probes) if p.passed_examples)
    survivors = passed or tuple(range(len(probes)))
    groups: dict[str, list[int]] = {}
    for i in survivors:
        groups.setdefault(probes[i].behaviour, []).append(i)
    clusters = tuple(sorted((tuple(g) for g in groups.values()), key=lambda g: (-len(g), g[0])))
    return Selection(len(passed), survivors, clusters, tuple(g[0] for g in clusters[:k]))


def choose(problem: CodeProblem, samples: Sequence[str], *, k: int, workers: int = 1,
           call_seconds: float = CALL_SECONDS) -> Selection:
    """`select` over the samples' probes on `problem`'s examples and generated inputs (drawn from
    the annotations where the examples give none)."""
    examples = docstring_examples(problem.prompt, problem.entry_point)
    inputs = (generated_inputs(examples, seed=problem.prompt)
              or annotated_inputs(problem.prompt, problem.entry_point, seed=problem.prompt))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        probes = list(pool.map(lambda s: probe(problem, s, examples, inputs, call_seconds=call_seconds), samples))
    return select(probes, k=k)


def scores(selection: Selection, passed: Sequence[bool], *, k: int) -> dict[str, float]:
    """cluster@N/K (whether a submitted program passes the hidden tests), beside pass@1 and the
    unbiased pass@K of the same N samples, in percent; and the number of clusters."""
    n, c = len(passed), sum(passed)
    return {f"cluster@{n}/{k}": 100.0 * any(passed[i] for i in selection.submitted),
            "pass@1": 100.0 * pass_at_k(n, c, 1), f"pass@{k}": 100.0 * pass_at_k(n, c, k),
            "clusters": float(len(selection.clusters))}
