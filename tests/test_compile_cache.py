"""Start time: JAX's persistent compilation cache (compile_cache.py) lets a second process load
what a first one compiled, a changed model config compiles afresh, and `serve` compiles a short
request's programs before it opens its port. Compiles are counted from JAX's log, never timed."""

import dataclasses
import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from gemini_jax import checkpoint, cli, compile_cache
from gemini_jax.api import user_turn
from gemini_jax.config import PRESETS
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.sample.engine import Engine, EngineStats
from gemini_jax.sample.token_choice import SamplingParams

WORKER = Path(__file__).parent / "compile_cache_worker.py"
CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=400, vision=None, audio=None)
# The same shapes and weights, another program: only a constant inside attention differs.
OTHER_ROPE = dataclasses.replace(CONFIG, rope_base=100.0)
PROGRAMS = ("jit__prefill_fn", "jit__decode_fn")  # programs.py's two, by JAX's module names
PROMPT = "What colour is the shape?"


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    corpus = [inspect.getsource(textwrap), "What colour is the shape? A red circle. A blue square.\n" * 30]
    path = tmp_path_factory.mktemp("tok") / "t.model"
    train_tokenizer(corpus, vocab_size=400, path=path)
    return path


@pytest.fixture(scope="module")
def runs(build_model, tok_path, tmp_path_factory):
    """Two run directories holding the same parameters, one with CONFIG, one with OTHER_ROPE."""
    params = nnx.to_pure_dict(nnx.state(build_model(CONFIG), nnx.Param))
    root = tmp_path_factory.mktemp("runs")
    for name, config in (("base", CONFIG), ("other_rope", OTHER_ROPE)):
        checkpoint.write_run_files(root / name, config=config, tokenizer_path=tok_path)
        saver = checkpoint.Checkpointer(root / name, async_save=False)
        saver.save(1, state={"params": params}, meta={"step": 1})
        saver.wait()
        saver.close()
    return root


