"""Usage history: bulk ingest, idempotency, back-fill, the daily rollup against the raw events
(with timescaledb and without), prune, refresh, export --since and the report's verdicts."""

import io
import json
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from conftest import MIGRATIONS, cli_in_process, write_cli_config
from corpus_fixtures import write

from singularity_ops.corpus import scan
from singularity_ops.db import connect
from singularity_ops.export import export_proven
from singularity_ops.extensions import create_extensions
from singularity_ops.importer import import_artifacts
from singularity_ops.migrate import migrate
from singularity_ops.usage_ingest import DURATION_BOUNDS, UsageError, ingest_usage, record_usage
from singularity_ops.usage_report import (
    histogram_percentile,
    prune_raw_events,
    refresh_rollup,
    usage_report,
    usage_status,
)

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _fresh_now():
    """NOW as each test starts, not when the module was imported: a session that crosses UTC
    midnight would otherwise compare yesterday's dates with the server's today."""
    global NOW
    NOW = datetime.now(UTC)


def corpus(root):
    for name in ("alpha", "beta", "gamma"):
        write(root, f"patterns/{name}.json", {"id": name, "name": name.title()})
    write(root, "patterns/versioned.json", {"id": "multi", "version": "1.9.0"})
    write(root, "patterns/versioned_new.json", {"id": "multi", "version": "1.10.0"})
    return root


def prepared(settings, tmp_path):
    with connect(settings, autocommit=True) as conn:
        import_artifacts(conn, scan(corpus(tmp_path / "td")))
    return settings


@pytest.fixture
def kb(kb_settings, tmp_path):
    """A migrated database with timescaledb (artifact_usage is a hypertable) and a corpus."""
    return prepared(kb_settings, tmp_path)


@pytest.fixture
def plain_kb(db_settings, tmp_path):
    """The same without timescaledb: artifact_usage is a plain table."""
    with connect(db_settings, autocommit=True) as conn:
        create_extensions(conn, ["vector", "postgis"])
        migrate(conn, MIGRATIONS)
        assert not conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
        ).fetchone()[0]
    return prepared(db_settings, tmp_path)


def line(artifact_id="alpha", success=True, **fields):
    return json.dumps(
        {"artifact_type": "patterns", "artifact_id": artifact_id, "success": success, **fields}
    )


def ingest(settings, lines, **kwargs):
    with connect(settings, autocommit=True) as conn:
        return ingest_usage(
            conn, io.StringIO("\n".join(lines) + "\n"), name="events.jsonl", **kwargs
        )


def counters(settings):
    with psycopg.connect(**settings.conninfo()) as conn:
        rows = conn.execute(
            "SELECT artifact_id || '@' || version, usage_count, success_count FROM knowledge_artifacts"
            " ORDER BY 1"
        ).fetchall()
        events = conn.execute("SELECT count(*) FROM artifact_usage").fetchone()[0]
    return {r[0]: (r[1], r[2]) for r in rows}, events


def history(days: int, per_day: int, seed: int = 0) -> list[str]:
    """Events over the last `days` days: varied artifacts, outcomes, durations, environments."""
    lines = []
    for day in range(days):
        for n in range(per_day):
            k = day * per_day + n + seed
            lines.append(
                line(
                    ("alpha", "beta", "gamma")[k % 3],
                    k % 4 != 0,
                    duration_ms=(k * 37) % 4000,
                    environment=("dev", "test", "prod")[(k % 3 == 0 and 2) or k % 2],
                    used_at=(NOW - timedelta(days=day, minutes=n)).isoformat(),
                    event_id=f"h{seed}-{day}-{n}",
                )
            )
    return lines


# --- ingest ------------------------------------------------------------------------------


