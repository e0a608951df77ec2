"""Configuration resolution: flags > environment > singularity.yaml > defaults."""

from pathlib import Path

import pytest

from singularity_ops.config import DEFAULT_LOCAL_PORT, connection_env, load_settings, redact
from singularity_ops.errors import ConfigError


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "singularity.yaml"
    path.write_text(text)
    return path


def test_defaults_target_the_project_local_cluster(tmp_path):
    s = load_settings(cwd=tmp_path, env={})
    assert s.is_local
    assert (s.host, s.port, s.user, s.dbname) == (
        "127.0.0.1",
        DEFAULT_LOCAL_PORT,
        "postgres",
        "singularity",
    )
    assert s.local.data_dir == tmp_path / ".singularity" / "pgdata"
    assert s.environment == "dev"
    assert s.extensions == ("vector", "timescaledb", "postgis")


def test_yaml_is_found_from_a_subdirectory(tmp_path):
    write_config(tmp_path, "database:\n  name: kb\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    s = load_settings(cwd=sub, env={})
    assert s.dbname == "kb"
    assert s.project_root == tmp_path


def test_flags_beat_environment_beat_yaml(tmp_path):
    write_config(tmp_path, "database:\n  url: postgresql://yamluser@yamlhost:1111/yamldb\n")
    from_yaml = load_settings(cwd=tmp_path, env={})
    assert (from_yaml.host, from_yaml.port, from_yaml.user, from_yaml.dbname) == (
        "yamlhost",
        1111,
        "yamluser",
        "yamldb",
    )
    from_env = load_settings(
        cwd=tmp_path, env={"DATABASE_URL": "postgresql://envuser@envhost:2222/envdb"}
    )
    assert (from_env.host, from_env.dbname) == ("envhost", "envdb")
    from_flag = load_settings(
        cwd=tmp_path,
        env={"DATABASE_URL": "postgresql://envuser@envhost:2222/envdb"},
        database_url="postgresql://flaguser@flaghost:3333/flagdb",
        dbname="other",
    )
    assert (from_flag.host, from_flag.port, from_flag.user, from_flag.dbname) == (
        "flaghost",
        3333,
        "flaguser",
        "other",
    )
    assert not from_flag.is_local


def test_pghost_selects_an_external_server(tmp_path):
    s = load_settings(cwd=tmp_path, env={"PGHOST": "db.internal", "PGPORT": "6000", "PGUSER": "kb"})
    assert not s.is_local
    assert (s.host, s.port, s.user) == ("db.internal", 6000, "kb")


def test_pgdata_overrides_the_local_data_directory(tmp_path):
    s = load_settings(cwd=tmp_path, env={"PGDATA": str(tmp_path / "elsewhere")})
    assert s.local.data_dir == tmp_path / "elsewhere"


def test_unknown_key_is_an_error_naming_key_and_file(tmp_path):
    write_config(tmp_path, "database:\n  nme: kb\n")
    with pytest.raises(ConfigError, match=r"singularity.yaml: unknown key 'database.nme'") as info:
        load_settings(cwd=tmp_path, env={})
    assert info.value.exit_code == 2


def test_wrong_type_names_the_key(tmp_path):
    write_config(tmp_path, "postgres:\n  local:\n    port: big\n")
    with pytest.raises(ConfigError, match=r"postgres.local.port must be an integer, got 'big'"):
        load_settings(cwd=tmp_path, env={})


def test_invalid_yaml_reports_line(tmp_path):
    write_config(tmp_path, "database:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"singularity.yaml:\d+:\d+: invalid YAML"):
        load_settings(cwd=tmp_path, env={})


def test_singularity_env_only_recorded_never_changes_database(tmp_path):
    for name in ("dev", "test", "prod"):
        s = load_settings(cwd=tmp_path, env={"SINGULARITY_ENV": name})
        assert s.environment == name
        assert s.dbname == "singularity"
    with pytest.raises(ConfigError, match="SINGULARITY_ENV must be one of dev, test, prod"):
        load_settings(cwd=tmp_path, env={"SINGULARITY_ENV": "staging"})


def test_singularity_config_points_at_another_file(tmp_path):
    other = tmp_path / "conf" / "x.yaml"
    other.parent.mkdir()
    other.write_text("database:\n  name: fromx\n")
    assert load_settings(cwd=tmp_path, env={"SINGULARITY_CONFIG": str(other)}).dbname == "fromx"
    with pytest.raises(ConfigError, match=r"SINGULARITY_CONFIG names .* which does not exist"):
        load_settings(cwd=tmp_path, env={"SINGULARITY_CONFIG": str(tmp_path / "missing.yaml")})


def test_non_postgres_url_is_a_usage_error(tmp_path):
    with pytest.raises(ConfigError, match="DATABASE_URL must be a postgresql:// URL"):
        load_settings(cwd=tmp_path, env={"DATABASE_URL": "mysql://x:secret@h/db"})


def test_password_never_in_url_or_exports(tmp_path):
    s = load_settings(
        cwd=tmp_path, env={"DATABASE_URL": "postgresql://kb:s3cr%40t@h:5/db?sslmode=require"}
    )
    assert s.password == "s3cr@t"
    assert "s3cr" not in s.url()
    assert s.url() == "postgresql://kb@h:5/db?sslmode=require"
    assert "s3cr" not in repr(s)
    assert all("s3cr" not in v for v in connection_env(s).values())


def test_redact_handles_urls_conninfo_and_literals():
    assert redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact("host=h password=pw user=u") == "host=h password=*** user=u"
    assert redact("failed for pw here", "pw") == "failed for *** here"


def test_long_project_paths_get_a_short_socket_directory(tmp_path):
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    s = load_settings(cwd=deep, env={})
    assert len(str(s.local.socket_dir)) <= 90
    assert str(s.local.socket_dir).startswith("/tmp/singularity-ops-")


def test_pgservice_and_service_urls_are_honoured_like_psql(tmp_path):
    services = tmp_path / "pg_service.conf"
    services.write_text(
        "[kb]\nhost=db.internal\nport=6543\ndbname=knowledge\nuser=kb\nsslmode=require\n"
        "password=svc-secret-1\n"
    )
    env = {"PGSERVICEFILE": str(services), "PGSYSCONFDIR": str(tmp_path / "none")}
    s = load_settings(cwd=tmp_path, env={**env, "PGSERVICE": "kb", "PGPORT": "1", "PGHOST": "x"})
    assert (s.host, s.port, s.dbname, s.user, s.password) == (
        "db.internal",
        6543,
        "knowledge",
        "kb",
        "svc-secret-1",
    )
    assert not s.is_local and s.url_params["sslmode"] == "require"
    assert "svc-secret-1" not in s.url() and redact("x svc-secret-1 y") == "x *** y"
    from_url = load_settings(cwd=tmp_path, env={**env, "DATABASE_URL": "postgresql:///?service=kb"})
    assert (from_url.host, from_url.dbname) == ("db.internal", "knowledge")
    explicit = load_settings(
        cwd=tmp_path, env={**env, "DATABASE_URL": "postgresql://other:7/mydb?service=kb"}
    )
    assert (explicit.host, explicit.port, explicit.dbname) == ("other", 7, "mydb")
    with pytest.raises(ConfigError, match=r"service 'nope' .* is not defined in .*pg_service.conf"):
        load_settings(cwd=tmp_path, env={**env, "PGSERVICE": "nope"})


def test_what_env_exports_keeps_pointing_at_the_local_cluster(tmp_path):
    local = load_settings(cwd=tmp_path, env={"PGPORT": "54999"})
    exported = connection_env(local)
    assert exported["SINGULARITY_LOCAL_CLUSTER"] == str(local.local.data_dir)
    again = load_settings(cwd=tmp_path, env=exported)
    assert again.is_local and again.local == local.local and again.port == 54999
    # an explicit --database-url is an external server, whatever the shell exported
    flagged = load_settings(cwd=tmp_path, env=exported, database_url=exported["DATABASE_URL"])
    assert not flagged.is_local


def test_service_files_are_parsed_as_libpq_does_and_never_echo_a_line(tmp_path):
    services = tmp_path / "pg_service.conf"
    env = {"PGSERVICEFILE": str(services), "PGSYSCONFDIR": str(tmp_path / "none")}

    def settings_for(text: str):
        services.write_text(text)
        return load_settings(cwd=tmp_path, env={**env, "PGSERVICE": "kb"})

    # a line without "=" (the password line of a hand-written file) is libpq's syntax error
    with pytest.raises(ConfigError) as info:
        settings_for("[kb]\nhost=db\npassword SvcPW1234\n")
    assert "syntax error in service file" in str(info.value) and "line 3" in str(info.value)
    assert "SvcPW1234" not in str(info.value)
    # spaces around "=" make an unknown keyword for libpq too
    with pytest.raises(ConfigError, match="line 2"):
        settings_for("[kb]\nhost = db\n")
    # no [DEFAULT] inheritance, no continuation lines, the first value and group win
    s = settings_for(
        "[DEFAULT]\nport=1111\n[kb]\nhost=first\nhost=second\ndbname=d\n  # note\n"
        "[kb]\nhost=third\n"
    )
    assert (s.host, s.port, s.dbname) == ("first", 5432, "d")
    with pytest.raises(ConfigError, match="nested service"):
        settings_for("[kb]\nservice=other\n")
    services.write_bytes(b"[kb]\nhost=caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not valid UTF-8 \(byte 14\)"):
        load_settings(cwd=tmp_path, env={**env, "PGSERVICE": "kb"})


def test_a_malformed_service_file_never_reaches_status_or_env_output(tmp_path):
    from conftest import run_cli

    services = tmp_path / "pg_service.conf"
    services.write_text("[kb]\nhost=127.0.0.1\npassword SvcPW1234\n")
    env = {"PGSERVICEFILE": str(services), "PGSERVICE": "kb"}
    for args in (("status",), ("status", "--json"), ("env",)):
        out = run_cli(*args, env=env, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "SvcPW1234" not in out.stdout + out.stderr


def test_errors_name_the_config_file_singularity_config_points_at(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("database:\n  url: 'postgresql://u:p@h:notaport/db'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cwd=tmp_path, env={"SINGULARITY_CONFIG": str(other)})
    assert f"{other}: database.url" in str(info.value)
    assert "singularity.yaml" not in str(info.value)


def test_a_configured_zero_is_kept_not_replaced_by_the_default(tmp_path):
    (tmp_path / "singularity.yaml").write_text(
        "export:\n  min_success_rate: 0\n  min_usage: 0\ndatabase:\n  connect_timeout: 0\n"
    )
    s = load_settings(cwd=tmp_path, env={})
    assert (s.export_min_success_rate, s.export_min_usage, s.connect_timeout) == (0.0, 0, 0)
    (tmp_path / "singularity.yaml").write_text("import:\n  max_file_bytes: 0\n")
    with pytest.raises(ConfigError, match=r"import\.max_file_bytes must be at least 1"):
        load_settings(cwd=tmp_path, env={})


def test_the_parsed_config_is_cached_by_its_text_and_never_served_stale(tmp_path):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = {"SINGULARITY_CACHE_DIR": str(cache)}
    path = write_config(tmp_path, "database:\n  name: kb\n")
    assert load_settings(cwd=tmp_path, env=env).dbname == "kb"
    [entry] = (cache / "config").glob("*.json")
    # database.url may carry a password: the copy is the owner's only.
    assert (entry.stat().st_mode & 0o777, entry.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    # A second process reads the cache: it does not even import PyYAML.
    probe = (
        "import sys; from pathlib import Path; from singularity_ops.config import load_settings;"
        f"s = load_settings(cwd=Path({str(tmp_path)!r}), env={env!r});"
        "print(s.dbname, 'yaml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["kb", "False"]
    # An edit is a new text: parsed again, whatever the file's times.
    stat = path.stat()
    path.write_text("database:\n  name: k2\n")
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_settings(cwd=tmp_path, env=env).dbname == "k2"
    # What comes from the cache is validated like a fresh parse.
    path.write_text("database:\n  name: kb\n")
    entry.write_text('{"database": {"name": 7}}')
    with pytest.raises(ConfigError, match=r"database\.name"):
        load_settings(cwd=tmp_path, env=env)
    # A torn entry is parsed again (and rewritten); a FIFO or a symlink in its place is
    # passed over without waiting or following; an unwritable cache is no error.
    entry.write_text('{"database": ')
    assert load_settings(cwd=tmp_path, env=env).dbname == "kb"
    assert entry.read_text() == '{"database": {"name": "kb"}}'
    entry.unlink()
    os.mkfifo(entry)
    assert load_settings(cwd=tmp_path, env=env).dbname == "kb"
    entry.unlink()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"database": {"name": "other"}}')
    entry.symlink_to(elsewhere)
    assert load_settings(cwd=tmp_path, env=env).dbname == "kb"
    blocked = {"SINGULARITY_CACHE_DIR": str(path)}  # a file, not a directory
    assert load_settings(cwd=tmp_path, env=blocked).dbname == "kb"
    # Dates are not JSON: such a file is parsed every time, never cached wrongly.
    path.write_text("database:\n  name: kb\nenvironment: dev\n# 2024-01-01\nx_note: 2024-01-01\n")
    before = set((cache / "config").glob("*.json"))
    with pytest.raises(ConfigError):
        load_settings(cwd=tmp_path, env=env)  # unknown key x_note, said the same way
    assert set((cache / "config").glob("*.json")) == before
