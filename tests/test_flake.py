"""The flake, as far as a machine without a Nix binary cache can check it.

Nothing in the flake can be built here, so: it must parse, the lock must pin exactly the
agreed nixpkgs, and evaluating it with a stub nixpkgs (laziness keeps every package
unevaluated) must show one app per command the CLI really has, each with a description.
"""

import json
import shutil
import subprocess

import pytest
from conftest import ROOT

from singularity_ops.cli import cli

NIX_INSTANTIATE = shutil.which("nix-instantiate")
SYSTEMS = ["aarch64-darwin", "aarch64-linux", "x86_64-darwin", "x86_64-linux"]

STUB_EVAL = """
let
  flake = import %(flake)s;
  lib = {
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    mapAttrs = builtins.mapAttrs;
  };
  nixpkgs = { inherit lib; legacyPackages = lib.genAttrs %(systems)s (s: { system = s; }); };
  out = flake.outputs { self = out; inherit nixpkgs; };
  apps = out.apps."x86_64-linux";
in {
  inputs = flake.inputs;
  systems = builtins.attrNames out.packages;
  apps = builtins.attrNames apps;
  types = builtins.mapAttrs (_: a: a.type) apps;
  descriptions = builtins.mapAttrs (_: a: a.meta.description) apps;
  outputs = builtins.attrNames out;
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
    systems = "[ " + " ".join(f'"{s}"' for s in SYSTEMS) + " ]"
    return nix_eval(STUB_EVAL % {"flake": ROOT / "flake.nix", "systems": systems})


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
        "import",
        "embed",
        "backup",
        "restore",
        "export",
        "status",
    }
    assert apps <= set(cli.commands), f"apps without a CLI command: {apps - set(cli.commands)}"
    assert set(flake["types"].values()) == {"app"}
    assert all(len(d) > 10 for d in flake["descriptions"].values())


def test_postgres_goes_through_with_packages_with_the_free_timescaledb():
    text = (ROOT / "flake.nix").read_text()
    assert "postgresql_17.withPackages" in text
    assert "p.timescaledb-apache" in text and "p.timescaledb\n" not in text
    assert "with pkgs;" not in text and "flake-utils" not in text
