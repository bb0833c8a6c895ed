"""Model walks: :func:`prepare_qat` (float -> fake-quantized), freezing, :func:`convert`
(fake-quantized -> real kernels)."""
from __future__ import annotations

import copy
import itertools
import logging
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from ..nn import QLinear
from ..nn.swap import QuantReport, Skip, matches, set_submodule, swap_modules
from ..qtensor import QTensor
from .fake import FakeQuantizer
from .modules import QATConv2d, QATConvBn2d, QATLinear, _QATLayer

if TYPE_CHECKING:
    from ..recipes.qat import QAT

log = logging.getLogger("lowbit")


def prepare_qat(model: nn.Module, recipe: QAT, data: Iterable | None = None, *,
                inplace: bool = False, init: dict[str, QTensor] | None = None) -> nn.Module:
    """A trainable copy of ``model`` with every matching Linear/Conv2d fake-quantized.

    Activation quantizers are initialized from the first batches of ``data`` (needed when
    ``recipe.act_bits`` is set): run before building the optimizer, so learned scales are
    registered parameters by then. ``init`` maps layer names to already quantized weights
    (e.g. from GPTQ, ``lowbit.quantize(model, WeightOnly(method="gptq", ...))``): those layers
    start from that weight (dequantized) and its grid instead of the float weight's range.
    """
    from ..recipes.qat import QAT  # the recipe module imports this one

    if not isinstance(recipe, QAT):
        raise TypeError(f"prepare_qat needs a lowbit.qat.QAT recipe, got {type(recipe).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    conv_bn = _conv_bn_pairs(model, recipe, data)

    def build(name: str, module: nn.Module) -> nn.Module:
        try:
            if name in conv_bn:
                bn_name = conv_bn[name]
                layer = QATConvBn2d(module, model.get_submodule(bn_name), recipe.weight_format,
                                    recipe.input_format, recipe.learn, name)
                set_submodule(model, bn_name, nn.Identity())  # it now runs inside the pair
            else:
                cls = QATConv2d if isinstance(module, nn.Conv2d) else QATLinear
                layer = cls(module, recipe.weight_format, recipe.input_format, recipe.learn, name)
        except ValueError as err:
            if "does not divide" in str(err):
                raise Skip(str(err)) from None
            raise
        if init and name in init:
            if name in conv_bn:
                raise ValueError(f"prepare_qat: init= for {name}, which trains with its BatchNorm "
                                 f"{conv_bn[name]} folded; pass QAT(batchnorm='as-is') with init=")
            with torch.no_grad():
                module.weight.copy_(init[name].dequantize(module.weight.dtype).reshape(module.weight.shape))
            layer.weight_quant.load_grid(init[name])
        return layer

    report = swap_modules(model, build, types=(nn.Linear, nn.Conv2d), include=recipe.include,
                          exclude=recipe.exclude, recipe=recipe.describe())
    model.lowbit_report = report
    if recipe.act_bits is not None:
        if data is None:
            raise ValueError("prepare_qat: act_bits needs data (a few batches) to initialize the "
                             "activation ranges; pass data=[batch, ...]")
        was_training = model.training
        model.eval()
        quantizers = [m for m in model.modules() if isinstance(m, FakeQuantizer)]
        with torch.no_grad():
            for i, batch in enumerate(itertools.islice(data, 8)):
                model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
                if i == 0:  # initialized by the first batch; widen over the rest
                    for q in quantizers:
                        q.calibrating = True
        for q in quantizers:
            q.calibrating = False
        model.train(was_training)
    return model


def _conv_bn_pairs(model: nn.Module, recipe: QAT, data) -> dict[str, str]:
    """{conv: bn} pairs to train as QATConvBn2d (found by one traced run on the first batch)."""
    if recipe.batchnorm != "simulate" or not any(
            isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return {}
    if data is None:
        raise ValueError("prepare_qat: the model has BatchNorm2d layers; QAT(batchnorm='simulate') "
                         "needs data=[batch, ...] to find which conv each one follows, or pass "
                         "QAT(batchnorm='as-is')")
    from ..fold import trace_pairs
    batch = next(iter(data))
    was_training = model.training
    model.eval()
    pairs, _ = trace_pairs(model, lambda m: m(*batch) if isinstance(batch, (tuple, list)) else m(batch))
    model.train(was_training)
    return {c: b for c, b in pairs.items()
            if matches(c, recipe.include) and not matches(c, recipe.exclude)}


def freeze_observers(model: nn.Module) -> None:
    """Fix every observer-driven scale (the usual step late in QAT)."""
    for m in model.modules():
        if isinstance(m, FakeQuantizer):
            m.freeze()


def _keep_eval(module: nn.Module, args) -> None:
    module.training = False


def freeze_batchnorm(model: nn.Module) -> None:
    """Use the running statistics from now on (BatchNorm in eval mode across model.train();
    its affine parameters still train)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not getattr(m, "_lowbit_frozen", False):
            m.eval()
            m.register_forward_pre_hook(_keep_eval)
            m._lowbit_frozen = True


def convert(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Really quantize a QAT model: each QATLinear becomes a QLinear holding its trained grid.

    Layers with quantized inputs keep them on the grid the training learned only where a real
    kernel exists; QATConv2d layers and fake-quantized activations have no weight-only kernel
    here, so they stay float with their fake quantization (reported, not hidden).
    """
    if not inplace:
        model = copy.deepcopy(model)

    def build(name: str, module: _QATLayer) -> nn.Module:
        if isinstance(module, (QATConv2d, QATConvBn2d)):
            raise Skip("Conv2d QAT keeps its fake quantization (no weight-only conv kernel); "
                       "use StaticPTQ on the trained float weights for int8 conv")
        weight = module.weight_quant.quantized_weight(module.module.weight)
        q = QLinear(weight, module.module.bias)
        if module.input_quant is not None:
            log.warning("lowbit convert: %s: input fake quantization dropped (weight-only kernel); "
                        "activations run in float", name)
        return q

    report: QuantReport = swap_modules(model, build, types=(QATLinear, QATConv2d, QATConvBn2d),
                                       recipe="convert QAT")
    model.lowbit_report = report
    return model.eval()
