"""What a new user runs first: every example of every --help, and the README's Quick start,
verbatim, against a knowledge base set up the way ./scripts/setup sets it up."""

import re
import shutil
import subprocess

import pytest
from conftest import ROOT, clean_env, free_port

from singularity_ops.cli import cli


def help_examples() -> list[tuple[str, str]]:
    """(command path, example line) for every command, in the CLI's order."""
    found = []

    def walk(group, prefix):
        for name, command in group.commands.items():
            lines = (command.help or "").splitlines()
            starts = [i for i, line in enumerate(lines) if re.match(r"\s*Examples?:", line)]
            for line in lines[starts[0] + 1 :] if starts else []:
                if line.strip():
                    found.append((" ".join([*prefix, name]), line.strip()))
            if hasattr(command, "commands"):
                walk(command, [*prefix, name])

    walk(cli, [])
    return found


def quick_start_lines() -> str:
    """The README's Quick start shell block that follows `./scripts/setup` ("Then:")."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start") :]
    section = section[section.index("Then:") :]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project (config, migrations, corpus) with its own local cluster, set up by
    `singularity-ops setup` as ./scripts/setup does, and this checkout's .venv beside it."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "singularity.yaml", root)
    shutil.copytree(ROOT / "singularity_ops" / "sql", root / "sql")
    shutil.copytree(ROOT / "templates_data", root / "templates_data")
    (root / ".venv").symlink_to(ROOT / ".venv")
    env = clean_env()
    env.update(PATH=f"{root / '.venv' / 'bin'}:{env['PATH']}", PGPORT=str(free_port()))
    setup = subprocess.run(
        ["singularity-ops", "setup"], cwd=root, env=env, capture_output=True, text=True
    )
    assert setup.returncode == 0, setup.stderr
    yield root, env
    subprocess.run(["singularity-ops", "server", "stop"], cwd=root, env=env, capture_output=True)


def run_shell(script: str, root, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_help_example_runs_against_a_set_up_knowledge_base(project):
    root, env = project
    examples = help_examples()
    assert len(examples) >= 20
    # `server stop` ends the session's server: it goes last
    examples.sort(key=lambda e: e[1].startswith("singularity-ops server stop"))
    for path, example in examples:
        out = run_shell(example, root, env)
        assert out.returncode == 0, f"`{path} --help` example failed: {example}\n{out.stderr}"
        assert "this is a bug" not in out.stderr


def test_readme_quick_start_runs_verbatim(project):
    root, env = project
    assert run_shell("singularity-ops ensure-db", root, env).returncode == 0
    block = quick_start_lines()
    assert "eval" in block and "server stop" in block
    out = run_shell(block, root, env)
    assert out.returncode == 0, f"README Quick start failed:\n{block}\n{out.stderr}"
    assert "code_generation/nats_consumer_go" in out.stdout
    assert "timescaledb" in out.stdout and "stopped" in out.stdout
