"""The `setup` command's chain, in order: ensure-db -> create-extensions -> migrate -> import -> embed.

(Named chain.py, not setup.py: a package module called setup.py surprises tools and people.)

Each step is the same library call its own command makes. The chain stops at the first
failing step with that step's error. A second run on an up-to-date database does no work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .config import Settings
from .errors import ConfigError, SingularityOpsError, StepFailed

STEPS = ("ensure-db", "create-extensions", "migrate", "import", "embed")


@dataclass
class StepResult:
    """One step of the chain."""

    step: str
    did_work: bool
    summary: str
    seconds: float


@dataclass
class Verification:
    """What the knowledge base looks like after the chain."""

    artifacts: int
    embedded: int
    extensions: dict[str, str]


@dataclass
class SetupResult:
    """The whole chain."""

    steps: list[StepResult] = field(default_factory=list)
    verification: Verification | None = None

    @property
    def did_work(self) -> bool:
        return any(s.did_work for s in self.steps)


def _ensure_db(settings: Settings) -> tuple[bool, str]:
    from .db import ensure_db

    r = ensure_db(settings)
    notes = [
        n
        for n, on in (
            ("initialised the local cluster", r.cluster_initialized),
            ("started the local cluster", r.cluster_started),
            ("created the database", r.created),
        )
        if on
    ]
    where = settings.redact(settings.url())
    done = f"{', '.join(notes)}: " if notes else ""
    return bool(notes), f"{done}{where} ready (PostgreSQL {r.server_version.split()[0]})"


def _create_extensions(settings: Settings) -> tuple[bool, str]:
    from .db import connect
    from .extensions import create_extensions

    with connect(settings, autocommit=True) as conn:
        results = create_extensions(conn, list(settings.extensions))
    created = [r.name for r in results if r.created]
    return bool(created), ", ".join(f"{r.name} {r.version}" for r in results) + (
        f" (created {', '.join(created)})" if created else ""
    )


def _migrate(settings: Settings) -> tuple[bool, str]:
    from .db import connect
    from .migrate import migrate

    with connect(settings, autocommit=True) as conn:
        r = migrate(conn, settings.migrations_dir)
    if r.applied:
        return True, f"applied {len(r.applied)} migration(s)"
    return False, f"{r.already_applied} migrations applied, none pending"


def _import(settings: Settings) -> tuple[bool, str]:
    from .api import KnowledgeBase

    if not settings.templates_dir.is_dir():
        raise ConfigError(
            f"no knowledge to import: {settings.templates_dir} does not exist (import.root); run "
            "from a checkout that has templates_data/, pass --templates DIR, or leave the step "
            "out with --skip import --skip embed"
        )
    r = KnowledgeBase(settings).import_()
    did = bool(r.inserted or r.updated)
    return did, f"{r.inserted} inserted, {r.updated} updated, {r.unchanged} unchanged"


def _embed(settings: Settings) -> tuple[bool, str]:
    from .db import connect
    from .embed import embed

    with connect(settings, autocommit=True) as conn:
        r = embed(conn, None, settings.embedding)
    if r.embedded:
        return True, f"{r.embedded} embedded, {r.up_to_date} up to date"
    return False, f"{r.up_to_date} artifacts up to date"


_RUNNERS: dict[str, Callable[[Settings], tuple[bool, str]]] = {
    "ensure-db": _ensure_db,
    "create-extensions": _create_extensions,
    "migrate": _migrate,
    "import": _import,
    "embed": _embed,
}


def select_steps(skip: Sequence[str] = (), only: Sequence[str] = ()) -> list[str]:
    """The steps to run, in chain order. --only and --skip cannot be combined."""
    unknown = sorted((set(skip) | set(only)) - set(STEPS))
    if unknown:
        raise ConfigError(f"unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    if skip and only:
        raise ConfigError("use either --skip or --only, not both")
    return [s for s in STEPS if (s in only if only else s not in skip)]


def verify(settings: Settings) -> Verification:
    """Counts that show the knowledge base is ready."""
    from .artifacts import stats
    from .db import connect, relation_exists
    from .extensions import installed_extensions

    with connect(settings) as conn:
        extensions = {k: v for k, v in installed_extensions(conn).items() if k != "plpgsql"}
        has_table = relation_exists(conn, "knowledge_artifacts")
        artifacts = embedded = 0
        if has_table:
            counts = stats(conn)
            artifacts, embedded = counts.total, counts.embeddings.present
    return Verification(artifacts, embedded, extensions)


def run_setup(
    settings: Settings,
    steps: Sequence[str] = STEPS,
    *,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[StepResult], None] | None = None,
) -> SetupResult:
    """Run the steps in order; the first failure raises StepFailed naming the step."""
    result = SetupResult()
    for step in steps:
        if on_start:
            on_start(step)
        started = time.monotonic()
        try:
            did_work, summary = _RUNNERS[step](settings)
        except SingularityOpsError as exc:
            raise StepFailed(
                f"setup stopped at {step}: {exc.message}", exit_code=exc.exit_code
            ) from exc
        done = StepResult(step, did_work, summary, time.monotonic() - started)
        result.steps.append(done)
        if on_done:
            on_done(done)
    result.verification = verify(settings)
    return result
