"""Load Hugging Face model folders and GGUF files from local disk only, as plain fp32 modules.

Never runs code from the files it reads: a folder's JSON files are read as data and checked before
transformers sees them (no ``auto_map``, only architectures and tokenizers transformers ships),
and every ``from_pretrained`` gets ``trust_remote_code=False`` and ``local_files_only=True``.
"""
from __future__ import annotations

import json
import logging
import os
import re
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


NO_CODE = "lowbit never runs code from model folders"
MAX_JSON_BYTES = 32 << 20  # real config and tokenizer_config files are KBs to a few MBs
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_SAFE = {"trust_remote_code": False, "local_files_only": True}  # every from_pretrained gets these
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")


def _read_json(path: Path) -> dict:
    """``path`` parsed as a JSON object: read as data only, at most MAX_JSON_BYTES of it."""
    with open(path, "rb") as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(f"{path} is larger than {MAX_JSON_BYTES:,} bytes; a model folder's "
                         f"JSON files are far smaller, so lowbit does not read it")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def _refuse_auto_map(data: dict, path: Path) -> None:
    """Refuse ``auto_map`` at any depth: it names Python files in the folder to import."""
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "auto_map" in node:
                raise ValueError(
                    f"{path} asks to import Python code from its folder (auto_map: "
                    f"{node['auto_map']!r}); {NO_CODE}. Use a model whose architecture "
                    f"transformers ships, or delete auto_map if that code is not needed")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _check_tokenizer_class(name, path: Path) -> None:
    """A ``tokenizer_class`` must name a tokenizer transformers ships, never another class.

    AutoTokenizer calls ``<that class>.from_pretrained`` without ``trust_remote_code``, so a
    name such as "AutoProcessor" reaches auto classes that prompt for and run the folder's code.
    """
    if name is None:
        return
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{path}: tokenizer_class must be a class name, got {name!r}")
    _transformers()
    from transformers import PreTrainedTokenizerBase
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name
    from transformers.utils.import_utils import DummyObject  # stands in for a missing extra

    for candidate in (name, name.removesuffix("Fast"), name + "Fast"):
        cls = tokenizer_class_from_name(candidate)
        if cls is None or isinstance(cls, DummyObject):
            continue
        if not (isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase)):
            raise ValueError(f"{path}: tokenizer_class {name!r} is {cls!r}, not a tokenizer "
                             f"class transformers ships; {NO_CODE}")


def _check_model_type(config: dict, path: Path) -> None:
    transformers = _transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
        raise ValueError(
            f"{path}: model_type {model_type!r} is not an architecture transformers "
            f"{transformers.__version__} ships, and {NO_CODE}. Use a model whose config.json "
            f"names a built-in model_type (e.g. 'llama', 'gpt2', 'bert'), or a newer "
            f"transformers if this architecture was added since")


def check_folder(folder: str | Path) -> dict | None:
    """Refuse a folder whose JSON files would make transformers import code from it.

    Checks ``config.json`` (no ``auto_map``, a ``model_type`` transformers ships, a shipped
    ``tokenizer_class``) and ``tokenizer_config.json`` (no ``auto_map``, a shipped
    ``tokenizer_class``) where present, raising ValueError that says what was refused.
    Returns config.json as a dict, or None when the folder has none.
    """
    folder = Path(folder)
    tokenizer_path = folder / "tokenizer_config.json"
    if tokenizer_path.is_file():
        tokenizer_config = _read_json(tokenizer_path)
        _refuse_auto_map(tokenizer_config, tokenizer_path)
        _check_tokenizer_class(tokenizer_config.get("tokenizer_class"), tokenizer_path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    config = _read_json(config_path)
    _refuse_auto_map(config, config_path)
    _check_model_type(config, config_path)
    _check_tokenizer_class(config.get("tokenizer_class"), config_path)
    return config


def _load_config(folder: Path):
    """The folder's transformers config, once :func:`check_folder` accepted the folder."""
    if check_folder(folder) is None:
        raise ValueError(f"{folder} is not a Hugging Face model folder (no config.json in it)")
    return _transformers().AutoConfig.from_pretrained(folder, **_SAFE)


def _model_classes(model_type: str) -> set[str]:
    """Every model class transformers' auto mappings register for ``model_type``."""
    import transformers.models.auto.modeling_auto as auto

    names: set[str] = set()
    for attr in dir(auto):
        if attr.endswith("_MAPPING_NAMES") and attr != "CONFIG_MAPPING_NAMES":
            found = getattr(auto, attr).get(model_type, ())
            names.update((found,) if isinstance(found, str) else found)
    return names


def build_model_from_config(folder: str | Path, class_name: str) -> nn.Module:
    """An untrained ``class_name`` model (no weights loaded) built from ``folder``'s config.json.

    ``class_name`` must be a ``transformers.PreTrainedModel`` class that transformers registers
    for the config's model_type (e.g. "LlamaForCausalLM" for "llama"); anything else, such as
    "pipeline", "AutoModel" or another architecture's class, is a ValueError naming the choices.
    """
    folder = Path(folder)
    config = _load_config(folder)
    allowed = _model_classes(config.model_type)
    if not isinstance(class_name, str) or class_name not in allowed:
        raise ValueError(f"{folder}: model class {class_name!r} is not a transformers model "
                         f"class for model_type {config.model_type!r}; expected one of "
                         f"{sorted(allowed)}")
    transformers = _transformers()
    cls = getattr(transformers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"{folder}: transformers.{class_name} is {cls!r}, not a "
                         f"PreTrainedModel subclass; expected one of {sorted(allowed)}")
    return cls(config).eval()


def _load_tokenizer(folder: Path, gguf_file: str | None = None):
    """The folder's (or GGUF file's) tokenizer, or None when transformers finds none there."""
    check_folder(folder)
    transformers = _transformers()
    where = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, **where, **_SAFE)
    except (OSError, ValueError, TypeError) as e:
        log.info("no tokenizer loaded from %s (%s)", folder, e)
        return None


def load_checkpoint_tokenizer(folder: str | Path):
    """The tokenizer a lowbit checkpoint folder holds, or None when it holds none.

    The folder is checked like every other load (:func:`check_folder`); a tokenizer that is
    present but fails to load raises.
    """
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    check_folder(folder)
    return _transformers().AutoTokenizer.from_pretrained(folder, **_SAFE)


def load_hf_folder(folder: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` from a local HF folder: a causal LM when its config names one,
    else the bare ``AutoModel``; ``tokenizer`` is None when the folder has none."""
    folder = Path(folder).expanduser()
    config = _load_config(folder)
    transformers = _transformers()
    auto = transformers.AutoModelForCausalLM if is_causal_lm(config) else transformers.AutoModel
    model = auto.from_pretrained(folder, config=config, dtype=dtype, **_SAFE)
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
    check_folder(path.parent)  # transformers reads the folder's tokenizer_config.json too
    log.info("dequantizing %s to %s", path.name, dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, **_SAFE)
    tokenizer = _load_tokenizer(path.parent, gguf_file=path.name)
    return _strip_quantizer(model).eval(), tokenizer


def _save_tokenizer(tokenizer, folder: Path, config) -> None:
    for key in ("gguf_file", *_SAFE):  # load-time options, not tokenizer settings
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
