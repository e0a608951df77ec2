"""Generate a realistic templates_data-like tree of N artifacts (1-4 KB JSON each) for benchmarks."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TYPES = ["architecture_patterns", "code_generation", "quality_templates", "prompts", "frameworks"]
LANGUAGES = ["elixir", "go", "python", "rust", "typescript", "sql"]
WORDS = [
    "consumer",
    "producer",
    "stream",
    "retry",
    "backoff",
    "circuit",
    "breaker",
    "cache",
    "eviction",
    "supervisor",
    "genserver",
    "migration",
    "index",
    "transaction",
    "snapshot",
    "projection",
    "aggregate",
    "command",
    "query",
    "event",
    "handler",
    "timeout",
    "deadline",
    "context",
    "cancellation",
    "pool",
    "connection",
    "batch",
    "copy",
    "merge",
    "upsert",
    "vector",
    "embedding",
    "search",
    "ranking",
    "review",
    "checklist",
    "security",
    "performance",
    "latency",
    "throughput",
]


def artifact(rng: random.Random, n: int) -> dict:
    size = rng.randint(1000, 4000)
    words = [rng.choice(WORDS) for _ in range(size // 7)]
    return {
        "id": f"artifact_{n:06d}",
        "version": f"1.{rng.randint(0, 12)}.{rng.randint(0, 9)}",
        "name": " ".join(words[:4]).title(),
        "description": " ".join(words[4:30]),
        "language": rng.choice(LANGUAGES),
        "tags": sorted(set(rng.sample(WORDS, 4))),
        "content": " ".join(words[30:]),
        "metadata": {"author": "bench", "n": n},
    }


def generate(root: Path, count: int, seed: int = 42) -> Path:
    """Write `count` artifacts under root/<type>/<bucket>/artifact_NNNNNN.json."""
    rng = random.Random(seed)
    for n in range(count):
        path = root / TYPES[n % len(TYPES)] / f"bucket_{n % 100:02d}" / f"artifact_{n:06d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(artifact(rng, n), indent=2) + "\n")
    return root


if __name__ == "__main__":
    generate(Path(sys.argv[1]), int(sys.argv[2]))
