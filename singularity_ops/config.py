"""Configuration: one resolution order for every command.

command-line flags > environment (DATABASE_URL, PG*, PGDATA, PG_BINDIR, SINGULARITY_CONFIG,
SINGULARITY_ENV) > singularity.yaml at the project root > defaults.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import ConfigError

CONFIG_NAME = "singularity.yaml"
# import --prune refuses to delete more than this share of a corpus without --force.
DEFAULT_MAX_PRUNE_SHARE = 0.25
ENVIRONMENTS = ("dev", "test", "prod")
DEFAULT_LOCAL_PORT = 54329
# In the local cluster's data directory: the settings the toolkit writes on every start.
LOCAL_SETTINGS_FILE = "singularity-ops.conf"
DEFAULT_EXTENSIONS = ("vector", "timescaledb", "postgis")
# Exported by `singularity-ops env`: the data directory of the project-local cluster its
# PGHOST/PGPORT/DATABASE_URL point at.
LOCAL_CLUSTER_VARIABLE = "SINGULARITY_LOCAL_CLUSTER"
# A unix socket path must fit in sun_path with its terminating NUL: 108 bytes on Linux, 104 on
# macOS and the BSDs; PostgreSQL appends "/.s.PGSQL.NNNNN" (16 characters) to the directory.
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103
MAX_SOCKET_DIR = MAX_SOCKET_PATH - len("/.s.PGSQL.65535")

# The schema of singularity.yaml: section -> key -> expected type(s). None means a nested section.
SCHEMA: dict[str, Any] = {
    "environment": str,
    "extensions": list,
    "database": {
        "name": str,
        "url": str,
        "host": str,
        "port": int,
        "user": str,
        "maintenance_db": str,
        "connect_timeout": int,
    },
    "migrations": {
        "dir": str,
    },
    "import": {
        "root": str,
        "type_map": dict,
        "max_file_bytes": int,
        "corpus": str,
        "max_prune_share": (int, float),
    },
    "embedding": {
        "provider": str,
        "model": str,
        "dimensions": int,
        "batch_size": int,
        "base_url": str,
        "api_key_env": str,
        "timeout": (int, float),
        "max_retries": int,
        "ef_search": int,
    },
    "search": {
        "log": bool,
        "log_retention_days": int,
        "max_query_chars": int,
        "max_query_words": int,
        "max_top_k": int,
        "statement_timeout_ms": int,
    },
    "backup": {
        "dir": str,
        "keep": int,
        "keep_days": (int, float),
        "format": str,
    },
    "export": {
        "out": str,
        "min_usage": int,
        "min_success_rate": (int, float),
    },
    "postgres": {
        "bindir": str,
        "local": {
            "data_dir": str,
            "port": int,
            "socket_dir": str,
        },
    },
}


@dataclass(frozen=True)
class LocalCluster:
    """Where the project-local cluster lives and listens."""

    data_dir: Path
    port: int
    socket_dir: Path
    log_file: Path
    # The superuser's password, in libpq's passfile format, readable by its owner only.
    passfile: Path


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. `password` never appears in repr or output."""

    project_root: Path
    config_file: Path | None
    environment: str
    dbname: str
    host: str
    port: int
    user: str | None
    password: str | None = field(repr=False)
    url_params: Mapping[str, str] = field(default_factory=dict)
    maintenance_db: str = "postgres"
    connect_timeout: int = 5
    bindir: Path | None = None
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    local: LocalCluster | None = None
    migrations_dir: Path = Path("sql/migrations")
    templates_dir: Path = Path("templates_data")
    type_map: Mapping[str, str] = field(default_factory=dict)
    max_file_bytes: int = 1024 * 1024
    corpus: str | None = None  # import.corpus; None: the import root's directory name
    max_prune_share: float = DEFAULT_MAX_PRUNE_SHARE
    export_dir: Path = Path("templates_data/learned")
    export_min_usage: int = 10
    export_min_success_rate: float = 0.90
    backup_dir: Path = Path("backups")
    backup_keep: int | None = None
    backup_keep_days: float | None = None
    backup_format: str = "custom"
    search_log: bool = True
    search_log_retention_days: int = 90
    search_limits: Any = None  # search.SearchLimits; Any keeps this module free of imports
    # No singularity.yaml was found and nothing (DATABASE_URL, PGHOST, PGDATA) says where the
    # knowledge base is: the local cluster would be one in whatever directory this ran in.
    no_project: bool = False
    embedding: Any = None  # providers.EmbeddingConfig; Any keeps this module free of imports

    @property
    def is_local(self) -> bool:
        """True when the target is the project-local cluster."""
        return self.local is not None

    def conninfo(self, dbname: str | None = None) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect()."""
        params: dict[str, Any] = dict(self.url_params)
        params.update(
            host=self.host,
            port=self.port,
            dbname=dbname or self.dbname,
            connect_timeout=self.connect_timeout,
            application_name="singularity-ops",
        )
        if self.user:
            params["user"] = self.user
        if self.password:
            params["password"] = self.password
        elif self.local is not None:
            params["passfile"] = str(self.local.passfile)
        return params

    def url(self, dbname: str | None = None) -> str:
        """The connection as a postgresql:// URL, always without the password."""
        user = quote(self.user, safe="") if self.user else ""
        if self.host.startswith("/"):
            # A socket directory goes into the query string, as libpq documents.
            query = {"host": self.host, "port": str(self.port), **self.url_params}
            return _build_url(user, dbname or self.dbname, query)
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = f"{user}@{host}:{self.port}" if user else f"{host}:{self.port}"
        return _build_url(netloc, dbname or self.dbname, self.url_params)

    def redact(self, text: str) -> str:
        """Remove this configuration's password from any text (messages from libpq included)."""
        return redact(text, self.password)


