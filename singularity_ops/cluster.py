"""The project-local PostgreSQL cluster: initialise once, start detached, inspect, stop.

Modelled on devenv's services.postgres: initdb with locale C and UTF8, listen on 127.0.0.1
only, a short unix socket directory, trust authentication (the cluster is reachable only
from this machine), and a log file beside the data directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import LOCAL_SETTINGS_FILE, LocalCluster
from .errors import ClusterError
from .files import write_atomically
from .pgbin import PgProgram, find_program, is_root_wrapper, require_major

INCLUDE_FILE = LOCAL_SETTINGS_FILE
# Which PostgreSQL build and extension versions made (or last updated) the cluster.
BUILD_FILE = "singularity-ops-build.json"
SUPERUSER = "postgres"
# When the toolkit runs as root with native binaries, the server runs as this user.
RUN_AS = "postgres"
MIN_MAJOR = 17


@dataclass(frozen=True)
class ClusterStatus:
    """What `server status` reports."""

    data_dir: Path
    initialized: bool
    running: bool
    pid: int | None
    port: int
    socket_dir: Path
    log_file: Path
    data_version: str | None


def status(local: LocalCluster) -> ClusterStatus:
    """Inspect the cluster from its files, without starting any program."""
    version_file = local.data_dir / "PG_VERSION"
    initialized = version_file.is_file()
    pid = _live_postmaster_pid(local.data_dir)
    return ClusterStatus(
        data_dir=local.data_dir,
        initialized=initialized,
        running=pid is not None,
        pid=pid,
        port=(running_port(local.data_dir) if pid is not None else None) or local.port,
        socket_dir=local.socket_dir,
        log_file=local.log_file,
        data_version=version_file.read_text().strip() if initialized else None,
    )


def _live_postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first.strip())
    except (OSError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return pid  # no /proc (macOS): trust kill(0)
    return pid if comm in ("postgres", "postmaster") else None


def running_port(data_dir: Path) -> int | None:
    """The port the running postmaster listens on (line 4 of postmaster.pid)."""
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, IndexError, ValueError):
        return None


@contextmanager
def _cluster_lock(local: LocalCluster) -> Iterator[None]:
    """Serialise init/start/stop of one cluster between processes (two ensure-db at once)."""
    local.data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(local.data_dir.parent / ".cluster.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _server_program(name: str, bindir: Path | None) -> PgProgram:
    program = find_program(name, bindir)
    require_major(program, MIN_MAJOR, "the project-local cluster")
    return program


def _run_as_other_user(program: PgProgram) -> str | None:
    """PostgreSQL refuses to run as root: pick the user to run native binaries as."""
    if os.geteuid() != 0 or is_root_wrapper(program):
        return None
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        raise ClusterError(
            f"running as root, but PostgreSQL refuses root and there is no {RUN_AS!r} user "
            f"to run {program.path} as; create it (adduser --system {RUN_AS}) or run as a normal user"
        ) from None
    return RUN_AS


def _run(program: PgProgram, args: list[str], what: str, timeout: float) -> str:
    user = _run_as_other_user(program)
    cmd = [str(program.path), *args]
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    try:
        out = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,  # the server must not die with this terminal's Ctrl-C
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ClusterError(
            f"{what}: {program.name} did not finish within {timeout:.0f} s"
        ) from None
    except OSError as exc:
        raise ClusterError(f"{what}: cannot run {program.path}: {exc.strerror}") from exc
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip()
        raise ClusterError(f"{what} failed ({program.path} exit {out.returncode}): {detail}")
    return out.stdout


def _chown_for(program: PgProgram, *paths: Path) -> None:
    user = _run_as_other_user(program)
    if user:
        entry = pwd.getpwnam(user)
        for path in paths:
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _write_settings(local: LocalCluster) -> None:
    """The connection settings live in an included file the toolkit rewrites on each start."""
    text = (
        "# Written by singularity-ops on every start; edit singularity.yaml instead.\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {local.port}\n"
        f"unix_socket_directories = '{local.socket_dir}'\n"
    )
    target = local.data_dir / INCLUDE_FILE
    if target.is_file() and target.read_text() == text:
        return
    tmp = target.with_suffix(".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    tmp.replace(target)


def init(local: LocalCluster, bindir: Path | None, timeout: float = 120) -> bool:
    """Create the cluster with initdb if it does not exist. Returns True when it was created."""
    with _cluster_lock(local):
        if (local.data_dir / "PG_VERSION").is_file():
            return False
        if local.data_dir.exists() and any(local.data_dir.iterdir()):
            raise ClusterError(
                f"{local.data_dir} exists and is not empty but holds no PostgreSQL cluster "
                "(no PG_VERSION); move it away or set PGDATA / postgres.local.data_dir elsewhere"
            )
        initdb = _server_program("initdb", bindir)
        local.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _chown_for(initdb, local.data_dir.parent, local.data_dir)
        _run(
            initdb,
            [
                "-D",
                str(local.data_dir),
                "-U",
                SUPERUSER,
                "--locale=C",
                "--encoding=UTF8",
                "--auth=trust",
                "--no-instructions",
            ],
            f"initdb of {local.data_dir}",
            timeout,
        )
        with open(local.data_dir / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write(f"\n# singularity-ops\ninclude_if_exists = '{INCLUDE_FILE}'\n")
        return True


def start(local: LocalCluster, bindir: Path | None, timeout: float = 60) -> bool:
    """Start the cluster detached if it is not running. Returns True when it was started."""
    with _cluster_lock(local):
        if _live_postmaster_pid(local.data_dir) is not None:
            listening = running_port(local.data_dir)
            if listening is not None and listening != local.port:
                raise ClusterError(
                    f"the local cluster in {local.data_dir} is already running on port "
                    f"{listening}, not {local.port}; unset PGPORT (or postgres.local.port) to "
                    f"use it there, or `singularity-ops server stop` it and start it on "
                    f"{local.port}"
                )
            return False
        if not (local.data_dir / "PG_VERSION").is_file():
            raise ClusterError(f"no cluster in {local.data_dir}; run `singularity-ops ensure-db`")
        stale = local.data_dir / "postmaster.pid"
        if stale.exists():
            # Its process is gone (or the pid now belongs to something else): a crash or reboot.
            stale.unlink()
        check_port_free(local)
        pg_ctl = _server_program("pg_ctl", bindir)
        local.socket_dir.mkdir(parents=True, exist_ok=True)
        _chown_for(pg_ctl, local.socket_dir)
        if not local.log_file.exists():
            local.log_file.touch(mode=0o600)
            _chown_for(pg_ctl, local.log_file)
        _write_settings(local)
        try:
            _run(
                pg_ctl,
                [
                    "-D",
                    str(local.data_dir),
                    "-l",
                    str(local.log_file),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ],
                f"starting the local cluster in {local.data_dir}",
                timeout + 10,
            )
        except ClusterError as exc:
            raise ClusterError(
                f"{exc}\nlast lines of {local.log_file}:\n{_tail(local.log_file)}"
            ) from None
        return True


def check_port_free(local: LocalCluster) -> None:
    """Refuse when another server listens on the cluster's port (fine while it is ours)."""
    if _live_postmaster_pid(local.data_dir) is not None:
        return
    with socket.socket() as probe:
        probe.settimeout(1)
        in_use = probe.connect_ex(("127.0.0.1", local.port)) == 0
    if in_use:
        raise ClusterError(
            f"cannot start the local cluster in {local.data_dir}: port {local.port} on 127.0.0.1 "
            "is already taken (another checkout's cluster or another server). Stop that one "
            "(`singularity-ops server stop` in its checkout), or choose another port with "
            "PGPORT or postgres.local.port in singularity.yaml"
        )


