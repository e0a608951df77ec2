"""The `singularity-ops` command: parse options, call the library, print.

No SQL here. Heavy modules (psycopg, the embedding model) are imported inside the commands
that need them so that `--help` and light commands start fast.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import shutil
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .errors import SingularityOpsError, explain_db_error
from .shapes import to_jsonable


class _Group(click.Group):
    """The one place failures become output: one redacted line on stderr, the exit code, and
    with --json also one JSON document on stdout ({"error", "exit_code"})."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _global_options_everywhere(command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SingularityOpsError as exc:
            _fail(ctx, exc.message, exc.exit_code)
        except click.exceptions.Exit:
            raise
        except click.exceptions.Abort:
            _fail(ctx, "aborted", 1)
        except click.ClickException:
            raise  # main() reports it, in the same style as every other error
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as tools killed by SIGPIPE do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(141)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)
        except OSError as exc:
            _os_error(ctx, exc)
        except Exception as exc:
            message = explain_db_error(exc)
            if message is None:
                raise _unexpected(ctx, exc) from None
            _fail(ctx, message, 1)


def _os_error(ctx: click.Context, exc: OSError) -> NoReturn:
    """A full disk or a path we may not use is the environment's doing: a message, exit 1.
    An OSError without a file name is a bug."""
    if exc.errno in _STORAGE_ERRORS:
        where = f"{exc.filename}: " if exc.filename else "a write failed: "
        _fail(
            ctx,
            f"{where}{exc.strerror}; nothing was left under a final name. Free space "
            "there (or make it writable), or write elsewhere (--out, backup.dir, "
            "export.out, SINGULARITY_CACHE_DIR)",
            1,
        )
    if exc.filename is None:
        raise _unexpected(ctx, exc) from None
    # A directory we may not write, a file we may not read.
    target = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    _fail(ctx, f"{target}: {exc.strerror}; check that path and its permissions", 1)


# The disk is full, the quota is spent, the file system is read-only: the environment's doing.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _wants_json(ctx: click.Context) -> bool:
    return "--json" in (ctx.obj or {}).get("argv", ())


def _redacted(text: str) -> str:
    from .config import redact

    return redact(text)


def _report(message: str, exit_code: int, as_json: bool) -> None:
    """A failure, as every command reports one: one redacted line on stderr, and with --json
    one JSON document on stdout."""
    message = _redacted(message)
    if as_json:
        emit_json({"error": message, "exit_code": exit_code})
    click.echo(f"singularity-ops: error: {message}", err=True)


def _fail(ctx: click.Context, message: str, exit_code: int) -> NoReturn:
    _report(message, exit_code, _wants_json(ctx))
    ctx.exit(exit_code)


def _unexpected(ctx: click.Context, exc: Exception) -> click.exceptions.Exit:
    """Our bug: say so, with the traceback under -v (redacted like everything else)."""
    if (ctx.obj or {}).get("verbose"):
        click.echo(_redacted(traceback.format_exc()), err=True, nl=False)
    message = (
        f"unexpected error: {type(exc).__name__}: {exc} (this is a bug; run with -v for the "
        "traceback)"
    )
    message = _redacted(message)
    if _wants_json(ctx):
        emit_json({"error": message, "exit_code": 1})
    click.echo(f"singularity-ops: {message}", err=True)
    return click.exceptions.Exit(1)


def _days(param: click.Parameter, value: str | None) -> float | None:
    """A number of days: 14, 1.5, 14d or 2w (the `--since` spelling), positive and finite."""
    if value is None:
        return None
    text = value.strip().lower()
    factor = {"d": 1, "w": 7}.get(text[-1:])
    try:
        days = float(text[:-1] if factor else text) * (factor or 1)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a number of days (14, 14d, 2w)", param=param
        ) from None
    if not math.isfinite(days) or not 0 < days <= 36_500:
        raise click.BadParameter(
            f"{value!r} must be more than 0 and at most 36500 days", param=param
        )
    return days


def emit_json(value: Any) -> None:
    """Exactly one JSON document on stdout."""
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=True))


def _fit_label(name: str, version: str, width: int) -> str:
    """`name` + `version` in `width` characters: the middle of the name gives way to an
    ellipsis, the version always stays."""
    if len(name) + len(version) <= width:
        return name + version
    keep = max(1, width - len(version) - 1)
    return name[:keep] + "…" + version


def _refuse_group_options(ctx: click.Context) -> None:
    """`migrate --dry-run new`, `usage --since 7d refresh`: an option of the group itself,
    given before a subcommand that does not read it, is a usage error, not silently ignored."""
    from click.core import ParameterSource

    from .errors import ConfigError

    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name
        and param.expose_value
        and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)} belongs to `{ctx.command_path}` itself, not to "
            f"`{ctx.command_path} {ctx.invoked_subcommand}`; give the subcommand's own options "
            f"after it (see `{ctx.command_path} {ctx.invoked_subcommand} --help`)"
        )


def _resolve_types(ctx: click.Context, conn, types) -> list[str]:
    """--type values as artifact types (a corpus folder name is taken for its type, with a
    note on stderr); an unknown one is a usage error listing the types there are."""
    if not types:
        return []
    from .artifacts import resolve_types

    resolved, notes = resolve_types(conn, types, settings_of(ctx).type_map)
    for note in notes:
        click.echo(f"singularity-ops: note: {note}", err=True)
    return resolved


def _count(n: int, one: str, many: str | None = None) -> str:
    """'1 use', '2 uses'."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def warn(message: str) -> None:
    """A warning on stderr, redacted like every other diagnostic."""
    click.echo(f"singularity-ops: warning: {_redacted(message)}", err=True)


def info(ctx: click.Context, message: str) -> None:
    """A result line on stdout, unless --quiet."""
    if not ctx.obj.get("quiet"):
        click.echo(message)


def settings_of(ctx: click.Context):  # -> Settings, imported lazily
    """Resolve the configuration once per invocation."""
    if "settings" not in ctx.obj:
        from .config import load_settings

        ctx.obj["settings"] = load_settings(
            config_file=ctx.obj["config_file"],
            database_url=ctx.obj["database_url"],
            dbname=ctx.obj["dbname"],
        )
    return ctx.obj["settings"]


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
type_option = click.option(
    "--type", "types", multiple=True, metavar="TYPE", help="Only this artifact type (repeatable)."
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="singularity-ops")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="singularity.yaml to use (default: the nearest one upwards; env SINGULARITY_CONFIG).",
)
@click.option(
    "--database-url",
    metavar="URL",
    help="postgresql://user@host:port/db of an existing server (env DATABASE_URL).",
)
@click.option("--dbname", metavar="NAME", help="Database name (default: singularity).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks for unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, config_file, database_url, dbname, quiet, verbose) -> None:
    """Operations toolkit for the singularity knowledge base in PostgreSQL 17.

    Small single-purpose commands that chain: ensure-db, create-extensions, ...

    \b
    Example:
      singularity-ops ensure-db && singularity-ops create-extensions
    """
    ctx.ensure_object(dict)
    ctx.obj.update(
        config_file=config_file,
        database_url=database_url,
        dbname=dbname,
        quiet=quiet,
        verbose=verbose,
    )


templates_option = click.option(
    "--templates",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="The curated corpus (default: import.root, templates_data/ of the project).",
)


def _with_templates(ctx: click.Context, templates: Path | None):
    """The settings, with the import root replaced by --templates when given."""

    settings = settings_of(ctx)
    if templates is not None:
        # Another corpus: its rows are named after its own directory, not import.corpus.
        settings = replace(settings, templates_dir=templates.resolve(), corpus=None)
        ctx.obj["settings"] = settings
    return settings


@cli.command("setup")
@click.option(
    "--skip",
    multiple=True,
    type=click.Choice(["ensure-db", "create-extensions", "migrate", "import", "embed"]),
    help="Leave out this step (repeatable).",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["ensure-db", "create-extensions", "migrate", "import", "embed"]),
    help="Run only this step (repeatable).",
)
@templates_option
@json_option
@click.pass_context
def setup_cmd(ctx: click.Context, skip, only, templates, as_json: bool) -> None:
    """Run the whole chain: ensure-db, create-extensions, migrate, import, embed; then verify.

    Stops at the first failing step with its error. A second run does no work and says so.

    \b
    Example:
      singularity-ops setup --skip embed
    """
    from .chain import run_setup, select_steps

    settings = _with_templates(ctx, templates)
    steps = select_steps(skip, only)
    quiet = as_json or ctx.obj.get("quiet")

    def start(step: str) -> None:
        if not quiet:
            click.echo(f"{step} ... ", nl=False)

    def done(result) -> None:
        if not quiet:
            click.echo(f"{result.summary} ({result.seconds:.1f} s)")

    try:
        result = run_setup(settings, steps, on_start=start, on_done=done)
    except SingularityOpsError:
        if not quiet:
            click.echo("failed")
        raise
    if as_json:
        emit_json(
            {
                "steps": result.steps,
                "did_work": result.did_work,
                "verification": result.verification,
            }
        )
        return
    v = result.verification
    exts = ", ".join(f"{k} {val}" for k, val in v.extensions.items())
    info(ctx, f"knowledge base: {v.artifacts} artifacts, {v.embedded} embedded; {exts}")
    if not result.did_work:
        info(ctx, "nothing to do: everything was already up to date")


@cli.command("ensure-db")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=30,
    show_default=True,
    help="Seconds to wait for the server to accept connections.",
)
@json_option
@click.pass_context
def ensure_db_cmd(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Make sure the server is up and the database exists (idempotent).

    With no DATABASE_URL and no PGHOST, the server is the project-local cluster: it is
    initialised if missing and started if stopped.

    \b
    Example:
      singularity-ops ensure-db --timeout 60
    """
    from .db import ensure_db

    result = ensure_db(settings_of(ctx), timeout=timeout)
    if result.password_required:
        warn(
            "the local cluster let any local account in without a password (trust, made by an "
            f"earlier version); it now requires the password kept in {result.password_required} "
            '(reconnect open clients; `eval "$(singularity-ops env)"` sets PGPASSFILE)'
        )
    if as_json:
        emit_json(result)
        return
    notes = []
    if result.cluster_initialized:
        notes.append("initialised the local cluster")
    if result.cluster_started:
        notes.append("started the local cluster")
    if result.preload_configured:
        notes.append("preloaded timescaledb")
    notes.append("created the database" if result.created else "database already existed")
    info(
        ctx,
        f"{result.dbname}: ready on {result.target} (PostgreSQL {result.server_version}; {', '.join(notes)})",
    )


