"""Models lowbit can load offline: bundled real models, HF folders, GGUF files, factories.

>>> model, tokenizer = load_model("smollm2-135m")
>>> for m in BUNDLED_MODELS.values(): print(m.name, m.available(), m.install)
"""
from .efficientnet_lite import EfficientNetLite, IMAGENET_CLASSES, preprocess_image
from .hf import gguf_to_hf_folder, load_gguf, load_hf_folder
from .load import load_model
from .registry import BUNDLED_MODELS, DEFAULT_LM, BundledModel

__all__ = [
    "BUNDLED_MODELS", "BundledModel", "DEFAULT_LM", "EfficientNetLite", "IMAGENET_CLASSES",
    "gguf_to_hf_folder", "load_gguf", "load_hf_folder", "load_model", "preprocess_image",
]