def test_strict_ingest_writes_nothing_and_names_every_bad_line(kb):
    before = counters(kb)
    bad = [
        line("alpha", event_id="e1"),
        "{not json",
        line("nosuch", event_id="e3"),
        json.dumps({"artifact_type": "patterns", "artifact_id": "beta"}),
        line("beta", success="yes"),
        line("beta", used_at="2026-01-01T00:00:00"),
        line("beta", used_at=(NOW + timedelta(days=2)).isoformat()),
        line("beta", environment="staging", event_id="e8"),
        line("beta", sucess=True),
        line("beta", duration_ms=-1),
        line("multi", version="9.9.9", event_id="e11"),
    ]
    with pytest.raises(UsageError) as info:
        ingest(kb, bad)
    message = str(info.value)
    assert "10 invalid line(s) in events.jsonl; nothing was recorded" in message
    for expected in (
        "events.jsonl:2: invalid JSON",
        "events.jsonl:3: no artifact patterns/nosuch",
        'events.jsonl:4: "success" is missing',
        'events.jsonl:5: "success" must be true or false',
        'events.jsonl:6: "used_at" must be like 2026-11-26T09:30:00Z',
        'events.jsonl:7: "used_at" is in the future',
        'events.jsonl:8: "environment" must be one of dev, test, prod',
        "events.jsonl:9: unknown field(s) 'sucess'",
        'events.jsonl:10: "duration_ms" must be a whole number',
        "events.jsonl:11: no artifact patterns/multi version 9.9.9",
    ):
        assert expected in message, expected
    assert counters(kb) == before


def test_skip_invalid_records_the_rest_and_the_cli_exits_1(kb, tmp_path):
    log = tmp_path / "app.log.jsonl"
    log.write_text(
        "\n".join([line("alpha", event_id="a"), "{oops", line("beta", False, event_id="b"), ""])
        + "\n"
    )
    config = write_cli_config(tmp_path, kb)
    out = cli_in_process(
        "--config",
        str(config),
        "record-usage",
        "--from",
        str(log),
        "--skip-invalid",
        "--json",
        cwd=tmp_path,
    )
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert (result["lines"], result["recorded"], result["invalid"]) == (3, 2, 1)
    assert f"{log}:2: invalid JSON" in out.stderr
    assert counters(kb)[0]["alpha@1.0.0"] == (1, 1) and counters(kb)[0]["beta@1.0.0"] == (1, 0)
    strict = cli_in_process(
        "--config", str(config), "record-usage", "--from", str(log), cwd=tmp_path
    )
    assert strict.returncode == 1 and "nothing was recorded" in strict.stderr


def test_ingesting_the_same_log_twice_counts_every_event_once(kb, tmp_path):
    when = (NOW - timedelta(hours=1)).isoformat()
    twice = line("gamma", duration_ms=5, used_at=when)
    events = [*history(3, 5), twice, twice]
    first = ingest(kb, events)
    # two identical lines (same content and used_at, no event_id) are one event
    assert (first.recorded, first.duplicates) == (16, 1)
    after_first = counters(kb)
    second = ingest(kb, events)
    assert (second.recorded, second.duplicates, second.artifacts) == (0, 17, 0)
    assert counters(kb) == after_first
    # the same event through the single-event path, by its event_id, is not counted again
    with connect(kb, autocommit=True) as conn:
        again = record_usage(conn, "patterns", "alpha", success=True, event_id="h0-0-0")
    assert not again.recorded and counters(kb) == after_first


def test_concurrent_ingests_of_one_log_count_it_once(kb, tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(history(2, 50)) + "\n")
    config = write_cli_config(tmp_path, kb)
    cmd = [
        sys.executable,
        "-m",
        "singularity_ops",
        "--config",
        str(config),
        "record-usage",
        "--from",
        str(log),
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
        for _ in range(4)
    ]
    for proc in procs:
        proc.wait(timeout=120)
        assert proc.returncode == 0, proc.stderr.read()
    assert counters(kb)[1] == 100


