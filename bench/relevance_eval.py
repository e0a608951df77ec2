"""Search relevance on the evaluation corpus (bench/eval_corpus.py, bench/relevance_eval.json).

Builds a database of its own on the configured server (the project-local cluster by default),
imports and embeds the 161 artifacts with the toolkit's own functions, then reports hit@1,
hit@5 and MRR@10 per mode, split (tune / test) and kind of query. Every choice of search.py
(fusion, weights, text strategy, embedded text) was made on the tune half; the test half is
what the README reports.

    .venv/bin/python bench/relevance_eval.py                 # modes as shipped, both halves
    .venv/bin/python bench/relevance_eval.py --split tune --variants   # the fusion candidates
    .venv/bin/python bench/relevance_eval.py --json          # machine-readable
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import eval_corpus  # noqa: E402

from singularity_ops.config import Settings, load_settings  # noqa: E402
from singularity_ops.corpus import scan  # noqa: E402
from singularity_ops.db import connect, ensure_db  # noqa: E402
from singularity_ops.embed import embed  # noqa: E402
from singularity_ops.extensions import create_extensions  # noqa: E402
from singularity_ops.importer import import_artifacts  # noqa: E402
from singularity_ops.migrate import migrate  # noqa: E402
from singularity_ops.providers import make_provider  # noqa: E402
from singularity_ops.search import DEFAULT_FUSION, MODES, Fusion, SearchQuery, run_search  # noqa: E402

DBNAME = "singularity_relevance_eval"
QUERIES = ROOT / "bench" / "relevance_eval.json"
STARTER_DBNAME = "singularity_relevance_starter"
STARTER_QUERIES = ROOT / "bench" / "relevance.json"  # over templates_data/, no halves

# The candidates tried on the tune half (search.Fusion fields); the shipped default is first.
VARIANTS: dict[str, Fusion] = {
    "shipped": DEFAULT_FUSION,
    "rrf-equal-or": Fusion(method="rrf", vector_weight=1.0, text_weight=1.0, text_match="or"),
    "rrf-equal-and": Fusion(method="rrf", vector_weight=1.0, text_weight=1.0, text_match="and"),
    "rrf-2:1-or": Fusion(method="rrf", vector_weight=2.0, text_weight=1.0, text_match="or"),
    "rrf-2:1-and": Fusion(method="rrf", vector_weight=2.0, text_weight=1.0, text_match="and"),
    "rrf-3:1-and": Fusion(method="rrf", vector_weight=3.0, text_weight=1.0, text_match="and"),
    "rsf-0.7-or": Fusion(method="rsf", vector_weight=0.7, text_weight=0.3, text_match="or"),
    "rsf-0.7-and": Fusion(method="rsf", vector_weight=0.7, text_weight=0.3, text_match="and"),
    "rsf-0.8-and": Fusion(method="rsf", vector_weight=0.8, text_weight=0.2, text_match="and"),
    "rsf-0.6-and": Fusion(method="rsf", vector_weight=0.6, text_weight=0.4, text_match="and"),
    "rsf-0.5-and": Fusion(method="rsf", vector_weight=0.5, text_weight=0.5, text_match="and"),
    "rsf-0.9-and": Fusion(method="rsf", vector_weight=0.9, text_weight=0.1, text_match="and"),
    "rsf-0.8-strict": Fusion(method="rsf", vector_weight=0.8, text_weight=0.2, text_match="strict"),
    "rsf-0.7-strict": Fusion(method="rsf", vector_weight=0.7, text_weight=0.3, text_match="strict"),
    "rrf-3:1-strict": Fusion(method="rrf", vector_weight=3.0, text_weight=1.0, text_match="strict"),
    "rrf-5:1-and": Fusion(method="rrf", vector_weight=5.0, text_weight=1.0, text_match="and"),
    "rrf-2:1-strict": Fusion(method="rrf", vector_weight=2.0, text_weight=1.0, text_match="strict"),
    "rrf-1:1-all": Fusion(method="rrf", vector_weight=1.0, text_weight=1.0, text_match="all"),
    "rrf-1.5:1-all": Fusion(method="rrf", vector_weight=1.5, text_weight=1.0, text_match="all"),
    "rrf-2:1-all": Fusion(method="rrf", vector_weight=2.0, text_weight=1.0, text_match="all"),
    "rrf-3:1-all": Fusion(method="rrf", vector_weight=3.0, text_weight=1.0, text_match="all"),
    "rrf-4:1-all": Fusion(method="rrf", vector_weight=4.0, text_weight=1.0, text_match="all"),
    "rsf-0.7-all": Fusion(method="rsf", vector_weight=0.7, text_weight=0.3, text_match="all"),
    "rsf-0.5-all": Fusion(method="rsf", vector_weight=0.5, text_weight=0.5, text_match="all"),
    "boost-0.01-all": Fusion(method="boost", text_weight=0.01, text_match="all"),
    "boost-0.02-all": Fusion(method="boost", text_weight=0.02, text_match="all"),
    "boost-0.03-all": Fusion(method="boost", text_weight=0.03, text_match="all"),
    "boost-0.05-all": Fusion(method="boost", text_weight=0.05, text_match="all"),
    "boost-0.08-all": Fusion(method="boost", text_weight=0.08, text_match="all"),
    "boost-0.12-all": Fusion(method="boost", text_weight=0.12, text_match="all"),
    "boost-0.05-and": Fusion(method="boost", text_weight=0.05, text_match="and"),
}


def build(base: Settings, dbname: str = DBNAME, root: Path | None = None) -> Settings:
    """A fresh database holding a corpus (default: the evaluation corpus), embedded."""
    with psycopg.connect(**base.conninfo("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    settings = replace(base, dbname=dbname)
    with tempfile.TemporaryDirectory(prefix="sops-eval-") as tmp:
        if root is None:
            root = Path(tmp)
            eval_corpus.write(root)
        with connect(settings, autocommit=True) as conn:
            create_extensions(conn, ["vector", "timescaledb", "postgis"])
            migrate(conn, settings.migrations_dir)
            import_artifacts(conn, scan(root, type_map=base.type_map))
        with connect(settings, autocommit=True) as conn:  # now the vector type is registered
            embed(conn, None, settings.embedding)
    return settings


def _ranked(conn, settings: Settings, options: dict, vector, query: str) -> list[str]:
    """The top 10 of one run (mode + fusion) for one query, as type/id."""
    hits = run_search(
        conn,
        settings.embedding,
        SearchQuery(mode=options["mode"], top_k=10),
        vector=vector,
        query=query,
        fusion=options.get("fusion"),
    )
    return [f"{h.artifact_type}/{h.artifact_id}" for h in hits]


def evaluate(settings: Settings, cases: list[dict], runs: dict[str, dict]) -> dict:
    """{run: {split: {kind: [hit1, hit5, mrr, n]}}} for each run (mode + fusion)."""
    provider = make_provider(settings.embedding)
    vectors = provider.embed([c["q"] for c in cases])
    out: dict = {}
    with connect(settings, autocommit=True) as conn:
        for label, options in runs.items():
            table: dict = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0.0, 0]))
            for case, vector in zip(cases, vectors, strict=True):
                ranked = _ranked(conn, settings, options, vector, case["q"])
                first = next((i for i, r in enumerate(ranked) if r in case["expect"]), None)
                for kind in (case["kind"], "all"):
                    cell = table[case["split"]][kind]
                    cell[3] += 1
                    if first is not None:
                        cell[0] += first == 0
                        cell[1] += first < 5
                        cell[2] += 1 / (first + 1)
            out[label] = {s: dict(kinds) for s, kinds in table.items()}
    return out


def misses(settings: Settings, cases: list[dict], options: dict, split: str) -> list[str]:
    """The queries of `split` whose expected artifact is not first, with what came first."""
    provider = make_provider(settings.embedding)
    lines = []
    with connect(settings, autocommit=True) as conn:
        for case in cases:
            if case["split"] != split:
                continue
            [vector] = provider.embed([case["q"]])
            ranked = _ranked(conn, settings, options, vector, case["q"])
            if not ranked or ranked[0] not in case["expect"]:
                rank = next((i + 1 for i, r in enumerate(ranked) if r in case["expect"]), None)
                lines.append(f"{rank or '-':>2}  {case['q']!r}: got {ranked[:3]}")
    return lines


def print_table(results: dict, splits: list[str]) -> None:
    """hit@1 / hit@5 / MRR@10 per run and kind of query, one table per split."""
    for split in splits:
        n = int(next(iter(results.values()))[split]["all"][3])
        print(f"\n{split} half ({n} queries): hit@1 / hit@5 / MRR@10")
        kinds = sorted({k for r in results.values() for k in r[split]} - {"all"})
        print(f"{'run':<22}{'all':>20}" + "".join(f"{k:>20}" for k in kinds))
        for label, result in results.items():
            cells = []
            for kind in ["all", *kinds]:
                h1, h5, mrr, count = result[split].get(kind, [0, 0, 0, 0])
                cells.append(
                    f"{h1 / count:.2f} {h5 / count:.2f} {mrr / count:.3f}".rjust(20)
                    if count
                    else "-".rjust(20)
                )
            print(f"{label:<22}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["tune", "test", "both"], default="both")
    parser.add_argument("--variants", action="store_true", help="also every fusion candidate")
    parser.add_argument("--misses", metavar="RUN", help="list the misses of one run")
    parser.add_argument("--reuse", action="store_true", help="keep the database of a last run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--starter",
        action="store_true",
        help="the starter set instead (bench/relevance.json over templates_data/)",
    )
    parser.add_argument(
        "--no-glossary",
        action="store_true",
        help="embed without the glossary: a knowledge base whose technologies it does not know",
    )
    args = parser.parse_args()
    if args.no_glossary:
        import singularity_ops.glossary

        singularity_ops.glossary.describe = lambda *names: None

    base = load_settings(cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "PGDATABASE"})
    ensure_db(base, timeout=60)
    if args.starter:
        dbname, root, queries = STARTER_DBNAME, ROOT / "templates_data", STARTER_QUERIES
    else:
        dbname, root, queries = DBNAME, None, QUERIES
    settings = replace(base, dbname=dbname) if args.reuse else build(base, dbname, root)
    cases = json.loads(queries.read_text())["queries"]
    if args.starter:  # one set: report it as the test half, every query of one kind
        cases = [{**c, "split": "test", "kind": "starter"} for c in cases]
        args.split = "test"
    runs: dict[str, dict] = {mode: {"mode": mode} for mode in MODES}
    if args.variants:
        runs.update({f"hybrid {k}": {"mode": "hybrid", "fusion": v} for k, v in VARIANTS.items()})
        for match in ("or", "and", "strict"):
            runs[f"text {match}"] = {"mode": "text", "fusion": Fusion(text_match=match)}
    if args.misses:
        for line in misses(settings, cases, runs[args.misses], args.split):
            print(line)
        return
    results = evaluate(settings, cases, runs)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print_table(results, ["tune", "test"] if args.split == "both" else [args.split])


if __name__ == "__main__":
    main()
