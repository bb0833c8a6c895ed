"""W8A8 with calibrated activations: naive static per-tensor (StaticW8A8) and SmoothQuant.

The default ``exclude=("lm_head",)`` keeps the output head (and so a tied input embedding)
float — an explicit choice, reported per layer as "excluded by pattern".
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..algorithms import smoothquant as sq
from ..calibration import watch_inputs
from ..formats import INT8
from ..nn import QLinear, QuantReport, swap_modules
from ..nn.llm_int8 import StaticW8A8Linear
from ..nn.swap import matches
from ..qtensor import QTensor
from .base import ActivationQuant, LayerPlan, Recipe, patterns
from .registry import register
from .weight_only import int8_layer_plan

log = logging.getLogger("lowbit")

# (producer, the linears that read its output), relative to one decoder block. A producer is a
# normalisation, or a Linear whose output rows reach the consumer through a channel-wise op that
# commutes with a positive per-channel scale (act(gate) * up; ReLU).
SMOOTH_PAIRS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),  # Llama,
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),  # Mistral, Qwen2, SmolLM2
    ("input_layernorm", ("self_attn.qkv_proj",)),                    # Phi-3
    ("post_attention_layernorm", ("mlp.gate_up_proj",)),
    ("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),  # OPT
    ("final_layer_norm", ("fc1",)),
    ("mlp.up_proj", ("mlp.down_proj",)),                             # Llama family
    ("fc1", ("fc2",)),                                               # OPT (ReLU)
)


@register("static-w8a8")
@dataclass(frozen=True)
class StaticW8A8(Recipe):
    """Naive static W8A8: int8 per-channel weights, ONE calibrated activation scale per layer
    (max|X| / 127 over the calibration data), no smoothing — the baseline SmoothQuant beats."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ("lm_head",)
    batch_size: int = 8

    weight_format = INT8
    activation = ActivationQuant("static", "tensor", observer="absmax")
    layer_types = (nn.Linear,)
    needs_data = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        patterns(self, "include", "exclude")

    def describe(self) -> str:
        return "W8A8 static per-tensor (naive)"

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        return int8_layer_plan(name, module, self.activation, layer=StaticW8A8Linear)

    def apply(self, model: nn.Module, data) -> QuantReport:
        absmax = input_absmax(model, data, _names(model, self), self.batch_size)
        return _swap_w8a8(model, self, absmax, "static")


def _names(model: nn.Module, recipe) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, recipe.layer_types)
            and matches(n, recipe.include) and not matches(n, recipe.exclude)]


@register("smoothquant")
@dataclass(frozen=True)
class SmoothQuant(StaticW8A8):
    """SmoothQuant (Xiao et al., 2022) W8A8: migrate activation outliers into the weights with
    strength ``alpha`` (folded into the preceding RMSNorm/LayerNorm or up_proj), then int8 weights per
    channel and int8 activations, ``act_mode="static"`` (one calibrated scale per tensor, the
    paper's O3) or ``"dynamic"`` (per token at run time, lowbit's W8A8 VNNI kernel).

    Pairs smoothed (:data:`SMOOTH_PAIRS`): input_layernorm -> q/k/v, post_attention_layernorm ->
    gate/up and up_proj (rows) -> down_proj (Llama, Mistral, Qwen2, SmolLM2; Phi-3's fused
    qkv/gate_up), self_attn_layer_norm -> q/k/v, final_layer_norm -> fc1 and fc1 -> fc2 (OPT).
    o_proj is quantized unsmoothed (its input comes out of attention).
    """

    alpha: float = 0.5
    act_mode: str = "static"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"SmoothQuant.alpha must be in [0, 1] (0.5 is the paper's default), got {self.alpha}")
        if self.act_mode not in ("static", "dynamic"):
            raise ValueError(f"SmoothQuant.act_mode must be 'static' or 'dynamic', got {self.act_mode!r}")

    @property
    def activation(self) -> ActivationQuant:
        if self.act_mode == "static":
            return ActivationQuant("static", "tensor", observer="absmax")
        return ActivationQuant("dynamic", "token")

    def describe(self) -> str:
        return f"SmoothQuant W8A8 alpha {self.alpha:g} ({self.activation.label()})"

    @staticmethod
    def spec_option(token: str) -> dict | None:
        if token in ("static", "dynamic"):
            return {"act_mode": token}
        try:
            return {"alpha": float(token[1:])} if token[:1] == "a" else None
        except ValueError:
            return None

    def spec_tokens(self) -> tuple[list[str], set[str]]:
        tokens = [] if self.alpha == 0.5 else [f"a{self.alpha!r}"]
        return tokens + ([] if self.act_mode == "static" else ["dynamic"]), {"alpha", "act_mode"}

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        if self.act_mode == "dynamic":
            return int8_layer_plan(name, module, self.activation)
        return int8_layer_plan(name, module, self.activation, layer=StaticW8A8Linear)

    def apply(self, model: nn.Module, data) -> QuantReport:
        names = _names(model, self)
        pairs = smooth_pairs(model)
        absmax = input_absmax(model, data, names + [n for _, _, ls in pairs for n, _ in ls
                                                    if n not in names], self.batch_size)
        for _, producer, linears in pairs:  # a norm (weight [K]) or a Linear (rows [K, in])
            Ws = [lin.weight.detach() for _, lin in linears]
            s = sq.smoothing_scales(absmax[linears[0][0]], Ws, self.alpha)  # (K,)
            bias = getattr(producer, "bias", None)
            w, b, new_Ws = sq.migrate(producer.weight.detach(), None if bias is None else bias.detach(), Ws, s)
            producer.weight.data.copy_(w)
            if b is not None:
                producer.bias.data.copy_(b)
            for (name, lin), W in zip(linears, new_Ws):
                lin.weight.data.copy_(W)
                absmax[name] = absmax[name] / s
        log.info("lowbit: SmoothQuant smoothed %d producer -> linear pairs", len(pairs))
        return _swap_w8a8(model, self, absmax, self.act_mode)


