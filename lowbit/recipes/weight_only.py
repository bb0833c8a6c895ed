"""WeightOnly (int2..int8 weights, float activations) and DynamicPTQ (W8A8 dynamic)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..algorithms.awq import awq_quantize, awq_scale
from ..algorithms.gptq import gptq
from ..algorithms.hqq import hqq
from ..algorithms.rtn import rtn
from ..blocks import LINEAR_TYPES, find_blocks, linear_weight
from ..calibration import BlockRunner
from ..formats import QFormat, bits_per_weight, int_format, sparse_bits_per_weight
from ..nn import QEmbedding, QLinear, QuantReport, Skip, SparseQLinear, swap_modules
from ..nn.sparse import KERNEL as SPARSE_KERNEL
from ..nn.qrnn import ACTIVATION as LSTM_ACTIVATION, QLSTM, check_lstm, planned_bytes
from ..nn.swap import matches
from ..qtensor import QTensor, SparseQTensor
from .base import ActivationQuant, LayerPlan, Plan, Recipe, float_bytes, patterns
from .registry import prefixed_int, register

log = logging.getLogger("lowbit")

METHODS = ("rtn", "gptq", "awq", "hqq")
CALIBRATED = ("gptq", "awq")
OUTSIDE_BLOCKS = "outside the decoder blocks: round to nearest"


@register("rtn", method="rtn")
@register("gptq", method="gptq")
@register("awq", method="awq")
@register("hqq", method="hqq")
@dataclass(frozen=True)
class WeightOnly(Recipe):
    """Weight-only quantization of every ``nn.Linear`` (activations stay float).

    Args:
        num_bits: 2..8.
        group_size: elements per scale along the input axis; None = one scale per output channel;
            "auto" (default) = 128 below 8 bits, per channel at 8 bits: the formats with kernels.
        symmetric: None picks the format with a fast kernel: symmetric for 8 bits (int8
            kernel), asymmetric otherwise (int4 kernel; 3/2-bit run the reference path).
        method: "rtn" (round to nearest), "hqq" (half-quadratic zero points, no data), or the
            calibrated "gptq" and "awq", which need ``data`` (token ids ``[n, seq_len]``) and a
            decoder LM; they quantize its blocks one at a time (:mod:`lowbit.calibration`) and
            quantize linears outside the blocks (e.g. an untied head) with RTN.
        mse_clip: RTN only: choose each group's range by a clipping search on the weight MSE.
        damp, act_order, lazy_batch: GPTQ's dampening (fraction of mean diag H), activation
            order (with static groups) and lazy batch-update width (columns).
        gptq_clip: GPTQ: choose the static group ranges with an H-weighted clipping search.
        true_sequential: GPTQ: statistics of each linear group taken with the groups before it
            in the block already quantized.
        awq_grid: AWQ: points of the alpha grid of the scale search (and of the clip search).
        hqq_iters: HQQ: half-quadratic iterations.
        calib_batch_size: calibration sequences per forward pass.
        include, exclude: fnmatch patterns on module names.
        embeddings: also quantize ``nn.Embedding`` tables to the same format (RTN/HQQ). A tied
            output head and input embedding then share one packed table.
        skip_ragged: leave float (reported) the layers whose input size ``group_size`` does
            not divide, instead of raising.
        sparse: keep a pruned linear's exact zeros and store it as kept values + bitmask
            (:class:`~lowbit.qtensor.SparseQTensor`; GPTQ compensates the pruned entries instead
            of filling them in). None (default) does so where it is smaller than dense storage
            (more than 1/num_bits of the weights are exactly zero, e.g. after ``Prune``); True
            always for pruned weights; False never.
    """

    num_bits: int = 4
    group_size: int | None | str = "auto"
    symmetric: bool | None = None
    method: str = "rtn"
    mse_clip: bool = False
    damp: float = 0.01
    act_order: bool = True
    lazy_batch: int = 128
    gptq_clip: bool = True
    true_sequential: bool = True
    awq_grid: int = 20
    hqq_iters: int = 20
    calib_batch_size: int = 8
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    embeddings: bool = False
    skip_ragged: bool = False
    sparse: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_bits, int) or not 2 <= self.num_bits <= 8:
            raise ValueError(f"WeightOnly.num_bits must be 2..8, got {self.num_bits!r}")
        if self.group_size == "auto":
            object.__setattr__(self, "group_size", None if self.num_bits == 8 else 128)
        if self.group_size is not None and not isinstance(self.group_size, int):
            raise ValueError(f"WeightOnly.group_size must be an int, None or 'auto', got {self.group_size!r}")
        if self.group_size is not None and (self.group_size < 1 or self.group_size & (self.group_size - 1)):
            raise ValueError(
                f"WeightOnly.group_size must be None (per channel) or a power of two such as "
                f"32, 64, 128, 256; got {self.group_size}"
            )
        if self.method not in METHODS:
            raise ValueError(f"WeightOnly.method must be one of {METHODS}, got {self.method!r}")
        if self.mse_clip and self.method != "rtn":
            raise ValueError(f"WeightOnly.mse_clip applies to method='rtn', got method={self.method!r}")
        if self.method == "hqq" and self.weight_format.symmetric:
            raise ValueError("WeightOnly(method='hqq') fits zero points: use symmetric=False "
                             f"(num_bits={self.num_bits} defaults to symmetric)")
        if not 0 <= self.damp < 1:
            raise ValueError(f"WeightOnly.damp must be in [0, 1), got {self.damp}")
        if self.lazy_batch < 1 or self.awq_grid < 1 or self.hqq_iters < 0 or self.calib_batch_size < 1:
            raise ValueError("WeightOnly.lazy_batch, awq_grid and calib_batch_size must be positive "
                             "and hqq_iters non-negative")
        patterns(self, "include", "exclude")

    @property
    def needs_data(self) -> bool:
        return self.method in CALIBRATED

    @property
    def layer_types(self) -> tuple[type, ...]:
        return LINEAR_TYPES + (nn.Embedding,) if self.embeddings else LINEAR_TYPES

    @property
    def weight_format(self) -> QFormat:
        symmetric = self.num_bits == 8 if self.symmetric is None else self.symmetric
        return int_format(self.num_bits, signed=symmetric, symmetric=symmetric,
                          group_size=self.group_size)


    def describe(self) -> str:
        g = f"g{self.group_size}" if self.group_size else "per-channel"
        method = "rtn-mse" if self.mse_clip else self.method
        return f"WeightOnly W{self.num_bits} {g} {method}"

    # --- spec: "gptq:w4g64", "rtn:w8", "hqq:w3g64,emb" ---------------------------------------
    @staticmethod
    def spec_option(token: str) -> dict | None:
        if token == "emb":
            return {"embeddings": True}
        if token in ("sym", "asym"):
            return {"symmetric": token == "sym"}
        if token.startswith("w") and token[1:2].isdigit():
            bits, _, group = token[1:].partition("g")
            if group:
                return {"num_bits": int(bits), "group_size": int(group)}
            if bits.endswith("pc"):
                return {"num_bits": int(bits[:-2]), "group_size": None}
            return {"num_bits": int(bits)}
        return None

    def spec_tokens(self) -> tuple[list[str], set[str]]:
        auto = None if self.num_bits == 8 else 128
        group = ("" if self.group_size == auto else f"g{self.group_size}" if self.group_size else "pc")
        tokens = [f"w{self.num_bits}{group}"]
        if self.embeddings:
            tokens.append("emb")
        if self.symmetric is not None:
            tokens.append("sym" if self.symmetric else "asym")
        return tokens, {"num_bits", "group_size", "embeddings", "symmetric", "method"}

    def plan(self, model: nn.Module) -> Plan:
        plan = super().plan(model)
        if self.method not in CALIBRATED:
            return plan
        try:
            prefix, _ = find_blocks(model)
        except ValueError as err:  # apply() raises the same; the plan says it per layer
            plan.layers = [replace(p, status="error", reason=str(err)) if p.status == "quantize" else p
                           for p in plan.layers]
            return plan
        plan.layers = [replace(p, reason=OUTSIDE_BLOCKS) if p.status == "quantize" and p.module_type != "Embedding"
                       and not p.name.startswith(prefix + ".") else p for p in plan.layers]
        return plan

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        W = module.weight
        shape, fmt, kind = tuple(W.shape), self.weight_format, type(module).__name__
        fp = float_bytes(module)
        in_features = linear_weight(module).shape[1] if not isinstance(module, nn.Embedding) else shape[1]
        if self.group_size and in_features % self.group_size:
            why = (f"group_size {self.group_size} does not divide its input size {in_features}; "
                   f"choose a group size that does, exclude it, or pass skip_ragged=True")
            return LayerPlan(name, kind, shape, "float" if self.skip_ragged else "error",
                             bytes=fp, float_bytes=fp, reason=why)
        kernel = (QEmbedding.planned_kernel(fmt) if isinstance(module, nn.Embedding)
                  else QLinear.planned_kernel(fmt, None, in_features))
        bpw = bits_per_weight(fmt, W.numel(), shape[0])
        keep = None if isinstance(module, nn.Embedding) else self._sparse_keep(W)
        if keep is not None:
            kept = float(keep.float().mean())
            kernel, bpw = SPARSE_KERNEL, sparse_bits_per_weight(fmt, W.numel(), shape[0], kept)
            fmt_label = f"{fmt.label()}, {1 - kept:.0%} pruned (bitmask)"
            return LayerPlan(name, kind, shape, "quantize", fmt_label, kernel, _bytes(W, bpw, module), fp)
        return LayerPlan(name, kind, shape, "quantize", fmt.label(), kernel, _bytes(W, bpw, module), fp)

    # --- one weight, no data ---------------------------------------------------------------
    def _sparse_keep(self, W: torch.Tensor) -> torch.Tensor | None:
        """The kept entries of a pruned weight when it is to be stored sparse (see ``sparse``)."""
        if self.sparse is False:
            return None
        keep = W.detach() != 0
        zeros = 1 - float(keep.float().mean())
        if zeros == 0 or (self.sparse is None and zeros <= 1 / self.num_bits):
            return None
        return keep

    def quantize_weight(self, name: str, W: torch.Tensor, *, sparse: bool = False) -> QTensor | SparseQTensor:
        """RTN / RTN-MSE / HQQ of one float weight [out, in] (rows are output channels); with
        ``sparse``, a pruned weight is stored as kept values + bitmask (see the field)."""
        fmt = self.weight_format
        keep = self._sparse_keep(W) if sparse else None
        if self.method == "hqq":
            qw = hqq(W, fmt, iters=self.hqq_iters)
        elif self.mse_clip or keep is not None:
            qw = rtn(W, fmt, mse_clip=self.mse_clip)
        else:
            return QTensor.from_float(W, fmt, name=name)
        return _stored(qw, fmt, keep)

    def apply(self, model: nn.Module, data) -> QuantReport:
        fmt = self.weight_format
        shared: dict[int, QTensor] = {}  # id(float weight) -> its QTensor, so ties survive
        calibrated = self._calibrate(model, data) if self.method in CALIBRATED else None
        outside: set[str] = set()        # calibrated methods: linears outside the decoder blocks

        def quantized(name: str, module: nn.Module) -> QTensor:
            weight = module.weight
            if id(weight) not in shared:
                embedding = isinstance(module, nn.Embedding)
                W = weight.detach() if embedding else linear_weight(module)
                try:
                    shared[id(weight)] = self.quantize_weight(name, W, sparse=not embedding)
                except ValueError as err:
                    if self.skip_ragged and "does not divide" in str(err):
                        raise Skip(str(err)) from None
                    raise
            return shared[id(weight)]

        def build(name: str, module: nn.Module) -> nn.Module:
            if isinstance(module, nn.Embedding):
                return QEmbedding.from_float(module, fmt, weight=quantized(name, module))
            if calibrated is not None and name in calibrated:
                if isinstance(calibrated[name], Skip):
                    raise calibrated[name]
                return _linear(calibrated[name], module.bias)
            if calibrated is not None:
                log.info("lowbit: %s is %s", name, OUTSIDE_BLOCKS)
                outside.add(name)
            return _linear(quantized(name, module), module.bias)

        report = swap_modules(model, build, types=self.layer_types, include=self.include,
                              exclude=self.exclude, recipe=self.describe())
        report.layers = [replace(r, reason=OUTSIDE_BLOCKS) if r.name in outside and r.status == "quantized"
                         else r for r in report.layers]
        return report

    # --- calibrated methods: block by block --------------------------------------------------
    @torch.no_grad()
    def _calibrate(self, model: nn.Module, data,
                   formats: dict[str, QFormat] | None = None) -> dict[str, QTensor | Skip]:
        """GPTQ or AWQ over the decoder blocks in order (:class:`~lowbit.calibration.BlockRunner`):
        for each selected block linear, its QTensor or the Skip saying why it stays float.

        ``formats`` (GPTQ only) gives each layer its own format and selects exactly those
        layers (mixed precision); a codebook format (NF4) is rounded, not GPTQ'd."""
        if data is None:
            raise ValueError(f"{self.describe()} needs calibration data: pass data= a LongTensor "
                             f"of token ids [n, seq_len], e.g. lowbit.data.calibration_batches(tokenizer)")
        fmt, awq = self.weight_format, self.method == "awq"
        if formats is not None and awq:
            raise ValueError("per-layer formats apply to GPTQ, not AWQ (its scale search is per group)")
        runner = BlockRunner(model, data, batch_size=self.calib_batch_size, find_producers=awq,
                             desc=self.describe() if formats is None else "mixed precision (GPTQ)")
        done: dict[str, QTensor | Skip] = {}
        for block in runner:
            chosen = {n for g in block.groups for n in g.names
                      if (n in formats if formats is not None else
                          matches(n, self.include) and not matches(n, self.exclude))}
            groups = [g for g in block.groups if chosen.intersection(g.names)]
            stats = runner.input_stats(groups) if awq or not self.true_sequential else None
            for group, st in zip(groups, stats if awq else ()):   # AWQ: fold on the float block
                if group.producer is None:
                    continue
                try:
                    s = awq_scale([runner.weight(n) for n in group.names], st.x_abs_mean, st.H, fmt,
                                  grid=self.awq_grid)
                except ValueError as err:
                    done.update({n: self._ragged(n, err) for n in group.names if n in chosen})
                    continue
                runner.fold_scale(group, s, st)
            for j, group in enumerate(groups):
                st = stats[j] if stats is not None else runner.input_stats([group])[0]
                for name in (n for n in group.names if n in chosen and n not in done):
                    W = runner.weight(name)   # [out, in]
                    keep = self._sparse_keep(W)
                    f = formats[name] if formats is not None else fmt
                    try:
                        if f.kind == "codebook":
                            done[name] = QTensor.from_float(W, f, name=name)
                            runner.set_weight(name, done[name].dequantize())
                            continue
                        qw = (awq_quantize(W, st.H, f, grid=self.awq_grid) if awq else
                              gptq(W, st.H, f, damp=self.damp, lazy_batch=self.lazy_batch,
                                   act_order=self.act_order, mse_clip=self.gptq_clip, keep=keep))
                    except ValueError as err:
                        done[name] = self._ragged(name, err)
                        continue
                    done[name] = _stored(qw, f, keep)
                    runner.set_weight(name, done[name].dequantize())
        done.update({n: Skip(why) for n, why in runner.unreached.items()})
        return done

    def _ragged(self, name: str, err: ValueError) -> Skip:
        """The Skip of a layer whose input size group_size does not divide (with skip_ragged);
        any other error, or without skip_ragged, raised again naming the layer."""
        if self.skip_ragged and "does not divide" in str(err):
            return Skip(str(err).replace("tensor:", f"{name}:", 1))
        raise ValueError(f"{name}: {err}") from None


