"""How much each layer's quantization costs: measured one layer at a time, and cheap proxies.

    sens = lowbit.sensitivity(model, calib, ["w2g64", "w3g64", "w4g64", "w8"], method="gptq",
                              measure=True)
    sens.table("measured")        # [layers, candidates]: mean KL(float || model) per token
    sens.spearman                 # how well each proxy ranks the layers against the measurement

The quality metric is the mean KL divergence of the model's output distribution from the float
model's (next-token distributions for a causal LM, class distributions for a classifier) on
held-out samples: the LAST ``holdout`` rows of ``data``, which no statistic is taken from.

Measured sensitivity: the model with ONLY that layer quantized to that candidate, run on the
held-out rows. For a decoder LM only the blocks from the layer's own onward run (the float
blocks before it replay their stored outputs), so a layer in block b costs (L - b) / L of a
forward pass.

Proxies, all from one pass over the LAST ``proxy_samples`` calibration rows (GPTQ's Hessians come
from the first ``hessian_samples``: a GPTQ weight looks better on the rows it was fitted to) (dW = the
quantized weight minus the float one, dY = the layer's output change x dW^T):

- ``kl_estimate`` (AutoQuantize-style, NVIDIA ModelOpt): 1/2 sum g^2 dY^2 per token, where g is
  the gradient of log p(y) at the layer's output with y SAMPLED from the float model; E[g g^T]
  is then the Fisher information of the output distribution, and 1/2 dY^T F dY the second-order
  Taylor term of KL(float || quantized) (the first-order term is zero at the float model). The
  diagonal of F is kept. Same units as the measured KL.
- ``fisher``: 1/2 sum F_w dW^2 with F_w the squared weight gradients of the same sampled loss
  (one sample per row): the Hessian-diagonal estimate on the weights (HAWQ-style, Fisher form).
- ``act_error``: sum dY^2 per token (the activation-weighted error GPTQ minimises).
- ``weight_error``: ||dW||^2 / ||W||^2 (1 / SQNR).

With ``method="gptq"`` each candidate weight is GPTQ's on the layer's own input Hessian from
the float model (``hessian_samples`` rows); the recipe then quantizes sequentially.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._cache import cache_dir
from ..blocks import LINEAR_TYPES, find_blocks, linear_weight
from ..calibration import layer_patches, watch_inputs
from ..eval._util import output_logits
from ..eval.metrics import token_kl
from ..nn.swap import matches
from ..qtensor import QTensor
from .candidates import DEFAULT_CANDIDATES, Candidate, layer_bits, parse_candidates

log = logging.getLogger("lowbit")

PROXIES = ("kl_estimate", "fisher", "act_error", "weight_error")
VERSION = 1   # bump when the numbers a cached file holds would change


@dataclass
class Sensitivity:
    """Per layer and candidate: the measured KL (if measured) and the proxies.

    ``measured[i][j]`` / ``proxies[p][i][j]``: layer ``layers[i]`` in ``candidates[j]``;
    ``bits[i][j]`` its storage bits per weight (inf where the format cannot hold it);
    ``spearman[p]``: rank correlation of proxy ``p`` with the measurement across layers, per
    candidate, with their ``mean`` and ``pooled`` (all layer x candidate pairs at once).
    """

    model: str
    method: str
    candidates: list[str]
    layers: list[str]
    numel: list[int]
    bits: list[list[float]]
    kernels: list[list[str]]
    proxies: dict[str, list[list[float]]]
    measured: list[list[float]] | None = None
    spearman: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    key: str = ""
    quantized: dict | None = field(default=None, repr=False, compare=False)
    hessians: dict | None = field(default=None, repr=False, compare=False)

    def table(self, source: str = "auto") -> np.ndarray:
        """``[layers, candidates]`` array of ``source``: "measured", a proxy name, or "auto"
        (measured when there is a measurement, else ``kl_estimate``)."""
        if source == "auto":
            source = "measured" if self.measured is not None else "kl_estimate"
        if source == "measured":
            if self.measured is None:
                raise ValueError("this Sensitivity was not measured (measure=False); pick a proxy "
                                 f"{PROXIES} or run lowbit.sensitivity(..., measure=True)")
            return np.asarray(self.measured, dtype=float)
        if source not in self.proxies:
            raise ValueError(f"sensitivity source must be 'measured', 'auto' or one of {PROXIES}, "
                             f"got {source!r}")
        return np.asarray(self.proxies[source], dtype=float)

    @property
    def best_proxy(self) -> str:
        """The proxy whose layer ranking agrees best with the measurement (mean Spearman)."""
        if not self.spearman:
            return "kl_estimate"
        return max(self.spearman, key=lambda p: self.spearman[p].get("mean", -1.0))

    def rows(self, source: str = "auto") -> list[dict]:
        """``[{layer, strategy, quality_loss}]`` for the compare report's sensitivity plot."""
        t = self.table(source)
        return [{"layer": layer, "strategy": c, "quality_loss": float(t[i, j]),
                 "metric": "KL(float || model), nats/token" if source in ("auto", "measured", "kl_estimate")
                 else source}
                for i, layer in enumerate(self.layers) for j, c in enumerate(self.candidates)
                if np.isfinite(t[i, j])]

    def as_dict(self) -> dict:
        """JSON-safe: a pair the format cannot hold (inf) is None."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("quantized", "hessians")}
        out["bits"] = _json_table(self.bits)
        out["proxies"] = {p: _json_table(t) for p, t in self.proxies.items()}
        out["measured"] = None if self.measured is None else _json_table(self.measured)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Sensitivity":
        d = dict(d)
        d["bits"] = _float_table(d["bits"])
        d["proxies"] = {p: _float_table(t) for p, t in d["proxies"].items()}
        d["measured"] = None if d.get("measured") is None else _float_table(d["measured"])
        return cls(**d)

    def summary(self) -> str:
        lines = [f"sensitivity of {len(self.layers)} layers x {len(self.candidates)} candidates "
                 f"({self.method}) of {self.model}; seconds {self.seconds}"]
        if self.spearman:
            lines += ["", "| proxy | " + " | ".join(self.candidates) + " | mean | pooled |",
                      "|---|" + "---|" * (len(self.candidates) + 2)]
            for p, rho in self.spearman.items():
                cells = [f"{rho[c]:.3f}" if c in rho else "" for c in (*self.candidates, "mean", "pooled")]
                lines.append(f"| {p} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


# --- what to look at ----------------------------------------------------------------------
def is_lm(data) -> bool:
    return isinstance(data, torch.Tensor) and not data.is_floating_point() and data.dim() == 2


def select_layers(model: nn.Module, include=("*",), exclude=(), *, lm: bool,
                  head: bool = False) -> dict[str, nn.Module]:
    """The layers mixed precision chooses for: a decoder LM's block linears (with ``head``
    also the linears after the blocks: the output head, and with it a tied input embedding),
    or every Linear and Conv2d of another model, filtered by ``include``/``exclude``."""
    if lm:
        prefix, _ = find_blocks(model)
        pool = {n: m for n, m in model.named_modules()
                if isinstance(m, LINEAR_TYPES) and (head or n.startswith(prefix + "."))}
    else:
        pool = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    layers = {n: m for n, m in pool.items() if matches(n, include) and not matches(n, exclude)}
    if not layers:
        raise ValueError(f"no layer of {type(model).__name__} matches include={include} "
                         f"exclude={exclude}; mixed precision needs at least one")
    return layers


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out, in]`` float32 (a convolution's kernel flattened per output)."""
    if isinstance(module, nn.Conv2d):
        return module.weight.detach().float().reshape(module.weight.shape[0], -1)
    return linear_weight(module)


