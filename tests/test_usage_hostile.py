"""A usage log can hold anything: every line PostgreSQL would refuse is a line error with
file:line (never "this is a bug"), --skip-invalid records the rest, and a line of any length
is read in bounded memory. Through the real process."""

import json
import subprocess
import sys

import pytest
from conftest import clean_env, write_cli_config
from corpus_fixtures import write
from embed_fixtures import imported

from singularity_ops.db import connect


def base(**fields) -> bytes:
    event = {"artifact_type": "patterns", "artifact_id": "alpha", "success": True, **fields}
    return json.dumps(event).encode()


HOSTILE = {
    "NUL in metadata": base(metadata={"note": "a\u0000b"}, event_id="h1"),
    "NUL in event_id": base(event_id="x\u0000y"),
    "NaN in metadata": b'{"artifact_type": "patterns", "artifact_id": "alpha", "success": true,'
    b' "metadata": {"x": NaN}, "event_id": "h3"}',
    "Infinity": b'{"artifact_type": "patterns", "artifact_id": "alpha", "success": true,'
    b' "metadata": {"x": -Infinity}, "event_id": "h4"}',
    "ISO week date": base(used_at="2026-W48-3T10:00:00Z", event_id="h5"),
    "offset -23:59": base(used_at="2026-11-01T10:00:00-23:59", event_id="h6"),
    "year 1 at +14:00": base(used_at="0001-01-01T00:00:00+14:00", event_id="h7"),
    "a lone surrogate": b'{"artifact_type": "patterns", "artifact_id": "alpha", "success": true,'
    b' "metadata": {"x": "\\ud800"}, "event_id": "h8"}',
    "invalid UTF-8": base(metadata={"note": "caf"}, event_id="h9").replace(b"caf", b"caf\xe9"),
}


@pytest.fixture
def kb(kb_settings, tmp_path):
    write(tmp_path / "td", "patterns/alpha.json", {"id": "alpha", "name": "Alpha"})
    imported(kb_settings, tmp_path / "td")
    return kb_settings, write_cli_config(tmp_path, kb_settings)


def record(config, data: bytes, *args):
    return subprocess.run(
        [sys.executable, "-m", "singularity_ops", "--config", str(config), "record-usage",
         "--from", "-", *args],
        input=data, capture_output=True, env=clean_env(), timeout=120, check=False,
    )  # fmt: skip


def events(settings) -> list[str]:
    with connect(settings) as conn:
        return [r[0] for r in conn.execute("SELECT event_id FROM artifact_usage ORDER BY 1")]


def test_each_line_postgresql_would_refuse_is_named_and_skippable(kb):
    settings, config = kb
    good = [base(event_id="ok1"), base(event_id="ok2", used_at="2026-11-01 10:00:00+05:30")]
    data = b"\n".join([good[0], *HOSTILE.values(), good[1]]) + b"\n"
    strict = record(config, data)
    stderr = strict.stderr.decode()
    assert strict.returncode == 1 and "this is a bug" not in stderr, stderr
    for number in range(2, 2 + len(HOSTILE)):
        assert f"-:{number}: " in stderr, (number, stderr)
    assert events(settings) == [], "strict: nothing recorded"
    skipped = record(config, data, "--skip-invalid")
    assert skipped.returncode == 1 and "this is a bug" not in skipped.stderr.decode()
    assert events(settings) == ["ok1", "ok2"]
    assert f"{len(HOSTILE)} invalid" in skipped.stdout.decode()


def test_a_line_of_any_length_is_read_in_bounded_memory(kb):
    settings, config = kb
    # 200 MB of zeros with no newline, then a good line: the long one is refused at 1 MiB
    # read, skipped to its end, and the process never holds it.
    helper = (
        "import os, subprocess, sys\n"
        "p = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE,"
        " stderr=subprocess.PIPE)\n"
        "chunk = b'\\0' * (1 << 20)\n"
        "for _ in range(200): p.stdin.write(chunk)\n"
        f"p.stdin.write(b'\\n' + {base(event_id='after')!r} + b'\\n'); p.stdin.close()\n"
        "err = p.stderr.read(); p.stdout.read()\n"
        "_, status, usage = os.wait4(p.pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss // 1024)\n"
        "sys.stderr.write(err.decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", helper, sys.executable, "-m", "singularity_ops",
         "--config", str(config), "record-usage", "--from", "-", "--skip-invalid"],
        capture_output=True, text=True, env=clean_env(), timeout=300, check=False,
    )  # fmt: skip
    code, peak_mib = map(int, out.stdout.split())
    assert code == 1 and "-:1: longer than 1,048,576 bytes" in out.stderr, out.stderr
    assert peak_mib < 150, f"peak RSS {peak_mib} MiB for a 200 MB line"
    assert events(settings) == ["after"], "the line after the long one is read and recorded"


