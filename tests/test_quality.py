"""validate --quality: what retrieval will struggle with, with a path and a reason each."""

import json

from conftest import cli_in_process, free_port, write_cli_config
from corpus_fixtures import write
from embed_fixtures import imported, run_embed

GOOD = "Retries idempotent HTTP requests with exponential backoff and a deadline."


def corpus(root):
    write(root, "code/retry.json", {"id": "retry", "name": "HTTP retries", "description": GOOD})
    write(
        root,
        "code/retry_copy.json",
        {"id": "retry_copy", "name": "HTTP retries", "description": GOOD},
    )
    write(root, "code/bare.json", {"id": "bare", "name": "Bare thing", "category": "misc"})
    write(root, "code/terse.json", {"id": "terse", "name": "Terse note", "description": "Does it."})
    write(
        root,
        "code/nats_consumer_go.json",
        {"id": "nats_consumer_go", "name": "nats_consumer_go", "description": GOOD + " In Go."},
    )
    write(
        root,
        "code/fine.json",
        {
            "id": "circuit_breaker",
            "name": "Circuit breaker",
            "description": "Stop calling a "
            "dependency that keeps failing, then probe it before resuming.",
        },
    )
    return root  # fmt: skip


def test_quality_lists_each_weak_artifact_with_its_file_and_reason(kb_settings, tmp_path):
    root = corpus(tmp_path / "td")
    imported(kb_settings, root)
    run_embed(kb_settings, None)
    config = write_cli_config(tmp_path, kb_settings, **{"import": {"root": str(root)}})
    out = cli_in_process("--config", str(config), "validate", "--quality", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    found = {(q["path"], q["issue"]) for q in report["quality"]}
    assert found == {
        ("code/bare.json", "no-description"),
        ("code/terse.json", "short-description"),
        ("code/nats_consumer_go.json", "name-repeats-id"),
        ("code/retry.json", "near-duplicate"),
    }
    [pair] = [q for q in report["quality"] if q["issue"] == "near-duplicate"]
    assert (
        pair["other_path"] == "code/retry_copy.json"
        and "similar to code/retry_copy" in pair["reason"]
    )
    assert report["near_duplicates_checked"] is True
    text = cli_in_process("--config", str(config), "validate", "--quality", cwd=tmp_path)
    assert "code/terse.json: short-description: the description has 2 word(s)" in text.stdout
    assert "4 quality finding(s)" in text.stdout


def test_without_the_database_the_file_checks_still_run(tmp_path):
    root = corpus(tmp_path / "td")
    (tmp_path / "singularity.yaml").write_text(
        f"database:\n  url: postgresql://x@127.0.0.1:{free_port()}/kb\nimport:\n  root: {root}\n"
    )
    out = cli_in_process("validate", "--quality", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["near_duplicates_checked"] is False
    assert len(report["quality"]) == 3 and "near-duplicates not checked" in out.stderr


def test_a_missing_description_says_when_the_glossary_stands_in(tmp_path):
    from singularity_ops.corpus import scan
    from singularity_ops.quality import lint_artifacts

    root = tmp_path / "td"
    write(root, "technology_detector/falco.json", {"id": "falco", "name": "Falco"})
    write(root, "technology_detector/zorblax.json", {"id": "zorblax", "name": "Zorblax"})
    reasons = {
        q.path: q.reason
        for q in lint_artifacts(scan(root).artifacts)
        if q.issue == "no-description"
    }
    assert "glossary" in reasons["technology_detector/falco.json"]
    assert "glossary" not in reasons["technology_detector/zorblax.json"]
