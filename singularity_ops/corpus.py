"""Reading templates_data/: which files are artifacts, their identity, and what is wrong with them.

No database here: `validate` and `import` share this module, so a file that validates imports.

Identity rule (documented in the README):
- artifact_type: an explicit top-level "artifact_type" string wins; else the first folder under
  the import root (under learned/ for learned files), renamed by `import.type_map`.
- artifact_id: top-level "id", else "metadata.id", else the path below the type folder without
  ".json" (so languages/elixir/best_practices and languages/go/best_practices stay distinct).
- version: top-level "version", else "metadata.version", else "1.0.0".
Two files that resolve to the same (type, id, version) are an error naming both.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .glossary import note_for

DEFAULT_VERSION = "1.0.0"
DEFAULT_MAX_FILE_BYTES = 1024 * 1024
LEARNED_DIR = "learned"
SCHEMA_FILE_SUFFIX = "schema.json"
NON_ARTIFACT_NAMES = {"manifest.json"}
NON_ARTIFACT_METADATA_TYPES = {"schema", "manifest"}
# Each of type, id and version: the three share one btree index entry (at most ~2,700 bytes).
MAX_IDENTITY_BYTES = 500
# Deeper documents are refused: no artifact needs it, and deeper ones exhaust recursive code.
MAX_DEPTH = 100


@dataclass(frozen=True)
class Artifact:
    """A valid artifact file, ready to import."""

    artifact_type: str
    artifact_id: str
    version: str
    content_raw: str
    content_hash: str
    source_path: str  # relative to the import root, with forward slashes
    source: str  # 'git' or 'learned'
    # glossary.note_for(content), found while the file was parsed; glossary_checked is False
    # when the scan skipped parsing an unchanged file (import then leaves it to its own pass)
    glossary_note: str | None = None
    glossary_checked: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.artifact_type, self.artifact_id, self.version)


@dataclass(frozen=True)
class Problem:
    """Why a file cannot be imported. `location` is path[:line:column]."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass
class Scan:
    """The result of reading a tree: artifacts, problems, and what was skipped as non-artifact."""

    root: Path
    artifacts: list[Artifact] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # non-artifact files, relative paths
    scopes: list[str] = field(default_factory=list)  # relative folders/files that were scanned
    notes: list[str] = field(default_factory=list)  # files left out on purpose, and why

    @property
    def ok(self) -> bool:
        return not self.problems


class _Invalid(Exception):
    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (PostgreSQL rejects it too)")


