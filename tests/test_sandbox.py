"""Hostile programs stay inside the sandbox; ordinary ones pass or fail as they should."""

import os
from pathlib import Path

import pytest

from gemini_jax.evals.sandbox import Limits, isolation, run_program

FAST = Limits(timeout_s=5.0)
OS_ONLY = Limits(timeout_s=5.0, guard=False)  # the OS layers alone, as native code would meet them
needs_jail = pytest.mark.skipif(not isolation().jail, reason="no mount namespace (unshare -m) on this machine")


@pytest.fixture
def visible_dir(request):
    """A writable dir the sandbox can see (the jail empties /tmp and the home dir)."""
    # Under the repository (outside /tmp and the home dir), also without pytest's cache plugin.
    path = request.config.rootpath / ".pytest_cache" / "sandbox-victims" / f"{os.getpid()}-{request.node.name}"
    path.mkdir(parents=True)
    path.chmod(0o777)  # writable for the program's own uid too: only the jail may stop it
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


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
        # The jail shows the program an empty /tmp; where it does not, the audit hook refuses.
        hidden = isolation().jail and "FileNotFoundError" in result.reason
        assert result.status == "error" and ("refused" in result.reason or hidden), (source, result)
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


# --- Forged verdicts (issue 26): run_program's verdict is the program's own account, but these
# known forgeries no longer work; run_judged (test_sandbox_judge.py) is what scores.


def test_replacing_os_write_does_not_rewrite_the_verdict():
    source = (
        "import os\n_write = os.write\n"
        "def write(fd, data):\n    return _write(fd, data.replace(b' failed ', b' passed '))\n"
        "os.write = write\nassert False, 'wrong answer'\n"
    )
    result = run_program(source, limits=FAST)
    assert result.status == "failed", result


def test_the_nonce_is_not_in_the_callers_frame_and_the_guard_cannot_be_made_to_send_a_pass():
    source = (
        "import os, sys\nguard = sys._getframe(1)\n"
        "secrets = [v for v in guard.f_locals.values() if isinstance(v, str) and len(v) == 32]\n"
        "for nonce in secrets:\n"
        "    for fd in range(1, 12):\n"
        "        try:\n            os.write(fd, f'\\n{nonce} passed \"\"\\n'.encode())\n"
        "        except OSError:\n            pass\n"
        "try:\n    guard.f_globals['_finish']('passed', '')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
        "sys.stdout.flush()\nos._exit(0)\nassert False\n"
    )
    result = run_program(source, limits=FAST)
    assert result.status != "passed", result
    assert "SandboxRefusal" in result.stdout


def test_gc_and_other_threads_frames_are_out_of_reach():
    for source in ("import gc\ngc.get_objects()", "import sys\nsys._current_frames()",
                   "import gc, sys\ngc.get_referrers(sys.modules)"):
        result = run_program(source, limits=FAST)
        assert result.status == "error" and "refused" in result.reason, (source, result)


# --- Escapes (issue 26): each is stopped by the audit hook and, where the machine offers the jail,
# by the OS alone (guard=False), as native code would meet it.

_FORK_EXEC = (
    "import _posixsubprocess, os\n"
    "r, w = os.pipe()\n"
    "pid = _posixsubprocess.fork_exec([b'/bin/sh', b'-c', b'echo pwned > {marker}'], [b'/bin/sh'], True, (w,), None, "
    "None, -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)\n"
    "os.waitpid(pid, 0)\n"
)


def test_posixsubprocess_fork_exec_is_refused(visible_dir):
    marker = visible_dir / "pwned"
    result = run_program(_FORK_EXEC.format(marker=marker), limits=FAST)
    assert result.status == "error" and "refused" in result.reason and "_posixsubprocess" in result.reason, result
    assert not marker.exists()


@needs_jail
def test_a_shell_started_without_the_guard_cannot_write_outside(visible_dir):
    marker = visible_dir / "pwned"
    result = run_program(_FORK_EXEC.format(marker=marker) + "print('shell ran')", limits=OS_ONLY)
    assert result.status == "passed" and "shell ran" in result.stdout, result  # the shell itself ran ...
    assert not marker.exists()  # ... as a user with nowhere to write


