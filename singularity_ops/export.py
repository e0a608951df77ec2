"""export: write proven artifacts (enough uses, high success rate) back to git for human review.

Each artifact goes to <out>/<artifact_type>/<artifact_id>.json: its original text, byte for
byte, with the identity made explicit ("artifact_type", "id", "version", so the file keeps
its identity wherever a reviewer moves it) and a "_learning" block with the metrics that
qualified it, both laid out like the file's own members. Bytes are deterministic: a second
export with no change in the database leaves every file untouched (no git diff, no new
mtime). An artifact whose curated file already holds the same content (it was promoted) is
not exported again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from .errors import ConfigError
from .files import write_atomically

LEARNING_KEY = "_learning"
MAX_NAME_BYTES = 200


@dataclass
class ExportResult:
    """What export wrote."""

    out_dir: Path
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    qualifying: int = 0
    # proven, but their curated file already holds exactly this (promoted before): not written
    curated: list[str] = field(default_factory=list)
    # earlier exports of those, identical to the curated file apart from metrics: removed
    removed: list[str] = field(default_factory=list)
    # files export wrote earlier (they hold a `_learning` block) that no longer qualify:
    # listed, and deleted with prune
    no_longer_qualifying: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    # with refresh_curated: curated files whose `_learning` block was brought up to date
    refreshed: list[str] = field(default_factory=list)
    # nothing qualified: the closest candidates and the threshold each misses
    near_misses: list[NearMiss] = field(default_factory=list)
    dry_run: bool = False


@dataclass(frozen=True)
class NearMiss:
    """A candidate that did not qualify, and why."""

    artifact: str  # type/id@version
    uses: int
    success_rate: float | None
    misses: str  # "uses 4 < 10", "success rate 0.75 < 0.90", or both


def safe_relative_path(artifact_type: str, artifact_id: str) -> Path:
    """<type>/<id>.json, with every component safe to create under the output directory.

    Slashes in ids become folders (languages/go/best_practices) when every part is a plain
    name; anything else (.., absolute paths, backslashes, control characters) is
    percent-encoded into one file name, so nothing can escape the output directory.
    """

    def plain(part: str) -> bool:
        return (
            part not in ("", ".", "..")
            and not part.startswith(".")
            and "\\" not in part
            and all(c.isprintable() and c not in ':*?"<>|' for c in part)
        )

    def shorten(name: str) -> str:
        if len(name.encode()) <= MAX_NAME_BYTES:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return name.encode()[: MAX_NAME_BYTES - 17].decode(errors="ignore") + "-" + digest

    type_part = artifact_type if plain(artifact_type) else quote(artifact_type, safe="")
    parts = artifact_id.split("/")
    if all(plain(p) for p in parts):
        id_parts = [shorten(p) for p in parts]
    else:
        id_parts = [shorten(quote(artifact_id, safe=""))]
    id_parts[-1] += ".json"
    return Path(shorten(type_part), *id_parts)


_WS = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class _Member:
    key: str
    start: int  # the key's opening quote
    value_start: int
    value_end: int


def _members(text: str) -> tuple[int, list[_Member]]:
    """The offset of the top-level object's closing brace, and its members with their spans.

    The stdlib's own scanner reads every key and value, so strings and nesting are its
    business; only the positions are kept.
    """
    decoder = json.JSONDecoder()
    i = _WS.match(text, 0).end()
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _WS.match(text, i + 1).end()
    members: list[_Member] = []
    if text[i] == "}":
        return i, members
    while True:
        start = i
        key, i = json.decoder.scanstring(text, i + 1)
        i = _WS.match(text, i).end() + 1  # past the colon
        value_start = _WS.match(text, i).end()
        _value, end = decoder.raw_decode(text, value_start)
        members.append(_Member(key, start, value_start, end))
        i = _WS.match(text, end).end()
        if text[i] == "}":
            return i, members
        i = _WS.match(text, i + 1).end()  # past the comma


def _identity_updates(document: dict, artifact_type: str, artifact_id: str, version: str) -> dict:
    """The identity keys an exported file must carry so that it keeps its identity wherever a
    reviewer moves it: artifact_type always, id and version unless the file already says so."""
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    updates = {"artifact_type": artifact_type}
    if document.get("id") != artifact_id and not (
        metadata.get("id") == artifact_id and "id" not in document
    ):
        updates["id"] = artifact_id
    if str(document.get("version", "")) != version and not (
        str(metadata.get("version", "")) == version and "version" not in document
    ):
        updates["version"] = version
    return updates


def render(
    content_raw: str, artifact_type: str, artifact_id: str, version: str, metrics: dict
) -> bytes:
    """The exported file: the original text byte for byte, with only the explicit identity and
    the `_learning` block set (replaced where the file has them, appended where it does not),
    formatted like the file's own members. A reviewer's diff is just those lines."""
    document = json.loads(content_raw)
    updates = _identity_updates(document, artifact_type, artifact_id, version)
    updates = {k: v for k, v in updates.items() if document.get(k) != v}
    updates[LEARNING_KEY] = metrics
    _close, members = _members(content_raw)
    if not members:  # "{}": no layout to follow
        return (json.dumps(updates, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    opening = content_raw[: members[0].start]
    indent = opening[opening.rfind("\n") + 1 :] if "\n" in opening else ""
    if len(members) > 1:
        separator = content_raw[members[0].value_end : members[1].start]
    else:
        separator = ",\n" + indent if indent else ", "

    def value_text(value) -> str:
        if not indent:  # a one-line object stays on one line
            return json.dumps(value, ensure_ascii=False)
        step = indent if "\t" in indent else len(indent)
        return json.dumps(value, indent=step, ensure_ascii=False).replace("\n", "\n" + indent)

    text = content_raw
    # Members the file already has get their value replaced in place, from the last one so
    # that earlier offsets stay valid; the others are appended after the last member.
    for member in sorted(members, key=lambda m: -m.start):
        if member.key in updates:
            value = value_text(updates.pop(member.key))
            text = text[: member.value_start] + value + text[member.value_end :]
    if updates:
        end = _members(text)[1][-1].value_end
        appended = "".join(
            f"{separator}{json.dumps(key, ensure_ascii=False)}: {value_text(value)}"
            for key, value in updates.items()
        )
        text = text[:end] + appended + text[end:]
    return text.encode("utf-8")


def strip_learning(document: dict) -> dict:
    """A document without its `_learning` block: what a reviewer promotes is the rest."""
    return {k: v for k, v in document.items() if k != LEARNING_KEY}


def _differs(path: Path, data: bytes) -> bool:
    """True when writing `data` to `path` would change it."""
    try:
        return path.read_bytes() != data
    except FileNotFoundError:
        return True


def export_proven(
    conn: psycopg.Connection,
    out_dir: Path,
    *,
    min_usage: int = 10,
    min_success_rate: float = 0.90,
    types: tuple[str, ...] = (),
    since_days: int | None = None,
    dry_run: bool = False,
    prune: bool = False,
    refresh_curated: Path | None = None,
) -> ExportResult:
    """Write every artifact with at least min_usage uses and min_success_rate success rate.

    Without since_days the lifetime counters are judged; with it, the uses and success rate
    of the last since_days UTC days (from the daily rollup), and the `_learning` block records
    that window beside the lifetime numbers. Earlier exports that no longer qualify are
    listed (prune deletes them); dry_run reports all of it and touches no file.

    refresh_curated (the import root): a proven artifact whose curated file already holds
    its content (promoted) gets that file's `_learning` block brought up to date in place,
    so the figures in git do not stay those of the day it was promoted.
    """
    if min_usage < 1:
        raise ConfigError(f"--min-usage must be at least 1, got {min_usage}")
    if not 0 <= min_success_rate <= 1:
        raise ConfigError(f"--min-success-rate must be between 0 and 1, got {min_success_rate}")
    out_dir = out_dir.resolve()
    rows, window, judged = _proven_rows(conn, min_usage, min_success_rate, types, since_days)
    targets: dict[Path, tuple] = {}
    for row in rows:
        # Rows come oldest version first: only the latest qualifying version of each artifact
        # is exported, since that is what a reviewer would promote.
        targets[safe_relative_path(row[1], row[2])] = row
    result = ExportResult(out_dir=out_dir, qualifying=len(targets), dry_run=dry_run)
    if not rows:
        result.near_misses = _near_misses(conn, min_usage, min_success_rate, types, window)
    for relative, row in targets.items():
        target = (out_dir / relative).resolve()
        if out_dir not in target.parents:  # a safe_relative_path bug
            raise AssertionError(f"export path {target} escaped {out_dir}")
        metrics = _metrics(row, window, judged.get(row[0]))
        _export_one(row, relative.as_posix(), target, metrics, result, refresh_curated)
    _list_no_longer_qualifying(out_dir, {r.as_posix() for r in targets}, result, prune, dry_run)
    return result


def _export_one(
    row: tuple,
    label: str,
    target: Path,
    metrics: dict[str, Any],
    result: ExportResult,
    refresh_curated: Path | None,
) -> None:
    """Write (or, for a promoted artifact, refresh and tidy) one qualifying artifact."""
    artifact_type, artifact_id, version, content_raw = row[1:5]
    source_path, source = row[9], row[10]
    data = render(content_raw, artifact_type, artifact_id, version, metrics)
    curated = strip_learning(json.loads(content_raw))
    if source == "git" and curated == strip_learning(json.loads(data)):
        # Promoted already: git holds this content, a copy in learned/ would only make
        # `import --include-learned` see two files claiming one artifact.
        result.curated.append(label if source_path == label else f"{label} (in {source_path})")
        if refresh_curated is not None and source_path:
            _refresh_curated(refresh_curated.resolve(), source_path, data, result)
        if _holds(target, curated):
            if not result.dry_run:
                target.unlink()
            result.removed.append(label)
        return
    changed = _differs(target, data)
    if changed and not result.dry_run:
        write_atomically(target, data)
    (result.written if changed else result.unchanged).append(label)


def _refresh_curated(root: Path, source_path: str, data: bytes, result: ExportResult) -> None:
    """Bring a promoted file's `_learning` block up to date in place (inside the root only)."""
    curated_path = (root / source_path).resolve()
    if root in curated_path.parents and _differs(curated_path, data):
        if not result.dry_run:
            write_atomically(curated_path, data)
        result.refreshed.append(source_path)


