"""Plain text: any text file, and Jane Austen's six novels (the LM calibration/eval text)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .debs import JANEAUSTENR, asset_root
from .rdata import LazyLoadDB

NOVELS = ("emma", "prideprejudice", "persuasion", "mansfieldpark", "northangerabbey",
          "sensesensibility")


def text_file(path: str | Path, encoding: str = "utf-8") -> str:
    """The whole text of a file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    return path.read_text(encoding=encoding)


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
