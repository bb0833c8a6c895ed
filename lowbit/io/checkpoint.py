"""Save and load quantized models: safetensors (packed ints, scales, zero points) + JSON.

A checkpoint is a folder::

    lowbit.json          format version; per quantized layer its type (looked up in
                         lowbit.nn.LAYER_TYPES, never imported by name), its own config and
                         weight description; wrappers (LoRA), layers replaced by Identity (folded
                         BatchNorms); every tensor's shape and dtype; tied-tensor aliases
    model.safetensors    ``model.state_dict()``: every tensor, quantized or float, stored once
    config.json          the Hugging Face config, when the model has one

Each quantized layer writes itself into ``state_dict`` (:class:`~lowbit.nn.QModule`) and
rebuilds itself from its entry; every packed weight is validated against its format (layout,
dtype, value range) before anything runs. No pickle, no code from the folder. The folder is
written under a temporary name and renamed into place, so a crash never leaves a half-written
checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..nn import LAYER_TYPES, QModule
from ..nn.qactivation import dequantize_outputs
from ..nn.swap import set_submodule
from ..qtensor import QTensor, SparseQTensor

FORMAT_VERSION = 2
META = "lowbit.json"
TENSORS = "model.safetensors"
MAX_META_BYTES = 64 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that does not match what it describes or the model it is loaded into."""