def start(run_dir: Path, cache_root: Path, *flags: str) -> subprocess.Popen:
    """`gemini-jax generate` in a fresh process whose project cache is `cache_root`."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", compile_cache.OFF_ENV)}
    env["GEMINI_JAX_CACHE"] = str(cache_root)
    argv = ["generate", "--checkpoint", str(run_dir), "--max-new-tokens", "6", *flags, PROMPT]
    return subprocess.Popen([sys.executable, str(WORKER), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    # JAX warns and compiles afresh when it cannot read an entry (e.g. half written): not here.
    assert "compilation cache" not in err.lower(), err
    result = json.loads(out.splitlines()[-1])
    assert result["code"] == 0, err
    return result


def entries(cache_root: Path) -> list[str]:
    return sorted(p.name for p in (cache_root / "jax-compile").glob("*-cache"))


@pytest.fixture(scope="module")
def cold(runs, tmp_path_factory):
    """Two processes that start together on one empty cache: (the cache's root, their results)."""
    cache_root = tmp_path_factory.mktemp("project-cache")
    together = [start(runs / "base", cache_root) for _ in range(2)]
    return cache_root, [finish(p) for p in together]


def test_a_second_generate_compiles_nothing_the_first_compiled(cold, runs):
    cache_root, (first, second) = cold
    programs = sorted(first["hits"] + first["misses"])
    assert sorted(second["hits"] + second["misses"]) == programs and first["stdout"] == second["stdout"]
    # One prompt: one prefill and one decode step, each compiled once.
    assert [programs.count(name) for name in PROGRAMS] == [1, 1], programs
    assert {name.rsplit("-", 2)[0] for name in entries(cache_root)} == set(programs)  # $GEMINI_JAX_CACHE/jax-compile

    warm = finish(start(runs / "base", cache_root))
    assert warm["misses"] == [] and sorted(warm["hits"]) == programs
    assert warm["stdout"] == first["stdout"]


def test_a_changed_model_config_misses_the_cache_and_answers_as_without_it(cold, runs):
    cache_root, (base, _) = cold
    before = entries(cache_root)
    uncached = finish(start(runs / "other_rope", cache_root, "--no-compile-cache"))
    assert uncached["hits"] == [] and entries(cache_root) == before  # neither read nor written

    cached = finish(start(runs / "other_rope", cache_root))
    assert sorted(n for n in cached["misses"] if n in PROGRAMS) == sorted(PROGRAMS)
    assert not set(cached["hits"]) & set(PROGRAMS)  # what does not depend on the config may hit
    assert cached["stdout"] == uncached["stdout"]
    assert set(before) < set(entries(cache_root))


def test_every_compiling_command_turns_the_cache_on_unless_told_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr(compile_cache, "enable", lambda path=None: calls.append(path))
    monkeypatch.delenv(compile_cache.OFF_ENV, raising=False)
    parser = cli.build_parser()

    def turns_on(*argv: str) -> bool:
        calls.clear()
        cli._enable_compile_cache(parser.parse_args(list(argv)))
        return calls == [None]

    for command in (["train"], ["distill", "--teacher", "t"], ["eval"], ["generate", "hi"], ["serve"],
                    ["convert"], ["quantize", "--out", "q"]):
        assert turns_on(*command), command
        assert not turns_on(*command, "--no-compile-cache"), command
    assert not turns_on("presets") and not turns_on("data", "prepare", "x", "--out", "y")  # nothing compiled
    monkeypatch.setenv(compile_cache.OFF_ENV, "1")
    assert not turns_on("generate", "hi")


@pytest.fixture
def jax_cache_settings():
    """Puts back the session's cache settings (conftest.py) after a test changes them."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")
    saved = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def test_enable_takes_a_given_directory_then_jaxs_own_then_the_projects(jax_cache_settings, tmp_path, monkeypatch):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
    jax.config.update("jax_compilation_cache_max_size", -1)
    assert compile_cache.enable() == tmp_path / "users"
    # Unbounded entries have no access-time files: bounding their directory would fail every write.
    assert jax.config.jax_compilation_cache_max_size == -1
    given = tmp_path / "given"
    assert compile_cache.enable(given) == given and jax.config.jax_compilation_cache_dir == str(given)
    assert given.stat().st_mode & 0o777 == 0o700
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert jax.config.jax_compilation_cache_max_size == compile_cache.MAX_BYTES
    assert compile_cache.enable() == given  # a directory JAX already has wins over the default
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("GEMINI_JAX_CACHE", str(tmp_path / "project"))
    assert compile_cache.enable() == tmp_path / "project" / "jax-compile"


class Compiles(logging.Handler):
    """The programs this process lowers and compiles (or loads from the persistent cache): JAX's
    DEBUG line "Compiling <name> with global shapes ..." (jax._src.interpreters.pxla, jax 0.10)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("Compiling %s"):
            self.names.append(record.args[0])

    def __enter__(self):
        logger = logging.getLogger("jax._src.interpreters.pxla")
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("jax._src.interpreters.pxla")
        logger.removeHandler(self)
        logger.setLevel(self._level)


def test_serve_compiles_a_short_requests_programs_before_it_is_ready(build_model, tok_path):
    from gemini_jax.data.tokenizer import Tokenizer

    model = build_model(dataclasses.replace(PRESETS["test"], vocab_size=400))  # with its encoders
    tokenizer = Tokenizer.load(tok_path)
    request = ([user_turn(PROMPT)], [SamplingParams(max_new_tokens=4)])

    cold = Engine(model, tokenizer, slots=2, max_len=96)
    with Compiles() as compiles:
        [expected] = cold.generate(*request)
    assert {"jit(_prefill_fn)", "jit(_decode_fn)", "jit(_insert)"} <= set(compiles.names)  # the count sees them

    warmed = Engine(model, tokenizer, slots=2, max_len=96)
    warmed.warm_up()
    assert warmed.stats == EngineStats() and not warmed.has_work()
    with Compiles() as compiles:
        [answer] = warmed.generate(*request)
    assert compiles.names == []
    assert answer == expected  # warming up left nothing behind in the slots
