"""Child processes (pg_dump, pg_restore, psql) that never outlive the toolkit process.

A child is started with the parent-death signal set to SIGKILL (Linux prctl
PR_SET_PDEATHSIG): if the toolkit is killed, even with kill -9, the kernel kills the child
at once, so a killed backup stops writing and a killed restore stops restoring. The
PostgreSQL wrappers of scripts/provision-postgres keep the setting across their namespace
setup. Elsewhere (macOS) children run as usual.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from typing import Any

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    """subprocess.Popen whose child dies with this process."""
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent, **kwargs)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """subprocess.run whose child dies with this process."""
    return subprocess.run(cmd, preexec_fn=_die_with_parent, **kwargs)


def run_until_done(cmd: list[str], *, pause: str, **kwargs: Any) -> tuple[int, str]:
    """Run a PostgreSQL program to its end and return (exit code, stderr): stdout and stderr
    captured as text, killed if this process is interrupted (and by the kernel if it dies).
    `pause` names the fault-injection point reached while the child runs."""
    from .faults import pause_point

    proc = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        pause_point(pause)
        _out, stderr = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc.returncode, stderr