def _build_url(netloc: str, dbname: str, query: Mapping[str, str]) -> str:
    qs = "&".join(f"{quote(k, safe='')}={quote(str(v), safe='/')}" for k, v in query.items())
    return urlunsplit(("postgresql", netloc, "/" + quote(dbname, safe=""), qs, ""))


# scheme://user:password@ in any scheme (postgresql+psycopg://, mysql://, ...). The password
# runs to the last @ before the path, so an unencoded @ inside it is covered too.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^/\s]*)@")
_KV_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)
# The passwords this process has seen (URL, PGPASSWORD), newest last: redact() removes them
# from any text. Bounded: a long-lived process resolving settings again and again (a server,
# a test session) keeps the most recent ones, not every one it ever saw.
_SECRETS: dict[str, None] = {}
MAX_SECRETS = 64


def register_secret(secret: str | None) -> None:
    """Remember a secret so that redact() removes it (and its percent-encoded form) everywhere."""
    if not secret or len(secret) < 4:  # shorter "secrets" would blank out ordinary words
        return
    for form in (secret, quote(secret, safe="")):
        _SECRETS.pop(form, None)
        _SECRETS[form] = None
    while len(_SECRETS) > MAX_SECRETS:
        del _SECRETS[next(iter(_SECRETS))]