def _proven_rows(
    conn: psycopg.Connection,
    min_usage: int,
    min_success_rate: float,
    types: tuple[str, ...],
    since_days: int | None,
) -> tuple[list[tuple], Any, dict]:
    """(the qualifying rows, oldest version first; the window or None; window stats by pk)."""
    columns = (
        "SELECT id, artifact_type, artifact_id, version, content_raw, usage_count, success_count,"
        " success_rate, last_used_at, source_path, source FROM knowledge_artifacts"
    )
    window = None
    judged: dict = {}
    if since_days is None:
        query = columns + " WHERE usage_count >= %s AND success_rate >= %s"
        params: list = [min_usage, min_success_rate]
    else:
        from .usage_report import Window, window_stats

        today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]  # type: ignore[index]
        window = Window.ending(today, since_days)
        judged = {
            s["pk"]: s
            for s in window_stats(conn, window, types=types)
            if s["uses"] >= min_usage and s["successes"] >= min_success_rate * s["uses"]
        }
        query = columns + " WHERE id = ANY(%s)"
        params = [list(judged)]
    if types:
        query += " AND artifact_type = ANY(%s)"
        params.append(list(types))
    query += " ORDER BY artifact_type, artifact_id, knowledge_version_key(version), version"
    return conn.execute(query, params).fetchall(), window, judged