def _parse(raw: bytes) -> tuple[str, Any]:
    if raw.startswith(b"\xef\xbb\xbf"):
        raise _Invalid("starts with a UTF-8 byte order mark; save the file without a BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _Invalid(
            f"invalid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8", line, column
        ) from None
    if "\x00" in text:
        raise _Invalid("contains a NUL character, which PostgreSQL text cannot store")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _Invalid(f"invalid JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except RecursionError:
        raise _Invalid(f"is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    _check_values(data, escapes="\\u" in text)
    return text, data


def _check_values(data: Any, *, escapes: bool) -> None:
    """Depth, and (only when the text has \\u escapes) the strings jsonb refuses: U+0000 and
    unpaired surrogates. Iterative, so no document can exhaust the interpreter's stack."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Iterable[Any] = value.values()
            if escapes:
                for key in value:
                    _check_string(key)
        elif isinstance(value, list):
            children = value
        else:
            if escapes and isinstance(value, str):
                _check_string(value)
            continue
        if depth > MAX_DEPTH:
            raise _Invalid(f"is nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def _check_string(value: str) -> None:
    if "\x00" in value:
        raise _Invalid("contains \\u0000, which PostgreSQL jsonb cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(
            "contains an unpaired UTF-16 surrogate escape (\\udXXX), which jsonb rejects"
        ) from None


def _opened_path(fd: int, path: str) -> str:
    """Where an open descriptor really points: what was opened, not what the name means now."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (macOS): the name's target, if it is still the opened file
        real = os.path.realpath(path)
        opened, now = os.fstat(fd), os.stat(real)
        return real if (opened.st_dev, opened.st_ino) == (now.st_dev, now.st_ino) else ""


def read_regular_file(
    path: str, limit: int, *, root: str | None = None, root_label: Path | None = None
) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is _Invalid.

    Opened without blocking (a FIFO would otherwise wait forever for a writer) and read up to
    limit + 1 bytes whatever stat says (a symlink to /dev/zero reports size 0). With `root`
    (a real path), the file actually opened must lie inside it: checked on the descriptor,
    after the open, so a symlink swapped in between a check and the open cannot lead outside.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if root is not None:
            opened = _opened_path(fd, path)
            if not _inside(opened, root):
                raise _Invalid(_outside_message(root_label or Path(root), opened or "elsewhere"))
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Invalid("is not a regular file (a FIFO, device or socket); it was not read")
        over = "is {} bytes, over the limit of {} (import.max_file_bytes in singularity.yaml)"
        if info.st_size > limit:
            raise _Invalid(over.format(info.st_size, limit))
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _Invalid(over.format(f"more than {limit}", limit))
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_non_artifact(name: str, data: Any) -> bool:
    """Schema and manifest documents: JSON that lives beside artifacts but is not one."""
    lowered = name.lower()
    if lowered.endswith(SCHEMA_FILE_SUFFIX) or lowered in NON_ARTIFACT_NAMES:
        return True
    if not isinstance(data, dict):
        return False
    if data.get("_metadata_type") in NON_ARTIFACT_METADATA_TYPES:
        return True
    schema = data.get("$schema")
    # A JSON Schema definition document, not an artifact that names its schema.
    return isinstance(schema, str) and "json-schema.org" in schema and "properties" in data


def _string_field(data: Mapping[str, Any], key: str, what: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Invalid(f"{what} must be a string, got {json.dumps(value)[:60]}")
    text = str(value).strip()
    if not text:
        raise _Invalid(f"{what} must not be empty")
    return text


def resolve_identity(
    data: Mapping[str, Any], relative: str, type_map: Mapping[str, str]
) -> tuple[str, str, str, str]:
    """(artifact_type, artifact_id, version, source) for a parsed file at `relative` under the root.

    `relative` uses forward slashes, like source_path.
    """
    parts = tuple(relative.split("/"))
    source = "git"
    if parts and parts[0] == LEARNED_DIR:
        parts, source = parts[1:], "learned"
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}

    explicit_type = _string_field(data, "artifact_type", '"artifact_type"')
    if explicit_type:
        artifact_type = explicit_type
    elif len(parts) >= 2:
        artifact_type = type_map.get(parts[0], parts[0])
    else:
        raise _Invalid(
            'is not inside a type folder and has no "artifact_type"; move it into a folder '
            "(its name becomes the type) or add the field"
        )
    below = parts[1:] if len(parts) >= 2 else parts
    derived_id = "/".join(below).removesuffix(".json").removesuffix(".JSON")
    artifact_id = (
        _string_field(data, "id", '"id"')
        or _string_field(metadata, "id", '"metadata.id"')
        or derived_id
    )
    version = (
        _string_field(data, "version", '"version"')
        or _string_field(metadata, "version", '"metadata.version"')
        or DEFAULT_VERSION
    )
    for what, value in (("type", artifact_type), ("id", artifact_id), ("version", version)):
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_IDENTITY_BYTES:
            raise _Invalid(
                f"its {what} is {size:,} bytes long; at most {MAX_IDENTITY_BYTES} (the database's "
                "unique index on type, id and version cannot hold longer ones)"
            )
    _check_read_fields(data, metadata)
    return artifact_type, artifact_id, version, source


def _check_read_fields(data: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """The fields search and the reports read (top level, else metadata.*) have the types they
    are read as: a wrong type would otherwise be dropped without a word (tags: "x" -> none)."""
    for where, doc in (("", data), ("metadata.", metadata)):
        for key in ("name", "description", "language"):
            value = doc.get(key)
            if value is not None and not isinstance(value, str):
                raise _Invalid(f'"{where}{key}" must be a string, got {json.dumps(value)[:60]}')
        tags = doc.get("tags")
        if tags is not None and (
            not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
        ):
            raise _Invalid(
                f'"{where}tags" must be a list of strings, got {json.dumps(tags)[:60]}; '
                'write ["a", "b"]'
            )


def folder_type(relative: str, type_map: Mapping[str, str]) -> str | None:
    """The type a file's folder gives it (before any explicit "artifact_type")."""
    parts = relative.split("/")
    if parts[0] == LEARNED_DIR:
        parts = parts[1:]
    return type_map.get(parts[0], parts[0]) if len(parts) >= 2 else None


def _walk(root: str, scope: str) -> Iterator[tuple[str, str]]:
    """(absolute path, path relative to root with /) of every visible file under root/scope.

    Plain strings rather than pathlib: this loop runs once per file of 100,000-file trees.
    """
    start = os.path.join(root, scope) if scope else root
    if not os.path.isdir(start):  # one file (or a FIFO or device, which the reader refuses)
        yield start, scope
        return
    prefix = len(root) + 1
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = dirpath[prefix:].replace(os.sep, "/")
        for name in sorted(filenames):
            if not name.startswith("."):
                yield os.path.join(dirpath, name), f"{rel_dir}/{name}" if rel_dir else name


def _within(path: Path, root: Path) -> bool:
    path = Path(os.path.normpath(path))
    return path == root or root in path.parents


def check_scan_arguments(root: Path, paths: Iterable[Path] = ()) -> None:
    """The import root exists and every PATH is inside it, lexically (a symlink out of the
    root is then the scan's per-file problem) or resolved; else a usage error (ConfigError)
    naming --templates, because a PATH outside the root is a mistaken argument, not a bad file."""
    from .errors import ConfigError

    for path in paths:
        if not (
            _within(path.absolute(), root.absolute()) or _within(path.resolve(), root.resolve())
        ):
            raise ConfigError(
                f"{path} is outside the import root {root}; a PATH picks part of the root. "
                f"To read another corpus, pass --templates {path} (or set import.root in "
                "singularity.yaml)"
            )
    if not root.is_dir():
        raise ConfigError(
            f"import root {root} does not exist; create it, pass --templates DIR, or set "
            "import.root in singularity.yaml"
        )


def scan(
    root: Path,
    paths: Iterable[Path] = (),
    *,
    type_map: Mapping[str, str] | None = None,
    include_learned: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    progress: Callable[[int], None] | None = None,
    known: Mapping[str, tuple[str, str, str, str]] | None = None,
) -> Scan:
    """Read every JSON file under `paths` (default: all of `root`) and resolve identities.

    `progress`, if given, is called with the number of files seen so far, every 100 files.
    `known` maps source paths already in the database to (content_hash, type, id, version)
    (importer.known_sources): a file whose bytes and folder type match is not parsed again.
    """
    root = root.resolve()
    type_map = type_map or {}
    if not root.is_dir():
        raise FileNotFoundError(root)
    result = Scan(root=root)
    _add_scopes(root, [p.resolve() for p in paths] or [root], result)
    by_key: dict[tuple[str, str, str], list[Artifact]] = {}
    root_str = str(root)
    seen_files = 0
    for scope in result.scopes:
        for path, rel in _walk(root_str, scope):
            seen_files += 1
            if progress is not None and seen_files % 100 == 0:
                progress(seen_files)
            if _learned_and_not_asked(rel, scope, include_learned):
                continue
            if not rel.lower().endswith(".json"):
                result.skipped.append(rel)
                continue
            try:
                artifact = _read_artifact(path, rel, root, max_file_bytes, type_map, known)
            except _Invalid as exc:
                where = rel if exc.line is None else f"{rel}:{exc.line}:{exc.column}"
                result.problems.append(Problem(where, exc.message))
                continue
            except OSError as exc:
                result.problems.append(Problem(rel, f"cannot read: {exc.strerror}"))
                continue
            if artifact is None:
                result.skipped.append(rel)
            else:
                by_key.setdefault(artifact.key, []).append(artifact)

    _resolve_claims(by_key, _Schemas(root, max_file_bytes), result)
    return result


def _add_scopes(root: Path, targets: list[Path], result: Scan) -> None:
    """The scan's scopes (paths relative to root); a target outside root or missing is a
    problem instead."""
    for target in targets:
        if target != root and root not in target.parents:
            result.problems.append(Problem(str(target), _outside_message(root, str(target))))
        elif not target.exists():
            result.problems.append(Problem(str(target), "does not exist"))
        else:
            result.scopes.append(target.relative_to(root).as_posix() if target != root else "")


def _learned_and_not_asked(rel: str, scope: str, include_learned: bool) -> bool:
    """A file under learned/ is read only with include_learned or when learned/ was named."""
    return (
        rel.split("/", 1)[0] == LEARNED_DIR
        and not include_learned
        and not (scope and scope.split("/")[0] == LEARNED_DIR)
    )


def _read_artifact(
    path: str,
    rel: str,
    root: Path,
    max_file_bytes: int,
    type_map: Mapping[str, str],
    known: Mapping[str, tuple[str, str, str, str]] | None,
) -> Artifact | None:
    """One file as an Artifact; None for a non-artifact JSON file (schema, manifest);
    _Invalid or OSError say what is wrong with it."""
    root_str = str(root)
    name = rel.rsplit("/", 1)[-1]
    if os.path.islink(path) and not _inside(os.path.realpath(path), root_str):
        raise _Invalid(_outside_message(root, os.path.realpath(path)))
    raw = read_regular_file(path, max_file_bytes, root=root_str, root_label=root)
    digest = hashlib.sha256(raw).hexdigest()
    stored = known.get(rel) if known else None
    if stored and stored[0] == digest and stored[1] == folder_type(rel, type_map):
        # The same bytes at the same path, and the folder still maps to the stored type:
        # identity cannot have changed, so the JSON need not be parsed again.
        text = raw.decode("utf-8")
        artifact_type, artifact_id, version = stored[1:]
        source = "learned" if rel.split("/", 1)[0] == LEARNED_DIR else "git"
        note, checked = None, False
    else:
        text, data = _parse(raw)
        if is_non_artifact(name, data):
            return None
        if not isinstance(data, dict):
            raise _Invalid(
                f"is a JSON {type(data).__name__}, but an artifact must be a JSON object"
            )
        artifact_type, artifact_id, version, source = resolve_identity(data, rel, type_map)
        note, checked = note_for(artifact_id, data), True
    return Artifact(
        artifact_type=artifact_type,
        artifact_id=artifact_id,
        version=version,
        content_raw=text,
        content_hash=digest,
        source_path=rel,
        source=source,
        glossary_note=note,
        glossary_checked=checked,
    )


def _resolve_claims(
    by_key: dict[tuple[str, str, str], list[Artifact]], schemas: _Schemas, result: Scan
) -> None:
    """One artifact per identity: a learned copy of a curated file gives way to it; two
    curated claimants are both invalid; each survivor must match its folder's schema."""
    for (artifact_type, artifact_id, version), group in by_key.items():
        curated = [a for a in group if a.source == "git"]
        if len(group) > 1 and len(curated) == 1:
            # An export in learned/ of an artifact whose curated file exists (not promoted
            # yet, or promoted and exported again): the curated file wins.
            for copy in group:
                if copy is not curated[0]:
                    result.notes.append(
                        f"{copy.source_path}: an export of {curated[0].source_path} (same type, "
                        "id and version); skipped, the curated file wins. To promote it, copy it "
                        "over the curated file (its _learning block is ignored by identity)"
                    )
            group = curated
        if len(group) == 1:
            mismatch = schemas.mismatch(group[0])
            if mismatch:
                result.problems.append(Problem(group[0].source_path, mismatch))
            else:
                result.artifacts.append(group[0])
            continue
        # Never pick a winner: every claimant is reported and none is imported.
        for artifact in group:
            others = ", ".join(a.source_path for a in group if a is not artifact)
            result.problems.append(
                Problem(
                    artifact.source_path,
                    f"resolves to the same artifact as {others} (type {artifact_type!r}, "
                    f"id {artifact_id!r}, version {version!r}); give one of them another id or version",
                )
            )
    result.problems.extend(schemas.problems)


class _Schemas:
    """The JSON Schemas (`*.schema.json`) beside the artifacts: each artifact must match those
    of the nearest folder at or above its own that has any (learned/ files: their curated
    folder's). Loaded once per folder; jsonschema is imported only when a schema exists."""

    def __init__(self, root: Path, max_file_bytes: int) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.by_folder: dict[str, list[tuple[str, Any]]] = {}
        self.problems: list[Problem] = []

    def _load(self, folder: str) -> list[tuple[str, Any]]:
        directory = self.root / folder if folder else self.root
        found = []
        for path in sorted(directory.glob(f"*{SCHEMA_FILE_SUFFIX}")):
            rel = path.relative_to(self.root).as_posix()
            try:
                if not path.is_file() or path.is_symlink():
                    continue
                raw = read_regular_file(str(path), self.max_file_bytes, root=str(self.root))
                schema = json.loads(raw.decode("utf-8"))
                from jsonschema.validators import validator_for

                cls = validator_for(schema)
                cls.check_schema(schema)
                found.append((rel, cls(schema)))
            except ImportError:
                self.problems.append(
                    Problem(rel, "cannot check artifacts against it: install jsonschema")
                )
            except Exception as exc:  # unreadable, invalid JSON, or not a JSON Schema
                message = getattr(exc, "message", None) or str(exc)
                self.problems.append(Problem(rel, f"is not a usable JSON Schema: {message[:200]}"))
        return found

    def mismatch(self, artifact: Artifact) -> str | None:
        """Why the artifact does not match its folder's schemas, or None."""
        parts = artifact.source_path.split("/")[:-1]
        if parts and parts[0] == LEARNED_DIR:
            parts = parts[1:]
        while True:
            folder = "/".join(parts)
            if folder not in self.by_folder:
                self.by_folder[folder] = self._load(folder)
            if self.by_folder[folder] or not parts:
                break
            parts.pop()
        validators = self.by_folder[folder]
        if not validators:
            return None
        from jsonschema.exceptions import best_match

        document = json.loads(artifact.content_raw)
        for rel, validator in validators:
            error = best_match(validator.iter_errors(document))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path)
                at = f" at {where}" if where else ""
                return f"does not match {rel}{at}: {error.message[:200]}"
        return None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _outside_message(root: Path, resolved: str) -> str:
    return (
        f"resolves to {resolved}, outside the import root {root}; only files inside it are "
        "read (a symlink may point only inside the root)"
    )


def count_files(root: Path, paths: Iterable[Path] = ()) -> int:
    """How many files a scan of `paths` would visit (for a progress bar's length)."""
    root_str = str(root.resolve())
    total = 0
    for target in [p.resolve() for p in paths] or [root.resolve()]:
        scope = "" if str(target) == root_str else str(target)[len(root_str) + 1 :]
        total += sum(1 for _ in _walk(root_str, scope))
    return total