def _bytes(W: torch.Tensor, bpw: float, module: nn.Module) -> int:
    """Planned bytes of a layer: its weight at ``bpw`` bits per weight plus its float bias."""
    bias = getattr(module, "bias", None)
    return round(W.numel() * bpw / 8) + (0 if bias is None else bias.numel() * bias.element_size())


def _stored(qw, fmt: QFormat, keep: torch.Tensor | None) -> QTensor | SparseQTensor:
    """An algorithm's result packed: dense, or kept values + bitmask for a pruned weight."""
    if keep is None:
        return QTensor.from_int(qw.q, qw.scale, qw.zero_point, fmt)
    return SparseQTensor.from_int(qw.q, qw.scale, qw.zero_point, fmt, keep)


def _linear(weight: QTensor | SparseQTensor, bias) -> nn.Module:
    return SparseQLinear(weight, bias) if isinstance(weight, SparseQTensor) else QLinear(weight, bias)


def act_group_for(name: str, module: nn.Module, group: int | None) -> int | None:
    """``group`` if it divides the layer's input width, else None (per-token scales, logged)."""
    in_features = linear_weight(module).shape[1]
    if group and in_features % group:
        log.info("lowbit: %s: in_features %d is not a multiple of act_group_size %d; "
                 "per-token activation scales", name, in_features, group)
        return None
    return group


