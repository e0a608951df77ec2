#!/usr/bin/env python3
"""Run a PostgreSQL binary from a Debian 13 root file system as if it were native.

Used by the wrapper scripts that scripts/provision-postgres writes; not meant to be
called by hand. Usage: pgroot_exec.py ROOTFS PROGRAM [ARGS...]

How it works, and why each step:
- A new user namespace maps the caller (root on the host) to the `postgres` user of
  the root file system. PostgreSQL refuses to run as root, and this way it runs as
  "postgres" inside while every file it touches belongs to the calling user outside:
  no chown of the data directory, no host `postgres` user, and directories that only
  root can traverse (a clone under `mktemp -d`) stay reachable.
- A new mount namespace bind-mounts /dev, /proc and the host's data locations at
  their own paths inside the root file system, so every path an argument names means
  the same file inside and out. The namespace dies with its last process: no mounts
  leak after exit.
- chroot into the root file system, return to the caller's working directory, exec.
"""

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

# Host locations that may hold a project, its data directory, sockets or dumps.
DEFAULT_BINDS = ("/tmp", "/work", "/home", "/root", "/srv", "/opt", "/mnt", "/media", "/var/tmp")
# Files libpq reads by name from the environment: their directories are bound too, so a
# checkout anywhere (CI clones under /check, say) keeps its passfile reachable.
LIBPQ_FILE_VARS = (
    "PGPASSFILE",
    "PGSERVICEFILE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
)
# Never shadow the root file system's own programs and libraries with the host's.
SYSTEM_TOPS = {"usr", "etc", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "boot", "sys", "run"}
SYSTEM_VAR = {"lib", "cache", "run", "lock"}

libc = ctypes.CDLL(None, use_errno=True)


def _die(message: str) -> None:
    sys.stderr.write(f"pgroot_exec: {message}\n")
    sys.exit(126)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        _die(f"{what} failed: {os.strerror(err)}")


def _lookup_ids(rootfs: str, user: str) -> tuple[int, int]:
    with open(os.path.join(rootfs, "etc/passwd"), encoding="utf-8") as fh:
        for line in fh:
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
    _die(f"user {user!r} not found in {rootfs}/etc/passwd; re-run scripts/provision-postgres")
    raise AssertionError  # unreachable


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)


def _bind(source: str, target: str) -> None:
    _check(
        libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None),
        f"bind mount of {source}",
    )


def _bindable(directory: str) -> bool:
    """False for / and the system directories that the root file system's own files live in."""
    parts = directory.strip("/").split("/")
    if not parts[0] or parts[0] in SYSTEM_TOPS:
        return False
    return not (parts[0] == "var" and (len(parts) < 2 or parts[1] in SYSTEM_VAR))


def _named_dirs(args: list[str]) -> list[str]:
    """Directories holding the files that arguments and libpq's variables name by absolute path."""
    names = [os.environ.get(var, "") for var in LIBPQ_FILE_VARS]
    for arg in args:
        names.append(arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg)
    dirs = []
    for name in names:
        if name.startswith("/"):
            path = os.path.realpath(name)
            dirs.append(path if os.path.isdir(path) else os.path.dirname(path))
    return dirs


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        _die("usage: pgroot_exec.py ROOTFS PROGRAM [ARGS...]")
    rootfs, program, args = os.path.realpath(argv[1]), argv[2], argv[3:]
    if os.geteuid() != 0:
        _die(
            "the PostgreSQL 17 root file system needs root (run as root, or install PostgreSQL 17 natively)"
        )
    cwd = os.getcwd()
    uid, gid = _lookup_ids(rootfs, "postgres")
    outer_uid, outer_gid = os.geteuid(), os.getegid()

    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare (user and mount namespaces)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {outer_uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {outer_gid} 1\n")
    # The capabilities gained by unshare last until exec: do every privileged step now.
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    extra = [p for p in os.environ.get("SINGULARITY_PG_BIND", "").split(":") if p]
    bound: list[str] = []
    for source in ("/dev", "/proc", *DEFAULT_BINDS, *extra, cwd, *_named_dirs(args)):
        source = os.path.realpath(source)
        # A working directory of / (systemd units) or /usr must not shadow the rootfs.
        if (
            not _bindable(source)
            or not os.path.isdir(source)
            or any(source == b or source.startswith(b + "/") for b in bound)
        ):
            continue
        bound.append(source)
        target = rootfs + source
        if os.path.islink(target):
            continue
        os.makedirs(target, exist_ok=True)
        _bind(source, target)
    for name in ("etc/hosts",):
        host_file, inner = "/" + name, os.path.join(rootfs, name)
        if os.path.isfile(host_file) and os.path.isfile(inner):
            _bind(host_file, inner)
    os.chroot(rootfs)
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    try:
        os.execv(program, [program, *args])
    except OSError as exc:
        _die(f"cannot run {program} inside {rootfs}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv)