def _metrics(row: tuple, window: Any, stats: dict | None) -> dict:
    """The `_learning` block: lifetime counters, or the window's beside the lifetime ones."""
    _pk, _t, _i, _v, _raw, usage, successes, rate, last_used, source_path, _source = row
    if window is None or stats is None:
        return {
            "usage_count": usage,
            "success_count": successes,
            "success_rate": round(rate, 4),
            "last_used_at": last_used.isoformat() if last_used else None,
            "exported_from": source_path,
        }
    return {
        "window": {
            "days": window.days,
            "from": window.start.isoformat(),
            "to": window.end.isoformat(),
        },
        "usage_count": stats["uses"],
        "success_count": stats["successes"],
        "success_rate": round(stats["successes"] / stats["uses"], 4),
        "last_used_at": stats["last_used_at"].isoformat() if stats["last_used_at"] else None,
        "lifetime": {
            "usage_count": usage,
            "success_count": successes,
            "success_rate": None if rate is None else round(rate, 4),
        },
        "exported_from": source_path,
    }


def _list_no_longer_qualifying(
    out_dir: Path, keep: set[str], result: ExportResult, prune: bool, dry_run: bool
) -> None:
    """Earlier exports (files with a `_learning` block) that did not qualify this time."""
    for path in sorted(out_dir.rglob("*.json")) if out_dir.is_dir() else []:
        label = path.relative_to(out_dir).as_posix()
        if label in keep or label in result.removed or not _exported(path):
            continue
        result.no_longer_qualifying.append(label)
        if prune:
            if not dry_run:
                path.unlink()
            result.pruned.append(label)


