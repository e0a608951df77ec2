"""Files that are complete or absent: temp-file-and-rename, fsync, and cleaning up after kills.

Temporary names carry the writer's pid (`.<name>.partial-<pid>`), so the next run can tell
the leftovers of a killed process (pid gone) from the work of a live one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PARTIAL = ".partial-"


def partial_path(final: Path) -> Path:
    """The hidden temporary name this process writes `final` under."""
    return final.with_name(f".{final.name}{PARTIAL}{os.getpid()}")


def fsync_dir(directory: Path) -> None:
    """Make renames in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write `data` to `path` through a fsynced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # whatever the umask
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a write(): name the file it was for
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove(path: Path) -> None:
    """Delete a file or a directory tree (never following a symlink into a tree)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """True when a process with that pid exists (or exists under another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(directory: Path) -> list[str]:
    """Delete the temporary files and directories of killed writers in `directory`."""
    removed = []
    for path in directory.glob(f".*{PARTIAL}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            remove(path)
            removed.append(path.name)
    return removed
