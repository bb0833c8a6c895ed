"""Writing results/*.json: rows merged by a key, the file replaced atomically (never half-written)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# (tool, method, num_bits, group_size) for the LLM tables; (model, method, tool) for the others.
LLM_KEY = ("tool", "method", "num_bits", "group_size")
MODEL_KEY = ("model", "method", "tool")


def merge(path: str | os.PathLike, rows: list[dict], key: tuple[str, ...] = MODEL_KEY) -> None:
    """Replace the rows of ``path`` that share ``key`` with ``rows``, keep the others."""
    path = Path(path)
    of = lambda r: tuple(r.get(k) for k in key)  # noqa: E731
    old = json.loads(path.read_text()) if path.exists() else []
    new = {of(r) for r in rows}
    merged = [r for r in old if of(r) not in new] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(merged, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
