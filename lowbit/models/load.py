"""``load_model(spec)``: one entry point from a name, folder, file or factory to a module."""
from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from torch import nn

from .hf import load_gguf, load_hf_folder
from .registry import BUNDLED_MODELS

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _accepted_forms() -> str:
    return ("a bundled name (" + ", ".join(sorted(BUNDLED_MODELS)) + "), a Hugging Face model "
            "folder (with config.json), a .gguf file, or 'package.module:factory'")


def _from_factory(spec: str) -> tuple[nn.Module, Any]:
    module_name, factory_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"{spec!r}: cannot import {module_name!r} ({e}); expected "
                         f"{_accepted_forms()}") from e
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"{spec!r}: module {module_name!r} has no callable {factory_name!r}")
    made = factory()
    model, tokenizer = made if isinstance(made, tuple) else (made, None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec!r} returned {type(model).__name__}; expected an nn.Module "
                        "or a (module, tokenizer) tuple")
    return model, tokenizer


def load_model(spec: str) -> tuple[nn.Module, Any]:
    """Load ``spec`` as ``(model, tokenizer or None)``, in eval mode, fp32, without network.

    ``spec`` is a bundled name (see ``BUNDLED_MODELS``), a local Hugging Face folder (causal
    LM when its config names one, else ``AutoModel``), a ``.gguf`` file (dequantized), or
    ``"package.module:factory"`` (``factory()`` returns a module or ``(module, tokenizer)``).
    """
    if not isinstance(spec, str):
        raise TypeError(f"load_model expects a str spec, got {type(spec).__name__}")
    if spec in BUNDLED_MODELS:
        return BUNDLED_MODELS[spec].load()
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_hf_folder(path)
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path)
    if _FACTORY.match(spec):
        return _from_factory(spec)
    hint = " (no such file or folder)" if not path.exists() else ""
    raise ValueError(f"cannot load model {spec!r}{hint}; expected {_accepted_forms()}")