def test_versions_default_to_the_latest_and_backfilled_events_land_on_their_utc_day(kb):
    ingest(
        kb,
        [
            line("multi", used_at="2026-11-01T23:30:00-02:00"),  # 2026-11-02 01:30 UTC
            line("multi", version="1.9.0", used_at="2026-11-01T10:00:00+00:00"),
        ],
    )
    with psycopg.connect(**kb.conninfo()) as conn:
        rows = conn.execute(
            "SELECT k.version, d.day, d.uses FROM artifact_usage_daily d"
            " JOIN knowledge_artifacts k ON k.id = d.artifact_pk ORDER BY 1"
        ).fetchall()
    assert rows == [("1.10.0", date(2026, 11, 2), 1), ("1.9.0", date(2026, 11, 1), 1)]


# --- the rollup against the raw events ----------------------------------------------------


def comparable(report):
    values = asdict(report)
    values.pop("query_ms"), values.pop("source")
    return values


@pytest.mark.parametrize("flavour", ["kb", "plain_kb"])
def test_the_rollup_answers_exactly_what_the_raw_events_answer(flavour, request):
    settings = request.getfixturevalue(flavour)
    ingest(settings, history(70, 6))
    with connect(settings, autocommit=True) as conn:
        record_usage(conn, "patterns", "beta", success=False, duration_ms=12)
        for days, env in ((30, None), (7, "prod"), (1, None)):
            rolled = usage_report(conn, since_days=days, environment=env, top=5)
            raw = usage_report(conn, since_days=days, environment=env, top=5, source="raw")
            assert comparable(rolled) == comparable(raw), (days, env)
            assert rolled.uses > 0
        report = usage_report(conn, since_days=30)
    top = report.top[0]
    assert len(top.daily) == 30 and sum(top.daily) == top.uses
    assert sum(top.environments.values()) == top.uses
    assert top.p50_ms is not None and top.p95_ms >= top.p50_ms


def test_duration_percentiles_come_from_the_histogram_within_a_few_percent(kb):
    durations = [(n * 97) % 3000 + 1 for n in range(2000)]
    ingest(kb, [line("alpha", duration_ms=d, event_id=f"d{n}") for n, d in enumerate(durations)])
    with connect(kb) as conn:
        [entry] = usage_report(conn, since_days=1).top
        bounds = conn.execute("SELECT knowledge_duration_bounds()").fetchone()[0]
    assert tuple(bounds) == DURATION_BOUNDS, "the Python and SQL bucket bounds must agree"
    exact = sorted(durations)
    assert entry.p50_ms == pytest.approx(exact[1000], rel=0.05)
    assert entry.p95_ms == pytest.approx(exact[1900], rel=0.05)
    assert histogram_percentile([], 0.5) is None


def test_falling_success_rates_and_trend_are_reported(kb):
    old = [
        line(
            "alpha", True, used_at=(NOW - timedelta(days=40 + n % 5)).isoformat(), event_id=f"o{n}"
        )
        for n in range(20)
    ]
    new = [
        line(
            "alpha", n % 2 == 0, used_at=(NOW - timedelta(days=n % 5)).isoformat(), event_id=f"n{n}"
        )
        for n in range(20)
    ]
    ingest(kb, old + new)
    with connect(kb) as conn:
        report = usage_report(conn, since_days=30)
    [falling] = report.falling
    assert (falling.artifact_id, falling.previous_success_rate, falling.success_rate) == (
        "alpha",
        1.0,
        0.5,
    )
    assert falling.rate_change == -0.5 and falling.uses_change == 0.0
    assert falling.lifetime_success_rate == 0.75


def test_usage_cli_prints_a_table_with_sparklines_and_json(kb, tmp_path):
    ingest(kb, history(10, 3))
    config = write_cli_config(tmp_path, kb)
    text = cli_in_process(
        "--config", str(config), "usage", "--since", "2w", "--top", "2", cwd=tmp_path
    )
    assert text.returncode == 0, text.stderr
    assert "(14 days, UTC): 30 uses" in text.stdout and "patterns/alpha@1.0.0" in text.stdout
    assert any(ch in text.stdout for ch in "▁▂▃▄▅▆▇█")
    data = json.loads(
        cli_in_process(
            "--config", str(config), "usage", "--json", "--type", "patterns", cwd=tmp_path
        ).stdout
    )
    assert data["uses"] == 30 and data["source"] == "rollup" and len(data["top"][0]["daily"]) == 30
    bad = cli_in_process("--config", str(config), "usage", "--since", "12h", cwd=tmp_path)
    assert bad.returncode == 2 and "whole" not in bad.stdout and "30d or 2w" in bad.stderr


