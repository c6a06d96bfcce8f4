"""The sandbox's filesystem and user: run by `sandbox_guard.py` in the child, as root inside fresh
mount, network and PID namespaces (made by `unshare`), before any untrusted code exists.

`enter(policy)` leaves the process with:
- every mount read-only and nosuid, so no path outside the work dir can be written or created
  (sqlite files, FIFOs, device nodes, ... alike), whatever the file modes say;
- /tmp, /var/tmp and /dev/shm replaced by empty filesystems, and the evaluating user's home (and any
  directory "others" may not enter above the interpreter) replaced by one holding only the
  interpreter's own directories, so other runs' files and the user's files cannot be read;
- the work dir on its own tmpfs of `disk_bytes` (the disk quota), owned by the program's user;
- the credentials of `uid`/`gid`, a user owning no file (as root); inside a user namespace (not
  root), a nested user namespace instead, which holds no capability over these mounts.

Standard library only; the guard loads this file by path (the child runs `python -I`).
"""

import ctypes
import os

_MS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
       "relatime": 1 << 21, "strictatime": 1 << 24}
MS_RDONLY, MS_NOSUID, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MS_DETACH = 1, 2, 32, 4096, 16384, 1 << 18, 2
CLONE_NEWUSER = 0x10000000
_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 - the point is to hide them

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = (lambda s: None if s is None else os.fsencode(s))
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, its per-mount flags) from /proc/self/mountinfo, octal escapes decoded."""
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f.read().decode().splitlines():
            fields = line.split(" ")
            point = fields[4].encode().decode("unicode_escape").encode("latin-1").decode()
            flags = sum(_MS.get(option, 0) for option in fields[5].split(","))
            points.append((point, flags))
    return points


def _hidden_ancestor(path: str) -> str | None:
    """The highest directory above or at `path` that users other than its owner may not enter."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        ancestor = "/" + "/".join(parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _cover(directory: str, *, keep: list[str], stage: str) -> None:
    """Mounts an empty tmpfs on `directory`, then binds each of `keep` (dirs below it) back in."""
    kept = [k for k in keep if k.startswith(directory.rstrip("/") + "/")]
    staged = []
    for i, path in enumerate(kept):
        spot = os.path.join(stage, str(i))
        os.makedirs(spot, exist_ok=True)
        _mount(path, spot, None, MS_BIND | MS_REC)
        staged.append((spot, path))
    _mount("tmpfs", directory, "tmpfs", MS_NOSUID, "size=1m,mode=0755")
    for spot, path in staged:
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(spot, path, None, MS_BIND | MS_REC)
        _check(_libc.umount2(os.fsencode(spot), MS_DETACH), f"umount {spot}")


def _remount_read_only(*, writable: str) -> None:
    for point, flags in _mount_points():
        if point == writable:
            continue
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags)
        except FileNotFoundError:
            pass  # under a directory covered above: unreachable anyway


def _drop(uid: int, gid: int) -> None:
    if os.geteuid() != 0 or uid == 0:
        return  # an ordinary user already, or root without a jail that could show a new user the interpreter
    if _in_initial_user_namespace():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)  # all capabilities go with uid 0
    else:  # mapped root of a user namespace: a nested one owns neither the mounts nor anything else
        _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")


def _in_initial_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def enter(policy: dict, program: bytes) -> None:
    """Builds the filesystem described above (when `policy["jail"]`), writes `program` into the
    work dir as program.py, and drops to the program's user; then chdir into the work dir."""
    work, uid, gid = policy["work_dir"], policy["uid"], policy["gid"]
    if policy["jail"]:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
        keep = policy["read_roots"]
        covers = {policy["home"]} | {a for a in map(_hidden_ancestor, keep) if a}
        for directory in sorted(c for c in covers if c not in ("", "/") and os.path.isdir(c)
                                and not work.startswith(c.rstrip("/") + "/")):
            _cover(directory, keep=keep, stage=policy["stage_dir"])
        for directory in policy["hidden"]:
            if os.path.isdir(directory):
                _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_RDONLY, "size=4k,mode=0555")
        for directory in _SCRATCH:
            if os.path.isdir(directory):
                _mount("tmpfs", directory, "tmpfs", MS_NOSUID, "size=1m,mode=0755")
        os.makedirs(work, mode=0o711, exist_ok=True)
        _mount("tmpfs", work, "tmpfs", MS_NOSUID,
               f"size={policy['disk_bytes']},mode=0700,uid={uid},gid={gid}")
    path = os.path.join(work, "program.py")
    with open(path, "wb") as f:
        f.write(program)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
        os.chown(work, uid, gid)
    if policy["jail"]:
        _remount_read_only(writable=work)
    _drop(uid, gid)
    os.chdir(work)
