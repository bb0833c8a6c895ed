"""The pruning peers: llm-compressor's SparseGPT and Wanda at 50% unstructured sparsity on
SmolLM2-135M-Instruct, saved as plain dense fp32 HF folders for the pruning benchmark.

    .venv-llmc/bin/python benchmarks/prune_peers.py [--methods sparsegpt,wanda] [--samples 128]
                                                    [--sparsity 0.5] [--out-root DIR]

Runs in llm-compressor's own venv (`make peers-llmc`: llmcompressor 0.14.0.1, which pins
transformers 5.17.0, beside torch 2.13.0 and an editable lowbit). It only prunes and saves;
perplexity / KL are measured later by the main benchmark in lowbit's venv, in the same run as
lowbit's own rows, from the folders written here.

For each method a fresh fp32 copy of the model is loaded (``lowbit.models.load_model``) and
pruned by ``llmcompressor.oneshot`` with one modifier:

- ``SparseGPTModifier(sparsity=0.5, mask_structure="0:0", block_size=128, dampening_frac=0.01)``
  (block_size and dampening_frac are llm-compressor's defaults);
- ``WandaPruningModifier(sparsity=0.5, mask_structure="0:0")``.

Both use ``targets=["Linear"], ignore=["re:.*lm_head"]``: the 210 decoder linears (q, k, v, o,
gate, up, down x 30 layers) are pruned; the tied embedding / lm_head and the norms are not (the
script checks that they come back unchanged). mask_structure "0:0" is unstructured, each layer
pruned to the target fraction on its own (no OWL profile). Calibration is exactly lowbit's:
``lowbit.data.calibration_batches(tokenizer)`` (128 x 512 token ids, seed 0, emma +
mansfieldpark), passed as a tokenized ``datasets.Dataset`` of input_ids / attention_mask, with
``num_calibration_samples=--samples, max_seq_length=512, batch_size=1,
shuffle_calibration_samples=False`` and llm-compressor's default pipeline (sequential, layer by
layer). ``--samples N`` below 128 takes the first N of the 128 windows (smoke tests only).
``quant_s`` is the wall time of the ``oneshot`` call.

Each pruned model is written to ``<out-root>/llmc-<method>-<pct>`` (default out-root
``$LOWBIT_CACHE/peers``) as a plain HF folder: ``model.safetensors`` holding the dense fp32
state dict under the source checkpoint's names (the tied lm_head not stored twice, as in the
source), and config, generation config and tokenizer files copied from the source folder, so
nothing of llm-compressor's compressed-tensors saving is involved. ``peer.json`` beside it
records tool, version, settings, quant_s (with the load averages around it), the achieved
sparsity (fraction of exact zeros of each pruned weight: min / mean / max over the 210 layers
and overall) and the machine.

Heavy: hold the shared lock (``flock /tmp/lowbit-heavy.lock ...``). On the 2-core AMD EPYC
dev machine each method's oneshot took 27-28 minutes at 128 samples, with another process
competing for the cores (load average ~3-4).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

MODEL = "smollm2-135m"
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NUM_LINEARS = 210  # 7 x 30 layers
SEQ_LEN = 512
METHODS = ("sparsegpt", "wanda")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def decoder_linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{module name: weight} of the 210 decoder linears."""
    return {name: m.weight for name, m in model.named_modules()
            if name.startswith("model.layers.") and name.rsplit(".", 1)[-1] in LINEARS}


def zero_fraction(t: torch.Tensor) -> float:
    return (t == 0).sum().item() / t.numel()


def calibration_dataset(ids: torch.Tensor):
    from datasets import Dataset
    return Dataset.from_dict({"input_ids": ids.tolist(),
                              "attention_mask": torch.ones_like(ids).tolist()})


