"""The setup chain end to end, through the real command."""

import json

from conftest import cli_in_process, write_cli_config
from corpus_fixtures import messy_tree, write


def test_chain_on_a_fresh_database_then_a_second_run_does_nothing(db_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    config = write_cli_config(tmp_path, db_settings, **{"import": {"root": str(root)}})
    first = cli_in_process("--config", str(config), "setup", cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    steps = ["ensure-db", "create-extensions", "migrate", "import", "embed"]
    assert [line.split(" ... ")[0] for line in lines[:5]] == steps
    assert all(line.endswith(" s)") for line in lines[:5]), "each step line ends with its duration"
    assert "knowledge base: 10 artifacts, 10 embedded; postgis" in first.stdout
    assert "nothing to do" not in first.stdout
    second = cli_in_process("--config", str(config), "setup", "--json", cwd=tmp_path, timeout=300)
    report = json.loads(second.stdout)
    assert report["did_work"] is False
    assert [s["step"] for s in report["steps"]] == steps
    assert report["verification"]["embedded"] == 10
    text = cli_in_process("--config", str(config), "setup", cwd=tmp_path)
    assert text.stdout.rstrip().endswith("nothing to do: everything was already up to date")


def test_a_failing_middle_step_stops_the_chain_and_names_it(db_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    write(root, "patterns/broken.json", "{ nope")
    config = write_cli_config(tmp_path, db_settings, **{"import": {"root": str(root)}})
    out = cli_in_process("--config", str(config), "setup", cwd=tmp_path, timeout=300)
    assert out.returncode == 1
    assert "setup stopped at import: 1 invalid file(s)" in out.stderr
    assert "patterns/broken.json:1:3" in out.stderr
    assert "embed ..." not in out.stdout and out.stdout.rstrip().endswith("import ... failed")


def test_skip_and_only_select_steps(db_settings, tmp_path):
    config = write_cli_config(
        tmp_path, db_settings, **{"import": {"root": str(messy_tree(tmp_path / "td"))}}
    )
    only = cli_in_process(
        "--config",
        str(config),
        "setup",
        "--only",
        "ensure-db",
        "--only",
        "create-extensions",
        "--json",
        cwd=tmp_path,
    )
    assert [s["step"] for s in json.loads(only.stdout)["steps"]] == [
        "ensure-db",
        "create-extensions",
    ]
    skipped = cli_in_process(
        "--config", str(config), "setup", "--skip", "embed", "--json", cwd=tmp_path
    )
    report = json.loads(skipped.stdout)
    assert [s["step"] for s in report["steps"]] == [
        "ensure-db",
        "create-extensions",
        "migrate",
        "import",
    ]
    verification = report["verification"]
    assert (verification["artifacts"], verification["embedded"]) == (10, 0)
    assert set(verification["extensions"]) == {"vector", "timescaledb", "postgis"}
    assert all(verification["extensions"].values()), "each with its version"
    both = cli_in_process(
        "--config", str(config), "setup", "--skip", "embed", "--only", "migrate", cwd=tmp_path
    )
    assert both.returncode == 2 and "either --skip or --only" in both.stderr
    bad = cli_in_process("--config", str(config), "setup", "--skip", "nonsense", cwd=tmp_path)
    assert bad.returncode == 2
