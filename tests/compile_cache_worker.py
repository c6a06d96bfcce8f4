"""Runs one `gemini-jax` command (argv) in a fresh process, as a user would, and prints one JSON
line: its exit code, its standard output, and the programs it loaded from JAX's persistent
compilation cache ("hits") and compiled itself ("misses"), by module name, from JAX's own log.
tests/test_compile_cache.py starts it."""

import contextlib
import io
import json
import logging
import sys

from gemini_jax import cli


class CachedPrograms(logging.Handler):
    """Reads JAX's DEBUG lines "Persistent compilation cache hit for '<name>'" and
    "PERSISTENT COMPILATION CACHE MISS for '<name>'" (jax._src.compiler, jax 0.10)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.hits: list[str] = []
        self.misses: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("Persistent compilation cache hit for"):
            self.hits.append(record.args[0])
        elif record.msg.startswith("PERSISTENT COMPILATION CACHE MISS for"):
            self.misses.append(record.args[0])


def main() -> None:
    programs = CachedPrograms()
    logger = logging.getLogger("jax._src.compiler")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(programs)
    logger.propagate = False  # the other DEBUG lines stay out of stderr
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(sys.argv[1:])
    print(json.dumps({"code": code, "stdout": out.getvalue(), "hits": programs.hits, "misses": programs.misses}))


if __name__ == "__main__":
    main()
