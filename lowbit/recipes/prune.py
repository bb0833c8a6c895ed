"""Prune: remove weights (magnitude, Wanda, SparseGPT; a fraction, an N:M pattern, or whole MLP
channels), optionally quantizing what is left in the same SparseGPT sweep.

    lowbit.quantize(model, Prune(method="sparsegpt", sparsity=0.5), data=calib)           # float, 50% zeros
    lowbit.quantize(model, Prune(method="sparsegpt", sparsity=0.5, num_bits=4), data=calib) # joint, packed
    lowbit.quantize(model, Sequence(Prune(method="wanda", pattern="2:4"),
                                    WeightOnly(num_bits=4, group_size=64, method="gptq")), data=calib)
    lowbit.quantize(model, Prune(structured="mlp", sparsity=0.25, recover_minutes=15), data=calib)

Unstructured pruning alone leaves ordinary float layers holding exact zeros: it saves nothing
until the weights are quantized. A quantizing step after it (WeightOnly, or the joint mode)
stores the kept values packed plus a bitmask (:class:`~lowbit.qtensor.SparseQTensor`), and
GPTQ keeps the pruned entries at zero while compensating them. Structured pruning removes MLP
hidden channels outright: the result is an ordinary smaller dense model (config updated).

On a decoder LM the calibrated methods walk the blocks in order (:class:`BlockRunner`), so each
block is pruned on the inputs of the already-pruned blocks before it, as in the SparseGPT and
Wanda papers; linears outside the blocks (the output head) are not pruned. On other models
(CNNs) Wanda reads each layer's inputs in one pass; for a convolution the input norm is taken
per input channel (shared by the kernel's positions), an approximation of Wanda's per-column
norm of the unfolded input.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import nn

from .._memory import release_freed_memory
from ..algorithms.gptq import sparsegpt
from ..algorithms.prune import (channel_importance, check_pattern_fits, check_sparsity, keep_by_score,
                                magnitude_keep, parse_pattern, wanda_keep)
from ..blocks import LINEAR_TYPES, find_blocks, linear_weight, set_linear_weight
from ..calibration import BlockRunner
from ..formats import QFormat, int_format, sparse_bits_per_weight
from ..nn import SparseQLinear
from ..nn.sparse import KERNEL as SPARSE_KERNEL
from ..nn.swap import LayerReport, QuantReport, matches, set_submodule
from ..qtensor import SparseQTensor
from .base import LayerPlan, Plan, Recipe, float_bytes, patterns
from .registry import prefixed_int, register

log = logging.getLogger("lowbit")

METHODS = ("magnitude", "wanda", "sparsegpt")
STRUCTURED = {"mlp": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
              "heads": ("self_attn.q_proj", "self_attn.o_proj")}
OUTSIDE = "outside the decoder blocks: not pruned (the output head and embeddings stay dense)"


@register("sparsegpt", method="sparsegpt")
@register("wanda", method="wanda")
@register("magnitude", method="magnitude")
@dataclass(frozen=True)
class Prune(Recipe):
    """Prune weights; with ``num_bits``, SparseGPT quantizes the kept ones in the same sweep.

    Args:
        method: "magnitude" (smallest |w| of each layer, no data), "wanda" (|w| x input norm per
            output row, needs data) or "sparsegpt" (OBS with weight updates, needs data).
        sparsity: fraction of weights removed, in [0, 1) (unstructured), or of MLP hidden
            channels removed (``structured="mlp"``).
        pattern: "N:M" keeps N of every M consecutive inputs per row (e.g. "2:4"); replaces
            ``sparsity``.
        structured: "mlp" removes whole MLP hidden channels (gate/up rows, down columns) by
            importance ``||W_down[:, c]||^2 E[x_c^2]``; "heads" removes whole query heads (q_proj
            rows, o_proj columns), the same number from every key/value group, by the same score
            summed over the head's o_proj inputs (magnitude: weight norms only). Either leaves a
            smaller dense model (its config updated).
        num_bits, group_size, symmetric: SparseGPT's joint mode: quantize the kept values while
            pruning (asymmetric groups with bf16 scales by default); stored sparse + packed.
        damp, lazy_batch: SparseGPT's dampening and block size (the mask is chosen per block).
        true_sequential: take each linear group's input statistics after the groups before it
            in the block are pruned (default); False takes all from the block's unpruned pass
            (as llm-compressor does).
        calib_batch_size: calibration sequences per forward pass.
        recover_minutes: after structured pruning, train the smaller model this long on the KL
            to the unpruned model over ``data`` (distillation, :func:`train_on_teacher`).
        recover_steps: or this many steps (whichever ends first when both are given).
        recover_lr, recover_batch_size: that training's AdamW rate and windows per step.
        include, exclude: fnmatch patterns on layer names.
    """

    method: str = "sparsegpt"
    sparsity: float = 0.5
    pattern: str | None = None
    structured: str | None = None
    num_bits: int | None = None
    group_size: int | None = 64
    symmetric: bool = False
    damp: float = 0.01
    lazy_batch: int = 128
    true_sequential: bool = True
    calib_batch_size: int = 8
    recover_minutes: float = 0.0
    recover_steps: int | None = None
    recover_lr: float = 5e-5
    recover_batch_size: int = 4
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Prune.method must be one of {METHODS}, got {self.method!r}")
        check_sparsity(self.sparsity)
        parse_pattern(self.pattern)
        if self.structured not in (None, "mlp", "heads"):
            raise ValueError(f"Prune.structured must be None, 'mlp' (whole MLP hidden channels) or "
                             f"'heads' (whole query heads), got {self.structured!r}")
        if self.structured and self.pattern:
            raise ValueError(f"Prune: structured={self.structured!r} removes whole channels or heads; "
                             "an N:M pattern applies to unstructured pruning only")
        if self.num_bits is not None:
            if self.method != "sparsegpt" or self.structured:
                raise ValueError(f"Prune(num_bits=...) is SparseGPT's joint prune-and-quantize sweep "
                                 f"(unstructured); for {self.method} chain a quantizer instead: "
                                 f"Sequence(Prune(method={self.method!r}, ...), WeightOnly(num_bits=...))")
            if not 2 <= self.num_bits <= 8:
                raise ValueError(f"Prune.num_bits must be 2..8, got {self.num_bits}")
            self.weight_format  # noqa: B018  (validates the group size)
        if (self.recover_minutes < 0 or (self.recover_steps is not None and self.recover_steps < 1)
                or (self.recovers and not self.structured)):
            raise ValueError("Prune.recover_minutes (>= 0) / recover_steps (>= 1) are the recovery "
                             f"training of structured pruning; got {self.recover_minutes!r} / "
                             f"{self.recover_steps!r} with structured={self.structured!r}")
        if self.lazy_batch < 1 or self.calib_batch_size < 1 or not 0 <= self.damp < 1:
            raise ValueError("Prune: lazy_batch and calib_batch_size must be positive, damp in [0, 1)")
        patterns(self, "include", "exclude")

    # --- what it is ----------------------------------------------------------------------
    @property
    def recovers(self) -> bool:
        return bool(self.recover_minutes or self.recover_steps)

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self.method != "magnitude" or self.recovers

    @property
    def layer_types(self) -> tuple[type, ...]:  # type: ignore[override]
        return LINEAR_TYPES if self.method == "sparsegpt" or self.structured else LINEAR_TYPES + (nn.Conv2d,)

    @property
    def weight_format(self) -> QFormat | None:
        if self.num_bits is None:
            return None
        sym = self.symmetric
        fmt = int_format(self.num_bits, signed=sym, symmetric=sym, group_size=self.group_size)
        return fmt.replace(scale_dtype="bfloat16") if self.group_size else fmt

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    def amount(self) -> str:
        if self.structured:
            return f"{self.sparsity:.0%} of {'attention heads' if self.structured == 'heads' else 'MLP channels'}"
        return f"{self.pattern}" if self.pattern else f"{self.sparsity:.0%}"

    def describe(self) -> str:
        joint = f" + {self.weight_format.label()} (joint)" if self.num_bits else ""
        budget = " or ".join(b for b in (f"{self.recover_minutes:g} min" if self.recover_minutes else "",
                                         f"{self.recover_steps} steps" if self.recover_steps else "") if b)
        recover = f", {budget} recovery" if budget else ""
        return f"Prune {self.method} {self.amount()}{joint}{recover}"

    @staticmethod
    def spec_option(token: str) -> dict | None:
        if token.endswith("%") and token[:-1].replace(".", "", 1).isdigit():
            return {"sparsity": float(token[:-1]) / 100}
        if ":" in token and token.replace(":", "").isdigit():
            return {"pattern": token}
        if token in ("mlp", "heads"):
            return {"structured": token}
        if token.startswith("w") and token[1:2].isdigit():
            bits, _, group = token[1:].partition("g")
            return {"num_bits": int(bits), "group_size": int(group) if group else None}
        return prefixed_int(token, "rec", "recover_minutes")

    def spec_tokens(self) -> tuple[list[str], set[str]]:
        tokens = [self.pattern] if self.pattern else [f"{self.sparsity * 100:g}%"]
        if self.structured:
            tokens.append(self.structured)
        done = {"pattern", "sparsity", "structured", "method"}
        if self.num_bits:
            tokens.append(f"w{self.num_bits}" + (f"g{self.group_size}" if self.group_size else ""))
            done |= {"num_bits", "group_size"}
        return tokens, done

    # --- plan ------------------------------------------------------------------------------
    def plan(self, model: nn.Module) -> Plan:
        plan = super().plan(model)
        prefix = _block_prefix(model)
        if prefix is None and self.structured:
            plan.layers = [_replace(p, "error", f"structured={self.structured!r} prunes the blocks of "
                                    "a decoder LM; this model has no repeated blocks lowbit can find")
                           if p.status == "quantize" else p for p in plan.layers]
        elif prefix is not None:
            plan.layers = [_replace(p, "float", OUTSIDE, bytes=p.float_bytes)
                           if p.status == "quantize" and not p.name.startswith(prefix + ".") else p
                           for p in plan.layers]
        return plan

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        W = module.weight
        shape, kind, fp = tuple(W.shape), type(module).__name__, float_bytes(module)
        in_features = W[0].numel()
        try:
            check_pattern_fits(self.nm, in_features, name)
            fmt = self.weight_format
            if fmt is not None and fmt.group_size and in_features % fmt.group_size:
                raise ValueError(f"{name}: group_size {fmt.group_size} does not divide its "
                                 f"{in_features} inputs; choose one that does or exclude the layer")
        except ValueError as err:
            return LayerPlan(name, kind, shape, "error", bytes=fp, float_bytes=fp, reason=str(err))
        kept = self.nm[0] / self.nm[1] if self.nm else 1 - self.sparsity
        if self.structured:
            touched = STRUCTURED[self.structured]
            if not any(name.endswith(t) for t in touched):
                return LayerPlan(name, kind, shape, "float", bytes=fp, float_bytes=fp,
                                 reason=f"not shrunk by structured={self.structured!r} (it shrinks {', '.join(touched)})")
            return LayerPlan(name, kind, shape, "quantize", f"float, {self.amount()} removed", "",
                             round(fp * (1 - self.sparsity)), fp, "an ordinary smaller dense layer")
        if fmt is None:
            return LayerPlan(name, kind, shape, "quantize", f"float, {1 - kept:.0%} zeros", "", fp, fp,
                             "zeros stored dense: a quantizing step after it stores them sparse")
        nbytes = round(sparse_bits_per_weight(fmt, W.numel(), shape[0], kept) * W.numel() / 8)
        return LayerPlan(name, kind, shape, "quantize", f"{fmt.label()}, {1 - kept:.0%} pruned (bitmask)",
                         SPARSE_KERNEL, nbytes, fp)

    # --- apply ---------------------------------------------------------------------------
    def apply(self, model: nn.Module, data) -> QuantReport:
        plan = self.plan(model)
        errors = plan.by_status("error")
        if errors:
            raise ValueError(f"{self.describe()}: {errors[0].reason}")
        chosen = [p.name for p in plan.by_status("quantize")]
        if not chosen:
            log.warning("lowbit: %s pruned no layer (include=%s, exclude=%s)", self.describe(),
                        self.include, self.exclude)
        if self.structured:
            return self._structured(model, data, plan)
        if self.method == "magnitude":
            keeps = {n: magnitude_keep(_weight(model, n), self.sparsity, self.nm) for n in chosen}
            results = {n: (k, None) for n, k in keeps.items()}
        elif _block_prefix(model) is not None:
            results = self._calibrate_blocks(model, data, set(chosen))
        else:
            results = self._calibrate_flat(model, data, chosen)
        missing = [n for n in chosen if n not in results]
        if missing:
            raise ValueError(f"{self.describe()}: {missing[0]} got no calibration inputs (the "
                             f"calibration forward never reaches it), so {self.method} cannot score "
                             f"its weights; exclude it (exclude=[{missing[0]!r}]) or use method='magnitude'")
        return self._finish(model, plan, results)

    def _finish(self, model, plan: Plan, results: dict) -> QuantReport:
        report = QuantReport(self.describe())
        for p in plan.layers:
            if p.name not in results:
                status = "excluded" if p.reason == "excluded by pattern" else "skipped"
                report.layers.append(LayerReport(p.name, p.module_type, status, reason=p.reason))
                continue
            keep, packed = results[p.name]
            module = model.get_submodule(p.name)
            zeros = 1 - float(keep.float().mean())
            if packed is None:
                with torch.no_grad():
                    module.weight.mul_(keep.reshape(module.weight.shape).to(module.weight.dtype))
                report.layers.append(LayerReport(p.name, p.module_type, "pruned", f"float, {zeros:.1%} zeros",
                                                 "", 32.0, "zeros stored dense until quantized"))
                continue
            set_submodule(model, p.name, SparseQLinear(packed, module.bias))
            report.layers.append(LayerReport(p.name, p.module_type, "quantized",
                                             f"{packed.format.label()}, {zeros:.1%} pruned (bitmask)",
                                             SPARSE_KERNEL, round(packed.bits_per_weight, 4)))
        release_freed_memory()
        return report

    @torch.no_grad()
    def _calibrate_blocks(self, model, data, chosen: set[str]) -> dict:
        """Wanda / SparseGPT over the decoder blocks in order: name -> (keep, SparseQTensor|None)."""
        _check_ids(data, self.describe())
        runner = BlockRunner(model, data, batch_size=self.calib_batch_size, desc=self.describe())
        done: dict = {}
        for block in runner:
            groups = [g for g in block.groups if chosen.intersection(g.names)]
            stats = None if self.true_sequential else runner.input_stats(groups)
            for j, group in enumerate(groups):
                st = stats[j] if stats is not None else runner.input_stats([group])[0]
                for name in (n for n in group.names if n in chosen):
                    keep, packed, W = self._prune_one(runner.weight(name), st.H)
                    runner.set_weight(name, W)
                    done[name] = (keep, packed)
        return done

    def _prune_one(self, W: torch.Tensor, H: torch.Tensor):
        """(keep mask, SparseQTensor in joint mode else None, the float weight now in effect)."""
        if self.method == "wanda":
            keep = wanda_keep(W, torch.diag(H), self.sparsity, self.nm)
            return keep, None, W * keep
        r = sparsegpt(W, H, sparsity=self.sparsity, pattern=self.nm, fmt=self.weight_format,
                      damp=self.damp, lazy_batch=self.lazy_batch)
        if r.q is None:
            return r.keep, None, r.W
        packed = SparseQTensor.from_int(r.q.q, r.q.scale, r.q.zero_point, self.weight_format, r.keep)
        return r.keep, packed, packed.dequantize()

    @torch.no_grad()
    def _calibrate_flat(self, model, data, chosen: list[str]) -> dict:
        """Wanda (or SparseGPT on linears) from one pass over ``data`` with forward hooks."""
        from .static import _call, _take

        batches = list(_take(data, None))
        if not batches:
            raise ValueError(f"{self.describe()} needs calibration batches: pass data=[batch, ...]")
        stats: dict[str, torch.Tensor] = {}

        def hook(name):
            def record(module, args):
                x = args[0].detach().float()
                if isinstance(module, nn.Conv2d):   # per input channel, over batch and space
                    v = x.pow(2).sum(dim=(0, 2, 3))
                    stats[name] = stats.get(name, 0) + v
                elif self.method == "wanda":
                    x = x.reshape(-1, x.shape[-1])
                    stats[name] = stats.get(name, 0) + x.pow(2).sum(0)
                else:
                    x = x.reshape(-1, x.shape[-1])
                    stats[name] = stats.get(name, 0) + x.T @ x
            return record

        handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in chosen]
        was_training = model.training
        model.eval()
        try:
            for batch in batches:
                _call(model, batch)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        done = {}
        for name in (n for n in chosen if n in stats):
            module = model.get_submodule(name)
            W = module.weight.detach().float()
            if isinstance(module, nn.Conv2d):
                x_sq = stats[name].repeat_interleave(W[0, 0].numel()) if module.groups == 1 else None
                if x_sq is None:    # depthwise: each output sees one input channel
                    score = W.abs().reshape(W.shape[0], -1) * stats[name].sqrt().reshape(-1, 1)
                    done[name] = (keep_by_score(score, self.sparsity, self.nm).reshape(W.shape), None)
                    continue
                done[name] = (wanda_keep(W.reshape(W.shape[0], -1), x_sq, self.sparsity, self.nm)
                              .reshape(W.shape), None)
            elif self.method == "wanda":
                done[name] = (wanda_keep(W, stats[name], self.sparsity, self.nm), None)
            else:
                keep, packed, W = self._prune_one(linear_weight(module), stats[name])
                set_linear_weight(module, W)
                done[name] = (keep, packed)
        return done

    # --- structured: whole MLP channels or attention heads --------------------------------------------------
    def _structured(self, model, data, plan: Plan) -> QuantReport:
        teacher = None
        if self.recovers:
            _check_ids(data, self.describe())
            teacher = copy.deepcopy(model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        prefix, blocks = find_blocks(model)
        heads = self.structured == "heads"
        part, target, names = (("self_attn", "o_proj", ("q_proj", "o_proj")) if heads else
                               ("mlp", "down_proj", ("up_proj", "down_proj")))
        find = _llama_attention if heads else _llama_mlp
        units = {i: find(block, f"{prefix}.{i}") for i, block in enumerate(blocks)}
        units = {i: u for i, u in units.items() if any(matches(f"{prefix}.{i}.{part}.{k}", self.include)
                                                       and not matches(f"{prefix}.{i}.{part}.{k}", self.exclude)
                                                       for k in names)}
        if self.method == "magnitude":
            scores = {i: (_head_weight_importance(u) if heads else _weight_importance(u)) for i, u in units.items()}
        else:
            scores = self._input_scores(model, data, prefix, units, f"{part}.{target}")
        report = QuantReport(self.describe())
        shrink = self._shrink_heads if heads else self._shrink_mlp
        before = after = 0
        for i, unit in units.items():
            before, after = shrink(unit, scores[i], f"{prefix}.{i}.{part}")
            for attr in ("gate_proj", "up_proj", "down_proj") if not heads else ("q_proj", "o_proj"):
                if hasattr(unit, attr):
                    report.layers.append(LayerReport(f"{prefix}.{i}.{part}.{attr}", "Linear", "pruned",
                                                     f"float, {before} -> {after} {'heads' if heads else 'channels'}",
                                                     "", 32.0, "an ordinary smaller dense layer"))
        config = getattr(model, "config", None)
        if config is not None and units:
            if heads:
                config.head_dim = next(iter(units.values())).head_dim
                config.num_attention_heads = after
            elif hasattr(config, "intermediate_size"):
                config.intermediate_size = after
        if teacher is not None:
            from .distill import _token_windows, train_on_teacher

            losses = train_on_teacher(model, teacher, _token_windows(data), minutes=self.recover_minutes or None,
                                      max_steps=self.recover_steps, batch_size=self.recover_batch_size,
                                      lr=self.recover_lr, desc="recovery distillation")
            del teacher
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            report.details["recovery"] = {"steps": len(losses), "first_loss": losses[0] if losses else None,
                                          "last_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}
        report.details["attention_heads" if heads else "mlp_channels"] = {"before": before, "after": after,
                                                                           "blocks": len(units)}
        release_freed_memory()
        return report

    def _shrink_mlp(self, mlp: nn.Module, score: torch.Tensor, name: str) -> tuple[int, int]:
        width = mlp.down_proj.in_features
        keep_n = width - int(round(width * self.sparsity))
        idx = torch.topk(score, keep_n).indices.sort().values
        for attr in ("gate_proj", "up_proj"):
            if hasattr(mlp, attr):
                setattr(mlp, attr, _take_rows(getattr(mlp, attr), idx))
        mlp.down_proj = _take_cols(mlp.down_proj, idx)
        return width, keep_n

    def _shrink_heads(self, attn: nn.Module, score: torch.Tensor, name: str) -> tuple[int, int]:
        """Remove the same number of query heads from every key/value group (the lowest scores
        within the group), so grouped-query attention keeps its shape."""
        hd, groups = attn.head_dim, attn.num_key_value_groups
        n_heads = attn.q_proj.out_features // hd
        drop = int(round(groups * self.sparsity))
        if not 0 < drop < groups:
            raise ValueError(f"{name}: structured='heads' removes whole query heads from each of its "
                             f"{n_heads // groups} key/value groups of {groups}; sparsity {self.sparsity} "
                             f"removes {drop} per group; choose a sparsity between {1 / groups:.2f} and "
                             f"{(groups - 1) / groups:.2f}")
        per_head = score.reshape(n_heads, hd).sum(1).reshape(-1, groups)          # [kv groups, groups]
        kept = torch.topk(per_head, groups - drop, dim=1).indices.sort(dim=1).values
        heads = (kept + torch.arange(0, n_heads, groups).reshape(-1, 1)).reshape(-1)
        idx = (heads.reshape(-1, 1) * hd + torch.arange(hd)).reshape(-1)
        attn.q_proj = _take_rows(attn.q_proj, idx)
        attn.o_proj = _take_cols(attn.o_proj, idx)
        attn.num_key_value_groups = groups - drop
        return n_heads, len(heads)

    @torch.no_grad()
    def _input_scores(self, model, data, prefix: str, units: dict, target: str) -> dict[int, torch.Tensor]:
        """Importance of every input column of each block's ``target`` linear (an MLP's
        down_proj, an attention's o_proj): ``||W[:, c]||^2 E[x_c^2]``, block by block (the blocks
        before are still unpruned: columns are removed after all are scored)."""
        _check_ids(data, self.describe())
        runner = BlockRunner(model, data, batch_size=self.calib_batch_size, desc=self.describe())
        scores = {}
        for block in runner:
            if block.index not in units:
                continue
            name = f"{prefix}.{block.index}.{target}"
            groups = [g for g in block.groups if name in g.names]
            if not groups:
                raise ValueError(f"{self.describe()}: {name} got no calibration inputs; cannot "
                                 f"score its inputs (use method='magnitude')")
            st = runner.input_stats(groups)[0]
            scores[block.index] = channel_importance(runner.weight(name), torch.diag(st.H))
        return scores


def _replace(p: LayerPlan, status: str, reason: str, **kw) -> LayerPlan:
    return dataclasses.replace(p, status=status, reason=reason, format="" if status != "quantize" else p.format,
                               kernel="" if status != "quantize" else p.kernel, **kw)


def _block_prefix(model: nn.Module) -> str | None:
    try:
        return find_blocks(model)[0]
    except ValueError:
        return None


def _weight(model, name) -> torch.Tensor:
    return model.get_submodule(name).weight.detach().float()


def _check_ids(data, what: str) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.is_floating_point():
        raise ValueError(f"{what} on a decoder LM calibrates on token ids: pass data= a [n, seq_len] "
                         f"LongTensor (lowbit.data.calibration_batches(tokenizer)), got {data!r:.80}")


def _llama_mlp(block: nn.Module, name: str) -> nn.Module:
    mlp = getattr(block, "mlp", None)
    if mlp is None or not all(isinstance(getattr(mlp, a, None), nn.Linear) for a in ("up_proj", "down_proj")):
        raise ValueError(f"structured='mlp' prunes LLaMA-style MLPs (mlp.gate_proj / up_proj / "
                         f"down_proj Linears); {name} has {type(mlp).__name__ if mlp is not None else 'no mlp'}")
    return mlp


def _llama_attention(block: nn.Module, name: str) -> nn.Module:
    attn = getattr(block, "self_attn", None)
    ok = attn is not None and all(isinstance(getattr(attn, a, None), nn.Linear) for a in ("q_proj", "o_proj")) \
        and isinstance(getattr(attn, "head_dim", None), int) and isinstance(getattr(attn, "num_key_value_groups", None), int)
    if not ok:
        raise ValueError(f"structured='heads' prunes LLaMA-style attention (self_attn.q_proj / o_proj "
                         f"with head_dim and num_key_value_groups); {name} has "
                         f"{type(attn).__name__ if attn is not None else 'no self_attn'}")
    return attn


def _head_weight_importance(attn: nn.Module) -> torch.Tensor:
    """Per o_proj input column: ||W_o[:, c]||^2 ||W_q[c, :]||^2 (no data)."""
    return attn.o_proj.weight.detach().float().pow(2).sum(0) * attn.q_proj.weight.detach().float().pow(2).sum(1)


def _weight_importance(mlp: nn.Module) -> torch.Tensor:
    score = mlp.down_proj.weight.detach().float().pow(2).sum(0) * mlp.up_proj.weight.detach().float().pow(2).sum(1)
    return score


def _take_rows(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(idx), bias=linear.bias is not None,
                    dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        new.weight.copy_(linear.weight[idx])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[idx])
    return new


def _take_cols(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), linear.out_features, bias=linear.bias is not None,
                    dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, idx])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new
