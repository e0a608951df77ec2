"""The benchmark suite keeps working: its quick mode runs end to end (numbers are not judged here)."""

import subprocess
import sys

from conftest import ROOT, TEST_DATA, TEST_PORT, clean_env


def test_quick_benchmark_produces_the_full_table(tmp_path):
    env = clean_env()
    env.update(PGDATA=str(TEST_DATA), PGPORT=str(TEST_PORT))
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = (tmp_path / "latest.md").read_text()
    for case in (
        "import 200 artifacts",
        "re-import 200 unchanged",
        "embed 20 artifacts",
        "embed with nothing to do",
        "search p95",
        "search recall@10",
        "vector equality",
        "vs SentenceTransformer.encode",
        "search, cold process",
        "search peak RSS",
        "relevance, starter set, 40 queries, --mode hybrid",
        "relevance, starter set, 40 queries, --mode text",
        "hybrid with the search log on",
        "bare onnxruntime+tokenizers+psycopg floor",
        "artifacts, peak RSS of the process",
        "backup ",
        "restore of that dump",
        "--help",
        "migrate with nothing to do",
    ):
        assert case in table, f"missing benchmark row: {case}"
    assert (
        not (ROOT / "bench" / "results" / "latest.md").exists()
        or "(quick)" not in (ROOT / "bench" / "results" / "latest.md").read_text()
    ), "a quick run must not overwrite the committed results"


QUICK_STARTUP = ("--quick", "--only", "startup", "--out")


def test_bench_runs_against_any_server_the_toolkit_can_use(tmp_path):
    """Not only the project-local cluster: here the session server through DATABASE_URL, as
    after `eval "$(singularity-ops env)"` or on a shared server."""
    env = clean_env()
    env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{TEST_PORT}/postgres"
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), *QUICK_STARTUP, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "migrate with nothing to do" in (tmp_path / "latest.md").read_text()
