"""Plain text: any text file, and Jane Austen's six novels (the LM calibration/eval text)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .debs import JANEAUSTENR, asset_root
from .rdata import LazyLoadDB

NOVELS = ("emma", "prideprejudice", "persuasion", "mansfieldpark", "northangerabbey",
          "sensesensibility")


def text_file(path: str | Path, encoding: str = "utf-8", field: str = "text") -> str:
    """The whole text of a file: a plain text file, or a ``.jsonl`` file whose lines are JSON
    objects with a ``field`` string (their texts joined by newlines)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    text = path.read_text(encoding=encoding)
    if path.suffix != ".jsonl":
        return text
    texts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{number}: not a JSON object; a .jsonl file holds one "
                             f'{{"{field}": "..."}} object per line') from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise ValueError(f"{path}:{number}: expected an object with a string {field!r} field, "
                             f"got {type(record).__name__}"
                             + (f" with keys {sorted(record)[:5]}" if isinstance(record, dict) else ""))
        texts.append(record[field])
    return "\n".join(texts)


@lru_cache(maxsize=1)
def _austen_db() -> LazyLoadDB:
    return LazyLoadDB(asset_root(JANEAUSTENR) / "usr/lib/R/site-library/janeaustenr/data/Rdata")


def austen(novel: str) -> list[str]:
    """The lines of one novel (one per element, as in R's janeaustenr; blank lines kept)."""
    if novel not in NOVELS:
        raise ValueError(f"unknown novel {novel!r}; expected one of {', '.join(NOVELS)}")
    return [line or "" for line in _austen_db()[novel]]


def austen_text(novels: str | tuple[str, ...] | list[str] = NOVELS) -> str:
    """The lines of ``novels`` (one name or several, in order) joined with newlines."""
    names = [novels] if isinstance(novels, str) else list(novels)
    return "\n".join("\n".join(austen(name)) for name in names)
