"""Reading line-oriented input (usage logs, --stdin queries) in bounded memory.

A line is read at most `limit` bytes at a time: a longer one is skipped to its end and
reported, never held whole (an 800 MB line, or `head -c 3G /dev/zero`, costs 1 MiB). Bytes
that are not UTF-8 are reported for their line, not raised from the middle of the stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class BadLine:
    """A line that could not be read as text: its number and why."""

    number: int
    reason: str


def read_lines(
    stream: BinaryIO, limit: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, str | BadLine]]:
    """(line number, text without its newline) for each line, or a BadLine for one that is
    longer than `limit` bytes or not valid UTF-8."""
    number = 0
    while True:
        chunk = stream.readline(limit + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > limit and not chunk.endswith(b"\n"):
            while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
                pass
            yield number, BadLine(number, f"longer than {limit:,} bytes")
            continue
        try:
            yield number, chunk.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, BadLine(number, f"not valid UTF-8 (byte {exc.start + 1})")