def _forward(model: nn.Module, batch: torch.Tensor, lm: bool) -> torch.Tensor:
    """Log-probabilities: LM ``[B, T-1, V]`` (next-token positions), classifier ``[B, C]``."""
    out = model(input_ids=batch, use_cache=False) if lm else model(batch)
    logits = output_logits(out).float()
    return torch.log_softmax(logits[:, :-1] if lm else logits, dim=-1)


def _delta_out(module: nn.Module, x: torch.Tensor, dW: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, dW.reshape(module.weight.shape), None)
    return F.linear(x, dW)


# --- the steps ------------------------------------------------------------------------------
@torch.no_grad()
def input_hessians(model: nn.Module, layers: dict[str, nn.Module], data: torch.Tensor,
                   batch_size: int, lm: bool) -> dict[str, torch.Tensor]:
    """``E[x x^T]`` [K, K] of each linear's input under the float model (one pass); for a
    convolution ``[groups, K, K]`` over its unfolded kernel patches (:func:`layer_patches`)."""
    sums: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    seen: dict[tuple, tuple] = {}   # q/k/v share one input: one x^T x per batch (x held, so
    #                                   its address cannot be reused by another layer's input)

    def update(name: str, x: torch.Tensor) -> None:
        key = (x.data_ptr(), tuple(x.shape))
        if key not in seen:
            xf = x.float()
            seen[key] = (x, xf.t() @ xf)
        xtx = seen[key][1]
        sums[name] = xtx.clone() if name not in sums else sums[name].add_(xtx)
        count[name] = count.get(name, 0) + x.shape[0]

    def update_conv(name: str, x: torch.Tensor) -> None:
        X = layer_patches(layers[name], x.float())          # a conv: [groups, patches, k]
        xtx = torch.einsum("gti,gtj->gij", X, X)
        sums[name] = xtx if name not in sums else sums[name].add_(xtx)
        count[name] = count.get(name, 0) + X.shape[1]

    linears = {n: m for n, m in layers.items() if not isinstance(m, nn.Conv2d)}
    convs = {n: m for n, m in layers.items() if isinstance(m, nn.Conv2d)}
    with watch_inputs(linears, update), watch_inputs(convs, update_conv, flatten=False):
        for start in tqdm(range(0, data.shape[0], batch_size), desc="sensitivity: hessians", disable=None):
            seen.clear()
            _forward(model, data[start:start + batch_size], lm)
    seen.clear()
    return {n: sums[n] / count[n] for n in sums}


