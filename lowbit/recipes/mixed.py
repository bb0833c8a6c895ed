"""MixedPrecision: one weight format per layer, chosen under a budget, then measured.

    recipe = MixedPrecision(candidates=("w2g64", "w3g64", "w4g64", "w8"),
                            budget=Budget(bpw=4.0), method="gptq")
    q = lowbit.quantize(model, recipe, data=calib)        # or from_spec("mixed:bpw=4.0")
    q.lowbit_report.details                               # the choice, estimate vs measured

1. Sensitivity (:func:`lowbit.sensitivity`, cached): each layer's cost in each candidate.
2. Solve: the 0/1 program of :mod:`lowbit.mixed.solve` on the additive estimate.
3. Quantize with the chosen format per layer; GPTQ runs block by block as it does uniformly,
   so each layer sees the earlier layers already quantized.
4. Measure the KL from the float model on the held-out rows. When it misses the plan's promise
   (the estimate, or ``max_kl``), refine: measure each block with only its chosen layers
   quantized, scale that block's costs by measured / estimated (the interactions the additive
   estimate misses), re-solve and quantize again, at most ``refine`` times; the best round wins.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..blocks import LINEAR_TYPES, find_blocks
from ..mixed.candidates import DEFAULT_CANDIDATES, METHODS, layer_bits, parse_candidates
from ..mixed.sensitivity import (PROXIES, HeldOut, held_block, is_lm, select_layers, sensitivity, split,
                                 weight_matrix)
from ..mixed.solve import Assignment, Budget, solve
from ..nn import QEmbedding, QuantReport, Skip, swap_modules
from ..nn.swap import LayerReport
from .base import LayerPlan, Plan, Recipe, float_bytes, patterns
from .registry import register
from .weight_only import WeightOnly

log = logging.getLogger("lowbit")

SOURCES = ("measured",) + PROXIES


@register("mixed")
@dataclass(frozen=True)
class MixedPrecision(Recipe):
    """Per-layer weight formats chosen from ``candidates`` under ``budget`` (see module docstring).

    Args:
        candidates: the menu, e.g. ``("w2g64", "w3g64", "w4g64", "w8")``; also ``nf4``, ``fp32``.
        budget: :class:`~lowbit.mixed.Budget` (``bpw=``, ``size_mb=`` or ``max_kl=``) or its text.
            bpw and size count the chosen layers (a decoder LM's block linears by default).
        method: "gptq" (calibrated, sequential), "rtn" or "hqq".
        sensitivity: what the solver minimises: "kl_estimate" (default, one pass), another proxy,
            or "measured" (every layer x candidate measured alone: slow, most faithful).
        refine: rounds of measure -> correct -> re-solve when the measurement misses the promise.
        tolerance: how far (fraction) the measured KL may exceed the estimate before refining.
        holdout: last rows of ``data`` held out to measure on (default 2 for an LM).
        proxy_samples, hessian_samples: rows for the proxies' pass and GPTQ's sensitivity Hessians.
        embeddings: the output head is a candidate layer too (a decoder LM's linears after the
            blocks), and a tied input embedding shares its format (one packed table). It is
            rounded (RTN): GPTQ walks only the blocks.
        activations: None (weights only, activations float) or "static": int8 activations
            with ranges from ``observer`` (:class:`StaticPTQ`, CNNs), each layer's weights at
            its chosen bits (candidates ``w4pcsym``, ``w8``, ...).
        include, exclude: fnmatch patterns on the layers to choose for.
    """

    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    budget: Budget | str | None = None
    method: str = "gptq"
    sensitivity: str = "kl_estimate"
    refine: int = 1
    tolerance: float = 0.5
    holdout: int | None = None
    proxy_samples: int = 8
    hessian_samples: int = 32
    calib_batch_size: int = 8
    activations: str | None = None
    observer: str = "histogram"
    embeddings: bool = False
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    layer_types = LINEAR_TYPES
    needs_data = True

    def __post_init__(self) -> None:
        if isinstance(self.candidates, str):
            object.__setattr__(self, "candidates", tuple(c for c in self.candidates.replace("|", ",").split(",") if c))
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if isinstance(self.budget, str):
            object.__setattr__(self, "budget", Budget.parse(self.budget))
        if not isinstance(self.budget, Budget):
            raise ValueError("MixedPrecision needs a budget: budget=Budget(bpw=4.0), Budget(size_mb=40) "
                             "or Budget(max_kl=0.05) (spec: mixed:bpw=4.0)")
        if self.method not in METHODS:
            raise ValueError(f"MixedPrecision.method must be one of {METHODS}, got {self.method!r}")
        if self.sensitivity not in SOURCES:
            raise ValueError(f"MixedPrecision.sensitivity must be one of {SOURCES}, got {self.sensitivity!r}")
        if self.budget.kind == "max_kl" and self.sensitivity not in ("measured", "kl_estimate"):
            raise ValueError(f"a max_kl budget needs costs in KL units: sensitivity='measured' or "
                             f"'kl_estimate', not {self.sensitivity!r}")
        if self.refine < 0 or self.tolerance < 0:
            raise ValueError("MixedPrecision.refine and tolerance must be non-negative")
        cands = parse_candidates(self.candidates, self.method)     # raise now on a bad menu
        if self.activations not in (None, "static"):
            raise ValueError(f"MixedPrecision.activations must be None (float) or 'static' (int8, "
                             f"StaticPTQ), got {self.activations!r}")
        if self.activations == "static":
            for c in cands:
                f = c.format
                if f is None or not (f.kind == "int" and f.signed and f.symmetric and f.granularity != "group"):
                    raise ValueError(f"candidate {c.spec}: static int8 kernels run signed symmetric "
                                     f"weights per channel; use e.g. w4pcsym, w8")
        patterns(self, "include", "exclude")

    def describe(self) -> str:
        return f"MixedPrecision {self.budget.label()} of {'/'.join(self.candidates)} ({self.method})"

    # --- spec: "mixed:bpw=4.0", "mixed:size=40,method=rtn" --------------------------------------
    @staticmethod
    def spec_option(token: str) -> dict | None:
        try:
            return {"budget": Budget.parse(token)}
        except ValueError:
            return None

    def spec_tokens(self) -> tuple[list[str], set[str]]:
        return [self.budget.label()], {"budget"}

    # --- plan -----------------------------------------------------------------------------------
    def plan(self, model: nn.Module) -> Plan:
        try:
            find_blocks(model)
            lm = True
        except ValueError:
            lm = False
        chosen = select_layers(model, self.include, self.exclude, lm=lm, head=self.embeddings)
        plan = Plan(self.describe())
        for name, module in model.named_modules():
            if not isinstance(module, LINEAR_TYPES + (nn.Embedding, nn.Conv2d)):
                continue
            head = next((n for n, m in chosen.items() if isinstance(module, nn.Embedding)
                         and m.weight is module.weight), None)
            if name in chosen:
                plan.layers.append(self.layer_plan(name, module))
            elif head is not None:     # a tied input embedding takes its head's format
                cands = [c for c in parse_candidates(self.candidates, self.method) if c.format is not None]
                plan.layers.append(LayerPlan(
                    name, "Embedding", tuple(module.weight.shape), "quantize", f"as {head}",
                    "; ".join(f"{QEmbedding.planned_kernel(c.format)} ({c.spec})" for c in cands),
                    0, 0, reason=f"weight tied to {head}"))
            else:
                shape = tuple(module.weight.shape)
                plan.layers.append(LayerPlan(name, type(module).__name__, shape, "float",
                                             bytes=float_bytes(module), float_bytes=float_bytes(module),
                                             reason="not a mixed-precision layer (outside the chosen set)"))
        return plan

    def layer_plan(self, name: str, module: nn.Module) -> LayerPlan:
        cands = parse_candidates(self.candidates, self.method)
        shape, fp = tuple(module.weight.shape), float_bytes(module)
        fitting = [c for c in cands if not c.fits(module)]
        if not fitting:
            return LayerPlan(name, type(module).__name__, shape, "error", bytes=fp, float_bytes=fp,
                             reason="no candidate format fits: " + "; ".join(c.fits(module) for c in cands))
        if self.activations == "static":
            from .static import StaticPTQ

            kernels = [(c.spec, StaticPTQ().layer_plan(name, module).kernel) for c in fitting]
        else:
            kernels = [(c.spec, c.kernel(name, module)) for c in fitting]
        kernels.sort(key=lambda sk: not sk[1].startswith("reference."))   # a slow one first: warned
        bits = self.budget.bpw if self.budget.kind == "bpw" else min(c.bits(module) for c in fitting)
        return LayerPlan(name, type(module).__name__, shape, "quantize", "one of " + "/".join(c.spec for c in fitting),
                         "; ".join(f"{k} ({s})" for s, k in kernels), round(module.weight.numel() * bits / 8), fp,
                         reason="format chosen on data; bytes at the budget's average")

    def layer_sensitivity(self, model: nn.Module, data):
        """:func:`lowbit.sensitivity` with this recipe's settings (cached: a second call, e.g.
        by ``lowbit compare`` for its plot, reads the first one's result)."""
        return sensitivity(model, data, self.candidates, method=self.method,
                           measure=self.sensitivity == "measured", include=self.include,
                           exclude=self.exclude, head=self.embeddings, holdout=self.holdout,
                           proxy_samples=self.proxy_samples, hessian_samples=self.hessian_samples)

    # --- apply ----------------------------------------------------------------------------------
    def apply(self, model: nn.Module, data) -> QuantReport:
        if data is None:
            raise ValueError(f"{self.describe()} needs data: token ids [n, seq_len] for an LM "
                             f"(lowbit.data.calibration_batches(tokenizer)) or inputs [n, ...]")
        if isinstance(data, (list, tuple)) and data and all(isinstance(b, torch.Tensor) for b in data):
            data = torch.cat(list(data))                 # batches of inputs (a CNN's loader)
        lm = is_lm(data)
        self._check_feasible(model, lm)
        if self.activations == "static":
            return self._apply_static(model, data, lm)
        sens = self.layer_sensitivity(model, data)
        layers = select_layers(model, self.include, self.exclude, lm=lm, head=self.embeddings)
        if list(layers) != sens.layers:
            raise RuntimeError("sensitivity and recipe disagree on the layers; clear the sensitivity cache")
        cands = parse_candidates(self.candidates, self.method)
        calib, held_rows = split(data, sens.samples["held_out"])
        cost = sens.table(self.sensitivity)
        bits, numel = np.asarray(sens.bits, float), np.asarray(sens.numel, float)
        held = HeldOut(model, held_rows, lm)
        originals = {n: m.weight.data.clone() for n, m in layers.items()}
        kl_units = self.sensitivity in ("measured", "kl_estimate")

        rounds: list[dict] = []
        stop = "round limit"
        for r in range(self.refine + 1):
            a = solve(cost, bits, numel, self.budget, sens.layers, sens.candidates)
            if rounds and a.choice == rounds[-1]["choice"]:
                log.info("lowbit: mixed precision: refinement chose the same formats; done")
                stop = "the corrected costs chose the same formats"
                break
            if rounds:
                self._restore(layers, originals)
            weights = self._quantize(model, layers, cands, a.choice, calib)
            measured = held.kl()
            rounds.append({"round": r, "choice": a.choice, "bpw": a.bpw, "estimate": a.estimate,
                           "measured_kl": measured, "weights": weights, "cost": cost.copy()})
            log.info("lowbit: mixed precision round %d: %.3f bpw, estimated KL %.4g, measured %.4g",
                     r, a.bpw, a.estimate, measured)
            if self._kept(a, measured, kl_units):
                stop = "promise kept" if kl_units else "no promise in KL units (a non-KL proxy)"
                break
            if r == self.refine:
                break
            cost = self._interactions(cost, a, layers, weights, held, originals, measured)
        best = self._best(rounds)
        self._restore(layers, originals)     # fp32-chosen layers keep their float weights
        report = self._swap(model, layers, cands, best, rounds, sens, held_rows)
        report.details["refinement"] = stop
        return report

    def _apply_static(self, model: nn.Module, data: torch.Tensor, lm: bool) -> QuantReport:
        """Choose the weight bits per layer, then StaticPTQ with them; measure once."""
        from .static import StaticPTQ

        sens = self.layer_sensitivity(model, data)
        cands = parse_candidates(self.candidates, self.method)
        calib, held_rows = split(data, sens.samples["held_out"])
        cost, bits = sens.table(self.sensitivity), np.asarray(sens.bits, float)
        a = solve(cost, bits, np.asarray(sens.numel, float), self.budget, sens.layers, sens.candidates)
        held = HeldOut(model, held_rows, lm)
        chosen = {n: cands[j] for n, j in zip(sens.layers, a.choice)}
        static = StaticPTQ(observer=self.observer, include=self.include, exclude=self.exclude,
                           weight_bits=tuple((n, c.format.num_bits) for n, c in chosen.items()),
                           weight_method="gptq" if self.method == "gptq" else "rtn")
        report = static.apply(model, list(calib.split(self.calib_batch_size)))
        measured = held.kl()
        why = self._why(sens.layers, cands, a.choice, cost, bits)
        report.recipe = self.describe() + " with static int8 activations"
        report.layers = [LayerReport(r.name, r.module_type, r.status, r.format, r.kernel, r.bits_per_weight,
                                     f"{why[r.name]}; {r.reason}" if r.name in why and r.status == "quantized"
                                     else r.reason) for r in report.layers]
        report.details = self._details(sens, cands, a.choice, a.bpw, a.estimate, measured, held_rows,
                                       [{"round": 0, "bpw": a.bpw, "estimate": a.estimate,
                                         "measured_kl": measured}], 0)
        return report

    @staticmethod
    def _why(names, cands, choice, cost, bits) -> dict[str, str]:
        why = {}
        for i, n in enumerate(names):
            j = choice[i]
            smaller = [k for k in range(len(cands)) if bits[i, k] < bits[i, j]]
            text = f"chosen by mixed precision: est. KL {cost[i, j]:.3g}"
            if smaller:
                k = max(smaller, key=lambda k: bits[i, k])
                text += (f"; {cands[k].spec} would save {bits[i, j] - bits[i, k]:.2f} bits/weight "
                         f"for +{cost[i, k] - cost[i, j]:.3g} KL")
            else:
                text += "; the smallest format in the menu"
            why[n] = text
        return why

    def _details(self, sens, cands, choice, bpw, estimate, measured, held_rows, rounds, chosen_round) -> dict:
        return {
            "budget": self.budget.label(), "method": self.method, "sensitivity": self.sensitivity,
            "activations": self.activations or "float",
            "bpw": bpw, "estimate": estimate, "measured_kl": measured,
            "held_out_rows": int(held_rows.shape[0]),
            "counts": dict(Counter(cands[j].spec for j in choice)),
            "choice": {n: cands[j].spec for n, j in zip(sens.layers, choice)},
            "rounds": rounds, "chosen_round": chosen_round,
            "sensitivity_seconds": sens.seconds, "spearman": sens.spearman, "sensitivity_key": sens.key,
        }

    def _check_feasible(self, model: nn.Module, lm: bool) -> None:
        """Before any work: every layer has a format that fits, and a bits budget is reachable."""
        layers = select_layers(model, self.include, self.exclude, lm=lm, head=self.embeddings)
        cands = parse_candidates(self.candidates, self.method)
        bits = np.array([layer_bits(cands, m) for m in layers.values()])
        numel = [m.weight.numel() for m in layers.values()]
        budget = self.budget if self.budget.kind != "max_kl" else Budget(bpw=1e9)
        solve(np.zeros_like(bits), bits, numel, budget, list(layers), [c.spec for c in cands])

    def _quantize(self, model, layers, cands, choice, calib) -> dict:
        """Quantize every chosen layer to its format; the model's weights become the dequantized
        ones (so the result can be measured as is). Returns name -> QTensor / None (fp32) / Skip."""
        formats = {n: cands[j].format for n, j in zip(layers, choice) if cands[j].format is not None}
        out: dict = {n: None for n, j in zip(layers, choice) if cands[j].format is None}
        if self.method == "gptq" and is_lm(calib):
            runner = WeightOnly(method="gptq", calib_batch_size=self.calib_batch_size)
            out.update(runner._calibrate(model, calib, formats=formats))
            for name, j in zip(layers, choice):     # after the blocks (the head): rounded
                if name not in out and held_block(model, name) is None:
                    module = layers[name]
                    q = parse_candidates([cands[j].spec], "rtn")[0].quantize(name, weight_matrix(module))
                    module.weight.data = q.dequantize().reshape(module.weight.shape).to(module.weight.dtype)
                    out[name] = q
            return out
        for name, j in zip(layers, choice):
            if name in out:
                continue
            module = layers[name]
            q = cands[j].quantize(name, weight_matrix(module))
            module.weight.data = q.dequantize().reshape(module.weight.shape).to(module.weight.dtype)
            out[name] = q
        return out

    @staticmethod
    def _restore(layers, originals) -> None:
        for n, m in layers.items():
            m.weight.data = originals[n].clone()

    def _kept(self, a: Assignment, measured: float, kl_units: bool) -> bool:
        if self.budget.kind == "max_kl":
            return measured <= self.budget.max_kl
        return not kl_units or measured <= a.estimate * (1 + self.tolerance)

    def _interactions(self, cost, a: Assignment, layers, weights, held: HeldOut, originals,
                      measured: float) -> np.ndarray:
        """Measure each block with only its chosen layers quantized; scale its layers' costs by
        measured / estimated (clamped to [1/4, 4]); for max_kl also by the cross-block factor."""
        names = list(layers)
        self._restore(layers, originals)
        by_block: dict[int, list[int]] = {}
        for i, n in enumerate(names):
            by_block.setdefault(held.block_of(n), []).append(i)
        cost = cost.copy()
        total = 0.0
        for b, idx in by_block.items():
            for i in idx:
                q = weights.get(names[i])
                if q is not None and not isinstance(q, Skip):
                    m = layers[names[i]]
                    m.weight.data = q.dequantize().reshape(m.weight.shape).to(m.weight.dtype)
            got = held.kl(b)
            for i in idx:
                layers[names[i]].weight.data = originals[names[i]].clone()
            est = sum(cost[i, a.choice[i]] for i in idx)
            total += got
            if est > 0 and got > 0:
                cost[idx] *= min(4.0, max(0.25, got / est))
        if self.budget.kind == "max_kl" and total > 0:
            cost *= max(1.0, measured / total)          # blocks compound: the cross-block factor
        return cost

    def _best(self, rounds: list[dict]) -> dict:
        if self.budget.kind == "max_kl":
            ok = [r for r in rounds if r["measured_kl"] <= self.budget.max_kl]
            if ok:
                return min(ok, key=lambda r: r["bpw"])
            log.warning("lowbit: mixed precision: no round met max_kl %.4g (best measured %.4g); "
                        "keeping the closest", self.budget.max_kl, min(r["measured_kl"] for r in rounds))
        return min(rounds, key=lambda r: r["measured_kl"])

    def _swap(self, model, layers, cands, best, rounds, sens, held_rows) -> QuantReport:
        names = list(layers)
        choice, weights, cost = best["choice"], best["weights"], best["cost"]
        bits = np.asarray(sens.bits, float)
        why = self._why(names, cands, choice, cost, bits)

        tied = {}   # an input embedding whose table is a chosen head's weight -> that head
        for emb_name, emb in model.named_modules():
            if isinstance(emb, nn.Embedding):
                tied.update({emb_name: n for n in names if layers[n].weight is emb.weight})

        def build(name: str, module: nn.Module) -> nn.Module:
            owner = tied.get(name, name)
            q = weights.get(owner)
            if isinstance(q, Skip):
                raise q
            if q is None:
                raise Skip(f"kept fp32 ({why[owner]})")
            if isinstance(module, nn.Embedding):
                why[name] = f"tied to {owner}: {why[owner]}"
                return QEmbedding.from_float(module, q.format, weight=q)
            return cands[choice[names.index(name)]].module(q, module)

        types = self.layer_types + ((nn.Embedding,) if tied else ())
        report = swap_modules(model, build, types=types, include=tuple(names) + tuple(tied),
                              recipe=self.describe())
        report.layers = [LayerReport(r.name, r.module_type, r.status, r.format, r.kernel, r.bits_per_weight,
                                     why.get(r.name, r.reason) if r.status == "quantized" else
                                     ("not a mixed-precision layer" if r.reason == "excluded by pattern"
                                      else r.reason))
                         for r in report.layers]
        report.details = self._details(
            sens, cands, choice, best["bpw"], best["estimate"], best["measured_kl"], held_rows,
            [{k: r[k] for k in ("round", "bpw", "estimate", "measured_kl")} for r in rounds], best["round"])
        counts = report.details["counts"]
        log.info("lowbit: %s: %s at %.3f bpw, measured KL %.4g (estimate %.4g)", self.describe(),
                 dict(counts), best["bpw"], best["measured_kl"], best["estimate"])
        return report