def _exported(path: Path) -> bool:
    """True for a file export wrote: a JSON object with a `_learning` block."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and isinstance(document.get("_learning"), dict)


def _near_misses(
    conn: psycopg.Connection,
    min_usage: int,
    min_success_rate: float,
    types: tuple[str, ...],
    window,
    limit: int = 3,
) -> list[NearMiss]:
    """The most used candidates (lifetime, or in the window), with what each one misses."""
    if window is None:
        query = (
            "SELECT artifact_type || '/' || artifact_id || '@' || version, usage_count,"
            " success_count FROM knowledge_artifacts WHERE usage_count > 0"
        )
        params: list = []
        if types:
            query += " AND artifact_type = ANY(%s)"
            params.append(list(types))
        query += " ORDER BY usage_count DESC, success_rate DESC NULLS LAST LIMIT %s"
        candidates = conn.execute(query, [*params, limit]).fetchall()
    else:
        from .usage_report import window_stats

        stats = sorted(window_stats(conn, window, types=types), key=lambda s: -s["uses"])[:limit]
        labels = dict(
            conn.execute(
                "SELECT id, artifact_type || '/' || artifact_id || '@' || version"
                " FROM knowledge_artifacts WHERE id = ANY(%s)",
                ([s["pk"] for s in stats],),
            ).fetchall()
        )
        candidates = [(labels.get(s["pk"], "?"), s["uses"], s["successes"]) for s in stats]
    out = []
    for label, uses, successes in candidates:
        rate = successes / uses if uses else None
        misses = []
        if uses < min_usage:
            misses.append(f"uses {uses} < {min_usage}")
        if rate is None or rate < min_success_rate:
            misses.append(
                f"success rate {0 if rate is None else rate:.2f} < {min_success_rate:.2f}"
            )
        out.append(NearMiss(label, uses, rate, ", ".join(misses)))
    return out


def _holds(path: Path, document: dict) -> bool:
    """True when `path` is a JSON file equal to `document` apart from its `_learning` block."""
    try:
        return strip_learning(json.loads(path.read_text(encoding="utf-8"))) == document
    except (OSError, ValueError, AttributeError):
        return False
