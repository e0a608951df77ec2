"""The project-local PostgreSQL cluster: initialise once, start detached, inspect, stop.

Modelled on devenv's services.postgres: initdb with locale C and UTF8, listen on 127.0.0.1
only, a short unix socket directory and a log file beside the data directory. Unlike devenv,
no trust authentication: any local account could connect as the superuser and, through
COPY ... TO PROGRAM, run commands as the cluster's owner. Every connection, over TCP and over
the socket, needs the superuser's random password, which lives only in a passfile (libpq's
format, mode 0600) beside the data directory; the socket directory is 0700 as well.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import secrets
import socket
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import LOCAL_SETTINGS_FILE, LocalCluster, read_passfile_password, register_secret
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
AUTH_METHOD = "scram-sha-256"
HBA_TEXT = f"""\
# Written by singularity-ops: every connection needs the superuser's password, which is in
# the passfile beside the data directory (PGPASSFILE; see `singularity-ops env`).
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  {AUTH_METHOD}
host    all          all   127.0.0.1/32   {AUTH_METHOD}
host    all          all   ::1/128        {AUTH_METHOD}
local   replication  all                  {AUTH_METHOD}
host    replication  all   127.0.0.1/32   {AUTH_METHOD}
host    replication  all   ::1/128        {AUTH_METHOD}
"""


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
    passfile: Path
    # "scram-sha-256", or "trust" for a cluster an earlier version made (ensure-db upgrades it).
    authentication: str | None


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
        passfile=local.passfile,
        authentication=(
            ("trust" if trusts_anyone(local) else AUTH_METHOD) if initialized else None
        ),
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
        "unix_socket_permissions = 0700\n"
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
        # The passfile first: a run killed after initdb must not lose the password.
        password = ensure_password(local)
        pwfile = local.data_dir.parent / f".{local.data_dir.name}.pwfile"
        try:
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(password + "\n")
            _chown_for(initdb, pwfile)
            _run(
                initdb,
                [
                    "-D",
                    str(local.data_dir),
                    "-U",
                    SUPERUSER,
                    "--locale=C",
                    "--encoding=UTF8",
                    f"--auth-local={AUTH_METHOD}",
                    f"--auth-host={AUTH_METHOD}",
                    f"--pwfile={pwfile}",
                    "--no-instructions",
                ],
                f"initdb of {local.data_dir}",
                timeout,
            )
        finally:
            pwfile.unlink(missing_ok=True)
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
        _private_socket_dir(local)
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


def _private_socket_dir(local: LocalCluster) -> None:
    """The socket directory, 0700 and really a directory of ours (it may sit in /tmp, where
    another account could have made it first)."""
    local.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(local.socket_dir)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (os.geteuid(), _server_uid()):
        raise ClusterError(
            f"the socket directory {local.socket_dir} is not a directory owned by this user; "
            "remove it, or set postgres.local.socket_dir in singularity.yaml elsewhere"
        )
    os.chmod(local.socket_dir, 0o700)


def _server_uid() -> int:
    try:
        return pwd.getpwnam(RUN_AS).pw_uid if os.geteuid() == 0 else os.geteuid()
    except KeyError:
        return os.geteuid()


def ensure_password(local: LocalCluster) -> str:
    """The superuser's password from the cluster's passfile; a new random one (written to the
    passfile, 0600, by rename) when there is none yet."""
    password = read_passfile_password(local.passfile)
    if password:
        os.chmod(local.passfile, 0o600)  # libpq ignores a passfile others can read
        return password
    password = secrets.token_urlsafe(32)  # [A-Za-z0-9_-]: nothing to escape in a passfile
    register_secret(password)
    write_passfile(local, password)
    return password


def write_passfile(local: LocalCluster, password: str) -> None:
    """A libpq passfile valid for this cluster over TCP (127.0.0.1, localhost) and its socket."""
    socket_host = str(local.socket_dir).replace("\\", "\\\\").replace(":", "\\:")
    text = (
        "# singularity-ops: the superuser password of the local cluster in "
        f"{local.data_dir}; keep it private (mode 0600)\n"
        + "".join(
            f"{host}:*:*:{SUPERUSER}:{password}\n"
            for host in ("127.0.0.1", "localhost", socket_host)
        )
    )
    write_atomically(local.passfile, text.encode("utf-8"), mode=0o600)


def trusts_anyone(local: LocalCluster) -> bool:
    """True when pg_hba.conf lets some connection in without a password (an older cluster)."""
    try:
        lines = (local.data_dir / "pg_hba.conf").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if "trust" in fields:
            return True
    return False


def write_hba(local: LocalCluster) -> None:
    """Replace pg_hba.conf with the password-only rules (takes effect on reload)."""
    target = local.data_dir / "pg_hba.conf"
    info = os.stat(target)
    write_atomically(target, HBA_TEXT.encode("utf-8"), mode=0o600)
    if os.geteuid() == 0:
        os.chown(target, info.st_uid, info.st_gid)  # the server's user must read it (on reload)


def secure_socket_dir(local: LocalCluster) -> None:
    """Make an existing socket directory private (running servers keep their socket)."""
    if local.socket_dir.is_dir():
        _private_socket_dir(local)


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