def int8_layer_plan(name: str, module: nn.Module, act: ActivationQuant | None,
                    layer=QLinear) -> LayerPlan:
    """Plan of a layer that becomes int8 per channel (fp32 scales) with ``layer``'s kernel."""
    W = linear_weight(module)
    N, K = W.shape
    fp = float_bytes(module)
    bias = getattr(module, "bias", None)
    nbytes = N * K + 4 * N + (0 if bias is None else 4 * N)
    label = int_format(8).label() + (f", activations {act.label()}" if act else "")
    kernel = layer.planned_kernel(int_format(8), act, K)
    return LayerPlan(name, type(module).__name__, tuple(module.weight.shape), "quantize", label,
                     kernel, nbytes, fp)


def lstm_layer_plan(name: str, module: nn.LSTM) -> LayerPlan:
    """Plan of an nn.LSTM that becomes a QLSTM (or the error from_float would raise)."""
    shape = (module.num_layers, module.input_size, module.hidden_size)  # (layers, input, hidden)
    fp = sum(p.numel() * p.element_size() for p in module.parameters())
    try:
        check_lstm(module, name)
    except ValueError as err:
        return LayerPlan(name, "LSTM", shape, "error", float_bytes=fp, reason=str(err))
    label = f"{int_format(8).label()}, activations {LSTM_ACTIVATION.label()}"
    kernel = QLSTM.planned_kernel(int_format(8), None, module.hidden_size)
    return LayerPlan(name, "LSTM", shape, "quantize", label, kernel, planned_bytes(module), fp)


