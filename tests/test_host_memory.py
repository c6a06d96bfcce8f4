"""host_memory.release: freed heap memory goes back to the system, and every recipe run ends with it."""

import sys
import threading

import pytest

from gemini_jax import host_memory
from gemini_jax.recipes import runner


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_memory_freed_in_threads_goes_back_to_the_system():
    kept = []

    def allocate():
        blocks = [bytearray(4096) for _ in range(40_000)]  # 160 MB in blocks malloc keeps in the thread's arena
        kept.append(blocks[-1])  # one block in use keeps the arena's top, so free() alone cannot shrink it

    threads = [threading.Thread(target=allocate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    before = host_memory.resident_bytes()
    assert host_memory.release()
    assert before - host_memory.resident_bytes() > 200e6


def test_a_recipe_run_releases_memory_even_when_it_fails(monkeypatch):
    released = []
    monkeypatch.setattr(host_memory, "release", lambda: released.append(True))

    def fail(recipe, *, make_trainer):
        raise RuntimeError("training failed")

    monkeypatch.setattr(runner, "_train_and_evaluate", fail)
    with pytest.raises(RuntimeError, match="training failed"):
        runner.train_and_evaluate(object())
    assert released == [True]