@cli.command("create-extensions")
@click.option(
    "--extension",
    "-e",
    "names",
    multiple=True,
    metavar="NAME",
    help="Extension to create (repeatable; default: `extensions` in singularity.yaml, "
    "else vector, timescaledb, postgis).",
)
@json_option
@click.pass_context
def create_extensions_cmd(ctx: click.Context, names: tuple[str, ...], as_json: bool) -> None:
    """CREATE EXTENSION IF NOT EXISTS for the configured extensions (idempotent).

    Checks pg_available_extensions (and shared_preload_libraries for timescaledb) first;
    if anything is missing, nothing is created and every problem is listed with its fix.

    \b
    Example:
      singularity-ops create-extensions -e vector -e postgis
    """
    from .db import connect
    from .extensions import create_extensions

    settings = settings_of(ctx)
    with connect(settings, autocommit=True) as conn:
        results = create_extensions(conn, list(names) or list(settings.extensions))
    if as_json:
        emit_json(results)
        return
    for r in results:
        info(ctx, f"{r.name} {r.version}{' (created)' if r.created else ''}")


def _scan(ctx: click.Context, paths: tuple[Path, ...], include_learned: bool, known=None):
    """Scan templates_data (or PATHs inside it), with a progress bar on a terminal."""
    from . import corpus

    settings = settings_of(ctx)
    root = settings.templates_dir
    corpus.check_scan_arguments(root, paths)
    kwargs = dict(
        type_map=settings.type_map,
        include_learned=include_learned,
        max_file_bytes=settings.max_file_bytes,
        known=known,
    )
    targets = [p.resolve() for p in paths]
    if not sys.stderr.isatty():
        return corpus.scan(root, targets, **kwargs)
    total = corpus.count_files(root, targets)
    if total < 1000:  # small trees finish before a bar is worth drawing
        return corpus.scan(root, targets, **kwargs)
    with click.progressbar(length=total, label="reading", file=sys.stderr) as bar:
        done = [0]

        def advance(seen: int) -> None:
            bar.update(seen - done[0])
            done[0] = seen

        result = corpus.scan(root, targets, progress=advance, **kwargs)
        bar.update(total - done[0])
    return result


paths_argument = click.argument(
    "paths", nargs=-1, type=click.Path(exists=True, path_type=Path), metavar="[PATH]..."
)
learned_option = click.option(
    "--include-learned",
    is_flag=True,
    help="Also read templates_data/learned/ (excluded by default).",
)


@cli.command("validate")
@paths_argument
@click.option(
    "--quality",
    is_flag=True,
    help="Also list what retrieval will struggle with: no or short descriptions, names that "
    "repeat the id, and (from the database's embeddings) near-duplicates.",
)
@click.option(
    "--similarity",
    type=click.FloatRange(0, 1),
    default=0.95,
    show_default=True,
    help="With --quality: how close two artifacts' vectors must be to count as near-duplicates.",
)
@learned_option
@templates_option
@json_option
@click.pass_context
def validate_cmd(
    ctx: click.Context,
    paths,
    quality: bool,
    similarity: float,
    include_learned: bool,
    templates,
    as_json: bool,
) -> None:
    """Check artifact files without touching the database. Exit 1 if any is invalid.

    Reports JSON syntax errors as file:line:column, invalid UTF-8, non-object JSON, oversized
    files, bad identity fields and two files that resolve to the same artifact. --quality adds
    one line per artifact search will struggle with, with the reason (advice: exit 0); its
    near-duplicate check reads the database's embeddings when the database is reachable.

    \b
    Examples:
      singularity-ops validate templates_data/prompts
      singularity-ops validate --quality --json | jq -r '.quality[] | .path + ": " + .reason'
    """
    _with_templates(ctx, templates)
    result = _scan(ctx, paths, include_learned)
    issues: list = []
    duplicates_checked = False
    if quality:
        from .quality import lint_artifacts, near_duplicates

        issues = lint_artifacts(result.artifacts)
        from .db import connect
        from .errors import DatabaseUnavailable

        settings = settings_of(ctx)
        try:
            with connect(settings) as conn:
                issues += near_duplicates(conn, settings.embedding, similarity)
                duplicates_checked = True
        except DatabaseUnavailable as exc:
            warn(f"near-duplicates not checked (they need the embedded database): {exc}")
    if as_json:
        emit_json(
            {
                "valid": len(result.artifacts),
                "invalid": len(result.problems),
                "skipped": len(result.skipped),
                "problems": [str(p) for p in result.problems],
                "notes": result.notes,
                **(
                    {"quality": issues, "near_duplicates_checked": duplicates_checked}
                    if quality
                    else {}
                ),
            }
        )
    else:
        for problem in result.problems:
            click.echo(str(problem), err=True)
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        if ctx.obj.get("verbose"):  # -v: what each file resolves to
            for a in result.artifacts:
                click.echo(f"{a.source_path} -> {a.artifact_type}/{a.artifact_id}@{a.version}")
        for issue in issues:
            click.echo(str(issue))
        info(
            ctx,
            f"{len(result.artifacts)} valid, {len(result.problems)} invalid, "
            f"{len(result.skipped)} non-artifact files skipped"
            + (f", {len(issues)} quality finding(s)" if quality else ""),
        )
    if result.problems:
        ctx.exit(1)


@cli.command("import")
@paths_argument
@click.option(
    "--skip-invalid", is_flag=True, help="Import the valid files; report the rest (exit 1)."
)
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option(
    "--prune",
    is_flag=True,
    help="Delete rows of this corpus whose file is gone (other corpora are never touched).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Let --prune delete more than import.max_prune_share (25%) of the corpus.",
)
@learned_option
@templates_option
@json_option
@click.pass_context
def import_cmd(
    ctx,
    paths,
    skip_invalid: bool,
    dry_run: bool,
    prune: bool,
    force: bool,
    include_learned: bool,
    templates,
    as_json: bool,
):
    """Upsert artifacts from templates_data/ (or PATHs inside it) into knowledge_artifacts.

    Strict by default: if any file is invalid, nothing is written. Unchanged files are not
    written; changed files keep their usage metrics; one transaction per run. Rows remember
    their corpus (the import root's directory name, or import.corpus), and --prune stays
    inside the corpus it reads. A second import waits up to 60 s for a running one, then
    exits 75 (busy).

    \b
    Example:
      singularity-ops import --dry-run && singularity-ops import
    """
    from .db import connect
    from .importer import import_artifacts, known_sources

    settings = _with_templates(ctx, templates)
    with connect(settings, autocommit=True) as conn:
        scan = _scan(ctx, paths, include_learned, known=known_sources(conn))
        result = import_artifacts(
            conn,
            scan,
            skip_invalid=skip_invalid,
            dry_run=dry_run,
            prune=prune,
            include_learned=include_learned,
            corpus=settings.corpus,
            force=force,
            max_prune_share=settings.max_prune_share,
        )
    if as_json:
        emit_json(result)
    else:
        for problem in result.problems:
            click.echo(f"skipped invalid: {problem}", err=True)
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        if dry_run:
            for change in result.changes:
                click.echo(f"would have {change}", err=True)
        for orphan in result.orphans:
            click.echo(f"file gone (use --prune): {orphan}", err=True)
        for orphan in result.pruned_rows:
            click.echo(f"{'would prune' if dry_run else 'pruned'}: {orphan}", err=True)
        prefix = "dry run: " if dry_run else ""
        info(
            ctx,
            f"{prefix}{result.inserted} inserted, {result.updated} updated, {result.unchanged} unchanged, "
            f"{result.skipped} skipped, {result.invalid} invalid, {result.pruned} pruned "
            f"({result.seconds:.2f} s)"
            + (
                f"; {result.need_embedding} artifact(s) need `singularity-ops embed` before "
                "vector and hybrid search find them"
                if result.need_embedding
                else ""
            ),
        )
    if result.invalid:
        ctx.exit(1)


