"""export: write proven artifacts (enough uses, high success rate) back to git for human review.

Each artifact goes to <out>/<artifact_type>/<artifact_id>.json: its original JSON (key order
kept) with the identity made explicit ("artifact_type", "id", "version", so the file keeps
its identity wherever a reviewer moves it) and a "_learning" block with the metrics that
qualified it. Bytes are deterministic: a second export with no change in the database
leaves every file untouched (no git diff, no new mtime).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
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


def render(
    content_raw: str, artifact_type: str, artifact_id: str, version: str, metrics: dict
) -> bytes:
    """The exported file's bytes: original key order, explicit identity, the learning block."""
    document = json.loads(content_raw)  # dicts keep the file's key order
    document.pop(LEARNING_KEY, None)
    document["artifact_type"] = artifact_type
    if document.get("id") != artifact_id:
        metadata = document.get("metadata")
        if not (
            isinstance(metadata, dict)
            and metadata.get("id") == artifact_id
            and "id" not in document
        ):
            document["id"] = artifact_id
    if str(document.get("version", "")) != version:
        metadata = document.get("metadata")
        if not (
            isinstance(metadata, dict)
            and str(metadata.get("version", "")) == version
            and "version" not in document
        ):
            document["version"] = version
    document[LEARNING_KEY] = metrics
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomically(path, data)
    return True


def export_proven(
    conn: psycopg.Connection,
    out_dir: Path,
    *,
    min_usage: int = 10,
    min_success_rate: float = 0.90,
    types: tuple[str, ...] = (),
) -> ExportResult:
    """Write every artifact with usage_count >= min_usage and success_rate >= min_success_rate."""
    if min_usage < 1:
        raise ConfigError(f"--min-usage must be at least 1, got {min_usage}")
    if not 0 <= min_success_rate <= 1:
        raise ConfigError(f"--min-success-rate must be between 0 and 1, got {min_success_rate}")
    out_dir = out_dir.resolve()
    query = (
        "SELECT artifact_type, artifact_id, version, content_raw, usage_count, success_count,"
        " success_rate, last_used_at, source_path FROM knowledge_artifacts"
        " WHERE usage_count >= %s AND success_rate >= %s"
    )
    params: list = [min_usage, min_success_rate]
    if types:
        query += " AND artifact_type = ANY(%s)"
        params.append(list(types))
    query += " ORDER BY artifact_type, artifact_id, knowledge_version_key(version), version"
    rows = conn.execute(query, params).fetchall()
    targets: dict[Path, tuple] = {}
    for row in rows:
        # Rows come oldest version first: only the latest qualifying version of each artifact
        # is exported, since that is what a reviewer would promote.
        targets[safe_relative_path(row[0], row[1])] = row
    result = ExportResult(out_dir=out_dir, qualifying=len(targets))
    for relative, row in targets.items():
        (
            artifact_type,
            artifact_id,
            version,
            content_raw,
            usage,
            successes,
            rate,
            last_used,
            source_path,
        ) = row
        target = (out_dir / relative).resolve()
        if out_dir not in target.parents:
            raise AssertionError(
                f"export path {target} escaped {out_dir}"
            )  # safe_relative_path bug
        metrics = {
            "usage_count": usage,
            "success_count": successes,
            "success_rate": round(rate, 4),
            "last_used_at": last_used.isoformat() if last_used else None,
            "exported_from": source_path,
        }
        data = render(content_raw, artifact_type, artifact_id, version, metrics)
        label = relative.as_posix()
        (result.written if _write_if_changed(target, data) else result.unchanged).append(label)
    return result