def test_one_event_id_that_used_two_artifacts_records_both(kb, tmp_path):
    settings, config = kb
    write(tmp_path / "td2", "patterns/beta.json", {"id": "beta", "name": "Beta"})
    imported(settings, tmp_path / "td2")
    request = [
        base(event_id="req-1"),
        base(event_id="req-1", artifact_id="beta"),
    ]
    first = record(config, b"\n".join(request) + b"\n")
    assert first.returncode == 0 and first.stdout.startswith(b"2 recorded, 0 duplicates"), first
    again = record(config, b"\n".join(request) + b"\n")
    assert again.stdout.startswith(b"0 recorded, 2 duplicates")
    with connect(settings) as conn:
        # the SQL function of migration 0008 computes the same keys as the Python code
        same = conn.execute(
            "SELECT bool_and(u.event_key = knowledge_event_key(u.event_id, a.artifact_type,"
            " a.artifact_id)) FROM artifact_usage u JOIN knowledge_artifacts a"
            " ON a.id = u.artifact_pk"
        ).fetchone()[0]
    assert same is True


def test_migration_0008_rescopes_the_keys_of_recorded_events(ext_settings, tmp_path):
    """Events recorded under the old key (event_id alone) get the scoped key, so re-ingesting
    the old log still counts nothing twice, and the second artifact of a request now counts."""
    import hashlib
    import shutil

    from conftest import MIGRATIONS

    from singularity_ops.migrate import migrate

    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0008":
            shutil.copy(path, before)
    with connect(ext_settings, autocommit=True) as conn:
        migrate(conn, before)
    with connect(ext_settings, autocommit=True) as conn:  # the importer needs today's schema
        for name in ("alpha", "beta"):
            conn.execute(
                "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
                " VALUES ('patterns', %s, %s, %s::jsonb)",
                (name, json.dumps({"id": name}), json.dumps({"id": name})),
            )
    old_key = hashlib.sha256(b"event_id\0req-9").digest()[:16].hex()
    with connect(ext_settings, autocommit=True) as conn:
        conn.execute("INSERT INTO usage_event_keys (event_key) VALUES (%s)", (old_key,))
        conn.execute(
            "INSERT INTO artifact_usage (artifact_pk, success, event_id, event_key)"
            " SELECT id, true, 'req-9', %s FROM knowledge_artifacts WHERE artifact_id = 'alpha'",
            (old_key,),
        )
        migrate(conn, MIGRATIONS)
    config = write_cli_config(tmp_path, ext_settings)
    log = b"\n".join([base(event_id="req-9"), base(event_id="req-9", artifact_id="beta")])
    out = record(config, log + b"\n")
    assert out.stdout.startswith(b"1 recorded, 1 duplicates"), out


def test_overflowing_arguments_are_usage_errors_before_any_work(kb, tmp_path):
    _settings, config = kb
    out_dir = tmp_path / "backups"
    for args in (
        ("usage", "--since", "99999999d"),
        ("usage", "prune", "--older-than", "99999999d"),
        ("usage", "eval", "--since", "99999999999999999999d"),
        ("backup", "--out", str(out_dir), "--keep-days", "nan"),
        ("backup", "--out", str(out_dir), "--keep-days", "1e308"),
        ("search", "x", "--top-k", "99999999999999999999"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "singularity_ops", "--config", str(config), *args],
            capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2, (args, result.stderr)
        assert "this is a bug" not in result.stderr and "Traceback" not in result.stderr
    assert not out_dir.exists() or not list(out_dir.glob("*.dump")), "no dump was written"
