"""Load Hugging Face model folders and GGUF files from local disk only, as plain fp32 modules."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

TRANSFORMERS_INSTALL = "pip install transformers safetensors"
GGUF_INSTALL = "pip install gguf accelerate"


def set_offline() -> None:
    """Keep transformers and huggingface_hub off the network unless the user said otherwise.

    Must run before they are imported (huggingface_hub reads the variable at import); every
    load here also passes ``local_files_only=True``.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


set_offline()


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"loading Hugging Face models needs transformers: run "
                          f"`{TRANSFORMERS_INSTALL}`") from e
    transformers.logging.set_verbosity_error()
    return transformers


def is_causal_lm(config) -> bool:
    """True when the config's architectures name a causal LM head (``*ForCausalLM``, ...)."""
    heads = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    return any(arch.endswith(heads) for arch in (getattr(config, "architectures", None) or []))


def _load_tokenizer(folder: Path, **kwargs):
    transformers = _transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, TypeError) as e:
        log.info("no tokenizer loaded from %s (%s)", folder, e)
        return None


def load_hf_folder(folder: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` from a local HF folder: a causal LM when its config names one,
    else the bare ``AutoModel``; ``tokenizer`` is None when the folder has none."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a Hugging Face model folder (no config.json in it)")
    transformers = _transformers()
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    auto = transformers.AutoModelForCausalLM if is_causal_lm(config) else transformers.AutoModel
    model = auto.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model.eval(), _load_tokenizer(folder)


def _strip_quantizer(model: nn.Module) -> nn.Module:
    """Make a dequantized GGUF model a plain fp32 model (transformers leaves a GGUF quantizer)."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` from a GGUF file, dequantized to ``dtype`` (takes ~10-30 s)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    transformers = _transformers()
    try:
        import accelerate  # noqa: F401  (transformers needs both for GGUF)
        import gguf  # noqa: F401
    except ImportError as e:
        raise ImportError(f"loading GGUF files needs gguf and accelerate: run `{GGUF_INSTALL}`") from e
    log.info("dequantizing %s to %s", path.name, dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, local_files_only=True)
    tokenizer = _load_tokenizer(path.parent, gguf_file=path.name)
    return _strip_quantizer(model).eval(), tokenizer


def _save_tokenizer(tokenizer, folder: Path, config) -> None:
    for key in ("gguf_file", "local_files_only"):  # load-time options, not tokenizer settings
        tokenizer.init_kwargs.pop(key, None)
    if tokenizer.model_max_length > 1e12:  # transformers' "unknown" sentinel
        tokenizer.model_max_length = getattr(config, "max_position_embeddings", None) or int(1e30)
    tokenizer.save_pretrained(folder)


def _make_readable(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only files; give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


def gguf_to_hf_folder(path: str | Path, dest: str | Path) -> Path:
    """Convert a GGUF file once into an fp32 safetensors HF folder at ``dest``.

    Writes model, config, generation config and tokenizer (chat template included) into a
    temporary sibling folder and renames it into place, so ``dest`` is complete or absent.
    """
    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    model, tokenizer = load_gguf(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        log.info("saving fp32 safetensors to %s", dest)
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            _save_tokenizer(tokenizer, tmp, model.config)
        _make_readable(tmp)
        if dest.exists() and not any(dest.iterdir()):
            dest.rmdir()  # an empty folder left by cache_dir; rename would refuse otherwise
        os.rename(tmp, dest)
    except OSError:
        if not (dest / "config.json").is_file():  # not merely a concurrent converter winning
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