def smooth_pairs(model: nn.Module) -> list[tuple[str, nn.Module, list[tuple[str, nn.Module]]]]:
    """Every (norm name, norm, [(linear name, linear)]) of :data:`SMOOTH_PAIRS` in ``model``."""
    pairs = []
    for prefix, block in model.named_modules():
        for norm_name, linear_names in SMOOTH_PAIRS:
            try:
                norm = block.get_submodule(norm_name)
                linears = [(f"{prefix}.{n}" if prefix else n, block.get_submodule(n)) for n in linear_names]
            except AttributeError:
                continue
            if norm is None or not all(isinstance(lin, nn.Linear) for _, lin in linears):
                continue
            full = f"{prefix}.{norm_name}" if prefix else norm_name
            _check_norm(full, norm, linears[0][1].in_features)
            pairs.append((full, norm, linears))
    if not pairs:
        raise ValueError(
            f"SmoothQuant found no normalisation -> linear pair in {type(model).__name__}: it "
            f"knows {sorted({p for p, _ in SMOOTH_PAIRS})} feeding q/k/v, gate/up or fc1 "
            f"(Llama, Mistral, Qwen2, Phi-3, OPT). Use StaticW8A8 or DynamicPTQ for this model, "
            f"or add its pair to lowbit.recipes.smoothquant.SMOOTH_PAIRS")
    return pairs


def _check_norm(name: str, norm: nn.Module, K: int) -> None:
    kind = type(norm).__name__
    weight = getattr(norm, "weight", None)
    if isinstance(norm, nn.Linear):
        if norm.out_features != K:
            raise ValueError(f"SmoothQuant: {name} gives {norm.out_features} features, its readers "
                             f"take {K}; this block is not the structure SMOOTH_PAIRS assumes")
        return
    if kind.startswith("Gemma") or not (isinstance(norm, nn.LayerNorm) or kind.endswith("RMSNorm")):
        raise ValueError(f"SmoothQuant cannot fold scales into {name} ({kind}): it folds into "
                         f"LayerNorm and RMSNorm with y = weight * x_hat (Gemma's 1 + weight is "
                         f"not supported); exclude this model or use StaticW8A8/DynamicPTQ")
    if weight is None or tuple(weight.shape) != (K,):
        raise ValueError(f"SmoothQuant: {name} ({kind}) has no elementwise weight of size {K} to "
                         f"fold the scales into (elementwise_affine=False?)")


def input_absmax(model: nn.Module, data, names: Iterable[str], batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Per-input-channel max|x| [K] of every named Linear over the calibration ``data``.

    ``data``: token ids LongTensor [n, seq_len] (run ``batch_size`` rows per forward) or an
    iterable of such tensors.
    """
    names = list(dict.fromkeys(names))
    absmax: dict[str, torch.Tensor] = {}

    def update(name: str, x: torch.Tensor) -> None:
        a = x.abs().amax(dim=0).float()  # (K,)
        absmax[name] = a if name not in absmax else torch.maximum(absmax[name], a)

    batches = list(data.split(batch_size)) if isinstance(data, torch.Tensor) else list(data)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), watch_inputs({n: model.get_submodule(n) for n in names}, update):
            for ids in tqdm(batches, desc="calibrating activation ranges", unit="batch", disable=None):
                model(ids, use_cache=False) if _accepts_use_cache(model) else model(ids)
    finally:
        model.train(was_training)
    missing = [n for n in names if n not in absmax]
    if missing:
        raise ValueError(f"calibration never reached layer {missing[0]!r} (and {len(missing) - 1} "
                         f"more); check that data are token ids the model runs on")
    return absmax


def _accepts_use_cache(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "use_cache", None) is not None


def _swap_w8a8(model: nn.Module, recipe: Recipe, absmax: dict, activation: str) -> QuantReport:
    def build(name: str, module: nn.Module) -> nn.Module:
        if activation == "dynamic":
            return QLinear.from_float(module, INT8, activation=ActivationQuant("dynamic", "token"), name=name)
        W = QTensor.from_float(module.weight.detach(), INT8, name=name)
        return StaticW8A8Linear(W, module.bias, sq.static_scale(absmax[name]))

    return swap_modules(model, build, types=recipe.layer_types, include=recipe.include,
                        exclude=recipe.exclude, recipe=recipe.describe())