def make_modifier(method: str, sparsity: float):
    common = dict(sparsity=sparsity, mask_structure="0:0", targets=["Linear"],
                  ignore=["re:.*lm_head"])
    if method == "sparsegpt":
        from llmcompressor.modifiers.pruning import SparseGPTModifier
        return SparseGPTModifier(**common, block_size=128, dampening_frac=0.01)
    if method == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier
        return WandaPruningModifier(**common)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def save_dense(model: torch.nn.Module, source: Path, dest: Path) -> None:
    """Write ``model``'s dense state dict under the source checkpoint's tensor names, plus the
    source's non-weight files, into ``dest`` (replaced atomically)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(source / "model.safetensors", "pt") as f:
        names = list(f.keys())
    state = model.state_dict()
    missing = [n for n in names if n not in state]
    extra = [n for n in state if n not in names and n != "lm_head.weight"]
    if missing or extra:
        raise RuntimeError(f"state dict does not match the source checkpoint: missing {missing}, "
                           f"extra {extra}")
    tensors = {n: state[n].detach().to(torch.float32).contiguous().clone() for n in names}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        for p in source.iterdir():
            if p.is_file() and p.suffix != ".safetensors":
                shutil.copy2(p, tmp / p.name)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the main venv's benchmark reads it later
        for p in tmp.iterdir():
            p.chmod(0o644)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_method(method: str, args, source: Path, out_root: Path) -> dict:
    from llmcompressor import oneshot

    from lowbit.data import calibration_batches
    from lowbit.models import load_model

    model, tokenizer = load_model(MODEL)
    ids = calibration_batches(tokenizer)[: args.samples]  # lowbit's 128 x 512, seed 0
    assert ids.shape == (args.samples, SEQ_LEN), ids.shape
    dataset = calibration_dataset(ids)

    linears = decoder_linear_weights(model)
    assert len(linears) == NUM_LINEARS, len(linears)
    zeros_before = sum((w == 0).sum().item() for w in linears.values())
    numel = sum(w.numel() for w in linears.values())
    untouched = {n: p.detach().clone() for n, p in model.named_parameters()
                 if not any(n == f"{name}.weight" for name in linears)}

    modifier = make_modifier(method, args.sparsity)
    print(f"[{method}] oneshot on {args.samples} x {SEQ_LEN} tokens: {modifier!r}", flush=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    model = oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=[modifier],
                    num_calibration_samples=args.samples, max_seq_length=SEQ_LEN, batch_size=1,
                    shuffle_calibration_samples=False)
    quant_s = time.perf_counter() - t0
    load_after = os.getloadavg()
    print(f"[{method}] oneshot took {quant_s:.1f} s", flush=True)

    linears = decoder_linear_weights(model)
    per_layer = {name: zero_fraction(w) for name, w in linears.items()}
    zeros_after = sum((w == 0).sum().item() for w in linears.values())
    changed = [n for n, p in model.named_parameters()
               if n in untouched and not torch.equal(p.detach(), untouched[n])]
    if changed:
        raise RuntimeError(f"{method} changed parameters outside the decoder linears: {changed}")
    head, embedding = model.lm_head.weight, model.model.embed_tokens.weight
    if model.config.tie_word_embeddings and not torch.equal(head, embedding):
        raise RuntimeError("lm_head no longer equals the tied embedding")

    fractions = list(per_layer.values())
    stats = {"layers": len(fractions), "min": min(fractions),
             "mean": sum(fractions) / len(fractions), "max": max(fractions),
             "overall": zeros_after / numel, "zeros_before_overall": zeros_before / numel,
             "min_layer": min(per_layer, key=per_layer.get),
             "max_layer": max(per_layer, key=per_layer.get),
             "lm_head_embedding_norms": "unchanged"}
    print(f"[{method}] zeros per pruned weight: min {stats['min']:.4f} mean {stats['mean']:.4f} "
          f"max {stats['max']:.4f}; overall {stats['overall']:.4f} "
          f"(before {zeros_before / numel:.6f})", flush=True)

    dest = out_root / f"llmc-{method}-{round(args.sparsity * 100)}"
    save_dense(model, source, dest)
    settings = ({"block_size": modifier.block_size, "dampening_frac": modifier.dampening_frac}
                if method == "sparsegpt" else {})
    meta = {
        "tool": "llm-compressor", "version": version("llmcompressor"), "method": method,
        "modifier": type(modifier).__name__, "sparsity": args.sparsity, "mask_structure": "0:0",
        "targets": ["Linear"], "ignore": ["re:.*lm_head"], **settings,
        "pruned": "210 decoder linears (q,k,v,o,gate,up,down x 30); "
                  "embedding/lm_head/norms fp32 as is",
        "quant_s": round(quant_s, 2),
        "calib": f"{args.samples}x{SEQ_LEN} lowbit.data.calibration_batches seed 0"
                 + ("" if args.samples == 128 else f" (the first {args.samples} of 128)"),
        "oneshot": {"num_calibration_samples": args.samples, "max_seq_length": SEQ_LEN,
                    "batch_size": 1, "shuffle_calibration_samples": False},
        "achieved_sparsity": stats, "per_layer_sparsity": per_layer,
        "model": MODEL, "source": str(source), "dtype": "float32",
        "machine": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        # 1/5/15-minute load averages around oneshot: above ~cores means quant_s was contended
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "torch": torch.__version__, "transformers": version("transformers"),
        "compressed_tensors": version("compressed-tensors"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
    }
    (dest / "peer.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"[{method}] saved {dest}", flush=True)
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--samples", type=int, default=128,
                        help="calibration sequences of 512 tokens (lowbit's protocol: 128)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--out-root", type=Path, default=None,
                        help="where the llmc-<method>-<pct> folders go (default "
                             "$LOWBIT_CACHE/peers)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; expected one of {METHODS}")
    if not 1 <= args.samples <= 128:
        parser.error("--samples must be in 1..128 (lowbit's calibration set has 128)")

    from lowbit._cache import cache_dir
    from lowbit.models.smollm2 import convert_smollm2
    out_root = args.out_root or cache_dir("peers")
    source = convert_smollm2()  # the fp32 folder load_model("smollm2-135m") reads
    for method in methods:
        run_method(method, args, source, out_root)


if __name__ == "__main__":
    main()
