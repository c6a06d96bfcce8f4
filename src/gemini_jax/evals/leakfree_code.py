"""A leak-free code benchmark in the spirit of the Gemini report's Natural2Code: HumanEval-style
problems built from small functions of an installed package that no corpus of this project reads,
with hidden tests computed by the reference functions themselves.

HumanEval leaked onto the web; these problems cannot leak into our own training: the standard
library corpora (data/corpora/stdlib_*.py) read the standard library only, never site-packages,
and data preparation's decontamination (data/prepare/decontaminate.py, set "leakfree_code")
drops any user record sharing a 13-gram with a problem, its reference or its tests. A model
trained elsewhere (a converted Gemma checkpoint) may well have seen the package: for it, these
problems are as open as HumanEval.

The sources (`SOURCES`) are fontTools (a dependency of matplotlib, so installed wherever
gemini-jax is) and, where it is installed (torch needs it: the test extra has it), the integer,
list and polynomial modules of sympy. A problem is each public function of those modules that
- has `>>>` examples in its docstring calling it with literal arguments (they stay in the prompt:
  the public examples cluster@N/K filters with), a body of at most 25 lines, no decorator;
- needs nothing but builtins, standard-library imports and the module's literal constants and
  plain helper functions (those open the prompt, as `encode_cyclic` opens HumanEval/38's),
  checked by running its source alone against the original;
- yields at least 3 hidden tests: the reference's outputs on the examples' arguments and on
  inputs generated from them (code_clustering.generated_inputs, seeded by the problem's name),
  keeping only plain values that are not None, so an empty body fails every one.
The build imports the modules and calls their functions, so it runs in a subprocess (`python -m
gemini_jax.evals.leakfree_code` prints the problems as JSON), once per set of package versions:
the problems are cached under the cache root (`$GEMINI_JAX_CACHE`, else ~/.cache/gemini-jax).
The same versions give the same problems on every build; `versions()` names them.

    problems = load_problems()
    results = humaneval.check_completions(problems, [p.canonical_solution for p in problems])
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gemini_jax.cache_root import cache_root
from gemini_jax.evals.code_clustering import docstring_examples, generated_inputs, is_plain
from gemini_jax.evals.humaneval import DEFAULT_LIMITS
from gemini_jax.evals.sandbox import Limits, Result, run_judged

# package -> the modules whose functions become problems (each with its submodules)
SOURCES = {"fontTools": ("fontTools",),
           "sympy": ("sympy.combinatorics", "sympy.crypto", "sympy.logic", "sympy.ntheory", "sympy.polys",
                     "sympy.utilities")}
BUILD_VERSION = 4  # of the rules above: a new one rebuilds every cache
MAX_BODY_LINES = 25
MIN_TESTS = 3
MAX_TESTS = 16
BUILD_TIMEOUT_S = 300

# The hidden tests' comparison, in the judge: floats within a relative 1e-9 (a rewrite may
# round differently), everything else exactly, tuple apart from list.
_CHECK = """
import math as _math

def _same(got, want):
    if type(got) is float or type(want) is float:
        return type(got) in (int, float) and type(want) in (int, float) and _math.isclose(got, want, rel_tol=1e-9)
    if type(got) in (list, tuple) and type(got) is type(want) and len(got) == len(want):
        return all(_same(g, w) for g, w in zip(got, want))
    return type(got) is type(want) and got == want

def check(candidate):
    for args, want in CASES:
        got = candidate(*args)
        assert _same(got, want), f"{ENTRY}{args!r}: expected {want!r}, got {got!r}"
