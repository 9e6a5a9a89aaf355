"""Append-only on-disk spool for log batches the database could not take.

Segment files ``seg-<n>.spool`` hold records ``magic(4) | length(4) | crc32(4) | payload``,
each payload one JSON batch (bytes values, such as prediction scores, as ``{"b64": ...}``).
Every append is fsynced, and so is the directory whenever an entry is made in it (a new segment,
one moved in by ``adopt``, a new directory): a file's data is durable after its own fsync, but its
name only after its directory's. A torn record at a segment's end (a crash mid-write) fails its
checksum and is ignored; the records before it are intact. Segments are
deleted only after every record in them is committed to PostgreSQL, and replays are harmless
(the writer inserts with ON CONFLICT DO NOTHING), so a crash during replay only repeats work.

``dead-letters.jsonl`` beside the segments (never replayed, not counted in the spool's size)
holds, one JSON object a line, rows that PostgreSQL refused both in their log table and in
``dead_letters``; the log writer appends to it, an operator reads it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAGIC = b"ABS1"
DEAD_LETTERS = "dead-letters.jsonl"
_HEADER = struct.Struct(">4sII")


class SpoolFull(Exception):
    """The spool reached its size limit."""


class Spool:
    def __init__(self, root: Path, *, max_bytes: int = 1 << 30, segment_bytes: int = 16 << 20):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        make_dirs(self.root)
        self._current: Path | None = None
        existing = self.segments()
        self._size = sum(p.stat().st_size for p in existing)
        self._pending = bool(existing)

    @property
    def size(self) -> int:
        return self._size

    @property
    def pending(self) -> bool:
        """Whether segments wait for replay: known without listing the directory, which the
        log writer would otherwise do after every flush."""
        return self._pending

    def segments(self) -> list[Path]:
        return sorted(self.root.glob("seg-*.spool"))

    def _next_segment(self) -> Path:
        existing = self.segments()
        n = int(existing[-1].stem.split("-")[1]) + 1 if existing else 1
        return self.root / f"seg-{n:012d}.spool"

    def append(self, rows: list[Any]) -> Path:
        """Durably append one batch; returns the segment it went to."""
        payload = json.dumps(rows, separators=(",", ":"), default=_encode).encode()
        record = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        if self._size + len(record) > self.max_bytes:
            raise SpoolFull(f"spool {self.root} is full ({self._size} bytes)")
        new = (
            self._current is None
            or not self._current.exists()
            or self._current.stat().st_size + len(record) > self.segment_bytes
        )
        if new:
            self._current = self._next_segment()
        assert self._current is not None
        fd = os.open(self._current, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, record)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.root)
        self._size += len(record)
        self._pending = True
        return self._current

    def adopt(self, segment: Path) -> Path:
        """Move a segment of the same format (a local log's, left by a killed process) into
        this spool, after its own segments, so it is replayed like them."""
        target = self._next_segment()
        size = segment.stat().st_size
        os.replace(segment, target)
        fsync_dir(self.root)  # the new name, then the old one's removal
        fsync_dir(segment.parent)
        self._size += size
        self._pending = True
        if self._current is not None:
            self._current = None  # appends go after the adopted segment
        return target

    def seal(self) -> None:
        """Start a new segment on the next append (so the replayer may finish this one)."""
        self._current = None

    def read(self, segment: Path) -> Iterator[list[Any]]:
        """The intact batches of a segment, in order; stops at a torn or corrupt record."""
        data = segment.read_bytes()
        pos = 0
        while pos + _HEADER.size <= len(data):
            magic, length, crc = _HEADER.unpack_from(data, pos)
            start, end = pos + _HEADER.size, pos + _HEADER.size + length
            if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
                log.error("spool %s: bad record at byte %d; ignoring the rest", segment, pos)
                return
            yield json.loads(data[start:end], object_hook=_decode)
            pos = end

    def dead_letter(self, line: str) -> Path:
        """Durably append one line (a JSON object, no newline in it) to the dead-letter file."""
        path = self.root / DEAD_LETTERS
        new = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.root)
        return path

    def delete(self, segment: Path) -> None:
        size = segment.stat().st_size
        segment.unlink()
        self._size -= size
        if self._size <= 0:
            self._pending = bool(self.segments())  # empty leftovers (a torn first record)
        if self._current == segment:
            self._current = None


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose new directories survive a crash: each parent fsynced after its new
    entry."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir()
        fsync_dir(p.parent)


def _encode(value: object) -> object:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"cannot spool a {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "b64" in obj:
        return base64.b64decode(obj["b64"])
    return obj