@cli.command("embed")
@click.option(
    "--rebuild", is_flag=True, help="Re-embed every artifact (needed after a model change)."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Texts per batch (default: embedding.batch_size).",
)
@json_option
@click.pass_context
def embed_cmd(ctx: click.Context, rebuild: bool, batch_size: int | None, as_json: bool) -> None:
    """Compute embeddings for artifacts that have none or whose content changed.

    Batches are committed as they finish: an interrupted run keeps them and the next run
    continues. With nothing to do, no model is loaded. While another embed runs, this one
    exits 75 (busy) at once.

    \b
    Example:
      singularity-ops embed && singularity-ops search "NATS consumer with error handling"
    """
    from .db import connect
    from .embed import embed

    settings = settings_of(ctx)
    bars = []  # created at the first finished batch: a run with nothing to do draws nothing

    def advance(done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        if not bars:
            bars.append(click.progressbar(length=total, label="embedding", file=sys.stderr))
        bars[0].update(done - bars[0].pos)

    with connect(settings, autocommit=True) as conn:
        try:
            result = embed(
                conn,
                None,
                settings.embedding,
                rebuild=rebuild,
                batch_size=batch_size,
                progress=advance,
            )
        finally:
            if bars:
                bars[0].render_finish()
    if as_json:
        emit_json(result)
        return
    if result.embedded == 0:
        info(ctx, f"nothing to do: {result.up_to_date} artifacts up to date ({result.model})")
        return
    info(
        ctx,
        f"{result.embedded} embedded, {result.up_to_date} up to date, {result.failed} failed "
        f"({result.model}, {result.seconds:.1f} s)",
    )


@cli.command("search")
@click.argument("query", required=False)
@click.option(
    "--mode",
    type=click.Choice(["hybrid", "vector", "text"]),
    default="hybrid",
    show_default=True,
    help="vector: by meaning (the model); text: by words (full text, no model); hybrid: both "
    "fused by reciprocal rank.",
)
@type_option
@click.option("--language", metavar="LANG", help="Only this language.")
@click.option(
    "--tag", "tags", multiple=True, metavar="TAG", help="Must have this tag (repeatable)."
)
@click.option(
    "--top",
    "--top-k",
    "top_k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many results (--top-k is the older name; at most search.max_top_k).",
)
@click.option(
    "--min-similarity",
    type=click.FloatRange(-1, 1),
    help="Drop results less similar than this (-1..1; vector and hybrid).",
)
@click.option(
    "--rank-by",
    type=click.Choice(["relevance", "proven"]),
    default="relevance",
    show_default=True,
    help="proven: re-rank the relevance top results by recent success (Wilson lower bound "
    "over 90 days, at least 5 uses, a bounded boost that only swaps near-ties).",
)
@click.option(
    "--stdin",
    "from_stdin",
    is_flag=True,
    help="Read one query per line from stdin; write one JSON line per query (the model loads once).",
)
@json_option
@click.pass_context
def search_cmd(
    ctx,
    query,
    mode: str,
    types,
    language,
    tags,
    top_k: int,
    min_similarity,
    rank_by: str,
    from_stdin,
    as_json,
):
    """Find artifacts by meaning and words: the best matches for QUERY, best first.

    Cheap checks (connection, schema, filter values, embedded model) run before the model
    loads; --mode text needs no model at all.

    \b
    Examples:
      singularity-ops search "retry with backoff" --language python --top-k 5 --json
      printf 'nats consumer\\nsafe index\\n' | singularity-ops search --stdin --top-k 3
    """
    from .api import KnowledgeBase
    from .errors import ConfigError
    from .search import query_problem

    if from_stdin == (query is not None):
        raise ConfigError("give a QUERY or --stdin (one query per line), not both or neither")
    kb = KnowledgeBase(settings_of(ctx))
    problem = None if from_stdin else query_problem(query, kb.settings.search_limits)
    if problem:
        raise ConfigError(problem)
    notes: list[str] = []
    results = kb.search_many(
        _stdin_lines() if from_stdin else [query],
        on_error="yield" if from_stdin else "raise",
        notes=notes,
        limit=top_k, mode=mode, types=types, tags=tags, language=language,
        rank_by=rank_by, min_similarity=min_similarity,
    )  # fmt: skip
    failed = 0
    for n, result in enumerate(results):
        if n == 0:
            for note in notes:
                click.echo(f"singularity-ops: note: {note}", err=True)
        failed += _print_search_result(ctx, result, mode, from_stdin, as_json)
    if failed:
        ctx.exit(1)


def _print_search_result(
    ctx: click.Context, result: Any, mode: str, from_stdin: bool, as_json: bool
) -> int:
    """One answer of `search`: a JSON line (--stdin), a JSON document, or the hits as text.
    Returns 1 for a --stdin line that could not be searched."""
    from .search import SearchFailure

    if isinstance(result, SearchFailure):  # --stdin: this line's error, then go on
        click.echo(json.dumps({"query": result.query, "error": result.error}))
        sys.stdout.flush()
        return 1
    if from_stdin:
        click.echo(json.dumps(to_jsonable(result)))
        sys.stdout.flush()  # a reader (an agent, a pipe) gets each answer at once
    elif as_json:
        emit_json(result)
    else:
        _print_hits(result, mode)
        # stderr, and only for a person: the hits stay the whole of stdout
        if result.search_id and result.hits and sys.stderr.isatty() and not ctx.obj.get("quiet"):
            click.echo(f"search_id {result.search_id} (for record-usage --search-id)", err=True)
    return 0


def _stdin_lines():
    """Queries from stdin, each line read in bounded memory (lines.read_lines): a line that
    is too long or not UTF-8 comes as a BadLine, which search answers with its error."""
    from .lines import read_lines

    return (line for _number, line in read_lines(sys.stdin.buffer))


def _print_hits(result, mode: str) -> None:
    hits = result.hits
    if result.unembedded:
        click.echo(
            f"note: {result.unembedded} artifact(s) have no vector yet, so only their words "
            "can match; run `singularity-ops embed`",
            err=True,
        )
    if not hits:
        if result.best_similarity is not None:
            click.echo(
                f"no results above --min-similarity; the most similar artifact scored "
                f"{result.best_similarity:.3f}",
                err=True,
            )
        else:
            click.echo("no results", err=True)
        return
    # Position first: in hybrid mode the order is the fused rank, so the similarity column
    # need not decrease (a better text match can lift a less similar artifact).
    width = len(str(len(hits)))
    column = "ts_rank" if mode == "text" else "similarity"
    order = "  (ordered by the fused rank)" if mode == "hybrid" else ""
    click.echo(f"{'#':>{width}}  {column}  type/id@version  name{order}")
    for position, hit in enumerate(hits, 1):
        label = f"{hit.artifact_type}/{hit.artifact_id}@{hit.version}"
        extra = f"  {hit.name}" if hit.name else ""
        stale = (
            "  (not embedded)" if not hit.embedded else "  (stale embedding)" if hit.stale else ""
        )
        if mode == "text":
            lead = f"{hit.score:.3f}"
        else:
            lead = "  -  " if hit.similarity is None else f"{hit.similarity:.3f}"
        click.echo(f"{position:>{width}}  {lead}  {label}{extra}{stale}")


@cli.command("show")
@click.argument("ref", metavar="TYPE/ID[@VERSION]")
@click.option(
    "--max-chars",
    type=click.IntRange(min=1),
    help="Cut the text after this many characters (the JSON output says truncated).",
)
@json_option
@click.pass_context
def show_cmd(ctx: click.Context, ref: str, max_chars: int | None, as_json: bool) -> None:
    """Print one artifact: its original text on stdout, its source path on stderr.

    --json prints everything: content, source path, hash, usage figures. The server's
    get_artifact tool returns the same.

    \b
    Examples:
      singularity-ops show code_generation/nats_consumer_go
      singularity-ops show code_generation/nats_consumer_go@1.0.2 --json | jq .source_path
    """
    from .api import KnowledgeBase
    from .artifacts import parse_ref
    from .errors import ConfigError

    try:
        artifact_type, artifact_id, version = parse_ref(ref)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    view = KnowledgeBase(settings_of(ctx)).artifact(
        artifact_type, artifact_id, version, max_chars=max_chars
    )
    if as_json:
        emit_json(view)
        return
    text = view.content_raw
    click.echo(text if text.endswith("\n") else text + "\n", nl=False)
    if not ctx.obj.get("quiet"):
        where = view.source_path or "(not from a file)"
        click.echo(f"{artifact_type}/{artifact_id}@{view.version}: {where}", err=True)
        if view.truncated:
            click.echo(f"(cut at {max_chars:,} of {view.total_chars:,} characters)", err=True)


@cli.group("token")
def token_group() -> None:
    """Bearer tokens for `serve --transport http` (stored as hashes in the database)."""


@token_group.command("create")
@click.argument("name")
@click.option(
    "--scope",
    type=click.Choice(["read", "write"]),
    default="read",
    show_default=True,
    help="read: search, get_artifact, usage_report; write: also record_usage.",
)
@json_option
@click.pass_context
def token_create_cmd(ctx: click.Context, name: str, scope: str, as_json: bool) -> None:
    """Create a token and print it, once: only its hash is stored.

    \b
    Example:
      singularity-ops token create ci-agent --scope write
    """
    from .db import connect
    from .tokens import create_token

    with connect(settings_of(ctx), autocommit=True) as conn:
        created = create_token(conn, name, scope=scope)
    if as_json:
        emit_json(created)
        return
    click.echo(created.token)
    if not ctx.obj.get("quiet"):
        click.echo(
            f"token {name!r} ({scope}) created; it is shown only now: keep it in the agent's "
            "secret store (Authorization: Bearer TOKEN)",
            err=True,
        )


@token_group.command("list")
@json_option
@click.pass_context
def token_list_cmd(ctx: click.Context, as_json: bool) -> None:
    """List tokens: name, scope, created, last used (never the tokens themselves).

    \b
    Example:
      singularity-ops token list --json
    """
    from .db import connect
    from .tokens import list_tokens

    with connect(settings_of(ctx), autocommit=True) as conn:
        tokens = list_tokens(conn)
    if as_json:
        emit_json(tokens)
        return
    if not tokens:
        click.echo("no tokens (singularity-ops token create NAME)", err=True)
    for t in tokens:
        used = t.last_used_at.strftime("%Y-%m-%d %H:%M") if t.last_used_at else "never"
        click.echo(f"{t.name}  {t.scope}  created {t.created_at:%Y-%m-%d %H:%M}  last used {used}")


@token_group.command("revoke")
@click.argument("name")
@json_option
@click.pass_context
def token_revoke_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """Revoke a token: every server refuses it from its next request on.

    \b
    Example:
      singularity-ops token revoke ci-agent
    """
    from .db import connect
    from .tokens import revoke_token

    with connect(settings_of(ctx), autocommit=True) as conn:
        revoke_token(conn, name)
    if as_json:
        emit_json({"revoked": name})
        return
    info(ctx, f"token {name!r} revoked")


@cli.command("serve")
@click.option(
    "--transport",
    type=click.Choice(["stdio", "http"]),
    default="stdio",
    show_default=True,
    help="stdio: one agent that spawns this process; http: streamable HTTP for many.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP: address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="HTTP: 0 picks one.",
)
@click.option("--read-only", is_flag=True, help="Leave out record_usage and record_usage_batch.")
@click.option(
    "--no-auth", is_flag=True, help="HTTP: require no token (refused on a non-loopback host)."
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME[:PORT]",
    help="HTTP: a Host clients use besides loopback (needed with a non-loopback --host).",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    default=1_000_000,
    show_default=True,
    help="HTTP: larger request bodies are refused.",
)
@click.option(
    "--stateless",
    is_flag=True,
    help="HTTP: no MCP sessions, any replica answers any request (behind a load balancer).",
)
@click.option(
    "--pool-size", type=click.IntRange(1, 100), default=8, show_default=True,
    help="Database connections kept open.",
)  # fmt: skip
@click.option(
    "--check",
    is_flag=True,
    help="Start as for serving (checks, pool, model, warm-up), report, and exit.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="With --check: the report as JSON. HTTP: the address as one JSON line on stdout.",
)
@click.pass_context
def serve_cmd(
    ctx: click.Context,
    transport: str,
    host: str,
    port: int,
    read_only: bool,
    no_auth: bool,
    allowed_hosts: tuple[str, ...],
    max_body_bytes: int,
    stateless: bool,
    pool_size: int,
    check: bool,
    as_json: bool,
) -> None:
    """Serve the knowledge base to agents over MCP, with the model loaded once.

    Tools: search, get_artifact, record_usage, record_usage_batch, usage_report. Over HTTP:
    MCP at /mcp, a JSON API (POST /v1/search, GET /v1/artifacts/TYPE/ID, POST /v1/usage),
    GET /healthz; every request but /healthz needs a token (`token create`). Checks run
    before the model loads; stdout carries only the protocol over stdio. To serve: `serve`
    (stdio, spawned by the agent) or `serve --transport http` (tokens required); --check
    starts everything, reports and exits.

    \b
    Examples:
      singularity-ops serve --check
      singularity-ops serve --transport http --port 8765 --check --json
    """
    import time

    from .errors import ConfigError
    from .server import HttpOptions, Knowledge, check_http_options, quiet_server_logs

    if as_json and transport == "stdio" and not check:
        raise ConfigError(
            "--json needs --check or --transport http: over stdio, stdout carries the protocol"
        )
    started = time.monotonic()

    options = HttpOptions(
        host=host,
        port=port,
        require_tokens=not no_auth,
        allowed_hosts=tuple(allowed_hosts),
        max_body_bytes=max_body_bytes,
        stateless=stateless,
    )
    sock = None
    if transport == "http":
        check_http_options(options)  # before any connection or model load
        if not check:
            from .server import bind

            sock = bind(host, port)  # a taken port fails here, not after the model loaded
    settings = settings_of(ctx)
    quiet_server_logs()
    try:
        knowledge = Knowledge.open(settings, pool_size=pool_size, read_only=read_only)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    try:
        if check:
            _serve_check(ctx, knowledge, transport, options, started, as_json)
        elif transport == "stdio":
            from .server import serve_stdio

            serve_stdio(knowledge)
        else:
            from .server import serve_http

            def announce(message: str, address: dict) -> None:
                click.echo(f"singularity-ops: {message}", err=True)
                if as_json:
                    click.echo(json.dumps(address))
                    sys.stdout.flush()

            serve_http(knowledge, options, announce, sock)
    finally:
        knowledge.close()


def _serve_check(
    ctx: click.Context,
    knowledge: Any,
    transport: str,
    options: Any,
    started: float,
    as_json: bool,
) -> None:
    """serve --check: build the server as for serving, then report instead of serving."""
    import time

    from .server import build_http_app, build_mcp

    build_mcp(knowledge) if transport == "stdio" else build_http_app(knowledge, options)
    settings = knowledge.settings
    report = {
        "ready": True,
        "seconds": round(time.monotonic() - started, 3),
        "transport": transport,
        "model": f"{settings.embedding.provider}:{settings.embedding.model}",
        "database": settings.url(),
        "read_only": knowledge.read_only,
    }
    if as_json:
        emit_json(report)
    else:
        info(ctx, f"ready in {report['seconds']:.2f} s: {settings.url()}, {transport}")


@cli.group("backup", invoke_without_command=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["custom", "plain", "directory"]),
    help="Dump format (default: backup.format, custom).",
)
@click.option(
    "--knowledge-only", is_flag=True, help="Dump only knowledge_artifacts (knowledge_*.dump)."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Backup directory (default: backup.dir, backups/).",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    help="Keep the newest N good backups of this series (default: backup.keep).",
)
@click.option(
    "--keep-days",
    metavar="DAYS",
    callback=lambda _ctx, param, value: _days(param, value),
    help="Delete backups of this series older than this (14, 14d or 2w); with --keep, never "
    "one of the newest N (default: backup.keep_days).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Parallel jobs (directory format).",
)
@click.option(
    "--verify", is_flag=True, help="Re-read the dump: checksum, and pg_restore --list for archives."
)
@json_option
@click.pass_context
def backup_cmd(
    ctx, fmt, knowledge_only: bool, out, keep, keep_days, jobs: int, verify: bool, as_json: bool
) -> None:
    """pg_dump the database into backups/ with a manifest; quiet on success (for cron).

    Exit 0 on success, 1 on any failure, 75 when another backup holds the directory lock.
    From cron: `17 3 * * * cd /srv/singularity && .venv/bin/singularity-ops backup --keep 14`.
    `backup list` shows the backups there are.

    \b
    Example:
      singularity-ops backup --keep 14 --verify
    """
    if ctx.invoked_subcommand is not None:
        _refuse_group_options(ctx)
        return
    from .backup import backup

    settings = settings_of(ctx)
    result = backup(
        settings,
        out or settings.backup_dir,
        fmt=fmt or settings.backup_format,
        knowledge_only=knowledge_only,
        keep=keep or settings.backup_keep,
        keep_days=keep_days or settings.backup_keep_days,
        jobs=jobs,
        verify=verify,
    )
    if as_json:
        emit_json(result)
    elif sys.stdout.isatty() and not ctx.obj.get("quiet"):
        deleted = f", deleted {len(result.deleted)} old" if result.deleted else ""
        click.echo(f"{result.path} ({result.bytes} bytes, {result.seconds:.1f} s{deleted})")