def stop(local: LocalCluster, bindir: Path | None, timeout: float = 60) -> bool:
    """Stop the cluster (fast shutdown). Returns True when it was running."""
    with _cluster_lock(local):
        if _live_postmaster_pid(local.data_dir) is None:
            return False
        pg_ctl = _server_program("pg_ctl", bindir)
        _run(
            pg_ctl,
            ["-D", str(local.data_dir), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
            f"stopping the local cluster in {local.data_dir}",
            timeout + 10,
        )
        return True


def restart(local: LocalCluster, bindir: Path | None, timeout: float = 60) -> None:
    """Stop and start again, for settings that need a restart (shared_preload_libraries)."""
    stop(local, bindir, timeout)
    start(local, bindir, timeout)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_build(local: LocalCluster) -> dict | None:
    """The build record of the cluster, or None when it has none (made before records)."""
    try:
        data = json.loads((local.data_dir / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_build(local: LocalCluster, build: dict) -> None:
    """Record the PostgreSQL build and extension versions now serving the cluster."""
    write_atomically(
        local.data_dir / BUILD_FILE, (json.dumps(build, indent=2, sort_keys=True) + "\n").encode()
    )


def build_mismatch(recorded: dict | None, current: dict) -> str | None:
    """Why this build cannot serve a cluster another build made, or None.

    TimescaleDB's loader loads the library of the version each database was created with; a
    build without that version (Debian's 2.19 cluster opened by a newer nixpkgs build, or
    the reverse) fails on every connection to such a database until the extension is updated.
    """
    if recorded is None:
        return None
    was = (recorded.get("extensions") or {}).get("timescaledb")
    now = (current.get("extensions") or {}).get("timescaledb")
    if was and now and was != now:
        return (
            f"timescaledb {was} ({recorded.get('server', '?')}) made this cluster, but this "
            f"PostgreSQL build has timescaledb {now} ({current.get('server', '?')})"
        )
    return None
