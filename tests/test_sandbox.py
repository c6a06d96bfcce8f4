"""Hostile programs stay inside the sandbox; ordinary ones pass or fail as they should."""

from pathlib import Path

import pytest

from gemini_jax.evals.sandbox import Limits, isolation, run_program

FAST = Limits(timeout_s=5.0)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_passing_program_passes_and_keeps_its_output():
    result = run_program("print(sum(range(10)))", limits=FAST)
    assert result.status == "passed", result
    assert result.stdout.strip() == "45"


def test_failing_assert_fails():
    result = run_program("assert 1 + 1 == 3, 'arithmetic'", limits=FAST)
    assert result.status == "failed"
    assert result.reason == "AssertionError: arithmetic"


def test_exception_is_an_error_with_its_type():
    result = run_program("{}['missing']", limits=FAST)
    assert result.status == "error"
    assert result.reason.startswith("KeyError")


def test_early_exit_with_status_zero_does_not_pass():
    for source in ("import os; os._exit(0)", "import sys; sys.exit(0)", "print('\\nabc passed \"\"')"):
        result = run_program(source + "\nassert False", limits=FAST)
        assert result.status != "passed", (source, result)


def test_infinite_loop_times_out():
    result = run_program("while True:\n    pass", limits=Limits(timeout_s=1.0))
    assert result.status == "timed_out"


def test_huge_allocation_is_refused():
    result = run_program("x = bytearray(10 * 1024**3)\nprint('allocated')", limits=FAST)
    assert result.status == "error"
    assert "MemoryError" in result.reason or "SIGKILL" in result.reason
    assert "allocated" not in result.stdout


def test_fork_bomb_is_bounded_and_cleaned_up():
    if isolation().process_limit is None:
        pytest.skip("no process-count limit on this machine (root without a writable pids cgroup)")
    # Every process forks forever; the first refused fork prints "blocked" once per process.
    source = (
        "import os, time\nprint(os.getcwd(), flush=True)\nblocked = False\nwhile True:\n"
        "    try:\n        os.fork()\n    except OSError:\n"
        "        if not blocked:\n            print('blocked', flush=True)\n            blocked = True\n"
        "        time.sleep(0.01)\n"
    )
    limits = Limits(timeout_s=2.0, max_processes=8, allow_subprocess=True)
    result = run_program(source, limits=limits)
    assert result.status == "timed_out"
    assert "blocked" in result.stdout  # the process limit, not only the timeout, stopped it
    work_dir = result.stdout.split()[0]
    assert "gemini-jax-sandbox-" in work_dir
    assert _processes_mentioning(work_dir) == []  # the policy argument names the work dir


def test_fork_is_refused_by_default():
    result = run_program("import os\nos.fork()", limits=FAST)
    assert result.status == "error"
    assert "refused" in result.reason and "os.fork" in result.reason


def test_deleting_a_file_outside_the_work_dir_is_refused(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for source in (
        f"import os\nos.remove({str(victim)!r})",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        f"open({str(victim)!r}, 'w').write('overwritten')",
        f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('overwritten')",
        f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\nos.unlink('keep.txt', dir_fd=fd)",
    ):
        result = run_program(source, limits=FAST)
        assert result.status == "error" and "refused" in result.reason, (source, result)
    assert victim.read_text() == "precious"


def test_files_inside_the_work_dir_are_allowed():
    source = (
        "import os, shutil, tempfile\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nshutil.rmtree('d')\n"
        "with tempfile.TemporaryDirectory() as t:\n    open(os.path.join(t, 'g'), 'w').write('y')\n"
        "assert os.listdir('.') == ['program.py'], os.listdir('.')"
    )
    assert run_program(source, limits=FAST).status == "passed"


def test_network_socket_is_refused():
    source = "import socket\ns = socket.create_connection(('1.1.1.1', 53), timeout=2)"
    result = run_program(source, limits=FAST)
    assert result.status == "error"
    assert "refused" in result.reason and "socket" in result.reason


def test_network_namespace_blocks_connections_without_the_hook():
    if not isolation().network_namespace:
        pytest.skip("no network namespace (unshare -n) on this machine")
    source = "import socket\ns = socket.create_connection(('1.1.1.1', 53), timeout=2)\nprint('connected')"
    result = run_program(source, limits=Limits(timeout_s=5.0, guard=False))
    assert result.status == "error"
    assert "unreachable" in result.reason.lower() or "OSError" in result.reason, result
    assert "connected" not in result.stdout


def test_reading_the_home_directory_is_refused():
    home = str(Path.home())
    for source in (f"import os\nprint(os.listdir({home!r}))", f"open({home + '/.bashrc'!r}).read()"):
        result = run_program(source, limits=FAST)
        assert result.status == "error" and "refused" in result.reason and "home" in result.reason, (source, result)


def test_home_and_tmpdir_point_into_the_private_work_dir():
    source = (
        "import os, tempfile\nassert os.environ['HOME'] == os.getcwd(), os.environ['HOME']\n"
        "assert tempfile.gettempdir() == os.getcwd()\nprint(os.getcwd())"
    )
    result = run_program(source, limits=FAST)
    assert result.status == "passed", result
    assert not Path(result.stdout.strip()).exists()  # deleted afterwards


def test_bad_limits_name_the_field():
    with pytest.raises(ValueError, match="Limits.timeout_s"):
        Limits(timeout_s=0)
