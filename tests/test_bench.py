"""The benchmark suite keeps working: each case of its quick mode runs end to end and writes
its rows (numbers are not judged here)."""

import ast
import subprocess
import sys

import pytest
from conftest import ROOT, TEST_DATA, TEST_PORT, clean_env

pytestmark = pytest.mark.usefixtures("test_server")  # the benchmark runs against it

# The rows each case of `bench/run.py --quick` must write. One test per case, so that the
# suite's workers share the cases out.
CASE_ROWS = {
    "import": ("import 200 artifacts", "re-import 200 unchanged"),
    "embed": (
        "embed 20 artifacts",
        "artifacts, peak RSS of the process",
        "embed with nothing to do",
    ),
    "search": ("search p95", "search recall@10", "hybrid with the search log on"),
    "model": (  # the comparisons with sentence-transformers are left out of --quick
        "search, cold process",
        "search peak RSS",
        "bare onnxruntime+tokenizers+psycopg floor",
        "relevance, starter set, 40 queries, --mode hybrid",
        "relevance, starter set, 40 queries, --mode text",
    ),
    "usage": ("record-usage --from", "usage --since 30d"),
    "backup": ("backup ", "restore of that dump"),
    "startup": ("--help", "migrate with nothing to do"),
    "serve": ("serve: ready", "serve: search p50", "serve: 8 clients", "serve: soak"),
}


def bench_cases() -> list[str]:
    """bench/run.py's CASES, read from its source."""
    for line in (ROOT / "bench" / "run.py").read_text().splitlines():
        if line.startswith("CASES = "):
            return ast.literal_eval(line.split("=", 1)[1].strip())
    raise AssertionError("bench/run.py has no CASES line")


def test_every_case_of_the_benchmark_is_checked():
    assert bench_cases() == list(CASE_ROWS), "add the new case and its rows to CASE_ROWS"


@pytest.mark.parametrize("case", list(CASE_ROWS))
def test_each_quick_case_writes_its_rows(case, tmp_path):
    env = clean_env()
    env.update(PGDATA=str(TEST_DATA), PGPORT=str(TEST_PORT))
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", case, "--out",
         str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = (tmp_path / "latest.md").read_text()
    assert "(quick)" in table
    for row in CASE_ROWS[case]:
        assert row in table, f"missing benchmark row of {case}: {row}"


def test_the_committed_results_are_not_a_quick_run():
    latest = ROOT / "bench" / "results" / "latest.md"
    assert not latest.exists() or "(quick)" not in latest.read_text(), (
        "bench/results/latest.md holds a --quick run: rerun ./scripts/bench, or restore it"
    )


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
