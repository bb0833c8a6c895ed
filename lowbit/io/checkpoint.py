"""Save and load quantized models: safetensors (packed ints, scales, zero points) + JSON.

A checkpoint is a folder::

    lowbit.json          format version, each quantized layer's format and shapes, every
                         tensor's shape and dtype, tied-tensor aliases, the model's kind
    model.safetensors    every tensor, quantized or float, stored once
    config.json          the Hugging Face config, when the model has one

No pickle anywhere. The folder is written under a temporary name and renamed into place, so
a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..nn import QEmbedding, QLinear
from ..nn.llm_int8 import LLMInt8Linear, StaticW8A8Linear
from ..nn.nf4 import NF4Linear
from ..nn.swap import set_submodule
from ..qtensor import QTensor

FORMAT_VERSION = 1
META = "lowbit.json"
TENSORS = "model.safetensors"
# Quantized module types a checkpoint may hold, by the name written in lowbit.json. Their extra
# run-time constants (LLMInt8Linear.threshold, StaticW8A8Linear.input_scale) are buffers, saved
# and restored with the float state.
LAYER_TYPES = {cls.__name__: cls for cls in (QLinear, NF4Linear, QEmbedding, LLMInt8Linear,
                                             StaticW8A8Linear)}


class CheckpointError(ValueError):
    """A checkpoint that does not match what it describes or the model it is loaded into."""


def save(model: nn.Module, path: str | os.PathLike, *, tokenizer=None) -> Path:
    """Write ``model`` (quantized or not) to the folder ``path``, atomically.

    A Hugging Face ``tokenizer`` given here is saved in the same folder.
    """
    path = Path(path)
    tensors, layers, aliases = {}, {}, {}
    seen_q: dict[int, str] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, tuple(LAYER_TYPES.values())):
            continue
        if type(mod).__name__ not in LAYER_TYPES:
            raise CheckpointError(f"{name}: {type(mod).__name__} is not a checkpoint layer type; "
                                  f"register it in lowbit.io.checkpoint.LAYER_TYPES")
        entry = {"type": type(mod).__name__, "bias": getattr(mod, "bias", None) is not None,
                 "activation": getattr(mod, "activation", None),
                 "act_group_size": getattr(mod, "act_group_size", None),
                 "padding_idx": getattr(mod, "padding_idx", None)}
        if id(mod.weight) in seen_q:
            entry["weight_tied_to"] = seen_q[id(mod.weight)]
        else:
            seen_q[id(mod.weight)] = name
            entry["weight"] = mod.weight.describe()
            tensors.update(mod.weight.tensors(f"{name}.weight."))
        layers[name] = entry
    by_storage: dict[tuple, str] = {}
    for key, t in model.state_dict(keep_vars=False).items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident in by_storage:
            aliases[key] = by_storage[ident]
            continue
        by_storage[ident] = key
        tensors[key] = t
    meta = {
        "lowbit_version": __version__, "format_version": FORMAT_VERSION,
        "model": _model_kind(model), "layers": layers, "aliases": aliases,
        "tensors": {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                    for k, t in tensors.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, tmp / TENSORS)
        (tmp / META).write_text(json.dumps(meta, indent=1))
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_json_file"):
            config.to_json_file(tmp / "config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a checkpoint written by :func:`save`.

    Args:
        path: the checkpoint folder.
        model: a float model of the same architecture to load into (its weights are replaced).
            Optional for Hugging Face models, whose config is in the folder.
    """
    path = Path(path)
    if not (path / META).is_file():
        raise CheckpointError(f"{path} is not a lowbit checkpoint: {META} not found "
                              f"(write one with lowbit.save(model, path))")
    meta = json.loads((path / META).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {meta.get('format_version')} "
                              f"is not the supported {FORMAT_VERSION}; re-save it with this lowbit")
    tensors = load_file(path / TENSORS)
    _check_tensors(tensors, meta["tensors"], path)
    if model is None:
        model = _build_model(path, meta)
    shared: dict[str, QTensor] = {}
    for name, entry in meta["layers"].items():
        weight = (shared[entry["weight_tied_to"]] if "weight_tied_to" in entry
                  else QTensor.from_tensors(tensors, entry["weight"], f"{name}.weight."))
        shared[name] = weight
        set_submodule(model, name, _make_layer(name, entry, weight, tensors, model))
    _load_float_state(model, tensors, meta, path)
    return model


def _make_layer(name, entry, weight, tensors, model) -> nn.Module:
    try:
        old = model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"checkpoint layer {name!r} does not exist in the model it is "
                              f"loaded into; pass the matching architecture") from None
    if entry["type"] not in LAYER_TYPES:
        raise CheckpointError(f"{name}: unknown layer type {entry['type']!r} in checkpoint "
                              f"(written by a newer lowbit?); known: {sorted(LAYER_TYPES)}")
    if entry["type"] != "QEmbedding":
        expected = (getattr(old, "out_features", None), getattr(old, "in_features", None))
        if isinstance(old, nn.Linear) and expected != tuple(weight.shape):
            raise CheckpointError(f"{name}.weight: checkpoint shape {tuple(weight.shape)} does not "
                                  f"match the model's Linear {expected}")
        bias = tensors.get(f"{name}.bias") if entry["bias"] else None
        if entry["type"] == "QLinear":
            return QLinear(weight, bias, entry["activation"], entry.get("act_group_size"))
        if entry["type"] == "NF4Linear":
            return LAYER_TYPES[entry["type"]](weight, bias, entry["activation"])
        return LAYER_TYPES[entry["type"]](weight, bias)  # buffers come with the float state
    return QEmbedding(weight, entry["padding_idx"])


def _load_float_state(model: nn.Module, tensors, meta, path) -> None:
    qprefixes = tuple(f"{n}.weight." for n in meta["layers"])
    state = {k: t for k, t in tensors.items() if not k.startswith(qprefixes)}
    for key, target in meta["aliases"].items():
        state[key] = state[target]
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
        if list(t.shape) != d["shape"] or str(t.dtype).removeprefix("torch.") != d["dtype"]:
            raise CheckpointError(
                f"{path}: tensor {key!r} is {list(t.shape)} {t.dtype} in {TENSORS} but "
                f"{d['shape']} {d['dtype']} in {META}; the checkpoint is damaged, re-save it")
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
    if meta["model"]["kind"] != "huggingface":
        raise CheckpointError(
            f"{path} holds a {meta['model']['class']}: pass a float instance of it, "
            f"lowbit.load(path, model=MyModel())")
    from ..models.hf import build_model_from_config  # checks config.json; runs no folder code

    return build_model_from_config(path, meta["model"]["class"])


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` folder to ``path``, replacing an older one."""
    old = None
    if path.exists():
        if not (path / META).is_file() and any(path.iterdir()):
            raise CheckpointError(f"{path} exists and is not a lowbit checkpoint; refusing to "
                                  f"overwrite it, choose another folder")
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
