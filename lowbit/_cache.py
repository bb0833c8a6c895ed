"""Where lowbit keeps what it builds or unpacks: converted models, data, compiled kernels."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return ``$LOWBIT_CACHE`` (default ``~/.cache/lowbit``) joined with ``parts``, created."""
    root = Path(os.environ.get("LOWBIT_CACHE") or Path.home() / ".cache" / "lowbit")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
