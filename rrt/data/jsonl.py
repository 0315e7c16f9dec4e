"""Read documents from user ``.jsonl`` files and SlimPajama-style ``.jsonl.zst`` shards (one JSON object a line)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import zstandard

from rrt.errors import MissingFieldError, UserError


def _lines(path: Path) -> Iterator[str]:
    if path.name.endswith(".zst"):
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            yield from io.TextIOWrapper(reader, encoding="utf-8")
    else:
        with open(path, encoding="utf-8") as handle:
            yield from handle


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line); a file that is not UTF-8 text (or not zstd where it says so) names itself."""
    number = 0
    try:
        for number, line in enumerate(_lines(path), start=1):
            yield number, line
    except (UnicodeDecodeError, zstandard.ZstdError) as error:
        raise UserError(
            f"{path}:{number + 1} is not UTF-8 JSON lines ({type(error).__name__}): "
            "give .jsonl (or .jsonl.zst) files with one JSON object per line"
        ) from error


def read_texts(path: str | Path, text_field: str = "text") -> Iterator[str]:
    """The ``text_field`` of each non-blank line, streamed (shards may be far larger than memory)."""
    path = Path(path)
    for number, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number} is not valid JSON ({error.msg}): one JSON object per line") from error
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise MissingFieldError(
                f"{path}:{number} has no text field '{text_field}' (fields: {fields}); "
                f"set data.text_field to the field that holds the text"
            )
        yield record[text_field]


def check_jsonl(path: str | Path, text_field: str = "text", lines: int = 100) -> None:
    """Read the first ``lines`` documents so that a wrong file fails before any model is built (not hours in)."""
    for _ in zip(range(lines), read_texts(path, text_field)):
        pass


def files_sha256(files: Sequence[str | Path]) -> str:
    """One hash over the files' names and contents (identifies the text for packed-token caches)."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(Path(file).name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def expand_files(patterns: Sequence[str]) -> list[Path]:
    """Paths from a list of files or glob patterns (``shards/*.jsonl.zst``), sorted, each checked to exist."""
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        matches = sorted(path.parent.glob(path.name)) if any(c in path.name for c in "*?[") else [path]
        if not matches or not all(match.is_file() for match in matches):
            raise FileNotFoundError(f"no data file matches '{pattern}': check data.train_files / data.val_files")
        files.extend(matches)
    return files