# --- prune, refresh, status ---------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["kb", "plain_kb"])
def test_pruning_raw_events_never_changes_counters_reports_or_idempotency(flavour, request):
    settings = request.getfixturevalue(flavour)
    events = history(60, 4)
    ingest(settings, events)
    with connect(settings, autocommit=True) as conn:
        before = (counters(settings)[0], comparable(usage_report(conn, since_days=60)))
        dry = prune_raw_events(conn, 20, dry_run=True)
        assert dry.events > 0 and counters(settings)[1] == 240
        pruned = prune_raw_events(conn, 20)
        assert pruned.events == dry.events and counters(settings)[1] == 240 - pruned.events
        assert (counters(settings)[0], comparable(usage_report(conn, since_days=60))) == before
        assert ingest_usage(conn, io.StringIO("\n".join(events))).recorded == 0
        # a refresh after the prune rebuilds only what raw events still cover in full
        refresh_rollup(conn)
        assert comparable(usage_report(conn, since_days=60)) == before[1]


def test_refresh_rebuilds_what_was_written_around_the_toolkit_and_status_says_so(kb):
    ingest(kb, history(3, 2))
    with psycopg.connect(**kb.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO artifact_usage (artifact_pk, success, environment)"
            " SELECT id, true, 'dev' FROM knowledge_artifacts WHERE artifact_id = 'gamma'"
        )
    with connect(kb, autocommit=True) as conn:
        status = usage_status(conn)
        assert not status.rollup_up_to_date and status.rollup_missing_events == 1
        assert status.events_last_24h >= 1 and status.last_event_at is not None
        result = refresh_rollup(conn, since_days=7)
        assert result.days == 3 and result.first_day == NOW.date() - timedelta(days=2)
        assert usage_status(conn).rollup_up_to_date
        assert comparable(usage_report(conn, since_days=7)) == comparable(
            usage_report(conn, since_days=7, source="raw")
        )


def test_status_json_shows_the_usage_history(kb, tmp_path):
    ingest(kb, history(2, 2))
    config = write_cli_config(tmp_path, kb)
    out = cli_in_process("--config", str(config), "status", "--json", cwd=tmp_path)
    usage = json.loads(out.stdout)["usage"]
    assert usage["rollup_up_to_date"] is True and usage["events_last_24h"] >= 2


# --- exports judged by recent evidence ------------------------------------------------------


def test_export_since_judges_by_the_window_and_records_it(kb, tmp_path):
    long_ago = [
        line(
            "alpha",
            True,
            used_at=(NOW - timedelta(days=200 + n % 30)).isoformat(),
            event_id=f"a{n}",
        )
        for n in range(200)
    ]
    recent_failures = [
        line("alpha", False, used_at=(NOW - timedelta(days=n % 20)).isoformat(), event_id=f"f{n}")
        for n in range(20)
    ]
    recent_successes = [
        line("beta", True, used_at=(NOW - timedelta(days=n % 20)).isoformat(), event_id=f"b{n}")
        for n in range(12)
    ]
    ingest(kb, long_ago + recent_failures + recent_successes)
    with connect(kb) as conn:
        lifetime = export_proven(conn, tmp_path / "lifetime", min_usage=10, min_success_rate=0.9)
        recent = export_proven(
            conn, tmp_path / "recent", min_usage=10, min_success_rate=0.9, since_days=90
        )
    assert lifetime.written == ["patterns/alpha.json", "patterns/beta.json"]
    assert recent.written == ["patterns/beta.json"], "alpha fails every time this quarter"
    learning = json.loads((tmp_path / "recent/patterns/beta.json").read_text())["_learning"]
    today = NOW.date()
    assert learning["window"] == {
        "days": 90,
        "from": (today - timedelta(days=89)).isoformat(),
        "to": today.isoformat(),
    }
    assert (learning["usage_count"], learning["success_rate"]) == (12, 1.0)
    assert learning["lifetime"]["usage_count"] == 12
    config = write_cli_config(tmp_path, kb, export={"out": str(tmp_path / "cli")})
    out = cli_in_process(
        "--config", str(config), "export", "--since", "90d", "--json", cwd=tmp_path
    )
    assert json.loads(out.stdout)["written"] == ["patterns/beta.json"]