@register("w8a8")
@dataclass(frozen=True)
class DynamicPTQ(Recipe):
    """W8A8 dynamic: int8 per-channel weights, activations quantized to int8 at run time.

    The analogue of PyTorch's ``quantize_dynamic`` on every ``nn.Linear``, with per-channel
    weight scales and activation scales per token and group of ``act_group_size`` inputs
    (default 64, the granularity of DeepSeek-V3's 1x128 activation tiles, halved): an outlier
    channel then coarsens only its own group. On SmolLM2-135M token groups of 64 cost +0.92%
    perplexity (results/demo.json); per-token scales cost +3.95% (the same file at commit
    0a57373). ``act_group_size=None`` gives one scale per token (faster at large batch: no
    per-group rescale). A layer whose input width the group does not divide falls back to per
    token scales, and the report says so.
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    act_group_size: int | None = 64

    def __post_init__(self) -> None:
        patterns(self, "include", "exclude")
        g = self.act_group_size
        if g is not None and (not isinstance(g, int) or g <= 0 or g % 64):
            raise ValueError(f"DynamicPTQ act_group_size must be None (per token) or a positive "
                             f"multiple of 64, got {g!r}")

    weight_format = int_format(8)
    layer_types = LINEAR_TYPES + (nn.LSTM,)  # LSTMs become QLSTM (activations per token and step)

    @property
    def activation(self) -> ActivationQuant:
        return ActivationQuant("dynamic", "token", self.act_group_size)

    def describe(self) -> str:
        acts = f"activations per token x {self.act_group_size}" if self.act_group_size else "per-token activations"
        return f"DynamicPTQ W8A8 ({acts})"

    @staticmethod
    def spec_option(token: str) -> dict | None:
        return {"act_group_size": None} if token == "pertoken" else prefixed_int(token, "g", "act_group_size")

    def spec_tokens(self) -> tuple[list[str], set[str]]:
        g = self.act_group_size
        return ([] if g == 64 else ["pertoken"] if g is None else [f"g{g}"]), {"act_group_size"}

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        if isinstance(module, nn.LSTM):
            return lstm_layer_plan(name, module)
        return int8_layer_plan(name, module, self.activation)

    def apply(self, model: nn.Module, data) -> QuantReport:
        def build(name: str, module: nn.Module) -> nn.Module:
            if isinstance(module, nn.LSTM):
                return QLSTM.from_float(module, self.weight_format, name=name)
            group = act_group_for(name, module, self.act_group_size)
            weight = QTensor.from_float(linear_weight(module), self.weight_format, name=name)
            return QLinear(weight, module.bias, ActivationQuant("dynamic", "token", group))

        return swap_modules(model, build, types=self.layer_types, include=self.include,
                            exclude=self.exclude, recipe=self.describe())
