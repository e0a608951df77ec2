"""Load for `singularity-ops serve --transport http`: real MCP clients (the SDK's streamable
HTTP client) talking to 127.0.0.1 only, each run bounded in calls and seconds.

    python bench/serve_load.py latency URL TOKEN QUERIES.json --calls 200
    python bench/serve_load.py load URL TOKEN QUERIES.json --clients 8 --seconds 60

Prints one JSON document: counts, errors and latency percentiles in milliseconds.
bench/run.py (`--only serve`) starts the server, runs these in a separate process (the
clients' CPU is not the server's) and reads the server's RSS and /healthz around them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
import uuid
from urllib.parse import urlsplit

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _loopback_only(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"serve_load: refusing {url}: load goes to 127.0.0.1 only")


async def _client(url: str, token: str):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return http, Client(streamable_http_client(url + "/mcp", http_client=http))


async def latency(url: str, token: str, queries: list[str], calls: int) -> dict:
    """Single client: `calls` searches, get_artifacts and record_usages, one after another."""
    http, client = await _client(url, token)
    out: dict = {}
    async with http, client:
        await client.call_tool("search", {"query": "warm up"})
        times: dict[str, list[float]] = {"search": [], "get_artifact": [], "record_usage": []}
        errors = 0
        hits = []
        for query in itertools.islice(itertools.cycle(queries), calls):
            started = time.perf_counter()
            result = await client.call_tool("search", {"query": query, "limit": 8})
            times["search"].append((time.perf_counter() - started) * 1000)
            errors += result.is_error
            if not result.is_error and result.structured_content["hits"]:
                hits.append(
                    (result.structured_content["search_id"], result.structured_content["hits"][0])
                )
        for search_id, hit in itertools.islice(itertools.cycle(hits), calls):
            started = time.perf_counter()
            result = await client.call_tool(
                "get_artifact",
                {"artifact_type": hit["artifact_type"], "artifact_id": hit["artifact_id"]},
            )
            times["get_artifact"].append((time.perf_counter() - started) * 1000)
            errors += result.is_error
            started = time.perf_counter()
            result = await client.call_tool(
                "record_usage",
                {
                    "artifact_type": hit["artifact_type"],
                    "artifact_id": hit["artifact_id"],
                    "success": True,
                    "search_id": search_id,
                    "event_id": str(uuid.uuid4()),
                },
            )
            times["record_usage"].append((time.perf_counter() - started) * 1000)
            errors += result.is_error
    for tool, values in times.items():
        out[tool] = {
            "calls": len(values),
            "p50_ms": statistics.median(values) if values else None,
            "p95_ms": percentile(values, 0.95),
        }
    out["errors"] = errors
    return out


async def load(url: str, token: str, queries: list[str], clients: int, seconds: float) -> dict:
    """`clients` concurrent clients searching for `seconds` (each its own session)."""
    deadline = time.monotonic() + seconds
    times: list[float] = []
    errors: list[str] = []

    async def one(offset: int) -> None:
        http, client = await _client(url, token)
        async with http, client:
            for query in itertools.cycle(queries[offset:] + queries[:offset]):
                if time.monotonic() >= deadline:
                    return
                started = time.perf_counter()
                try:
                    result = await client.call_tool("search", {"query": query, "limit": 8})
                except Exception as exc:  # a bench counts every failure
                    errors.append(repr(exc)[:200])
                    continue
                times.append((time.perf_counter() - started) * 1000)
                if result.is_error:
                    errors.append(str(result.content)[:200])

    started = time.monotonic()
    await asyncio.gather(*(one(i * 7) for i in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "clients": clients,
        "seconds": elapsed,
        "calls": len(times),
        "per_second": len(times) / elapsed,
        "p50_ms": percentile(times, 0.5),
        "p95_ms": percentile(times, 0.95),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["latency", "load"])
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("queries", help="a JSON file: {'queries': [{'q': ...}, ...]}")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    _loopback_only(args.url)
    with open(args.queries, encoding="utf-8") as fh:
        queries = [case["q"] for case in json.load(fh)["queries"]]
    if args.what == "latency":
        result = asyncio.run(latency(args.url, args.token, queries, min(args.calls, 10_000)))
    else:
        seconds = min(args.seconds, 900)
        result = asyncio.run(load(args.url, args.token, queries, min(args.clients, 64), seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
