"""`env`, the command surface and start-up cost."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, TEST_PASSFILE, cli_in_process


def test_env_output_lets_psql_reach_the_database(db_settings):
    exported = cli_in_process("--database-url", db_settings.url(), "env")
    assert exported.returncode == 0, exported.stderr
    script = exported.stdout + "\npsql -X -At -c 'select current_database()'\n"
    # sh, not bash: /usr/bin:/bin is all there is in a Nix build sandbox, and it has no bash.
    # The password is the user's to supply for a server of their own (here the test passfile).
    out = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PGPASSFILE": str(TEST_PASSFILE)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == db_settings.dbname
    assert "export PGDATABASE=" in exported.stdout and "export PATH=" in exported.stdout


def test_env_never_prints_the_password():
    url = "postgresql://kb:hunter2@db.example:5433/kb"
    result = cli_in_process("env", "--json", env={"DATABASE_URL": url})
    data = json.loads(result.stdout)
    assert data["DATABASE_URL"] == "postgresql://kb@db.example:5433/kb"
    assert (data["PGHOST"], data["PGPORT"], data["PGUSER"]) == ("db.example", "5433", "kb")
    assert "hunter2" not in result.stdout + result.stderr
    assert "PGPASSWORD" not in data


def test_usage_and_config_errors_exit_2(tmp_path):
    assert cli_in_process("ensure-db", "--timeout", "soon").returncode == 2
    assert cli_in_process("no-such-command").returncode == 2
    (tmp_path / "singularity.yaml").write_text("databse:\n  name: x\n")
    bad = cli_in_process("env", cwd=tmp_path)
    assert bad.returncode == 2
    assert "singularity.yaml: unknown key 'databse'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_every_command_has_help_with_an_example_and_json():
    from singularity_ops.cli import cli

    def walk(group, prefix):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, [*prefix, name])
            else:
                yield [*prefix, name], command

    for path, command in walk(cli, []):
        assert "Example" in (command.help or ""), f"{' '.join(path)} --help lacks an example"
        options = {name for param in command.params for name in getattr(param, "opts", [])}
        assert "--json" in options, f"{' '.join(path)} has no --json"


def test_help_does_not_import_psycopg_or_heavy_modules():
    code = (
        "import sys\n"
        "from singularity_ops.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('psycopg', 'torch', 'sentence_transformers') if m in sys.modules]\n"
        "print('heavy:' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "heavy:"


def test_commands_on_an_unmigrated_database_say_to_migrate(db_settings, tmp_path):
    (tmp_path / "a.json").write_text('{"id": "a", "type": "pattern", "content": {"x": 1}}')
    url = db_settings.url()
    for args in (
        ["import", str(tmp_path)],
        ["usage"],
        ["record-usage", "pattern", "a", "--success"],
    ):
        result = cli_in_process("--database-url", url, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert "run `singularity-ops migrate`" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and "this is a bug" not in result.stderr


def test_every_option_has_help_and_durations_and_result_counts_are_spelled_alike():
    import click

    from singularity_ops.cli import cli

    def walk(group, prefix):
        for name, command in group.commands.items():
            yield [*prefix, name], command
            if hasattr(command, "commands"):
                yield from walk(command, [*prefix, name])

    for path, command in walk(cli, []):
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
    backup = cli.commands["backup"]
    for spelled, days in (("14", 14), ("14d", 14), ("2w", 14), ("1.5", 1.5)):
        ctx = backup.make_context("backup", ["--keep-days", spelled])
        assert ctx.params["keep_days"] == days
    for bad in ("2x", "0", "nan", "-1d"):
        with pytest.raises(click.BadParameter):
            backup.make_context("backup", ["--keep-days", bad])
    search = cli.commands["search"]
    assert search.make_context("search", ["q", "--top", "3"]).params["top_k"] == 3
    assert search.make_context("search", ["q", "--top-k", "3"]).params["top_k"] == 3
    timeouts = {
        " ".join(p): next(o.default for o in c.params if o.name == "timeout")
        for p, c in walk(cli, [])
        if any(o.name == "timeout" for o in c.params)
    }
    assert set(timeouts.values()) == {30}, timeouts


def test_global_options_work_after_the_command_and_errors_have_one_style(tmp_path):
    (tmp_path / "singularity.yaml").write_text("database:\n  url: postgresql://u@127.0.0.1:1/x\n")
    quiet = cli_in_process("validate", "-q", "--templates", str(tmp_path), cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == "", quiet.stderr
    loud = cli_in_process("validate", "--templates", str(tmp_path), cwd=tmp_path)
    assert loud.stdout.startswith("0 valid")
    other = tmp_path / "other.yaml"
    other.write_text("databse: {}\n")
    after = cli_in_process("status", "--config", str(other), cwd=tmp_path)
    assert after.returncode == 2 and "other.yaml: unknown key 'databse'" in after.stderr
    for args in (["import", "--bogus"], ["--bogus"], ["search", "x", "--mode", "nope"]):
        out = cli_in_process(*args, cwd=tmp_path)
        assert out.returncode == 2, args
        assert out.stderr.startswith("singularity-ops: error: "), out.stderr
        assert "--help`)" in out.stderr and "Usage:" not in out.stderr


def test_outside_a_project_the_toolkit_says_so_instead_of_making_one_there(tmp_path):
    for args in (["status"], ["ensure-db"], ["server", "start"]):
        out = cli_in_process(*args, cwd=tmp_path)
        assert out.returncode in (2, 3), (args, out.stderr, out.stdout)
        said = out.stderr + out.stdout
        assert f"no singularity.yaml at or above {tmp_path}" in said, args
        assert "DATABASE_URL" in said and "--config" in said
    assert not (tmp_path / ".singularity").exists(), "no cluster was made in a random directory"


def test_a_group_option_before_a_subcommand_that_ignores_it_is_an_error(tmp_path):
    (tmp_path / "singularity.yaml").write_text("database:\n  url: postgresql://u@127.0.0.1:1/x\n")
    for args, option in (
        (["migrate", "--dry-run", "new", "x"], "--dry-run"),
        (["usage", "--since", "7d", "refresh"], "--since"),
        (["backup", "--keep", "3", "list"], "--keep"),
    ):
        out = cli_in_process(*args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert f"{option} belongs to `singularity-ops {args[0]}` itself" in out.stderr
    assert not list(tmp_path.rglob("*.sql")), "nothing was created"


def test_main_leaves_the_garbage_collector_as_it_found_it():
    import gc

    assert gc.isenabled()
    assert cli_in_process("--version").returncode == 0
    assert gc.isenabled()
    gc.disable()
    try:
        assert cli_in_process("--version").returncode == 0
        assert not gc.isenabled()  # a caller that had it off gets it back off
    finally:
        gc.enable()