@backup_cmd.command("list")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Backup directory (default: backup.dir, backups/).",
)
@json_option
@click.pass_context
def backup_list_cmd(ctx: click.Context, out, as_json: bool) -> None:
    """List the good backups (those with a manifest), oldest first: series, time, size,
    format, and whether --verify took exact counts. Restore one by the name shown.

    \b
    Example:
      singularity-ops backup list --json
    """
    from .backup import list_backups

    settings = settings_of(ctx)
    directory = out or settings.backup_dir
    backups = list_backups(directory)
    if as_json:
        emit_json(backups)
        return
    if not backups:
        click.echo(f"no backups in {directory}", err=True)
        return
    for b in backups:
        kind = f"{b.format}{', knowledge only' if b.knowledge_only else ''}"
        verified = ", verified" if b.exact_counts else ""
        click.echo(f"{b.file.name}  {b.created_at[:19]}Z  {b.bytes / 1e6:.1f} MB  {kind}{verified}")


@cli.command("restore")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option(
    "--latest", is_flag=True, help="Restore the newest good backup in the backup directory."
)
@click.option(
    "--target-db", metavar="NAME", help="Restore into this database (default: the configured one)."
)
@click.option(
    "--force", is_flag=True, help="Replace a non-empty target (swapped in only when complete)."
)
@click.option(
    "--from-other-database",
    is_flag=True,
    help="Allow --force to replace the target with a backup of a database of another name.",
)
@click.option(
    "--discard-orphaned-usage",
    is_flag=True,
    help="Knowledge-only restore: drop usage events of artifacts the backup does not have.",
)
@click.option(
    "--trust-plain-dump",
    is_flag=True,
    help="Plain SQL dump: run it even if it holds psql meta-commands (\\! runs a shell "
    "command); only for dumps whose author you trust.",
)
@click.option(
    "--cleanup",
    "cleanup_only",
    is_flag=True,
    help="Only remove what killed restores left behind (scratch databases, a closed target).",
)
@json_option
@click.pass_context
def restore_cmd(
    ctx,
    file,
    latest: bool,
    target_db,
    force: bool,
    from_other_database: bool,
    discard_orphaned_usage: bool,
    trust_plain_dump: bool,
    cleanup_only: bool,
    as_json: bool,
) -> None:
    """Restore a backup after verifying it; report row counts per table.

    The target is replaced in one transaction only once the restored copy is complete and
    checked; leftovers of a killed restore are removed by the next one (or --cleanup).
    One restore per server at a time: another waits up to 60 s, then exits 75 (busy).

    \b
    Example:
      singularity-ops restore --latest --target-db singularity_check
    """
    from .errors import ConfigError
    from .restore import cleanup, find_backup, latest_backup, restore

    settings = settings_of(ctx)
    if cleanup_only:
        if file or latest:
            raise ConfigError("--cleanup takes no backup FILE and no --latest")
        _print_cleanup(ctx, cleanup(settings), as_json)
        return
    if bool(file) == latest:
        raise ConfigError("give either a backup FILE or --latest")
    dump = (
        find_backup(settings, file) if file else latest_backup(settings.backup_dir, settings.dbname)
    )
    result = restore(
        settings,
        dump,
        target_db=target_db,
        force=force,
        from_other_database=from_other_database,
        discard_orphaned_usage=discard_orphaned_usage,
        trust_plain_dump=trust_plain_dump,
    )
    for warning in result.warnings:
        warn(warning)
    for line in result.cleaned:
        click.echo(f"singularity-ops: cleaned up after a killed restore: {line}", err=True)
    if as_json:
        emit_json(result)
        return
    info(
        ctx,
        f"restored {result.file.name} into {result.target} in {result.seconds:.1f} s"
        + (" (replaced)" if result.replaced else ""),
    )
    for table, rows in sorted(result.tables.items()):
        info(ctx, f"  {table}: {rows} rows")
    if result.usage_kept or result.usage_discarded:
        info(
            ctx,
            f"  usage history kept: {result.usage_kept} event(s)"
            + (f", {result.usage_discarded} discarded" if result.usage_discarded else ""),
        )


