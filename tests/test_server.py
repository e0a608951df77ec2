"""serve: the MCP tools in-process (mcp.Client), a real HTTP server process driven by the SDK's
streamable HTTP client and plain HTTP, and a real stdio subprocess whose stdout must carry
nothing but the protocol."""

import asyncio
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2
import psycopg
import pytest
from conftest import ROOT, clean_env, cli_in_process, run_cli, write_cli_config
from embed_fixtures import run_embed
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from singularity_ops.db import connect
from singularity_ops.server import Knowledge, build_mcp
from singularity_ops.tokens import create_token

SNAPSHOT = Path(__file__).parent / "snapshots" / "mcp_tools.json"


@pytest.fixture
def embedded(corpus_db, tmp_path):
    settings, _root = corpus_db
    run_embed(settings, None)
    return settings, write_cli_config(tmp_path, settings)


@pytest.fixture
def knowledge(embedded):
    settings, _config = embedded
    with Knowledge.open(settings, pool_size=4) as kb:
        yield kb


def call(server, steps):
    """Run `steps(client)` against `server` (an MCPServer, or a URL with headers) and return
    what it returns."""

    async def main():
        async with Client(server) as client:
            return await steps(client)

    return asyncio.run(main())


def tools_listing(tools) -> list[dict]:
    return [
        {
            "name": t.name,
            "description": t.description,
            "input_schema": t.input_schema,
            "output_schema": t.output_schema,
            "annotations": t.annotations.model_dump(exclude_none=True) if t.annotations else None,
        }
        for t in sorted(tools, key=lambda t: t.name)
    ]


