"""Conv-BatchNorm folding, and finding which activation follows which conv.

A model's graph is arbitrary Python, so the pairs are found by running it once on a sample
batch with hooks: a BatchNorm2d whose input is the very tensor a Conv2d produced is folded
into that conv, and a ReLU/ReLU6 module whose input is the (folded) conv's output is recorded
as the conv's activation, for the quantized kernel to fuse.

Folding (Jacob et al., 2018, section 3.2), per output channel c::

    W'[c] = W[c] * gamma[c] / sqrt(var[c] + eps)
    b'[c] = (b[c] - mean[c]) * gamma[c] / sqrt(var[c] + eps) + beta[c]
"""
from __future__ import annotations

import torch
from torch import nn

from .nn.swap import set_submodule

ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6"}


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d computing ``bn(conv(x))`` (eval-mode BN) exactly, in float."""
    if bn.num_features != conv.out_channels:
        raise ValueError(f"cannot fold a BatchNorm2d of {bn.num_features} features into a conv "
                         f"of {conv.out_channels} output channels")
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics")
    with torch.no_grad():
        w, var, mean = conv.weight.double(), bn.running_var.double(), bn.running_mean.double()
        gamma = bn.weight.double() if bn.affine else torch.ones_like(var)
        beta = bn.bias.double() if bn.affine else torch.zeros_like(var)
        factor = gamma / torch.sqrt(var + bn.eps)                              # (C_out,)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                           conv.padding, conv.dilation, conv.groups, bias=True,
                           padding_mode=conv.padding_mode)
        folded.weight.copy_((w * factor.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
        folded.bias.copy_(((bias - mean) * factor + beta).to(conv.weight.dtype))
    return folded.to(conv.weight.device).eval()


@torch.no_grad()
def trace_pairs(model: nn.Module, run) -> tuple[dict[str, str], dict[str, str]]:
    """Run ``run(model)`` once with hooks; return ({conv: bn}, {conv or bn: activation kind}).

    Only modules called exactly once are paired (a shared module cannot be folded safely).
    """
    calls: dict[str, list[tuple[int, int]]] = {}
    alive = []  # keep every traced tensor alive so that ids stay unique

    def hook(name):
        def record(module, args, output):
            if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                alive.extend((args[0], output))
                calls.setdefault(name, []).append((id(args[0]), id(output)))
        return record

    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, *ACTIVATIONS)
    modules = dict(model.named_modules())
    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()
               if isinstance(m, kinds)]
    try:
        run(model)
    finally:
        for h in handles:
            h.remove()
    by_input = {}
    for name, seen in calls.items():
        for x_id, _ in seen:
            by_input.setdefault(x_id, []).append(name)

    def consumer(name, kind):
        if len(calls.get(name, ())) != 1:
            return None
        users = [u for u in by_input.get(calls[name][0][1], ()) if isinstance(modules[u], kind)]
        return users[0] if len(users) == 1 else None

    conv_bn, activation = {}, {}
    for name, module in modules.items():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        bn = consumer(name, nn.BatchNorm2d) if isinstance(module, nn.Conv2d) else None
        if bn is not None and len(calls[bn]) == 1:
            conv_bn[name] = bn
        act = consumer(bn or name, tuple(ACTIVATIONS))
        if act is not None:
            activation[name] = ACTIVATIONS[type(modules[act])]
    return conv_bn, activation


def fold_model(model: nn.Module, conv_bn: dict[str, str]) -> list[str]:
    """Fold each (conv, bn) pair in place: the conv becomes the folded conv, the bn Identity."""
    folded = []
    for conv_name, bn_name in conv_bn.items():
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        set_submodule(model, conv_name, fold_conv_bn(conv, bn))
        set_submodule(model, bn_name, nn.Identity())
        folded.append(conv_name)
    return folded