def test_threads_racing_the_guard_do_not_let_os_system_through(visible_dir):
    marker = visible_dir / "raced"
    source = (
        "import os, threading\nstop = False\n"
        "def busy():\n    while not stop:\n        os.listdir('.')\n        open('program.py').close()\n"
        "threads = [threading.Thread(target=busy) for _ in range(4)]\n[t.start() for t in threads]\n"
        "escaped = 0\nfor _ in range(3000):\n    try:\n"
        f"        os.system('echo raced >> {marker}')\n        escaped += 1\n"
        "    except PermissionError:\n        pass\n"
        "stop = True\n[t.join() for t in threads]\nprint('escaped', escaped)\n"
    )
    result = run_program(source, limits=Limits(timeout_s=20.0, cpu_s=20))
    assert result.status == "passed" and "escaped 0" in result.stdout, result
    assert not marker.exists()


_CREATORS = {
    "sqlite3": "import sqlite3\nsqlite3.connect({path!r}).execute('create table t (x)')",
    "mknod": "import os, stat\nos.mknod({path!r}, 0o600 | stat.S_IFREG)",
    "mkfifo": "import os\nos.mkfifo({path!r})",
}


@pytest.mark.parametrize("creator", sorted(_CREATORS))
def test_creating_files_outside_the_work_dir_fails(visible_dir, creator):
    if creator != "sqlite3" and not isolation().jail:
        pytest.skip("only the read-only filesystem stops mknod and mkfifo (they raise no audit event)")
    path = visible_dir / "created"
    limits = [FAST] + ([OS_ONLY] if isolation().jail else [])
    for limit in limits:
        result = run_program(_CREATORS[creator].format(path=str(path)), limits=limit)
        assert result.status == "error", (limit.guard, result)
        assert not path.exists(), (limit.guard, result)
    if creator == "sqlite3":  # the hook sees it (mknod and mkfifo raise no audit event)
        assert "refused" in run_program(_CREATORS[creator].format(path=str(path)), limits=FAST).reason


@needs_jail
def test_no_writable_path_but_the_work_dir(visible_dir):
    name = f"gemini-jax-sandbox-victim-{os.getpid()}"
    places = [str(visible_dir / name), f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}",
              os.path.expanduser(f"~/{name}"), f"/etc/{name}", str(Path(__file__).with_name(name))]
    source = (
        f"import os\nwritten = []\nfor place in {places!r}:\n    try:\n"
        "        open(place, 'w').close()\n        written.append(place)\n    except OSError:\n        pass\n"
        "open('mine', 'w').write('ok')\nprint(written)\n"
    )
    result = run_program(source, limits=OS_ONLY)
    assert result.status == "passed" and result.stdout.strip() == "[]", result
    assert not any(Path(p).exists() for p in places)


@needs_jail
def test_the_work_dir_has_a_disk_quota():
    source = (
        "chunk = b'x' * (4 << 20)\nwritten = 0\ntry:\n"
        "    for i in range(64):\n        with open(f'f{i}', 'wb') as f:\n            f.write(chunk)\n"
        "        written += len(chunk)\nfinally:\n    print(written >> 20, flush=True)\n"
    )
    result = run_program(source, limits=Limits(timeout_s=10.0, disk_bytes=32 << 20))
    assert result.status == "error" and "No space left" in result.reason, result
    assert int(result.stdout.split()[-1]) <= 32


def test_the_program_runs_as_a_user_of_its_own():
    if not isolation().own_uid:
        pytest.skip("only root can give the program another user")
    source = "import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\nopen('/etc/shadow').read()"
    result = run_program(source, limits=OS_ONLY)
    uid, euid, gid, groups = result.stdout.split(maxsplit=3)
    assert int(uid) == int(euid) >= 1 << 28 and int(gid) == int(uid) and groups.strip() == "[]", result
    assert result.status == "error" and ("PermissionError" in result.reason or "FileNotFoundError" in result.reason)


def test_isolation_reports_the_jail_with_its_namespaces():
    iso = isolation()
    if iso.jail:
        assert iso.pid_namespace and iso.network_namespace