def redact(text: str, password: str | None = None) -> str:
    """Replace passwords in URLs, key=value conninfo, known secrets and `password` with ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", text)
    text = _KV_PASSWORD.sub(lambda m: f"{m['key']}***", text)
    for secret in sorted({*_SECRETS, *([password] if password else [])}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _share(value: Any) -> float:
    if value is None:
        return DEFAULT_MAX_PRUNE_SHARE
    if isinstance(value, bool) or not 0 <= value <= 1:
        raise ConfigError(
            f"{CONFIG_NAME}: import.max_prune_share must be between 0 and 1, got {value!r}"
        )
    return float(value)


def no_project_message(settings: Settings) -> str:
    """What to do when the toolkit runs outside a project (Settings.no_project)."""
    return (
        f"no {CONFIG_NAME} at or above {settings.project_root}, and no DATABASE_URL, PGHOST or "
        "PGDATA: this directory is not a singularity-ops project. Run the command inside the "
        "checkout, point at its configuration with --config PATH (or SINGULARITY_CONFIG), or "
        'at the database with DATABASE_URL (`eval "$(singularity-ops env)"` in the checkout '
        "sets it)"
    )


def find_project_root(start: Path) -> Path:
    """The nearest directory at or above `start` holding singularity.yaml, else `start`."""
    for directory in (start, *start.parents):
        if (directory / CONFIG_NAME).is_file():
            return directory
    return start


def _load_yaml(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    data = _parsed(text, path, env)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, got {type(data).__name__}"
        )
    _validate(data, SCHEMA, path, "")
    return data


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        # Not libyaml's CSafeLoader: in-process runs of the CLI under the test suite now and
        # then failed with it ("could not determine a constructor for the tag None"). The
        # cache below makes the parse rare anyway.
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from exc


# Every command reads singularity.yaml, and importing and running PyYAML was 12-15 ms of
# each start (a twentieth of a cold text search). So the parsed file is kept as JSON under
# the cache directory, named by the hash of its text: an edit is never served stale, and
# what comes from the cache is validated like a fresh parse. Values JSON cannot carry
# exactly (dates, integer keys) are parsed every time.
CONFIG_CACHE_ENTRIES = 64


def _parsed(text: str, path: Path, env: Mapping[str, str] | None) -> Any:
    import json

    from . import __version__

    key = hashlib.sha256(f"{__version__}\0{text}".encode()).hexdigest()[:32]
    cached = cache_root(env) / "config" / f"{key}.json"
    try:
        return json.loads(_read_cache_entry(cached))
    except (OSError, ValueError):
        pass  # not cached yet, or unreadable: parse
    data = _parse_yaml(text, path)
    try:
        encoded = json.dumps(data, allow_nan=False)
        if json.loads(encoded) == data:
            _remember(cached, encoded)
    except (TypeError, ValueError):
        pass
    return data


def _read_cache_entry(cached: Path) -> bytes:
    """A cache entry's bytes; OSError unless it is a regular file (never waits on a FIFO,
    never follows a symlink)."""
    import stat

    fd = os.open(cached, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{cached}: not a regular file")
        return fh.read(1024 * 1024)


def _remember(cached: Path, encoded: str) -> None:
    """Write a cache entry by rename (never half a file); a cache that cannot be written is
    no error. Keeps the newest CONFIG_CACHE_ENTRIES. Owner-only (0600 in a 0700 directory):
    a database.url in the file may hold a password."""
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.partial")
    try:
        cached.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(cached.parent, 0o700)  # mkdir's mode does not reach a directory that exists
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(encoded)
        os.replace(tmp, cached)
        entries = sorted(cached.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-CONFIG_CACHE_ENTRIES]:
            old.unlink(missing_ok=True)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    list: "a list",
    bool: "true or false",
    dict: "a mapping",
    (int, float): "a number",
}


def _validate(data: Mapping[str, Any], schema: Mapping[str, Any], path: Path, prefix: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{path.name}: unknown key {dotted!r} (known keys here: {known})")
        expected = schema[key]
        if isinstance(expected, dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{path.name}: {dotted} must be a mapping, got {value!r}")
            _validate(value, expected, path, dotted + ".")
        elif value is not None and (
            not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))
        ):
            raise ConfigError(
                f"{path.name}: {dotted} must be {_TYPE_NAMES.get(expected, str(expected))}, "
                f"got {value!r}"
            )
        elif isinstance(value, dict) and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{path.name}: {dotted} must map names to names (strings)")


def _get(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or node.get(part) is None:
            return None
        node = node[part]
    return node


def _int_setting(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if not 0 < number < 65536 and "port" in name.lower():
        raise ConfigError(f"{name} must be a TCP port between 1 and 65535, got {number}")
    return number


_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]{0,30})://")


def _parse_url(url: str, source: str) -> dict[str, Any]:
    """Split a postgresql:// URL into host, port, user, password, dbname and extra params.

    A URL that cannot be used is never echoed, not even in part: it may hold a password.
    """
    from psycopg.conninfo import conninfo_to_dict

    fix = f"have you set {source} correctly? (its value is not shown: it may hold a password)"
    scheme = _SCHEME.match(url)
    if not scheme or scheme["scheme"].lower() not in ("postgresql", "postgres"):
        found = f"it starts with {scheme['scheme']}://" if scheme else "it has no scheme"
        hint = ""
        if scheme and "+" in scheme["scheme"]:
            hint = " (SQLAlchemy's dialect+driver spelling is not libpq's: drop the +driver)"
        raise ConfigError(f"{source} must be a postgresql:// URL, but {found}{hint}; {fix}")
    try:
        params = conninfo_to_dict(url)
    except Exception as exc:  # psycopg raises ProgrammingError with libpq's text
        # libpq quotes the offending fragment, which may be part of the password: drop it.
        reason = re.sub(r'"[^"]*"', "(fragment not shown)", str(exc).strip().splitlines()[0])
        raise ConfigError(
            f"{source} is not a valid connection URL: {redact(reason)}; percent-encode "
            f"special characters in the password (@ as %40, / as %2F, space as %20); {fix}"
        ) from None
    if any("@" in str(params.get(key, "")) for key in ("host", "user", "dbname")):
        raise ConfigError(
            f"{source} has an @ where libpq does not expect one: percent-encode @, / and "
            f"spaces in the user or password (%40, %2F, %20); {fix}"
        )
    if not all(p.strip().isdigit() for p in str(params.get("port", "0")).split(",")):
        # With an unencoded / in the password, libpq reads part of the password as the port.
        raise ConfigError(
            f"{source} has a port that is not a number (an unencoded / or : in the password "
            f"does that: percent-encode it as %2F or %3A); {fix}"
        )
    register_secret(params.get("password"))
    try:
        path = urlsplit(url).path
    except ValueError:  # e.g. a bracketed IPv6 host that libpq accepted but urllib does not
        path = "/" + str(params.get("dbname", ""))
    if path in ("", "/"):
        params.pop("dbname", None)
    return params


def local_socket_dir(data_dir: Path) -> Path:
    """A short socket directory: beside the data directory when the path fits, else in /tmp."""
    preferred = data_dir.parent / "run"
    if len(str(preferred)) <= MAX_SOCKET_DIR:
        return preferred
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:10]
    return Path("/tmp") / f"singularity-ops-{digest}"


def last_started_port(data_dir: Path) -> int | None:
    """The port the local cluster was last started on, from the settings file of its start.

    Used when nothing names a port, so that `PGPORT=N ./scripts/setup` once is enough: later
    commands without PGPORT still reach that cluster.
    """
    try:
        text = (data_dir / LOCAL_SETTINGS_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    found = re.search(r"^port = (\d{1,5})$", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def make_local_cluster(data_dir: Path, port: int, socket_dir: Path | None = None) -> LocalCluster:
    """Describe a cluster in `data_dir`; its log sits beside it as <data_dir>.log."""
    socket_dir = socket_dir or local_socket_dir(data_dir)
    if len(str(socket_dir)) > MAX_SOCKET_DIR:
        raise ConfigError(
            f"{CONFIG_NAME}: postgres.local.socket_dir {socket_dir} is longer than "
            f"{MAX_SOCKET_DIR} characters; unix socket paths that long do not work"
        )
    return LocalCluster(
        data_dir, port, socket_dir, data_dir.parent / f"{data_dir.name}.log", passfile_for(data_dir)
    )


def passfile_for(data_dir: Path) -> Path:
    """Where a cluster's password lives: .singularity/pgdata -> .singularity/pgpass,
    .singularity/test-pgdata -> .singularity/test-pgpass, anything else -> <data_dir>.pgpass."""
    name = data_dir.name
    if name.endswith("pgdata"):
        return data_dir.with_name(name.removesuffix("pgdata") + "pgpass")
    return data_dir.with_name(name + ".pgpass")


def read_passfile_password(passfile: Path) -> str | None:
    """The password a passfile this toolkit wrote holds (registered for redaction), or None."""
    try:
        lines = passfile.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        if line and not line.startswith("#"):
            password = line.rsplit(":", 1)[-1]
            register_secret(password)
            return password or None
    return None


def load_settings(
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    database_url: str | None = None,
    dbname: str | None = None,
) -> Settings:
    """Resolve the configuration from flags (the keyword arguments), environment, file, defaults."""
    env = os.environ if env is None else env
    cwd = (cwd or Path.cwd()).resolve()

    config_path: Path | None
    if config_file is not None or env.get("SINGULARITY_CONFIG"):
        source = "--config" if config_file is not None else "SINGULARITY_CONFIG"
        config_path = Path(config_file or env["SINGULARITY_CONFIG"]).expanduser()
        if not config_path.is_absolute():
            config_path = cwd / config_path
        if not config_path.is_file():
            raise ConfigError(f"{source} names {config_path}, which does not exist")
        project_root = config_path.parent
    else:
        project_root = find_project_root(cwd)
        candidate = project_root / CONFIG_NAME
        config_path = candidate if candidate.is_file() else None
    try:
        return _resolve(env, cwd, config_path, project_root, database_url, dbname)
    except ConfigError as exc:
        if config_path is None or config_path.name == CONFIG_NAME:
            raise
        # Messages say "singularity.yaml: ..."; here the file has another name: say that one.
        raise ConfigError(str(exc).replace(f"{CONFIG_NAME}:", f"{config_path}:")) from None


def _resolve(
    env: Mapping[str, str],
    cwd: Path,
    config_path: Path | None,
    project_root: Path,
    database_url: str | None,
    dbname: str | None,
) -> Settings:
    data = _load_yaml(config_path, env) if config_path else {}
    environment = env.get("SINGULARITY_ENV") or _get(data, "environment") or "dev"
    if environment not in ENVIRONMENTS:
        where = "SINGULARITY_ENV" if env.get("SINGULARITY_ENV") else f"{CONFIG_NAME}: environment"
        raise ConfigError(f"{where} must be one of {', '.join(ENVIRONMENTS)}, got {environment!r}")
    target = _target(env, data, project_root, database_url, dbname)
    bindir_value = env.get("PG_BINDIR") or _get(data, "postgres.bindir")
    return Settings(
        no_project=config_path is None and target["local"] is not None and not env.get("PGDATA"),
        project_root=project_root,
        config_file=config_path,
        environment=environment,
        bindir=_resolve_path(project_root, bindir_value) if bindir_value else None,
        **target,
        **_file_settings(data, project_root, env),
    )


def _target(
    env: Mapping[str, str],
    data: Mapping[str, Any],
    project_root: Path,
    database_url: str | None,
    dbname: str | None,
) -> dict[str, Any]:
    """Where the database is (host, port, user, password, dbname, url_params, local), from
    flags > URL or libpq service > PG* variables > singularity.yaml > the local cluster."""
    url_source, url = next(
        (
            (name, value)
            for name, value in (
                ("--database-url", database_url),
                ("DATABASE_URL", env.get("DATABASE_URL")),
                (f"{CONFIG_NAME}: database.url", _get(data, "database.url")),
            )
            if value
        ),
        (None, None),
    )
    from_url = _parse_url(url, url_source) if url else {}
    # A libpq service (?service= in the URL, or PGSERVICE) is resolved as libpq does it:
    # parameters given explicitly beat the service's, which beat the PG* variables.
    service_name = from_url.pop("service", None) or env.get("PGSERVICE")
    service = read_service(service_name, env) if service_name else {}
    register_secret(service.get("password"))
    for key, value in service.items():
        if key not in ("host", "port", "user", "password", "dbname"):
            from_url.setdefault(key, value)

    def pick(url_key: str, env_key: str, yaml_key: str) -> Any:
        if url_key in from_url:
            return from_url.pop(url_key)
        return service.get(url_key) or env.get(env_key) or _get(data, yaml_key)

    host = pick("host", "PGHOST", "database.host")
    port = pick("port", "PGPORT", "database.port")
    user = pick("user", "PGUSER", "database.user")
    password = from_url.pop("password", None) or service.get("password") or env.get("PGPASSWORD")
    register_secret(password)
    url_dbname = from_url.pop("dbname", None)
    name = (
        dbname
        or url_dbname
        or service.get("dbname")
        or env.get("PGDATABASE")
        or _get(data, "database.name")
        or "singularity"
    )
    # What `singularity-ops env` exported for the project-local cluster keeps meaning that
    # cluster: its PGHOST/DATABASE_URL alone would look like an external server.
    marker = env.get(LOCAL_CLUSTER_VARIABLE)
    local_data_dir = None
    if (
        marker
        and host in ("127.0.0.1", "localhost")
        and url_source in (None, "DATABASE_URL")
        and not service
    ):
        host, local_data_dir = None, Path(marker)
    local = None
    if not host:
        local = _local_cluster(env, data, project_root, port, local_data_dir)
        host, port, user = "127.0.0.1", local.port, user or "postgres"
    return {
        "host": host,
        "port": _int_setting(port or 5432, "port"),
        "user": user,
        "password": password,
        "dbname": name,
        "url_params": {k: str(v) for k, v in from_url.items()},
        "local": local,
    }


def _local_cluster(
    env: Mapping[str, str],
    data: Mapping[str, Any],
    project_root: Path,
    port: Any,
    data_dir: Path | None,
) -> LocalCluster:
    """The project-local cluster: its data directory, port and socket directory."""
    data_dir = data_dir or _resolve_path(
        project_root,
        env.get("PGDATA") or _get(data, "postgres.local.data_dir") or ".singularity/pgdata",
    )
    local_port = _int_setting(
        port
        or _get(data, "postgres.local.port")
        or last_started_port(data_dir)
        or DEFAULT_LOCAL_PORT,
        "PGPORT" if env.get("PGPORT") else "postgres.local.port",
    )
    socket_value = _get(data, "postgres.local.socket_dir")
    socket_dir = _resolve_path(project_root, socket_value) if socket_value else None
    local = make_local_cluster(data_dir, local_port, socket_dir)
    read_passfile_password(local.passfile)  # only so that redact() knows it
    return local


def _file_settings(
    data: Mapping[str, Any], project_root: Path, env: Mapping[str, str]
) -> dict[str, Any]:
    """Everything else, from singularity.yaml or its defaults."""
    extensions = _get(data, "extensions")
    if extensions is not None and not all(isinstance(e, str) and e for e in extensions):
        raise ConfigError(f"{CONFIG_NAME}: extensions must be a list of extension names")
    return dict(
        maintenance_db=_get(data, "database.maintenance_db") or "postgres",
        connect_timeout=_int_setting(
            _given(_get(data, "database.connect_timeout"), 5), "connect_timeout"
        ),
        extensions=tuple(extensions) if extensions is not None else DEFAULT_EXTENSIONS,
        migrations_dir=_migrations_dir(project_root, _get(data, "migrations.dir")),
        templates_dir=_resolve_path(project_root, _get(data, "import.root") or "templates_data"),
        type_map=dict(_get(data, "import.type_map") or {}),
        max_file_bytes=_positive(
            _get(data, "import.max_file_bytes"), "import.max_file_bytes", 1024 * 1024
        ),
        corpus=_get(data, "import.corpus") or None,
        max_prune_share=_share(_get(data, "import.max_prune_share")),
        export_dir=_resolve_path(
            project_root, _get(data, "export.out") or "templates_data/learned"
        ),
        export_min_usage=_given(_get(data, "export.min_usage"), 10),
        export_min_success_rate=float(_given(_get(data, "export.min_success_rate"), 0.90)),
        embedding=_embedding_config(data, env),
        backup_dir=_resolve_path(project_root, _get(data, "backup.dir") or "backups"),
        backup_keep=_get(data, "backup.keep"),
        backup_keep_days=_keep_days(_get(data, "backup.keep_days")),
        backup_format=_backup_format(_get(data, "backup.format")),
        search_log=_get(data, "search.log") is not False,
        search_log_retention_days=_positive(
            _get(data, "search.log_retention_days"), "search.log_retention_days", 90
        ),
        search_limits=_search_limits(data),
    )


def _search_limits(data: Mapping[str, Any]):
    from .search import SearchLimits

    defaults = SearchLimits()
    return SearchLimits(
        **{
            key: _positive(_get(data, f"search.{key}"), f"search.{key}", getattr(defaults, key))
            for key in ("max_query_chars", "max_query_words", "max_top_k", "statement_timeout_ms")
        }
    )


def _given(value: Any, default: Any) -> Any:
    """The configured value, even when it is 0; the default only when it is absent."""
    return default if value is None else value


def _keep_days(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 < value <= 36_500):
        raise ConfigError(
            f"{CONFIG_NAME}: backup.keep_days must be a number of days above 0 (at most 36500), "
            f"got {value}"
        )
    return value


def _positive(value: int | None, key: str, default: int) -> int:
    if value is None:
        return default
    if value < 1:
        raise ConfigError(f"{CONFIG_NAME}: {key} must be at least 1, got {value}")
    return value


def packaged_migrations() -> Path:
    """The migrations installed with the toolkit (package data: `singularity_ops/sql`)."""
    from importlib.resources import files

    return Path(str(files("singularity_ops.sql") / "migrations"))


def _migrations_dir(project_root: Path, configured: str | None) -> Path:
    """migrations.dir if set; else the project's sql/migrations (a checkout); else the copy
    installed with the toolkit, so `nix run` or a pip install works from any directory."""
    if configured:
        return _resolve_path(project_root, configured)
    local = project_root / "sql" / "migrations"
    return local if local.is_dir() else packaged_migrations()


def _backup_format(value: str | None) -> str:
    if value is None:
        return "custom"
    if value not in ("custom", "plain", "directory"):
        raise ConfigError(
            f"{CONFIG_NAME}: backup.format must be custom, plain or directory, got {value!r}"
        )
    return value


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """SINGULARITY_CACHE_DIR, else $XDG_CACHE_HOME/singularity-ops, else ~/.cache/singularity-ops."""
    env = os.environ if env is None else env
    if env.get("SINGULARITY_CACHE_DIR"):
        return Path(env["SINGULARITY_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "singularity-ops"


def _embedding_config(data: Mapping[str, Any], env: Mapping[str, str]):
    from .providers import DEFAULT_DIMENSIONS, DEFAULT_MODELS, EmbeddingConfig

    provider = _get(data, "embedding.provider") or "local"
    if provider not in DEFAULT_MODELS:
        raise ConfigError(
            f"{CONFIG_NAME}: embedding.provider must be one of {', '.join(DEFAULT_MODELS)}, got {provider!r}"
        )
    for key in ("dimensions", "batch_size", "max_retries", "ef_search", "timeout"):
        value = _get(data, f"embedding.{key}")
        if value is not None and value < (0 if key == "max_retries" else 1e-9):
            raise ConfigError(f"{CONFIG_NAME}: embedding.{key} must be positive, got {value}")
    defaults = EmbeddingConfig()
    return EmbeddingConfig(
        provider=provider,
        model=_given(_get(data, "embedding.model"), DEFAULT_MODELS[provider]),
        dimensions=_given(_get(data, "embedding.dimensions"), DEFAULT_DIMENSIONS[provider]),
        batch_size=_given(_get(data, "embedding.batch_size"), defaults.batch_size),
        base_url=_given(_get(data, "embedding.base_url"), defaults.base_url),
        api_key_env=_given(_get(data, "embedding.api_key_env"), defaults.api_key_env),
        timeout=float(_given(_get(data, "embedding.timeout"), defaults.timeout)),
        ef_search=_given(_get(data, "embedding.ef_search"), defaults.ef_search),
        max_retries=_given(_get(data, "embedding.max_retries"), defaults.max_retries),
        onnx_model=env.get("SINGULARITY_ONNX_MODEL") or None,
        cache_dir=str(cache_root(env)),
    )


def _resolve_path(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def connection_env(settings: Settings) -> dict[str, str]:
    """The variables that let psql, pg_dump and any libpq tool reach the configured database.

    The password is never included: for the project-local cluster PGPASSFILE names the file
    holding it; for other servers supply it through PGPASSWORD or ~/.pgpass.
    """
    exports = {
        "DATABASE_URL": settings.url(),
        "PGHOST": settings.host,
        "PGPORT": str(settings.port),
        "PGDATABASE": settings.dbname,
    }
    if settings.user:
        exports["PGUSER"] = settings.user
    exports["SINGULARITY_ENV"] = settings.environment
    if settings.local is not None:
        exports[LOCAL_CLUSTER_VARIABLE] = str(settings.local.data_dir)
        exports["PGPASSFILE"] = str(settings.local.passfile)
    return exports


def service_files(env: Mapping[str, str]) -> list[Path]:
    """Where libpq looks for connection services, in its order."""
    files = []
    if env.get("PGSERVICEFILE"):
        files.append(Path(env["PGSERVICEFILE"]).expanduser())
    else:
        files.append(Path(env.get("HOME") or os.path.expanduser("~")) / ".pg_service.conf")
    sysconf = env.get("PGSYSCONFDIR")
    # Debian's libpq is built with /etc/postgresql-common as its sysconfdir.
    files.append(
        Path(sysconf) / "pg_service.conf"
        if sysconf
        else Path("/etc/postgresql-common/pg_service.conf")
    )
    return files


# The connection keywords libpq accepts in a service file (PostgreSQL 17's PQconninfoOptions).
LIBPQ_KEYWORDS = frozenset(
    [
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "require_auth",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "sslmode",
        "sslnegotiation",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslcertmode",
        "sslpassword",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "gssencmode",
        "krbsrvname",
        "gsslib",
        "gssdelegation",
        "replication",
        "target_session_attrs",
        "load_balance_hosts",
    ]
)
MAX_SERVICE_LINE = 4096


def _parse_service_file(path: Path, text: str, name: str) -> dict[str, str] | None:
    """One service's parameters, parsed exactly as libpq's parseServiceFile does: each line
    trimmed; blank and # lines skipped; `[name]` opens a group (the first group of that name
    wins); `key=value` split at the first `=`, nothing else trimmed; an unknown key, a line
    without `=` or a nested `service` is a syntax error; the first value of a key wins.
    Errors name the file and line, never the line's text (it may hold a password)."""
    found = False
    params: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        if len(raw) >= MAX_SERVICE_LINE:
            raise ConfigError(f"line {number} too long in service file {path}")
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if found:
                break
            found = line[1 : 1 + len(name)] == name and line[1 + len(name) : 2 + len(name)] == "]"
            continue
        if not found:
            continue
        key, sep, value = line.partition("=")
        if key == "service":
            raise ConfigError(
                f"nested service specifications are not supported in service file {path}, "
                f"line {number}"
            )
        if not sep or key not in LIBPQ_KEYWORDS:
            raise ConfigError(
                f"syntax error in service file {path}, line {number} (libpq needs keyword=value "
                "with a connection keyword and no spaces around =; the line is not shown: it "
                "may hold a password)"
            )
        params.setdefault(key, value)
    return params if found else None


def read_service(name: str, env: Mapping[str, str]) -> dict[str, str]:
    """The parameters of a libpq connection service (the first file that defines it wins)."""
    searched = service_files(env)
    for path in searched:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"service file {path} is not valid UTF-8 (byte {exc.start + 1}); save it as UTF-8"
            ) from None
        params = _parse_service_file(path, text, name)
        if params is not None:
            for key in ("password", "sslpassword"):
                register_secret(params.get(key))
            return params
    raise ConfigError(
        f"connection service {name!r} (PGSERVICE or ?service=) is not defined in "
        f"{' or '.join(str(p) for p in searched)}; add a [{name}] section or fix the name"
    )