"""


@dataclasses.dataclass(frozen=True)
class Problem:
    task_id: str  # "LeakFree/fontTools.misc.fixedTools.floatToFixed": the function's module and name
    prompt: str  # standard-library imports, signature and docstring: the model continues from here
    entry_point: str
    canonical_solution: str  # the reference body
    test: str  # defines `check(candidate)` over the hidden cases
    cases: int  # how many hidden tests

    @property
    def hidden(self) -> tuple[str, ...]:
        """The packages the problems come from: their source holds every reference solution."""
        return tuple(str(Path(importlib.util.find_spec(name).origin).parent) for name in installed())

    def judge(self, completion: str, *, limits: Limits = DEFAULT_LIMITS) -> Result:
        """`completion` judged by the hidden tests, which run outside the sandbox that runs it."""
        return run_judged(program=f"{self.prompt}{completion}\n", entry_point=self.entry_point, context=self.prompt,
                          tests=f"\n\n{self.test}\n\ncheck({self.entry_point})\n", limits=limits,
                          hidden=list(self.hidden))


# --- building (in a subprocess) ------------------------------------------------------------------


def _imports(tree: ast.Module) -> dict[str, str]:
    """name -> the standard-library import line of the module that binds it."""
    bound = {}
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
            root = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name).split(".")[0]
            if root not in sys.stdlib_module_names or any(a.name == "*" for a in node.names):
                continue
            for alias in node.names:
                if isinstance(node, ast.ImportFrom):
                    line = f"from {node.module} import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                    bound[alias.asname or alias.name] = line
                else:
                    bound[alias.asname or alias.name.split(".")[0]] = (
                        f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
    return bound


def _free_names(function: ast.FunctionDef) -> set[str]:
    """Names the function reads that it neither binds nor takes (globals and builtins)."""
    args = function.args
    bound = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
    loads = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.Lambda | ast.ClassDef) and node is not function:
            bound.add(getattr(node, "name", ""))
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add(node.asname or node.name.split(".")[0])
    return loads - bound - set(dir(builtins))


def _imports_outside_stdlib(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").split(".")[0] not in sys.stdlib_module_names):
            return True
        if isinstance(n, ast.Import) and any(a.name.split(".")[0] not in sys.stdlib_module_names for a in n.names):
            return True
    return False


def _helpers(module, node: ast.FunctionDef, imports: dict[str, str]) -> tuple[list[str], list[str]] | None:
    """(import lines, definitions) that `node` needs: its module's standard-library imports, its
    literal constants and the plain functions of the same package that it calls (each with its own
    module's imports), as HumanEval/38's prompt holds the `encode_cyclic` its `decode_cyclic`
    undoes. None when `node` needs anything else."""
    import_lines, definitions = [], []
    for name in sorted(_free_names(node)):
        value = vars(module).get(name)
        if name in imports:
            import_lines.append(imports[name])
        elif isinstance(value, bool | int | float | str | tuple) and is_plain(value) and name.isupper():
            definitions.append(f"{name} = {value!r}")
        elif inspect.isfunction(value) and value.__module__.split(".")[0] == module.__name__.split(".")[0]:
            try:  # a helper of the same package (fontTools' otRound)
                source = inspect.getsource(value)
                own = _imports(ast.parse(inspect.getsource(sys.modules[value.__module__])))
            except (OSError, TypeError, KeyError, SyntaxError):
                return None
            helper = ast.parse(source).body[0] if not source[:1].isspace() else None
            if (not isinstance(helper, ast.FunctionDef) or helper.decorator_list or _imports_outside_stdlib(helper)
                    or not _free_names(helper) <= set(own)):
                return None
            import_lines += [own[n] for n in sorted(_free_names(helper))]
            definitions.append(source.rstrip())
        else:
            return None
    return list(dict.fromkeys(import_lines)), definitions


def _problem(module, name: str, function, imports: dict[str, str]) -> dict | None:
    """One problem from `function`, or None when it does not qualify (see the module docstring)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return None
    if source[:1].isspace():  # defined inside a block (an `if` or a `try`): not a plain module-level function
        return None
    node = ast.parse(source).body[0]
    if not isinstance(node, ast.FunctionDef) or node.decorator_list or ast.get_docstring(node) is None:
        return None
    if node.end_lineno - node.body[0].end_lineno > MAX_BODY_LINES or len(node.body) < 2:
        return None
    if _imports_outside_stdlib(node):  # the sandbox hides the package: a function importing from it cannot run
        return None
    helpers = _helpers(module, node, imports)
    if helpers is None:
        return None
    import_lines, definitions = helpers
    header = "\n".join(import_lines) + "".join(f"\n\n\n{d}" for d in definitions)
    lines = source.splitlines(keepends=True)
    prompt = (header.lstrip("\n") + "\n\n\n" if header else "") + "".join(lines[: node.body[0].end_lineno])
    body = "".join(lines[node.body[0].end_lineno:])
    task_id = f"LeakFree/{module.__name__}.{name}"
    examples = docstring_examples(prompt, name)
    if not examples:
        return None
    namespace: dict = {}
    try:
        exec(prompt + body, namespace)  # noqa: S102 - the installed package's own source, trusted
    except Exception:  # noqa: BLE001 - a function that cannot stand alone is no problem
        return None
    cases = []
    for args in generated_inputs(examples, count=MAX_TESTS * 2, seed=task_id):
        try:
            want = function(*copy.deepcopy(args))
            alone = namespace[name](*copy.deepcopy(args))
        except Exception:  # noqa: BLE001 - an input outside the function's domain makes no test
            continue
        if want is not None and is_plain(want) and repr(alone) == repr(want):
            cases.append((args, want))
    cases = cases[:MAX_TESTS]
    if len(cases) < MIN_TESTS:
        return None
    test = f"ENTRY = {name!r}\nCASES = {cases!r}\n{_CHECK}"
    return {"task_id": task_id, "prompt": prompt, "entry_point": name, "canonical_solution": body, "test": test,
            "cases": len(cases)}


def _modules(name: str) -> Iterator[str]:
    """`name` and its submodules, test suites left out; a subpackage that fails to import is skipped."""
    module = importlib.import_module(name)
    yield name
    for info in pkgutil.iter_modules(getattr(module, "__path__", []), name + "."):
        if ".test" in info.name or info.name.endswith("__main__"):
            continue
        if info.ispkg:
            try:
                yield from _modules(info.name)
            except Exception:  # noqa: BLE001 - an optional dependency missing, a subpackage that needs data
                continue
        else:
            yield info.name


def installed() -> dict[str, str]:
    """{package: version} of the `SOURCES` installed here."""
    return {name: importlib.metadata.version(name) for name in SOURCES if importlib.util.find_spec(name)}


def build() -> dict:
    """{"versions": installed(), "problems": [...]}, in package, module and function name order."""
    problems = []
    for package in installed():
        names = sorted({m for root in SOURCES[package] for m in _modules(root)})
        for module_name in names:
            try:
                module = importlib.import_module(module_name)
                imports = _imports(ast.parse(inspect.getsource(module)))
            except Exception:  # noqa: BLE001 - a module that does not import here (an optional dependency)
                continue
            for name, function in sorted(vars(module).items()):
                if (inspect.isfunction(function) and function.__module__ == module_name and not name.startswith("_")
                        and (problem := _problem(module, name, function, imports))):
                    problems.append(problem)
    return {"versions": installed(), "problems": problems}


def build_in_subprocess() -> dict:
    """`build()` in a fresh interpreter (it imports and calls the packages' code)."""
    done = subprocess.run([sys.executable, "-m", "gemini_jax.evals.leakfree_code"], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"building the leak-free code benchmark failed (exit status {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


@functools.cache
def _built(cache_dir: str | None = None) -> dict:
    key = hashlib.sha256(json.dumps([BUILD_VERSION, installed()]).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"leakfree_code-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    built = build_in_subprocess()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(built, f)
    os.chmod(f.name, 0o644)  # as a file written plainly would be (a temporary file is private)
    os.replace(f.name, path)  # whole or not at all, should two processes build at once
    return built


def load_problems(cache_dir: str | None = None) -> list[Problem]:
    """The problems (built on first use, in a subprocess; then read from the cache)."""
    return [Problem(**p) for p in _built(cache_dir)["problems"]]


def versions(cache_dir: str | None = None) -> dict[str, str]:
    """The versions of the packages the problems were built from."""
    return dict(_built(cache_dir)["versions"])


def texts() -> list[str]:
    """What decontamination keeps out of training: each problem's prompt with its reference, and
    its tests."""
    return [text for p in load_problems() for text in (p.prompt + p.canonical_solution, p.test)]


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):  # whatever the package prints stays out of the JSON
        built = build()
    json.dump(built, sys.stdout)