def _print_cleanup(ctx: click.Context, done: list[str], as_json: bool) -> None:
    if as_json:
        emit_json({"cleaned": done})
        return
    for line in done:
        info(ctx, line)
    info(
        ctx,
        f"{len(done)} leftover(s) of killed restores handled" if done else "nothing to clean up",
    )


@cli.command("record-usage")
@click.argument("artifact_type", required=False)
@click.argument("artifact_id", required=False)
@click.option("--success/--failure", default=None, help="Whether this use succeeded.")
@click.option("--version", "version", default="latest", show_default=True, help="Artifact version.")
@click.option("--duration-ms", type=click.IntRange(min=0), help="How long the use took.")
@click.option(
    "--search-id",
    metavar="ID",
    help="The search_id of the search that led to this use: records its rank there "
    "(`usage eval` reports ranking quality from these).",
)
@click.option(
    "--event-id", help="The caller's id for this event: recording it again changes nothing."
)
@click.option(
    "--from",
    "from_file",
    type=click.File("rb"),
    help="Record the events of a JSON-lines file (- for stdin) in one transaction.",
)
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="With --from: record the valid lines, report the rest (exit 1).",
)
@click.option(
    "--unkeyed-now",
    is_flag=True,
    help="With --from: record lines that have neither event_id nor used_at as uses at the "
    "time of ingest (each run records them again) instead of refusing them.",
)
@json_option
@click.pass_context
def record_usage_cmd(
    ctx,
    artifact_type,
    artifact_id,
    success,
    version: str,
    duration_ms,
    search_id,
    event_id,
    from_file,
    skip_invalid: bool,
    unkeyed_now: bool,
    as_json,
):
    """Record uses of artifacts and update their counters (one transaction).

    One use: TYPE ID --success|--failure. Many: --from FILE (or - for stdin) with one JSON
    object per line: {"artifact_type", "artifact_id", "version"?, "success", "duration_ms"?,
    "used_at"?, "environment"?, "metadata"?, "event_id"?, "search_id"?}. Strict: any bad line or unknown
    artifact records nothing (--skip-invalid records the rest). Events already recorded (same
    event_id, or the same line content with its used_at) are skipped, so re-ingesting a log
    counts nothing twice. A line needs an event_id or a used_at: one with neither is refused
    (it would count once ever), unless --unkeyed-now records it at the time of ingest.
    Usage writers take turns: one waits up to 5 minutes for another, then exits 75 (busy).

    \b
    Examples:
      singularity-ops record-usage code_generation nats_consumer_go --success --duration-ms 120
      echo '{"artifact_type": "prompt", "artifact_id": "explain_error", "success": true, "event_id": "job-1"}' | singularity-ops record-usage --from -
    """
    from .errors import ConfigError

    one = {
        "TYPE ID": artifact_type or artifact_id,
        "--success/--failure": success is not None,
        "--event-id": event_id,
        "--search-id": search_id,
        "--duration-ms": duration_ms is not None,
    }
    if from_file is not None:
        if any(one.values()):
            raise ConfigError(
                "--from reads every event from the file: give no "
                + ", ".join(name for name, given in one.items() if given)
            )
        _record_usage_log(ctx, from_file, skip_invalid, unkeyed_now, as_json)
        return
    if not (artifact_type and artifact_id) or success is None:
        raise ConfigError("give TYPE ID and --success or --failure, or --from FILE")
    if skip_invalid or unkeyed_now:
        raise ConfigError("--skip-invalid and --unkeyed-now go with --from")
    from .api import KnowledgeBase

    result = KnowledgeBase(settings_of(ctx)).record(
        artifact_type,
        artifact_id,
        success=success,
        version=version,
        duration_ms=duration_ms,
        event_id=event_id,
        search_id=search_id,
    )
    if as_json:
        emit_json(result)
        return
    rate = "-" if result.success_rate is None else f"{result.success_rate:.0%}"
    note = "" if result.recorded else " (this event_id was recorded before: nothing changed)"
    info(
        ctx,
        f"{result.artifact_type}/{result.artifact_id}@{result.version}: "
        f"{_count(result.usage_count, 'use')}, {_count(result.success_count, 'success', 'successes')}"
        f" ({rate}){note}",
    )


def _file_label(stream: Any) -> str:
    """How messages name a --from file: its path, or - for stdin (which, under a test
    runner, may be a stream with no name at all)."""
    name = getattr(stream, "name", None)
    return name if isinstance(name, str) and name != "<stdin>" else "-"


def _record_usage_log(ctx, from_file, skip_invalid: bool, unkeyed_now: bool, as_json) -> None:
    """record-usage --from: the whole log in one transaction (usage_ingest.ingest_usage)."""
    from .db import connect
    from .usage_ingest import ingest_usage

    settings = settings_of(ctx)
    with connect(settings, autocommit=True) as conn:
        result = ingest_usage(
            conn,
            from_file,
            name=_file_label(from_file),
            skip_invalid=skip_invalid,
            environment=settings.environment,
            unkeyed="now" if unkeyed_now else "refuse",
        )
    for problem in result.problems:
        click.echo(f"skipped invalid: {problem}", err=True)
    if as_json:
        emit_json(result)
    else:
        info(
            ctx,
            f"{result.recorded} recorded, {result.duplicates} duplicates (recorded before), "
            f"{result.invalid} invalid, {result.artifacts} artifacts updated "
            f"({result.seconds:.2f} s)",
        )
    if result.invalid:
        ctx.exit(1)


