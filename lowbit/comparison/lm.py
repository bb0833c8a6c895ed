"""Measured comparison of quantization recipes on one language model, under DATA.md's protocol.

All candidates are evaluated in lock-step with the fp32 reference (so KL needs no stored
logits), then each one's size and batch-1 decode speed are measured in the same process.
Rows follow the ``results/*.json`` format of DATA.md.
"""
from __future__ import annotations

import logging
import os

import torch
from tqdm import tqdm

from .. import __version__
from ..doctor import machine
from ..eval import decode_speed, evaluate_lm, footprint, timed, track_peak_rss
from ..recipes import Recipe, quantize

log = logging.getLogger("lowbit")


def recipe_fields(recipe: Recipe | None) -> dict:
    """``num_bits`` and ``group_size`` of a recipe's weights, for result rows."""
    if recipe is None:
        return {"num_bits": 32, "group_size": None}
    fmt = recipe.weight_format
    if fmt is None:
        return {"num_bits": None, "group_size": None}
    return {"num_bits": fmt.num_bits, "group_size": fmt.group_size}


def _quantize_all(model, recipes: dict[str, Recipe], calibration) -> tuple[dict, dict]:
    """``{name: quantized model}`` and ``{name: row fields}`` (time, memory, kernels) per recipe."""
    models, rows = {}, {}
    for name, recipe in tqdm(recipes.items(), desc="quantize", unit="recipe", disable=None):
        data = calibration.get(name) if isinstance(calibration, dict) else calibration
        with timed() as t, track_peak_rss() as rss:
            models[name] = quantize(model, recipe, data=data if recipe.needs_data else None)
        rows[name] = {"method": name, **recipe_fields(recipe), "quant_s": t.seconds,
                      "peak_rss_mb": rss.peak_mb, "peak_rss_increase_mb": rss.increase_mb,
                      "kernels": sorted({r.kernel for r in models[name].lowbit_report.quantized})}
        log.info("%s: quantized in %.1f s", name, t.seconds)
    return models, rows


def compare_lm(model, tokenizer, tokens: torch.Tensor, recipes: dict[str, Recipe], *,
               model_name: str, calibration=None, repeats: int = 3, speed: bool = True,
               fields: dict[str, dict] | None = None, common: dict | None = None,
               reference_row: bool = True) -> list[dict]:
    """Quantize ``model`` with each recipe, evaluate all against fp32; one row per method.

    ``calibration``: one batch for every recipe that needs data, or ``{name: batch}``.
    ``speed=False`` skips the batch-1 decode timing. ``fields[name]`` overrides that row's
    fields (e.g. its ``method`` label); ``common`` is added to every row. ``reference_row=False``
    leaves the fp32 row out (it is still the reference of KL and ``ppl_vs_fp32``).
    """
    quantized, rows = _quantize_all(model, recipes, calibration)
    models = {"fp32": model, **quantized}
    rows = {"fp32": {"method": "fp32", **recipe_fields(None)}, **rows}
    for name, extra in (fields or {}).items():
        rows[name].update(extra)
    quality = evaluate_lm(models, tokens, reference="fp32")
    shared = {"model": model_name, "tool": f"lowbit {__version__}", "lowbit_version": __version__,
              "machine": machine(), "eval_tokens": int(tokens.numel()), **(common or {})}
    out = []
    for name, m in models.items():
        if name == "fp32" and not reference_row:
            continue
        fp, q = footprint(m), quality[name]
        row = {**shared, **rows[name], "ppl": q.ppl, "kl": q.kl, "top1_agreement": q.top1_agreement,
               "ppl_vs_fp32": q.ppl / quality["fp32"].ppl - 1, "size_mb": fp.size_mb,
               "bpw_model": fp.bpw_model, "bpw_linears": fp.bpw_linears}
        if speed:
            s = decode_speed(m, tokenizer, repeats=repeats)
            row.update(decode_tok_s=s.decode_tok_s, prefill_tok_s=s.prefill_tok_s)
        row["loadavg"] = os.getloadavg()[0]
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    """A Markdown table of compare rows."""
    out = ["| method | perplexity | KL vs fp32 | size MB | bits/weight (model) | decode tok/s | quantize s |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        q = f"{r['quant_s']:.1f}" if r.get("quant_s") is not None else "-"
        kl = f"{r['kl']:.4f}" if r.get("kl") is not None else "-"
        dec = f"{r['decode_tok_s']:.1f}" if r.get("decode_tok_s") is not None else "-"
        out.append(f"| {r['method']} | {r['ppl']:.3f} | {kl} | {r['size_mb']:.1f} | "
                   f"{r['bpw_model']:.2f} | {dec} | {q} |")
    return "\n".join(out)
