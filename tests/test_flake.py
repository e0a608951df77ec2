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
    "pytestCheckHook", "setuptools",
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


def test_lock_pins_the_agreed_nixpkgs():
    lock = json.loads((ROOT / "flake.lock").read_text())
    assert lock["version"] == 7 and lock["root"] == "root"
    assert lock["nodes"]["root"] == {"inputs": {"nixpkgs": "nixpkgs"}}
    assert lock["nodes"]["nixpkgs"] == {
        "locked": {
            "lastModified": 1778430510,
            "narHash": "sha256-Ti+ZBvW6yrWWAg2szExVTwCd4qOJ3KlVr1tFHfyfi8Q=",
            "owner": "NixOS",
            "repo": "nixpkgs",
            "rev": "8fd9daa3db09ced9700431c5b7ad0e8ba199b575",
            "type": "github",
        },
        "original": {"owner": "NixOS", "ref": "nixos-25.11", "repo": "nixpkgs", "type": "github"},
    }


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


def test_checks_run_on_linux_only_and_do_run_the_suite(flake):
    assert flake["checks"] == ["aarch64-linux", "x86_64-linux"]
    assert flake["check_does_check"] is True


def test_the_runtime_gets_the_prebuilt_graph_and_no_torch(flake):
    assert "sentence-transformers" not in flake["dependencies"]
    assert {"onnxruntime", "tokenizers", "numpy", "pglast", "psycopg"} <= set(flake["dependencies"])
    assert flake["optional"]["embed"][:3] == ["onnxruntime", "tokenizers", "numpy"]
    assert flake["optional"]["reference"] == ["sentence-transformers"]
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
    assert {"pytest", "pytest-postgresql"} <= set(flake["shell_env"][1:])
    hook = flake["shell_hook"]
    assert "git rev-parse --show-toplevel" in hook and "flake.nix" in hook
    assert "$PWD" not in hook, "entering from a subdirectory must not write .singularity/ there"


def test_postgres_goes_through_with_packages_with_the_free_timescaledb():
    text = (ROOT / "flake.nix").read_text()
    assert "postgresql_17.withPackages" in text
    assert "p.timescaledb-apache" in text and "p.timescaledb\n" not in text
    assert "with pkgs;" not in text and "flake-utils" not in text