def save(model: nn.Module, path: str | os.PathLike, *, tokenizer=None) -> Path:
    """Write ``model`` (quantized or not) to the folder ``path``, atomically.

    A Hugging Face ``tokenizer`` given here is saved in the same folder.
    """
    from ..lora import LoRALinear

    layers, wrappers, seen = {}, {}, {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoRALinear):
            wrappers[name] = {"type": "LoRALinear", "config": mod.config_dict()}
        if not isinstance(mod, QModule):
            continue
        if LAYER_TYPES.get(type(mod).__name__) is not type(mod):
            raise CheckpointError(f"{name}: {type(mod).__name__} is not a checkpoint layer type; "
                                  f"decorate it with lowbit.nn.register_layer")
        entry = {"type": type(mod).__name__, "config": mod.config(),
                 "bias": getattr(mod, "bias", None) is not None}
        if id(mod.weight) in seen:
            entry["weight_tied_to"] = seen[id(mod.weight)]
        else:
            seen[id(mod.weight)] = name
            entry["weight"] = mod.weight.layout()
        layers[name] = entry
    tensors, aliases = _dedupe(model.state_dict())
    meta = {
        "lowbit_version": __version__, "format_version": FORMAT_VERSION,
        "model": _model_kind(model), "layers": layers, "wrappers": wrappers, "aliases": aliases,
        "identity": [n for n, m in model.named_modules() if n and isinstance(m, nn.Identity)],
        "output_hook": any(h is dequantize_outputs for h in model._forward_hooks.values()),
        "autocast": getattr(model, "lowbit_autocast", None),
        "tensors": {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                    for k, t in tensors.items()},
    }
    config = getattr(model, "config", None)
    config = config if config is not None and hasattr(config, "to_json_file") else None

    def write(folder: Path) -> None:
        save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, folder / TENSORS)
        (folder / META).write_text(json.dumps(meta, indent=1))
        if config is not None:
            config.to_json_file(folder / "config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    return write_folder(path, write, marker=META)


def _dedupe(state: dict) -> tuple[dict, dict]:
    """Tensors stored once (tied ones share storage): ``(tensors, {alias key: stored key})``."""
    tensors, aliases, by_storage = {}, {}, {}
    for key, t in state.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident in by_storage:
            aliases[key] = by_storage[ident]
        else:
            by_storage[ident] = key
            tensors[key] = t
    return tensors, aliases


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a checkpoint written by :func:`save`.

    Args:
        path: the checkpoint folder.
        model: a float model of the same architecture to load into (its weights are replaced).
            Optional for Hugging Face models, whose config is in the folder.
    """
    path = Path(path)
    meta = _read_meta(path)
    tensors = load_file(_regular_file(path / TENSORS, path))
    _check_tensors(tensors, meta["tensors"], path)
    state = dict(tensors)
    for key, target in meta["aliases"].items():
        if target not in tensors:
            raise CheckpointError(f"{path}: alias {key!r} points at {target!r}, which is not stored")
        state[key] = tensors[target]
    if model is None:
        model = _build_model(path, meta)
    for name, entry in sorted(meta["wrappers"].items(), key=lambda kv: kv[0].count(".")):
        set_submodule(model, name, _wrap(name, entry, _find(model, name, path), path))
    for name in meta["identity"]:  # after the wrappers: a LoRA adapter's dropout may be one
        _find(model, name, path)
        set_submodule(model, name, nn.Identity())
    built: dict[str, QTensor] = {}
    order = lambda kv: (isinstance(kv[1], dict) and "weight_tied_to" in kv[1], kv[0].count("."))  # noqa: E731
    for name, entry in sorted(meta["layers"].items(), key=order):
        weight = _weight(name, entry, state, built, path)
        set_submodule(model, name, _make_layer(name, entry, weight, state, _find(model, name, path), path))
    if meta["output_hook"]:
        model.register_forward_hook(dequantize_outputs)
    if meta.get("autocast") is not None:
        _autocast(model, meta["autocast"], state, path)
    _load_state(model, state, path)
    return model


def _autocast(model: nn.Module, dtype: str, state: dict, path: Path) -> None:
    """Parameters stored in half precision become half precision again; forward under autocast."""
    from ..recipes.autocast import run_under_autocast

    for key, param in model.named_parameters():
        stored = state.get(key)
        if stored is not None and stored.dtype in (torch.bfloat16, torch.float16) and param.dtype != stored.dtype:
            param.data = param.data.to(stored.dtype)
    try:
        run_under_autocast(model, dtype)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}; the checkpoint is damaged") from None


def _read_meta(path: Path) -> dict:
    file = path / META
    if not file.is_file():
        raise CheckpointError(f"{path} is not a lowbit checkpoint: {META} not found "
                              f"(write one with lowbit.save(model, path))")
    _regular_file(file, path)
    if file.stat().st_size > MAX_META_BYTES:
        raise CheckpointError(f"{file} is {file.stat().st_size} bytes; a lowbit.json is far smaller")
    try:
        meta = json.loads(file.read_text())
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({type(err).__name__}); the checkpoint "
                              f"is damaged, re-save it") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        got = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: checkpoint format_version {got} is not the supported "
                              f"{FORMAT_VERSION}; re-save it with this lowbit")
    kinds = {"model": dict, "layers": dict, "wrappers": dict, "aliases": dict, "identity": list,
             "output_hook": bool, "tensors": dict}
    for key, kind in kinds.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{file}: {key!r} must be a {kind.__name__}, got "
                                  f"{type(meta.get(key)).__name__}; the checkpoint is damaged")
    return meta


def _regular_file(file: Path, path: Path) -> Path:
    try:
        mode = os.stat(file).st_mode
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read {file.name} ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: {file.name} is not a regular file (a device or folder?); "
                              f"the checkpoint is damaged")
    return file


def _find(model: nn.Module, name: str, path: Path) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"{path}: checkpoint layer {name!r} does not exist in the model it is "
                              f"loaded into; pass the matching architecture") from None


def _wrap(name: str, entry: dict, module: nn.Module, path: Path) -> nn.Module:
    from ..lora import LoRAConfig, LoRALinear

    if entry.get("type") != "LoRALinear" or not isinstance(entry.get("config"), dict):
        raise CheckpointError(f"{path}: {name}: unknown wrapper {entry.get('type')!r}; known: LoRALinear")
    try:
        return LoRALinear(module, LoRAConfig.from_dict(entry["config"]))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {name}: bad LoRA config: {err}") from None


def _weight(name: str, entry: dict, state: dict, built: dict, path: Path) -> QTensor:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: layer {name!r} entry must be an object, got {type(entry).__name__}")
    if "weight_tied_to" in entry:
        if entry["weight_tied_to"] not in built:
            raise CheckpointError(f"{path}: {name} is tied to {entry['weight_tied_to']!r}, which "
                                  f"holds no weight in this checkpoint")
        built[name] = built[entry["weight_tied_to"]]
        return built[name]
    try:
        layout = entry["weight"]
        cls = SparseQTensor if isinstance(layout, dict) and layout.get("sparse") == "bitmask" else QTensor
        weight = cls.from_tensors(state, layout, f"{name}.weight.")
        weight.validate(f"{name}.weight")
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {name}.weight: {err}") from None
    built[name] = weight
    return weight


def _make_layer(name, entry, weight, state, old, path) -> nn.Module:
    cls = LAYER_TYPES.get(entry.get("type"))
    if cls is None:
        raise CheckpointError(f"{path}: {name}: unknown layer type {entry.get('type')!r} in "
                              f"checkpoint (written by a newer lowbit?); known: {sorted(LAYER_TYPES)}")
    expected = (getattr(old, "out_features", None), getattr(old, "in_features", None))
    if isinstance(old, nn.Linear) and expected != tuple(weight.shape):
        raise CheckpointError(f"{path}: {name}.weight: checkpoint shape {tuple(weight.shape)} does "
                              f"not match the model's Linear {expected}")
    bias = state.get(f"{name}.bias") if entry.get("bias") else None
    try:
        return cls.from_config(weight, entry.get("config") or {}, bias)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {name}: cannot rebuild a {cls.__name__} from its entry: "
                              f"{err}") from None


def _load_state(model: nn.Module, state: dict, path: Path) -> None:
    own = model.state_dict()
    for key, t in state.items():
        if key not in own:
            raise CheckpointError(f"{path}: tensor {key!r} has no place in the model "
                                  f"(architecture differs from the saved one?)")
        if own[key].shape != t.shape or own[key].dtype != t.dtype:
            raise CheckpointError(
                f"{path}: tensor {key!r} is {tuple(t.shape)} {t.dtype} in the checkpoint but "
                f"{tuple(own[key].shape)} {own[key].dtype} in the model")
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {len(missing)} tensors the model "
                              f"needs, first {missing[0]!r}")
    model.load_state_dict(state, strict=True)


def _check_tensors(tensors, described, path) -> None:
    for key, d in described.items():
        if key not in tensors:
            raise CheckpointError(f"{path}: tensor {key!r} is described in {META} but missing "
                                  f"from {TENSORS}; the checkpoint is damaged, re-save it")
        t = tensors[key]
        if not isinstance(d, dict) or list(t.shape) != d.get("shape") or str(t.dtype).removeprefix("torch.") != d.get("dtype"):
            raise CheckpointError(
                f"{path}: tensor {key!r} is {list(t.shape)} {t.dtype} in {TENSORS} but "
                f"{d} in {META}; the checkpoint is damaged, re-save it")
    extra = set(tensors) - set(described)
    if extra:
        raise CheckpointError(f"{path}: {TENSORS} holds tensors {META} does not describe, "
                              f"e.g. {sorted(extra)[0]!r}")


def _model_kind(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_file"):
        return {"kind": "huggingface", "class": type(model).__name__}
    return {"kind": "module", "class": f"{type(model).__module__}.{type(model).__qualname__}"}


def _build_model(path: Path, meta) -> nn.Module:
    kind, name = meta["model"].get("kind"), meta["model"].get("class")
    if kind != "huggingface":
        raise CheckpointError(
            f"{path} holds a {name!r} ({kind}): pass a float instance of it, "
            f"lowbit.load(path, model=MyModel())")
    from ..models.hf import build_model_from_config  # checks config.json; runs no folder code

    return build_model_from_config(path, name)


def write_folder(path: str | os.PathLike, write, *, marker: str) -> Path:
    """Run ``write(tmp)`` into a hidden sibling folder, fsync it, then rename it onto ``path``.

    ``path`` is replaced only if it is absent, empty, or holds ``marker`` (a folder this writer
    made); a crash at any point leaves the old folder or the new one, never half of one.
    """
    path = Path(path)
    if path.exists() and not (path / marker).is_file() and any(path.iterdir()):
        raise CheckpointError(f"{path} exists and is not a lowbit folder (no {marker}); refusing "
                              f"to overwrite it, choose another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        for file in tmp.iterdir():
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