def test_a_line_without_event_id_or_used_at_is_refused_unless_unkeyed_now(kb, tmp_path):
    config = write_cli_config(tmp_path, kb)
    keyless = line("alpha") + "\n"
    refused = cli_in_process("--config", str(config), "record-usage", "--from", "-", input=keyless,
                      cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 1
    assert "-:1: has neither" in refused.stderr
    assert '"event_id"' in refused.stderr and "--unkeyed-now" in refused.stderr
    assert counters(kb)[1] == 0
    for _ in range(2):  # the same job run twice: two uses, not one
        out = cli_in_process("--config", str(config), "record-usage", "--from", "-", "--unkeyed-now",
                      input=keyless, cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr
    assert counters(kb)[0]["alpha@1.0.0"] == (2, 2)
    keyed = line("alpha", event_id="job-1") + "\n"
    for _ in range(2):
        cli_in_process(
            "--config", str(config), "record-usage", "--from", "-", input=keyed, cwd=tmp_path
        )
    assert counters(kb)[0]["alpha@1.0.0"] == (3, 3), "an event_id still counts once"


def test_a_wrong_type_is_caught_everywhere_and_a_folder_name_is_taken_for_its_type(kb, tmp_path):
    config = write_cli_config(tmp_path, kb, **{"import": {"type_map": {"pats": "patterns"}}})

    def cli(*args):
        return cli_in_process("--config", str(config), *args, cwd=tmp_path)

    for args in (("usage", "--type", "nope"), ("export", "--type", "nope"),
                 ("search", "x", "--mode", "text", "--type", "nope")):  # fmt: skip
        out = cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "'nope'" in out.stderr and "types: patterns" in out.stderr, args
    folder = cli("usage", "--type", "pats", "--json")
    assert folder.returncode == 0, folder.stderr
    assert "'pats' is the folder of artifact type 'patterns'" in folder.stderr
    record = cli("record-usage", "nope", "alpha", "--success")
    assert record.returncode == 1 and "there is no type 'nope'; types: patterns" in record.stderr


def test_usage_text_fits_80_columns_keeps_versions_and_json_daily_has_dates(kb, tmp_path):
    long_id = "a-really-long-artifact-identifier-that-goes-on-and-on"
    write(tmp_path / "td2", f"patterns/{long_id}.json", {"id": long_id, "version": "12.3.4"})
    with connect(kb, autocommit=True) as conn:
        import_artifacts(conn, scan(tmp_path / "td2"), corpus="td2")
    ingest(kb, [*history(60, 3), line(long_id, used_at=NOW.isoformat())])
    config = write_cli_config(tmp_path, kb)
    out = cli_in_process("--config", str(config), "usage", "--since", "90d", env={"COLUMNS": "80"},
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    assert "per 9 days" in lines[1]
    assert any(line.startswith("patterns/a-really-long") and "…@12.3.4" in line for line in lines)
    report = json.loads(
        cli_in_process(
            "--config", str(config), "usage", "--since", "7d", "--json", cwd=tmp_path
        ).stdout
    )
    assert len(report["days"]) == 7 == len(report["top"][0]["daily"])
    assert report["days"][-1] == report["end"]