def test_tools_list_matches_the_reviewed_snapshot(knowledge):
    listing = tools_listing(call(build_mcp(knowledge), lambda c: c.list_tools()).tools)
    if os.environ.get("SINGULARITY_UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(listing, indent=2, sort_keys=True) + "\n")
    assert listing == json.loads(SNAPSHOT.read_text()), (
        "the tools' schemas changed; review the difference, then regenerate with "
        "SINGULARITY_UPDATE_SNAPSHOTS=1 ./scripts/test tests/test_server.py"
    )
    names = [t["name"] for t in listing]
    assert names == ["get_artifact", "record_usage", "record_usage_batch", "search", "usage_report"]
    read_only = {t["name"] for t in listing if t["annotations"]["read_only_hint"]}
    assert read_only == {"get_artifact", "search", "usage_report"}


def test_search_get_and_record_tie_the_outcome_to_the_search(knowledge, embedded):
    settings, _ = embedded

    async def steps(client):
        found = await client.call_tool("search", {"query": "consumer retries failures", "limit": 3})
        assert not found.is_error, found.content
        result = found.structured_content
        top = result["hits"][1]
        got = await client.call_tool(
            "get_artifact",
            {"artifact_type": top["artifact_type"], "artifact_id": top["artifact_id"]},
        )
        args = {
            "artifact_type": top["artifact_type"],
            "artifact_id": top["artifact_id"],
            "success": True,
            "search_id": result["search_id"],
            "event_id": "agent-run-1",
            "duration_ms": 120,
        }
        first = await client.call_tool("record_usage", args)
        again = await client.call_tool("record_usage", args)
        return (
            result,
            top,
            got.structured_content,
            first.structured_content,
            again.structured_content,
        )

    result, top, artifact, first, again = call(build_mcp(knowledge), steps)
    assert len(result["hits"]) == 3 and result["search_id"]
    assert {"source_path", "vector_rank", "text_rank", "score", "name"} <= set(top)
    assert artifact["source_path"] == top["source_path"] and artifact["truncated"] is False
    assert json.loads(artifact["content_raw"]) == artifact["content"]
    assert (first["recorded"], first["usage_count"]) == (True, 1)
    assert (again["recorded"], again["usage_count"]) == (False, 1), "a retry counts once"
    with connect(settings) as conn:
        rank, metadata = conn.execute(
            "SELECT search_rank, metadata FROM artifact_usage WHERE search_id = %s",
            (result["search_id"],),
        ).fetchone()
    assert rank == 2 and "reported_by" not in metadata  # stdio/in-process: no token, no name


def test_failures_are_tool_errors_that_say_what_to_do(knowledge):
    async def steps(client):
        return [
            await client.call_tool("get_artifact", {"artifact_type": "x", "artifact_id": "nope"}),
            await client.call_tool("search", {"query": "word " * 5000}),
            await client.call_tool("search", {"query": "queue", "limit": 10_000}),
            await client.call_tool("search", {"query": "queue", "types": ["no-such-type"]}),
            await client.call_tool(
                "record_usage",
                {"artifact_type": "x", "artifact_id": "nope", "success": True},
            ),
            await client.call_tool("usage_report", {"since": "forever"}),
        ]

    results = call(build_mcp(knowledge), steps)
    texts = [r.content[0].text for r in results]
    assert all(r.is_error for r in results), texts
    assert "search" in texts[0] and "x/nope" in texts[0]
    assert "search.max_query" in texts[1]
    assert "search.max_top_k" in texts[2]
    assert "no-such-type" in texts[3] and "types:" in texts[3]
    assert "x/nope" in texts[4]
    assert "since" in texts[5]


def test_read_only_leaves_the_write_tools_out(embedded):
    settings, _ = embedded
    with Knowledge.open(settings, pool_size=2, read_only=True, warm=False) as kb:
        tools = call(build_mcp(kb), lambda c: c.list_tools()).tools
    assert sorted(t.name for t in tools) == ["get_artifact", "search", "usage_report"]


def test_a_batch_records_the_valid_events_and_lists_each_bad_one(knowledge, embedded):
    settings, _ = embedded
    events = [
        {
            "artifact_type": "prompts",
            "artifact_id": "queue_worker",
            "success": True,
            "event_id": "b1",
        },
        {"artifact_type": "prompts", "artifact_id": "missing", "success": True},
        {"artifact_type": "prompts", "artifact_id": "queue_worker", "success": "yes"},
        {
            "artifact_type": "prompts",
            "artifact_id": "queue_worker",
            "success": False,
            "event_id": "b1",
        },
    ]
    result = call(
        build_mcp(knowledge), lambda c: c.call_tool("record_usage_batch", {"events": events})
    ).structured_content
    assert (result["received"], result["recorded"], result["duplicates"]) == (4, 1, 1), result
    assert [e["index"] for e in result["errors"]] == [1, 2]
    assert "prompts/missing" in result["errors"][0]["error"]
    assert "success" in result["errors"][1]["error"]
    with connect(settings) as conn:
        uses = conn.execute(
            "SELECT usage_count FROM knowledge_artifacts WHERE artifact_id = 'queue_worker'"
        ).fetchone()[0]
    assert uses == 1


def test_big_content_is_cut_with_a_flag_and_the_resource_gives_all_of_it(knowledge, embedded):
    settings, _ = embedded
    big = json.dumps({"id": "big", "body": "x" * 50_000})
    with connect(settings, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
            " VALUES ('pattern', 'big', %s, %s::jsonb)",
            (big, big),
        )

    async def steps(client):
        got = await client.call_tool(
            "get_artifact", {"artifact_type": "pattern", "artifact_id": "big"}
        )
        whole = await client.read_resource("kb://artifact/pattern/big")
        return got.structured_content, whole

    view, whole = call(build_mcp(knowledge), steps)
    assert view["truncated"] is True and view["content"] is None
    assert len(view["content_raw"]) == 20_000 and view["total_chars"] == len(big)
    assert whole.contents[0].text == big


def test_the_prompt_teaches_the_loop(knowledge):
    prompt = call(
        build_mcp(knowledge), lambda c: c.get_prompt("use_knowledge_base", {"task": "add retries"})
    )
    text = prompt.messages[0].content.text
    assert text.index("search") < text.index("get_artifact") < text.index("record_usage")
    assert "search_id" in text and "add retries" in text


# --- a real HTTP server process ----------------------------------------------------------------


@contextmanager
def http_server(config: Path, *args: str):
    """`serve --transport http --port 0` as a process; yields (base URL, process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "singularity_ops", "--config", str(config), "serve",
         "--transport", "http", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        cwd=config.parent,
    )  # fmt: skip
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        line = proc.stderr.readline() if ready else ""
        match = re.search(r"http://127\.0\.0\.1:(\d+)/mcp", line)
        assert match, f"no address announced: {line!r} {proc.poll()}"
        yield f"http://127.0.0.1:{match.group(1)}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def tokens(settings):
    with connect(settings, autocommit=True) as conn:
        return create_token(conn, "reader").token, create_token(conn, "writer", scope="write").token


def mcp_over_http(url: str, token: str | None, steps):
    async def main():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(url + "/mcp", http_client=http)) as client,
        ):
            return await steps(client)

    return asyncio.run(main())


def test_http_needs_a_token_and_write_scope_for_writes(embedded):
    settings, config = embedded
    reader, writer = tokens(settings)
    record = {
        "artifact_type": "prompts",
        "artifact_id": "queue_worker",
        "success": True,
        "event_id": "h1",
    }
    with http_server(config) as (url, proc):
        assert httpx2.get(url + "/healthz").json() == {"status": "ok", "sessions": 0}
        anonymous = httpx2.post(
            url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        )
        assert anonymous.status_code == 401
        forged = httpx2.post(url + "/v1/search", json={"query": "queue"},
                             headers={"Authorization": "Bearer sops_forged"})  # fmt: skip
        assert forged.status_code == 401

        async def read_then_write(client):
            found = await client.call_tool("search", {"query": "queue worker", "limit": 2})
            refused = await client.call_tool("record_usage", record)
            return found, refused

        found, refused = mcp_over_http(url, reader, read_then_write)
        assert not found.is_error and found.structured_content["hits"]
        assert refused.is_error and "--scope write" in refused.content[0].text

        async def write_twice(client):
            first = await client.call_tool("record_usage", record)
            second = await client.call_tool("record_usage", record)
            return first.structured_content, second.structured_content

        first, second = mcp_over_http(url, writer, write_twice)
        assert (first["recorded"], second["recorded"]) == (True, False), "duplicate event_id"

        head = {"Authorization": f"Bearer {reader}"}
        assert httpx2.post(url + "/v1/usage", json=record, headers=head).status_code == 403
        searched = httpx2.post(url + "/v1/search", json={"query": "queue worker", "limit": 1},
                               headers=head)  # fmt: skip
        assert searched.status_code == 200 and len(searched.json()["hits"]) == 1
        got = httpx2.get(url + "/v1/artifacts/prompts/queue_worker", headers=head)
        assert got.status_code == 200 and got.json()["source_path"] == "prompts/queue_worker.json"
        missing = httpx2.get(url + "/v1/artifacts/prompts/nope", headers=head)
        assert missing.status_code == 404 and "search" in missing.json()["error"]
        bad = httpx2.post(url + "/v1/search", content=b"{not json", headers=head)
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]
        posted = httpx2.post(url + "/v1/usage", json={"events": [record, {"success": 1}]},
                             headers={"Authorization": f"Bearer {writer}"})  # fmt: skip
        assert posted.status_code == 200
        assert (posted.json()["duplicates"], len(posted.json()["errors"])) == (1, 1)

        # A client that left has no session behind it.
        assert httpx2.get(url + "/healthz").json()["sessions"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "finishes what is in flight, then exits 0"
    with connect(settings) as conn:
        reporters = conn.execute(
            "SELECT DISTINCT metadata->>'reported_by' FROM artifact_usage"
        ).fetchall()
    assert reporters == [("writer",)], "usage records the token's name, never the caller's word"


def test_http_refuses_a_foreign_host_or_origin_and_a_huge_body(embedded):
    settings, config = embedded
    reader, _writer = tokens(settings)
    head = {"Authorization": f"Bearer {reader}", "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    with http_server(config, "--max-body-bytes", "2048") as (url, _proc):
        rebound = httpx2.post(url + "/mcp", json=init, headers={**head, "Host": "evil.example"})
        assert rebound.status_code == 421
        foreign = httpx2.post(
            url + "/mcp", json=init, headers={**head, "Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        v1 = httpx2.post(
            url + "/v1/search", json={"query": "q"}, headers={**head, "Host": "evil.example"}
        )
        assert v1.status_code == 421
        huge = httpx2.post(url + "/v1/search", json={"query": "q" * 5000}, headers=head)
        assert huge.status_code == 400 and "2,048 bytes" in huge.json()["error"]


def test_serve_refuses_exposure_before_loading_anything(tmp_path):
    config = tmp_path / "singularity.yaml"
    config.write_text("database:\n  url: postgresql://nobody@127.0.0.1:1/nothing\n")
    open_door = run_cli("--config", str(config), "serve", "--transport", "http",
                        "--host", "0.0.0.0", "--no-auth", cwd=tmp_path)  # fmt: skip
    assert open_door.returncode == 2 and "--no-auth is refused" in open_door.stderr
    no_hosts = run_cli("--config", str(config), "serve", "--transport", "http",
                       "--host", "0.0.0.0", cwd=tmp_path)  # fmt: skip
    assert no_hosts.returncode == 2 and "--allowed-host" in no_hosts.stderr


def test_serve_fails_fast_with_the_search_checks(db_settings, tmp_path):
    config = write_cli_config(tmp_path, db_settings)  # an empty database: not migrated
    out = run_cli("--config", str(config), "serve", cwd=tmp_path, timeout=120)
    assert out.returncode == 1 and "singularity-ops migrate" in out.stderr
    assert out.stdout == ""


# --- a real stdio process ----------------------------------------------------------------------


def test_stdio_stdout_carries_only_the_protocol(embedded):
    _settings, config = embedded
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "search", "arguments": {"query": "pancake recipe", "limit": 1}}},
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "singularity_ops", "--config", str(config), "serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env(), cwd=ROOT,
    )  # fmt: skip
    out, err = "", ""
    try:
        proc.stdin.write("".join(json.dumps(r) + "\n" for r in requests))
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while '"id":2' not in out.replace(" ", "") and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = proc.stdout.readline()
            if not line:
                break
            out += line
        proc.stdin.close()  # EOF: the server ends by itself
        assert proc.wait(timeout=30) == 0
        out += proc.stdout.read()
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in out.splitlines()]  # any stray print fails here
    assert all(m.get("jsonrpc") == "2.0" for m in lines), out
    answers = {m["id"]: m for m in lines if "id" in m}
    assert answers[1]["result"]["serverInfo"]["name"] == "singularity-ops"
    hit = answers[2]["result"]["structuredContent"]["hits"][0]
    assert hit["artifact_id"] == "pancakes", err


# --- the CLI faces: show and token -------------------------------------------------------------


def test_show_prints_the_text_and_json_has_everything(embedded):
    _settings, config = embedded
    text = cli_in_process(
        "--config", str(config), "show", "prompts/queue_worker", cwd=config.parent
    )
    assert text.returncode == 0 and json.loads(text.stdout)["id"] == "queue_worker"
    assert "prompts/queue_worker.json" in text.stderr
    as_json = cli_in_process("--config", str(config), "show", "prompts/queue_worker", "--json",
                      cwd=config.parent)  # fmt: skip
    view = json.loads(as_json.stdout)
    assert view["source_path"] == "prompts/queue_worker.json" and view["usage_count"] == 0
    bad = cli_in_process("--config", str(config), "show", "queue_worker", cwd=config.parent)
    assert bad.returncode == 2 and "TYPE/ID" in bad.stderr
    missing = cli_in_process("--config", str(config), "show", "prompts/nope", cwd=config.parent)
    assert missing.returncode == 1 and "prompts/nope" in missing.stderr
    assert missing.stderr.startswith(
        "singularity-ops: error: no artifact prompts/nope; find artifacts with `search`"
    )


def test_tokens_are_shown_once_and_stored_as_hashes(embedded):
    settings, config = embedded
    made = cli_in_process("--config", str(config), "token", "create", "agent-1", "--scope", "write",
                   cwd=config.parent)  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("sops_") and len(token) > 40
    listed = cli_in_process("--config", str(config), "token", "list", "--json", cwd=config.parent)
    assert [t["name"] for t in json.loads(listed.stdout)] == ["agent-1"]
    assert token not in listed.stdout
    with psycopg.connect(**settings.conninfo()) as conn:
        stored = conn.execute("SELECT token_sha256 FROM api_tokens").fetchone()[0]
    assert token.encode() not in bytes(stored) and len(stored) == 32
    again = cli_in_process("--config", str(config), "token", "create", "agent-1", cwd=config.parent)
    assert again.returncode == 1 and "revoke" in again.stderr
    bad = cli_in_process("--config", str(config), "token", "create", "../x", cwd=config.parent)
    assert bad.returncode == 2
    revoked = cli_in_process(
        "--config", str(config), "token", "revoke", "agent-1", cwd=config.parent
    )
    assert revoked.returncode == 0
    with connect(settings) as conn:
        from singularity_ops.tokens import verify_token

        assert verify_token(conn, token) is None


def test_a_token_is_checked_on_a_read_only_server_too(embedded):
    settings, _ = embedded
    from singularity_ops.tokens import verify_token

    with connect(settings, autocommit=True) as conn:
        created = create_token(conn, "replica-reader")
        conn.execute("SET default_transaction_read_only = on")  # as on a hot standby
        assert verify_token(conn, created.token).name == "replica-reader"
        assert verify_token(conn, created.token + "x") is None
        assert verify_token(conn, "not-a-token") is None


def test_database_trouble_reaches_an_agent_in_the_clis_words(knowledge, embedded):
    settings, _ = embedded
    with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER TABLE search_log RENAME TO search_log_moved")
        conn.execute("ALTER TABLE artifact_usage RENAME TO artifact_usage_moved")
    try:
        result = call(
            build_mcp(knowledge),
            lambda c: c.call_tool(
                "record_usage",
                {"artifact_type": "prompts", "artifact_id": "queue_worker", "success": True},
            ),
        )
    finally:
        with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
            conn.execute("ALTER TABLE search_log_moved RENAME TO search_log")
            conn.execute("ALTER TABLE artifact_usage_moved RENAME TO artifact_usage")
    assert result.is_error
    assert "not migrated to this toolkit's schema" in result.content[0].text
    assert "singularity-ops migrate" in result.content[0].text


def test_a_taken_port_is_refused_before_the_database_or_the_model(tmp_path):
    import socket

    config = tmp_path / "singularity.yaml"
    config.write_text("database:\n  url: postgresql://nobody@127.0.0.1:1/nothing\n")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        out = run_cli("--config", str(config), "serve", "--transport", "http", "--port", port,
                      cwd=tmp_path, timeout=120)  # fmt: skip
    # The database is unreachable too: the port is what it reports, so it looked there first.
    assert out.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in out.stderr