@cli.group("usage", invoke_without_command=True)
@click.option("--since", default="30d", show_default=True, help="Window: whole UTC days (30d, 2w).")
@type_option
@click.option(
    "--env",
    "environment",
    type=click.Choice(["dev", "test", "prod"]),
    help="Only this environment.",
)
@click.option(
    "--top", type=click.IntRange(min=1), default=10, show_default=True,
    help="How many artifacts to list.",
)  # fmt: skip
@click.option(
    "--from-raw",
    is_flag=True,
    help="Compute from the raw events instead of the daily rollup (slower, the same answer).",
)
@json_option
@click.pass_context
def usage_cmd(ctx, since: str, types, environment, top: int, from_raw: bool, as_json: bool) -> None:
    """Usage over time: the most used artifacts of the window, their success rate beside the
    lifetime rate, the trend against the previous window, and falling success rates.

    Subcommands: eval (ranking quality from searches and their outcomes), refresh (rebuild the
    rollup from raw events), prune (drop old raw events and old logged searches).

    \b
    Example:
      singularity-ops usage --since 30d --type code_generation --top 5
    """
    if ctx.invoked_subcommand is not None:
        _refuse_group_options(ctx)
        return
    from .db import connect
    from .usage_report import buckets, parse_window, sparkline, usage_report

    days = parse_window(since)
    with connect(settings_of(ctx), autocommit=True) as conn:
        report = usage_report(
            conn,
            since_days=days,
            types=_resolve_types(ctx, conn, types),
            environment=environment,
            top=top,
            source="raw" if from_raw else "rollup",
        )
    if as_json:
        emit_json(report)
        return
    echo = click.echo
    change = (
        f", {report.uses - report.previous_uses:+d} against the {days} days before"
        if report.previous_uses
        else ""
    )
    echo(f"{report.start} .. {report.end} ({days} days, UTC): {report.uses} uses{change}")
    if not report.top:
        echo("no uses in this window")
    # The sparkline gets what the terminal has left (at least 10 characters); longer windows
    # are summed into that many buckets, so a line never wraps on 80 columns.
    label_width = 40
    room = max(10, shutil.get_terminal_size((80, 24)).columns - (label_width + 29))
    per = -(-days // room) if days > room else 1
    if report.top:
        daily = "daily" if per == 1 else f"per {per} days"
        echo(
            f"{'artifact':<{label_width}} {'uses':>6} {'rate':>5} {'life':>5} {'trend':>7}  {daily}"
        )
    for e in report.top:
        rate = "-" if e.success_rate is None else f"{e.success_rate:.0%}"
        life = "-" if e.lifetime_success_rate is None else f"{e.lifetime_success_rate:.0%}"
        trend = "new" if e.uses_change is None else f"{e.uses_change:+.0%}"
        label = _fit_label(f"{e.artifact_type}/{e.artifact_id}", f"@{e.version}", label_width)
        spark = sparkline(buckets(e.daily, room))
        echo(f"{label:<{label_width}} {e.uses:>6} {rate:>5} {life:>5} {trend:>7}  {spark}")
    for e in report.falling:
        echo(
            f"falling: {e.artifact_type}/{e.artifact_id}@{e.version} success rate "
            f"{e.previous_success_rate:.0%} -> {e.success_rate:.0%} ({e.uses} uses)"
        )


@usage_cmd.command("eval")
@click.option("--since", default="30d", show_default=True, help="The window: 30d, 12w.")
@json_option
@click.pass_context
def usage_eval_cmd(ctx, since: str, as_json: bool) -> None:
    """How well search ranks, from real traffic: for the outcomes recorded with a search_id
    (record-usage --search-id, or "search_id" in a usage log), the MRR, hit@1 and hit@5 of the
    artifacts that succeeded, per mode and ranking (--rank-by).

    \b
    Example:
      singularity-ops usage eval --since 30d --json
    """
    from .db import connect
    from .search_log import evaluate_rankings
    from .usage_report import parse_window

    days = parse_window(since)
    with connect(settings_of(ctx)) as conn:
        result = evaluate_rankings(conn, days)
    if as_json:
        emit_json(result)
        return
    if not result.rankings:
        info(ctx, f"no searches logged in the last {days} days")
        return

    def figure(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    info(ctx, f"search ranking, last {days} days (successes by the rank their search gave them)")
    info(
        ctx,
        f"{'mode':<8}{'rank by':<11}{'searches':>9}{'outcomes':>9}{'successes':>10}"
        f"{'MRR':>7}{'hit@1':>7}{'hit@5':>7}",
    )
    for r in result.rankings:
        info(
            ctx,
            f"{r.mode:<8}{r.rank_by:<11}{r.searches:>9}{r.outcomes:>9}{r.successes:>10}"
            f"{figure(r.mrr, 3):>7}{figure(r.hit_at_1):>7}{figure(r.hit_at_5):>7}",
        )


@usage_cmd.command("refresh")
@click.option("--since", help="Only the last N days (30d); default: every day raw events cover.")
@json_option
@click.pass_context
def usage_refresh_cmd(ctx, since, as_json: bool) -> None:
    """Rebuild the daily rollup from the raw events (after events were written around the toolkit).

    \b
    Example:
      singularity-ops usage refresh --since 7d
    """
    from .db import connect
    from .usage_report import parse_window, refresh_rollup

    days = parse_window(since) if since else None
    with connect(settings_of(ctx), autocommit=True) as conn:
        result = refresh_rollup(conn, since_days=days)
    if as_json:
        emit_json(result)
        return
    if not result.days:
        info(ctx, "nothing to do: no raw events")
        return
    info(
        ctx,
        f"rebuilt {result.days} day(s), {result.first_day} .. {result.last_day}: {result.rows} rollup rows",
    )


@usage_cmd.command("prune")
@click.option(
    "--older-than", help="Also drop raw events older than this (400d, 52w); default: keep them."
)
@click.option("--dry-run", is_flag=True, help="Count what would go; drop nothing.")
@json_option
@click.pass_context
def usage_prune_cmd(ctx, older_than: str | None, dry_run: bool, as_json: bool) -> None:
    """Drop searches older than search.log_retention_days (90) from the search log, and with
    --older-than old raw usage events; counters and the daily rollup keep every day.

    \b
    Example:
      singularity-ops usage prune --older-than 400d --dry-run
    """
    from .db import connect
    from .search_log import prune_search_log
    from .usage_report import parse_window, prune_raw_events

    settings = settings_of(ctx)
    days = parse_window(older_than, "--older-than") if older_than else None
    with connect(settings, autocommit=True) as conn:
        events = prune_raw_events(conn, days, dry_run=dry_run) if days else None
        searches = prune_search_log(conn, settings.search_log_retention_days, dry_run=dry_run)
    if as_json:
        emit_json({"raw_events": events, "search_log": searches})
        return
    verb = "would drop" if dry_run else "dropped"
    if events is not None:
        chunks = f" in {events.chunks} chunk(s)" if events.chunks else ""
        info(ctx, f"{verb} {events.events} raw event(s) older than {days} days{chunks}")
    info(
        ctx,
        f"{verb} {searches.searches} logged search(es) older than "
        f"{searches.older_than_days} days (search.log_retention_days)",
    )


@cli.command("export")
@click.option("--min-usage", type=int, help="Minimum uses (default: export.min_usage, 10).")
@click.option("--min-success-rate", type=float, help="Minimum success rate 0..1 (default 0.90).")
@type_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option(
    "--since",
    help="Judge by the uses and success rate of the last N days (30d, 12w) instead of lifetime.",
)
@click.option(
    "--dry-run", is_flag=True, help="Report what would be written or removed; touch nothing."
)
@click.option(
    "--prune",
    is_flag=True,
    help="Delete earlier exports that no longer qualify (files with a _learning block only).",
)
@click.option(
    "--refresh-curated",
    is_flag=True,
    help="Bring the _learning block of promoted (curated) files up to date, in place.",
)
@json_option
@click.pass_context
def export_cmd(
    ctx,
    min_usage,
    min_success_rate,
    types,
    out,
    since,
    dry_run: bool,
    prune: bool,
    refresh_curated: bool,
    as_json: bool,
) -> None:
    """Write proven artifacts to templates_data/learned/<type>/<id>.json for review.

    Deterministic: a second run with no change in the database changes no file. Earlier
    exports that no longer qualify are listed (--prune deletes them); when nothing
    qualifies, the closest candidates say which threshold they miss.

    \b
    Example:
      singularity-ops export --min-usage 20 --min-success-rate 0.95 --type code_generation --dry-run
    """
    from .db import connect
    from .export import export_proven
    from .usage_report import parse_window

    settings = settings_of(ctx)
    since_days = parse_window(since) if since else None
    with connect(settings, autocommit=True) as conn:
        types = tuple(_resolve_types(ctx, conn, types))
        result = export_proven(
            conn,
            out or settings.export_dir,
            min_usage=settings.export_min_usage if min_usage is None else min_usage,
            min_success_rate=settings.export_min_success_rate
            if min_success_rate is None
            else min_success_rate,
            types=types,
            since_days=since_days,
            dry_run=dry_run,
            prune=prune,
            refresh_curated=settings.templates_dir if refresh_curated else None,
        )
    if as_json:
        emit_json(result)
        return
    would = "would " if dry_run else ""
    for name in result.refreshed:
        info(ctx, f"{would}refresh the _learning block of {settings.templates_dir / name}")
    for name in result.written:
        info(
            ctx,
            f"{would}write {result.out_dir / name}"
            if dry_run
            else f"wrote {result.out_dir / name}",
        )
    for name in result.curated:
        if not refresh_curated:
            info(ctx, f"skipped {name}: the curated file already holds it (promoted; "
                      "--refresh-curated updates its _learning block)")  # fmt: skip
    for name in result.removed:
        info(ctx, f"{would}remove {result.out_dir / name}: a copy of its curated file")
    for name in result.no_longer_qualifying:
        if name in result.pruned:
            info(ctx, f"{would}remove {result.out_dir / name}: no longer qualifies")
        else:
            info(ctx, f"no longer qualifies: {result.out_dir / name} (remove with --prune)")
    for miss in result.near_misses:
        info(ctx, f"near miss: {miss.artifact}: {miss.misses}")
    info(
        ctx,
        f"{'dry run: ' if dry_run else ''}{result.qualifying} proven artifact(s): "
        f"{len(result.written)} {'to write' if dry_run else 'written'}, "
        f"{len(result.unchanged)} unchanged, {len(result.curated)} already curated, "
        f"{len(result.no_longer_qualifying)} no longer qualifying in {result.out_dir}",
    )


@cli.command("status")
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """One screen: server, extensions, migrations, artifacts, embeddings, learning.

    A server that cannot be reached is reported (with why), and the exit code is 3.

    \b
    Example:
      singularity-ops status --json | jq .knowledge.embeddings
    """
    from .status import EXIT_UNREACHABLE, cluster_advice, collect_status

    report = collect_status(settings_of(ctx))
    if as_json:
        emit_json(report)
    echo = click.echo
    if not report.reachable:
        if not as_json:
            echo(f"database     {report.target} unreachable: {report.error}")
            if report.local_cluster is not None:
                advice = cluster_advice(report.local_cluster, settings_of(ctx).port)
                echo(f"cluster      {report.local_cluster.data_dir}: {advice}")
        ctx.exit(EXIT_UNREACHABLE)
    if as_json:
        return
    echo(
        f"database     {report.target} (PostgreSQL {report.server_version}, env {report.environment})"
    )
    exts = ", ".join(f"{k} {v}" for k, v in report.extensions.items() if k != "plpgsql") or "none"
    echo(f"extensions   {exts}")
    pending = (
        f", {len(report.migrations_pending)} pending"
        if report.migrations_pending
        else ", none pending"
    )
    echo(f"migrations   {report.migrations_applied} applied{pending}")
    k = report.knowledge
    if k is None:
        echo("artifacts    schema not migrated: run `singularity-ops migrate`")
        return
    by_type = ", ".join(f"{t.artifact_type} {t.artifacts}" for t in k.by_type)
    echo(f"artifacts    {k.total}" + (f" ({by_type})" if by_type else ""))
    e = k.embeddings
    echo(f"embeddings   {e.present} present, {e.stale} stale, {e.missing} missing")
    echo(f"usage        {k.usage_events} recorded uses")
    _print_usage_and_backup(report, settings_of(ctx).backup_dir)
    for title, rows in (("most used", k.top_used), ("best rate", k.best_success_rate)):
        for i, r in enumerate(rows):
            rate = "-" if r.success_rate is None else f"{r.success_rate:.0%}"
            label = title if i == 0 else ""
            echo(
                f"{label:<12} {r.artifact_type}/{r.artifact_id}@{r.version}  {r.usage_count} uses, {rate}"
            )


def _print_usage_and_backup(report: Any, backup_dir: Path) -> None:
    """status: the usage history's line and the last backup's."""
    u = report.usage
    if u is not None:
        last = f"{u.last_event_at:%Y-%m-%d %H:%M:%S%z}" if u.last_event_at else "never"
        rollup = (
            "up to date"
            if u.rollup_up_to_date
            else f"misses {u.rollup_missing_events} recent event(s): run `singularity-ops usage refresh`"
        )
        click.echo(
            f"             last event {last}, {u.events_last_24h} in the last 24 h; daily rollup {rollup}"
        )
    b = report.last_backup
    if b is None:
        click.echo(f"backup       none in {backup_dir} (singularity-ops backup)")
        return
    age = report.last_backup_age_hours
    ago = (
        "" if age is None else (f", {age:.0f} h ago" if age < 48 else f", {age / 24:.0f} days ago")
    )
    click.echo(f"backup       {b.file.name} ({b.bytes / 1e6:.1f} MB{ago})")


@cli.command("env")
@json_option
@click.pass_context
def env_cmd(ctx: click.Context, as_json: bool) -> None:
    """Print the resolved connection as shell exports (never the password).

    \b
    Example:
      eval "$(singularity-ops env)"; psql -c 'select 1'
    """
    from .config import connection_env
    from .errors import PgBinaryError
    from .pgbin import find_program

    settings = settings_of(ctx)
    exports = connection_env(settings)
    try:
        bindir: Path | None = find_program("psql", settings.bindir).bindir
    except PgBinaryError as exc:
        warn(str(exc))
        bindir = None
    if as_json:
        emit_json({**exports, "bindir": bindir})
        return
    for key, value in exports.items():
        click.echo(f"export {key}={shlex.quote(value)}")
    if bindir is not None:
        click.echo(f'export PATH={shlex.quote(str(bindir))}:"$PATH"')


@cli.group("migrate", invoke_without_command=True)
@click.option("--dry-run", is_flag=True, help="List what would run; run nothing.")
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=60,
    show_default=True,
    help="Seconds to wait for another migrate to finish.",
)
@click.option(
    "--out-of-order",
    is_flag=True,
    help="Also apply pending migrations numbered below an applied one (refused by default).",
)
@json_option
@click.pass_context
def migrate_cmd(
    ctx: click.Context, dry_run: bool, lock_timeout: float, out_of_order: bool, as_json: bool
) -> None:
    """Apply pending SQL migrations from sql/migrations, in order, exactly once each.

    Refuses to run if an applied file was edited, renamed or removed. Concurrent runs wait
    for each other (advisory lock, --lock-timeout). Subcommands: status, new.

    \b
    Example:
      singularity-ops migrate --dry-run && singularity-ops migrate
    """
    if ctx.invoked_subcommand is not None:
        _refuse_group_options(ctx)
        return
    from .db import connect
    from .migrate import migrate

    settings = settings_of(ctx)
    from .migrate import stray_files

    for stray in stray_files(settings.migrations_dir):
        warn(f"{stray}: ignored, not a migration (migrations are named NNNN_description.sql)")
    with connect(settings, autocommit=True) as conn:
        result = migrate(
            conn,
            settings.migrations_dir,
            dry_run=dry_run,
            lock_timeout=lock_timeout,
            out_of_order=out_of_order,
        )
    if as_json:
        emit_json(result)
        return
    if not result.applied:
        info(ctx, f"nothing to do: {result.already_applied} migrations applied, none pending")
        return
    verb = "would apply" if dry_run else "applied"
    for name in result.applied:
        info(ctx, f"{verb} {name}")
    info(ctx, f"{verb} {len(result.applied)} migration(s) in {result.seconds:.2f} s")


@migrate_cmd.command("status")
@click.option(
    "--exit-code", is_flag=True, help="Exit 3 when migrations are pending (for CI gates)."
)
@json_option
@click.pass_context
def migrate_status_cmd(ctx: click.Context, exit_code: bool, as_json: bool) -> None:
    """List applied and pending migrations; with --exit-code, exit 3 while any is pending
    (a CI gate: `migrate status --exit-code || singularity-ops migrate`).

    \b
    Example:
      singularity-ops migrate status --exit-code
    """
    from .db import connect
    from .migrate import status

    settings = settings_of(ctx)
    with connect(settings, autocommit=True) as conn:
        states = status(conn, settings.migrations_dir)
    pending = [s for s in states if not s.applied]
    if as_json:
        emit_json(
            {"migrations": states, "pending": len(pending), "applied": len(states) - len(pending)}
        )
    else:
        for st in states:
            when = (
                f"applied {st.applied_at:%Y-%m-%d %H:%M:%S%z} ({st.execution_ms} ms)"
                if st.applied
                else "pending"
            )
            click.echo(f"{st.version:04d}_{st.name}  {when}")
        click.echo(f"{len(states) - len(pending)} applied, {len(pending)} pending")
    if exit_code and pending:
        ctx.exit(3)


@migrate_cmd.command("new")
@click.argument("description")
@json_option
@click.pass_context
def migrate_new_cmd(ctx: click.Context, description: str, as_json: bool) -> None:
    """Create the next numbered, empty migration file and print its path.

    \b
    Example:
      singularity-ops migrate new "index artifacts by source path"
    """
    from .migrate import new_migration

    path = new_migration(settings_of(ctx).migrations_dir, description)
    if as_json:
        emit_json({"path": path})
    else:
        click.echo(path)


@migrate_cmd.command("forget")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--yes", is_flag=True, help="Do not ask (needed when stdin is not a terminal).")
@click.option("--dry-run", is_flag=True, help="Say what would be forgotten; change nothing.")
@json_option
@click.pass_context
def migrate_forget_cmd(
    ctx: click.Context, version: int, yes: bool, dry_run: bool, as_json: bool
) -> None:
    """Forget that migration VERSION was applied (its row in schema_migrations), undoing nothing.

    The way out when a migration was applied by mistake (an empty `migrate new` file, say):
    forget it, then fix or delete the file; the next `migrate` applies what the file holds
    then. Anything it did, undo by hand first.

    Exits 1 when VERSION was never applied. --dry-run says what it would forget.

    \b
    Example:
      singularity-ops migrate forget 10 --dry-run
    """
    from .db import connect
    from .errors import ConfigError
    from .migrate import forget_migration

    if not yes and not dry_run:
        if not sys.stdin.isatty():
            raise ConfigError("stdin is not a terminal: confirm with --yes")
        click.confirm(
            f"forget migration {version:04d} (its effects stay in the database)?", abort=True
        )
    with connect(settings_of(ctx), autocommit=True) as conn:
        row = forget_migration(conn, version, dry_run=dry_run)
    if as_json:
        emit_json(row)
        return
    verb = "would forget" if dry_run else "forgot"
    info(ctx, f"{verb} {row.version:04d}_{row.name}.sql (applied {row.applied_at:%Y-%m-%d %H:%M})")


@cli.group("model")
def model_group() -> None:
    """The local embedding model: build and check its ONNX graph."""


@model_group.command("build")
@click.option("--force", is_flag=True, help="Rebuild even when the cached graph looks right.")
@click.option("--verify", is_flag=True, help="Re-hash the cached files (catches bit rot).")
@json_option
@click.pass_context
def model_build_cmd(ctx: click.Context, force: bool, verify: bool, as_json: bool) -> None:
    """Build the ONNX graph of the local model from its packaged weights (once; cached).

    The cache lives outside the checkout (SINGULARITY_CACHE_DIR, else ~/.cache/singularity-ops),
    keyed by the weights' sha256. A missing, stale or corrupt entry is rebuilt; a good one is
    left alone. ./scripts/setup runs this.

    \b
    Example:
      singularity-ops model build --verify
    """
    import time

    from .local_model import ensure_graph

    embedding = settings_of(ctx).embedding
    started = time.monotonic()
    result = ensure_graph(
        prebuilt=embedding.onnx_model, cache_dir=embedding.cache_dir, force=force, verify=verify
    )
    if as_json:
        emit_json({**to_jsonable(result), "seconds": time.monotonic() - started})
        return
    state = f"built in {time.monotonic() - started:.1f} s" if result.built else "up to date"
    info(ctx, f"{result.path.parent}: {state}")


@model_group.command("status")
@click.option("--verify", is_flag=True, help="Re-hash the cached files.")
@json_option
@click.pass_context
def model_status_cmd(ctx: click.Context, verify: bool, as_json: bool) -> None:
    """Show where the local model's ONNX graph is and whether it is usable (exit 1 if not).

    \b
    Example:
      singularity-ops model status --json
    """
    from .local_model import ensure_graph

    embedding = settings_of(ctx).embedding
    result = ensure_graph(
        prebuilt=embedding.onnx_model, cache_dir=embedding.cache_dir, build=False, verify=verify
    )
    if as_json:
        emit_json(result)
        return
    info(ctx, f"{result.path.parent}: usable (weights sha256 {result.weights_sha256[:16]})")


@cli.group("server")
def server() -> None:
    """Inspect, start and stop the project-local cluster."""


def _local_cluster(ctx: click.Context):
    from .errors import ConfigError

    settings = settings_of(ctx)
    if settings.local is None:
        raise ConfigError(
            "the configured target is an external server (DATABASE_URL or PGHOST is set), "
            "not the project-local cluster; unset them to manage the local cluster"
        )
    if settings.no_project:
        from .config import no_project_message

        raise ConfigError(no_project_message(settings))
    return settings


@server.command("status")
@json_option
@click.pass_context
def server_status(ctx: click.Context, as_json: bool) -> None:
    """Show whether the project-local cluster exists and runs. Exit 3 when it is not running.

    \b
    Example:
      singularity-ops server status --json
    """
    from . import cluster

    settings = _local_cluster(ctx)
    st = cluster.status(settings.local)
    if as_json:
        emit_json(st)
    else:
        state = "running" if st.running else ("stopped" if st.initialized else "not initialised")
        click.echo(f"local cluster: {state}")
        click.echo(f"  data directory: {st.data_dir}")
        if st.pid:
            click.echo(f"  pid: {st.pid}")
            click.echo(f"  listening: 127.0.0.1:{st.port}, socket in {st.socket_dir}")
        else:
            click.echo(f"  port when started: {st.port} (PGPORT or postgres.local.port)")
        click.echo(f"  log: {st.log_file}")
        if st.authentication == "trust":
            click.echo("  authentication: trust (anyone local gets in; `ensure-db` fixes it)")
        elif st.authentication:
            click.echo(f"  authentication: {st.authentication}, password in {st.passfile}")
    ctx.exit(0 if st.running else 3)


@server.command("start")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=30, show_default=True,
    help="Seconds to wait for the server (the same default as ensure-db).",
)  # fmt: skip
@json_option
@click.pass_context
def server_start(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Initialise (if needed) and start the project-local cluster, detached.

    \b
    Example:
      singularity-ops server start
    """
    from . import cluster

    settings = _local_cluster(ctx)
    created = cluster.init(settings.local, settings.bindir)
    started = cluster.start(settings.local, settings.bindir, timeout)
    port = cluster.status(settings.local).port
    if as_json:
        emit_json({"initialised": created, "started": started, "port": port})
        return
    info(
        ctx,
        ("initialised and " if created else "")
        + ("started" if started else "already running")
        + f" on 127.0.0.1:{port} ({settings.local.data_dir})",
    )


@server.command("update-extensions")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=30, show_default=True,
    help="Seconds to wait for the server (the same default as ensure-db).",
)  # fmt: skip
@json_option
@click.pass_context
def server_update_extensions(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Update timescaledb, vector and postgis in every database of the local cluster to the
    versions of the PostgreSQL build now serving it (after switching builds, e.g. to Nix).

    \b
    Example:
      singularity-ops server update-extensions
    """
    from .extensions import update_extensions

    settings = _local_cluster(ctx)
    done = update_extensions(settings, timeout)
    if as_json:
        emit_json(done)
        return
    for u in done:
        info(ctx, f"{u.database}: {u.extension} {u.before} -> {u.after}")
    info(ctx, f"updated the extensions of {len({u.database for u in done})} database(s)")


@server.command("stop")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=30, show_default=True,
    help="Seconds to wait for the server (the same default as ensure-db).",
)  # fmt: skip
@json_option
@click.pass_context
def server_stop(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Stop the project-local cluster (fast shutdown). Stopping a stopped cluster is fine.

    \b
    Example:
      singularity-ops server stop
    """
    from . import cluster

    settings = _local_cluster(ctx)
    stopped = cluster.stop(settings.local, settings.bindir, timeout)
    if as_json:
        emit_json({"stopped": stopped})
        return
    info(ctx, "stopped" if stopped else "not running")


def quiet_library_logs() -> None:
    """psycopg logs "error ignored in rollback" (a connection another session ended, say by a
    restore) through logging's last-resort handler, a stray line on stderr beside the one
    error the command prints. The command's own message says what went wrong."""
    import logging

    logging.getLogger("psycopg").addHandler(logging.NullHandler())


def _setter(key: str):
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value not in (None, False):
            ctx.obj[key] = value
        return value

    return callback


def _global_options_everywhere(command: click.Command) -> None:
    """-q, -v, --config, --dbname and --database-url also after the command (`import -q`),
    where they override the same option given before it. Hidden from each command's help:
    `singularity-ops --help` documents them once. Added when the root group resolves the
    command (and to all of a group's commands), not at import: copying them onto all 36
    commands was 40% of importing this module, on every start."""
    if getattr(command, "_global_options_added", False):
        return
    command._global_options_added = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _global_options_everywhere(sub)
    # The root group's own options (its --help and --version aside), copied as they are.
    globals_ = [p for p in cli.params if isinstance(p, click.Option) and p.expose_value]
    taken = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for option in globals_:
        if not taken.intersection(option.opts):
            command.params.append(
                click.Option(
                    option.opts,
                    type=option.type,
                    is_flag=option.is_flag,
                    metavar=option.metavar,
                    expose_value=False,
                    hidden=True,
                    callback=_setter(option.name),  # type: ignore[arg-type]
                    help="(global option; see singularity-ops --help)",
                )
            )


# A command's start allocates ~80,000 objects (psycopg, numpy and onnxruntime's imports, the
# model): the collector ran ~100 times over them, 15-25 ms of a 0.5 s cold `search`, and
# freed almost nothing. So it pauses for a command's first seconds; longer commands (serve,
# embed, import, search --stdin) get it back when the pause ends.
GC_PAUSE_SECONDS = 2.0


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script. Usage errors (click's own included) are reported
    like every other error: one `singularity-ops: error:` line naming the --help to read."""
    import gc
    import threading

    collecting = gc.isenabled()
    resume = threading.Timer(GC_PAUSE_SECONDS, gc.enable)
    resume.daemon = True
    if collecting:
        gc.disable()
        resume.start()
    try:
        _main(argv)
    finally:
        resume.cancel()
        if collecting:
            gc.enable()


def _main(argv: list[str] | None) -> None:
    quiet_library_logs()
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = cli.main(
            args=argv, prog_name="singularity-ops", obj={"argv": tuple(argv)}, standalone_mode=False
        )
    except click.exceptions.Abort:
        _report("aborted", 1, "--json" in argv)
        sys.exit(1)
    except click.ClickException as exc:
        message = exc.format_message()
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            message += f" (see `{exc.ctx.command_path} --help`)"
        _report(message, exc.exit_code, "--json" in argv)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