def quantize_all(layers: dict[str, nn.Module], cands: tuple[Candidate, ...],
                 hessians: dict[str, torch.Tensor] | None) -> dict[tuple[str, str], QTensor | None]:
    """Every layer in every candidate format that fits it (GPTQ on the float model's Hessian)."""
    out = {}
    for name, module in tqdm(layers.items(), desc="sensitivity: quantize", unit="layer", disable=None):
        W = weight_matrix(module)
        for c in cands:
            if c.fits(module):
                continue
            H = hessians.get(name) if hessians else None
            if c.algorithm == "gptq" and H is None:
                raise ValueError(f"{name}: GPTQ needs a linear layer's input Hessian; "
                                 f"{type(module).__name__} layers take method 'rtn' or 'hqq'")
            out[name, c.spec] = c.quantize(name, W, H)
    return out


def _deltas(layers, cands, quantized) -> dict[str, list[torch.Tensor | None]]:
    deltas = {}
    for name, module in layers.items():
        W = weight_matrix(module)
        deltas[name] = [None if (name, c.spec) not in quantized else
                        (torch.zeros_like(W) if quantized[name, c.spec] is None
                         else quantized[name, c.spec].dequantize() - W) for c in cands]
    return deltas


def proxy_pass(model: nn.Module, layers: dict[str, nn.Module], deltas: dict, data: torch.Tensor,
               lm: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """kl_estimate, fisher and act_error of every (layer, candidate), from one forward and
    backward per row of ``data`` with targets sampled from the model itself."""
    C = len(next(iter(deltas.values())))
    kl_est = {n: np.zeros(C) for n in layers}
    act = {n: np.zeros(C) for n in layers}
    fisher_w = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    positions = 0
    gen = torch.Generator().manual_seed(seed)

    def on_forward(name):
        def hook(module, args, out):
            x = args[0].detach()

            def on_grad(g):
                g2 = g.detach().float().square()
                for j, dW in enumerate(deltas[name]):
                    if dW is None:
                        continue
                    dY2 = _delta_out(module, x.float(), dW).square()
                    kl_est[name][j] += 0.5 * float((g2 * dY2).sum())
                    act[name][j] += float(dY2.sum())
            out.register_hook(on_grad)
        return hook

    grads = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for m in layers.values():
        m.weight.requires_grad_(True)
    handles = [m.register_forward_hook(on_forward(n)) for n, m in layers.items()]
    try:
        for i in tqdm(range(data.shape[0]), desc="sensitivity: proxies", unit="sample", disable=None):
            logp = _forward(model, data[i:i + 1], lm)
            flat = logp.reshape(-1, logp.shape[-1])
            target = torch.multinomial(flat.detach().exp(), 1, generator=gen)
            flat.gather(-1, target).sum().backward()
            positions += flat.shape[0]
            for n, m in layers.items():
                fisher_w[n] += m.weight.grad.square()
                m.weight.grad = None
    finally:
        for h in handles:
            h.remove()
        for p, flag in grads.items():
            p.requires_grad_(flag)
    fisher = {}
    for n, m in layers.items():
        Fw = fisher_w[n].reshape(m.weight.shape[0], -1) / data.shape[0]
        fisher[n] = np.array([0.5 * float((Fw * d.square()).sum()) if d is not None else np.nan
                              for d in deltas[n]])
    for n in layers:
        kl_est[n] /= positions
        act[n] /= positions
        for j, d in enumerate(deltas[n]):
            if d is None:
                kl_est[n][j] = act[n][j] = np.nan
    return {"kl_estimate": np.stack([kl_est[n] for n in layers]),
            "fisher": np.stack([fisher[n] for n in layers]),
            "act_error": np.stack([act[n] for n in layers])}


class HeldOut:
    """The held-out rows, the float model's log-probabilities on them, and (for a decoder LM)
    each block's float output, so that one layer's effect can be measured by running only the
    blocks from its own onward."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, data: torch.Tensor, lm: bool) -> None:
        self.model, self.data, self.lm = model, data, lm
        self.prefix, self.blocks, self.outputs = None, None, []
        hooks = []
        if lm:
            self.prefix, self.blocks = find_blocks(model)
            self.outputs = [None] * len(self.blocks)

            def keep(i):
                def hook(module, args, out):
                    self.outputs[i] = out
                return hook
            hooks = [b.register_forward_hook(keep(i)) for i, b in enumerate(self.blocks)]
        try:
            self.reference = _forward(model, data, lm)
        finally:
            for h in hooks:
                h.remove()

    def block_of(self, name: str) -> int:
        """The block to start from for layer ``name`` (0 = a full forward, outside the blocks)."""
        return (held_block(self.model, name) or 0) if self.lm else 0

    @torch.no_grad()
    def kl(self, start_block: int = 0) -> float:
        """Mean KL(float || model as it is now) on the held-out rows, replaying the float
        outputs of the blocks before ``start_block``."""
        if self.lm and any(o is None for o in self.outputs[:start_block]):
            start_block = 0
        stubs = []
        for i in range(start_block):
            block, out = self.blocks[i], self.outputs[i]
            block.forward = (lambda o: (lambda *a, **k: o))(out)
            stubs.append(block)
        try:
            logp = _forward(self.model, self.data, self.lm)
        finally:
            for block in stubs:
                del block.forward
        return float(token_kl(self.reference, logp).double().mean())


@torch.no_grad()
def measure_each(layers: dict[str, nn.Module], cands, quantized, held: HeldOut) -> np.ndarray:
    """KL of the model with ONLY one layer in one candidate format, for every pair."""
    table = np.full((len(layers), len(cands)), np.nan)
    total = sum((n, c.spec) in quantized for n in layers for c in cands)
    with tqdm(total=total, desc="sensitivity: measure", unit="trial", disable=None) as bar:
        for i, (name, module) in enumerate(layers.items()):
            original = module.weight.data
            for j, c in enumerate(cands):
                if (name, c.spec) not in quantized:
                    continue
                q = quantized[name, c.spec]
                if q is None:
                    table[i, j] = 0.0
                else:
                    module.weight.data = q.dequantize().reshape(original.shape).to(original.dtype)
                    try:
                        table[i, j] = held.kl(held.block_of(name))
                    finally:
                        module.weight.data = original
                bar.update()
    return table


def rank_agreement(proxies: dict[str, np.ndarray], measured: np.ndarray,
                   cands: list[str]) -> dict[str, dict[str, float]]:
    """Spearman rank correlation of each proxy with the measurement, across layers, per
    candidate (and their mean), and pooled over all (layer, candidate) pairs."""
    from scipy.stats import spearmanr

    out = {}
    for p, table in proxies.items():
        rho = {}
        for j, c in enumerate(cands):
            ok = np.isfinite(table[:, j]) & np.isfinite(measured[:, j])
            if ok.sum() >= 3 and np.ptp(measured[ok, j]) > 0 and np.ptp(table[ok, j]) > 0:
                rho[c] = float(spearmanr(table[ok, j], measured[ok, j])[0])
        if rho:
            rho["mean"] = float(np.mean(list(rho.values())))
        ok = np.isfinite(table) & np.isfinite(measured)
        rho["pooled"] = float(spearmanr(table[ok], measured[ok])[0])
        out[p] = rho
    return out


# --- the whole thing ------------------------------------------------------------------------
def _fingerprint(model: nn.Module, data: torch.Tensor, settings: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name, t in list(model.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(data.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def held_block(model: nn.Module, name: str) -> int | None:
    """The decoder block index of layer ``name``, or None outside the blocks."""
    prefix, _ = find_blocks(model)
    if not name.startswith(prefix + "."):
        return None
    return int(name[len(prefix) + 1:].split(".")[0])


def split(data: torch.Tensor, holdout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration rows, held-out rows): the last ``holdout`` rows are held out."""
    if not 0 < holdout < data.shape[0]:
        raise ValueError(f"mixed precision holds out the last {holdout} of the {data.shape[0]} data "
                         f"rows to measure quality on; pass more rows (at least {holdout + 1}) or a "
                         f"smaller holdout")
    return data[:-holdout], data[-holdout:]


def sensitivity(model: nn.Module, data: torch.Tensor, candidates=DEFAULT_CANDIDATES, *,
                method: str = "gptq", measure: bool = False, include=("*",), exclude=(), head: bool = False,
                holdout: int | None = None, proxy_samples: int = 8, hessian_samples: int = 32,
                batch_size: int = 4, cache: bool = True, keep_quantized: bool = False,
                model_name: str = "") -> Sensitivity:
    """Per-layer sensitivity of ``model`` to each candidate format (see the module docstring).

    Args:
        data: a decoder LM's token ids ``[n, seq_len]`` or a classifier's inputs ``[n, ...]``;
            the last ``holdout`` rows (default 2 for an LM, n // 4 otherwise) are held out.
        candidates: formats (``"w2g64", "w4g64", "w8", "nf4", "fp32"``) or a comma string.
        method: how a candidate weight is made: "rtn", "hqq" or "gptq".
        head: also choose for the linears after the decoder blocks (the output head; a tied input
            embedding shares its format, so its measured cost includes both uses). They are
            rounded (RTN) whatever ``method`` says, as GPTQ walks only the blocks.
        measure: also measure every (layer, candidate) pair one layer at a time; the Spearman
            agreement of each proxy with it is then filled in.
        cache: reuse / store the result under the cache folder, keyed by the model's weights,
            the data and every setting.
        keep_quantized: keep the quantized weights on ``.quantized`` and GPTQ's input Hessians
            on ``.hessians`` (never cached: with a cached result only they are recomputed).
    """
    if isinstance(data, (list, tuple)) and data and all(isinstance(b, torch.Tensor) for b in data):
        data = torch.cat(list(data))             # batches of inputs, as a CNN's loader gives them
    lm = is_lm(data)
    if not isinstance(data, torch.Tensor) or data.shape[0] < 2:
        raise TypeError(f"sensitivity data must be a tensor of at least 2 rows (token ids [n, seq_len] "
                        f"for an LM, inputs [n, ...] for a classifier), got {data!r:.80}")
    cands = parse_candidates(candidates, method)
    holdout = holdout or (2 if lm else max(1, data.shape[0] // 4))
    calib, held_rows = split(data, holdout)
    layers = select_layers(model, include, exclude, lm=lm, head=head)
    settings = {"v": VERSION, "candidates": [c.spec for c in cands], "method": method,
                "layers": list(layers), "holdout": holdout,
                "proxy_samples": proxy_samples, "hessian_samples": hessian_samples}
    outside = [n for n in layers if lm and held_block(model, n) is None]
    if outside:   # quantized by rounding, as the recipe quantizes them (GPTQ walks the blocks)
        settings["outside_blocks"] = "rtn"
    key = _fingerprint(model, data, settings) if cache or keep_quantized else ""
    folder = cache_dir("sensitivity") if cache else None
    cached = None
    for name in ([f"{key}-measured.json"] + ([] if measure else [f"{key}.json"])) if cache else []:
        if (folder / name).exists():           # a measured result also serves a proxy-only request
            log.info("lowbit: sensitivity from cache %s", folder / name)
            cached = Sensitivity.from_dict(json.loads((folder / name).read_text()))
            break
    if cached is not None and not keep_quantized:
        return cached

    # GPTQ fits its Hessian's rows: the proxies are taken on other rows where there are enough
    proxy_rows = calib[-proxy_samples:]
    if hessian_samples + proxy_samples > calib.shape[0] and any(c.algorithm == "gptq" for c in cands):
        log.warning("lowbit: sensitivity: %d calibration rows are fewer than hessian_samples %d + "
                    "proxy_samples %d: GPTQ's estimates are then taken on rows it was fitted to, and "
                    "come out optimistic", calib.shape[0], hessian_samples, proxy_samples)
    was_training = model.training
    model.eval()
    seconds = {}
    try:
        t = time.perf_counter()
        hessians = (input_hessians(model, layers, calib[:hessian_samples], batch_size, lm)
                    if any(c.algorithm == "gptq" for c in cands) else None)
        quantized = quantize_all({n: m for n, m in layers.items() if n not in outside}, cands, hessians)
        if outside:
            rounded = parse_candidates([c.spec for c in cands], "rtn")
            quantized.update(quantize_all({n: layers[n] for n in outside}, rounded, None))
        seconds["quantize"] = time.perf_counter() - t
        if cached is not None:                 # only the weights were missing
            cached.quantized, cached.hessians = quantized, hessians
            return cached
        if not keep_quantized:
            hessians = None
        t = time.perf_counter()
        deltas = _deltas(layers, cands, quantized)
        proxies = proxy_pass(model, layers, deltas, proxy_rows, lm)
        proxies["weight_error"] = np.array(
            [[float(d.square().sum() / weight_matrix(m).square().sum()) if d is not None else np.nan
              for d in deltas[n]] for n, m in layers.items()])
        del deltas
        seconds["proxies"] = time.perf_counter() - t
        measured = None
        if measure:
            t = time.perf_counter()
            held = HeldOut(model, held_rows, lm)
            measured = measure_each(layers, cands, quantized, held)
            seconds["measure"] = time.perf_counter() - t
    finally:
        model.train(was_training)

    spearman = rank_agreement(proxies, measured, [c.spec for c in cands]) if measured is not None else {}
    bits = [layer_bits(cands, m) for m in layers.values()]
    kernels = [[c.kernel(n, m) if (n, c.spec) in quantized else "" for c in cands] for n, m in layers.items()]
    per_token = held_rows.shape[1] - 1 if lm else 1
    sens = Sensitivity(
        model=model_name or type(model).__name__, method=method, candidates=[c.spec for c in cands],
        layers=list(layers), numel=[m.weight.numel() for m in layers.values()], bits=bits,
        kernels=kernels, proxies={p: _clean(v) for p, v in proxies.items()},
        measured=None if measured is None else _clean(measured), spearman=spearman,
        seconds={k: round(v, 1) for k, v in seconds.items()},
        samples={"hessian": min(hessian_samples, calib.shape[0]), "proxy": proxy_rows.shape[0],
                 "held_out": holdout, "held_out_positions": holdout * per_token},
        key=key)
    if cache:
        path = folder / (f"{key}-measured.json" if measure else f"{key}.json")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sens.as_dict()))
        tmp.replace(path)
    if keep_quantized:
        sens.quantized, sens.hessians = quantized, hessians
    log.info("lowbit: %s", sens.summary())
    return sens


def _clean(table: np.ndarray) -> list[list[float]]:
    """Lists of floats; a pair the format cannot hold (NaN) becomes inf."""
    return [[float(v) if np.isfinite(v) else math.inf for v in row] for row in np.asarray(table)]


def _json_table(table) -> list[list[float | None]]:
    return [[v if math.isfinite(v) else None for v in row] for row in table]


def _float_table(table) -> list[list[float]]:
    return [[math.inf if v is None else v for v in row] for row in table]
