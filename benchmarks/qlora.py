"""QLoRA on SmolLM2-135M: LoRA adapters trained on a frozen NF4 (+ double quant) base -> results/qat.json.

    python benchmarks/qlora.py [--minutes 20] [--rank 16] [--seq 256] [--batch 4] [--lr 4e-4]
                               [--tokens 32768] [--out results/qat.json]

Training data: random windows of emma + mansfieldpark (lowbit.data.calibration_batches, seed 1);
evaluation: Pride and Prejudice under DATA.md's protocol (first --tokens tokens, 512-token
windows), for fp32, the NF4 model without adapters and the NF4 model with the trained
adapters (all in lock-step, KL against fp32). The base stays NF4 throughout: its packed bytes
are compared before and after training. Training memory: fresh child processes, in pairs,
one that loads the model, quantizes it to NF4 in place, adds the adapters and takes 3 training
steps, one that takes 3 steps of full fp32 fine-tuning (AdamW) of the same model and batch:
the same path for both, and neither inflated by the other models this process holds for
evaluation. Each reports VmHWM from its first step on ("train", the headline) and over the
whole process; the pairs run with glibc's mmap threshold pinned (RSS follows the live tensors)
and with its default dynamic threshold (RSS also holds freed heap blocks), see
``training_peak`` and ``measure_peaks``. ``--peaks-only`` measures just those and updates the
QLoRA row already in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
log = logging.getLogger("lowbit.bench")


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


# glibc's own initial mmap threshold, pinned: its dynamic threshold (raised to the largest block
# freed so far, up to 32 MiB) otherwise moves the MiB-sized activations from mmap into the heap
# after the first frees, where freed blocks stay resident; the peak then measures glibc's
# retention more than the training (QLoRA 4216-5570 MiB between identical runs).
PINNED_MMAP_THRESHOLD = "131072"
ALLOCATORS = {"pinned": {"MALLOC_MMAP_THRESHOLD_": PINNED_MMAP_THRESHOLD}, "default": {}}


def training_peak(seq: int, batch: int, qlora: dict | None, steps: int = 3) -> dict[str, float]:
    """Peak RSS (MiB) of ``steps`` AdamW steps in this (fresh) process: full fp32 fine-tuning
    (``qlora=None``), or QLoRA (NF4 base quantized in place, LoRA with ``qlora`` = rank, alpha).

    ``whole``: VmHWM of the whole process (loading and quantizing included); ``train``: VmHWM
    from the first step on (reset after setup, freed memory returned to the OS first), so
    setup transients do not count. Both runs take the same path. The weights are copied off
    the checkpoint's memory map first: otherwise the fp32 file pages that quantization reads
    stay resident (~400 MiB) as long as one float tensor (the embedding) keeps the map open.
    """
    import lowbit
    from lowbit._memory import release_freed_memory
    from lowbit.data import calibration_batches
    from lowbit.eval.resources import peak_rss_mb, reset_peak_rss
    from lowbit.lora import LoRAConfig, add_lora, lora_parameters
    from lowbit.models import load_model
    from lowbit.recipes import NF4

    model, tok = load_model(MODEL)
    with torch.no_grad():
        for p in model.parameters():  # tied embedding and head: one Parameter, copied once
            p.data = p.data.clone()
    if qlora is None:
        params, lr = list(model.parameters()), 1e-5
    else:
        model = add_lora(lowbit.quantize(model, NF4(block_size=64, double_quant=True), inplace=True),
                         LoRAConfig(**qlora))
        params, lr = list(lora_parameters(model).values()), 1e-4
    model.train()
    data = calibration_batches(tok, n=steps * batch, seq_len=seq, seed=1)
    opt = torch.optim.AdamW(params, lr=lr)
    release_freed_memory()
    setup = peak_rss_mb()
    if not reset_peak_rss():
        raise SystemExit("training_peak needs Linux's /proc/self/clear_refs to reset VmHWM")
    for i in range(steps):
        loss = lm_loss(model, data[i * batch:(i + 1) * batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = peak_rss_mb()
    return {"whole": max(setup, train), "train": train}


def child_peak(flag: str, args, allocator: str) -> dict[str, float] | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(ALLOCATORS[allocator])
    child = subprocess.run([sys.executable, __file__, flag, "--seq", str(args.seq), "--batch", str(args.batch),
                            "--rank", str(args.rank), "--alpha", str(args.alpha)],
                           capture_output=True, text=True, env=env)
    line = next((l for l in child.stdout.splitlines() if l.startswith("LOWBIT_PEAK")), None)
    if line is None:
        log.error("%s child (%s allocator) failed:\n%s", flag, allocator, child.stderr[-2000:])
        return None
    return json.loads(line.split(maxsplit=1)[1])


def measure_peaks(args) -> dict:
    """fp32 and QLoRA children in pairs, ``--peak-repeats`` times under each allocator setting."""
    runs = {a: {m: {"whole": [], "train": []} for m in ("fp32", "qlora")} for a in ALLOCATORS}
    for allocator in ALLOCATORS:
        for _ in range(args.peak_repeats):
            for mode, flag in (("fp32", "--fp32-peak-child"), ("qlora", "--qlora-peak-child")):
                peak = child_peak(flag, args, allocator)
                if peak is None:
                    raise SystemExit(f"the {mode} peak child failed ({allocator} allocator); see the log")
                for k in ("whole", "train"):
                    runs[allocator][mode][k].append(round(peak[k], 1))
            log.info("training peaks so far (MiB): %s", runs)
    below = {a: {k: all(q < f for q, f in zip(r["qlora"][k], r["fp32"][k])) for k in ("whole", "train")}
             for a, r in runs.items()}
    med = {a: {m: {k: statistics.median(v) for k, v in r[m].items()} for m in r} for a, r in runs.items()}
    return {
        "train_peak_rss_mb": med["pinned"]["qlora"]["train"],
        "fp32_finetune_peak_rss_mb": med["pinned"]["fp32"]["train"],
        "train_peak_medians_mb": med, "train_peak_runs_mb": runs, "qlora_below_fp32_every_repeat": below,
        "train_peak_note": (
            f"fresh processes, fp32 and QLoRA in pairs, {args.peak_repeats} pairs per allocator setting; "
            f"each loads the model (weights copied off the checkpoint's mmap), quantizes to NF4 in place "
            f"and adds LoRA (QLoRA) or not (fp32, all parameters train), then 3 AdamW steps of "
            f"{args.batch} x {args.seq} tokens. 'train': VmHWM from the first step on (reset via "
            f"/proc/self/clear_refs after setup and malloc_trim); 'whole': VmHWM of the whole process. "
            f"'pinned': MALLOC_MMAP_THRESHOLD_={PINNED_MMAP_THRESHOLD} (glibc's initial threshold, kept "
            f"fixed) so RSS follows the live tensors; 'default': glibc's dynamic threshold, under which "
            f"freed activations stay resident in the heap. Headline figures: pinned, 'train', medians."),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--out", type=Path, default=ROOT / "results/qat.json")
    ap.add_argument("--peak-repeats", type=int, default=4,
                    help="fresh-process peak measurements of each, per allocator setting")
    ap.add_argument("--peaks-only", action="store_true",
                    help="measure the two training peaks only and update the QLoRA row in --out")
    ap.add_argument("--fp32-peak-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--qlora-peak-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.fp32_peak_child or args.qlora_peak_child:
        qlora = {"rank": args.rank, "alpha": args.alpha} if args.qlora_peak_child else None
        print("LOWBIT_PEAK", json.dumps(training_peak(args.seq, args.batch, qlora)))
        return

    import lowbit
    from lowbit.data import calibration_batches, eval_tokens
    from lowbit.doctor import machine
    from lowbit.eval import evaluate_lm, track_peak_rss
    from lowbit.lora import LoRAConfig, add_lora, load_adapters, lora_parameters, save_adapters
    from lowbit.models import load_model
    from lowbit.qat import fit
    from lowbit.recipes import NF4

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results  # noqa: E402

    peaks = measure_peaks(args)
    if args.peaks_only:
        rows = [r for r in json.loads(args.out.read_text()) if r.get("method", "").startswith("qlora:")]
        if not rows:
            raise SystemExit(f"--peaks-only: no QLoRA row in {args.out}; run without it first")
        for r in rows:
            r.setdefault("process_rss_peak_during_training_mb", r.pop("train_peak_rss_mb", None))
            r.update(peaks)
        results.merge(args.out, rows)
        return

    fp32, tok = load_model(MODEL)
    fp32.eval()
    nf4 = lowbit.quantize(fp32, NF4(block_size=64, double_quant=True))   # head and embedding fp32
    config = LoRAConfig(rank=args.rank, alpha=args.alpha)
    model = add_lora(lowbit.quantize(fp32, NF4(block_size=64, double_quant=True)), config)
    packed_before = {n: m.base.weight.data.clone() for n, m in model.named_modules() if hasattr(m, "lora_A")}
    params = list(lora_parameters(model).values())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    budget = args.minutes * 60
    data = calibration_batches(tok, n=4096, seq_len=args.seq, seed=1)
    start = time.perf_counter()
    with track_peak_rss() as rss:  # this process
        losses = fit(model, lm_loss, data.split(args.batch)[:len(data) // args.batch], optimizer=opt,
                     desc="QLoRA", freeze_observers_at=None, freeze_bn_at=None, max_seconds=budget)
    step = len(losses)
    train_s = time.perf_counter() - start
    model.eval()
    base_unchanged = all(torch.equal(m.base.weight.data, packed_before[n]) for n, m in model.named_modules()
                         if hasattr(m, "lora_A"))
    with tempfile.TemporaryDirectory() as tmp:  # adapters alone, reloaded onto a fresh NF4 base
        save_adapters(model, Path(tmp) / "adapters")
        adapter_bytes = sum(f.stat().st_size for f in (Path(tmp) / "adapters").iterdir())
        reloaded = load_adapters(lowbit.quantize(fp32, NF4(block_size=64, double_quant=True)), Path(tmp) / "adapters")
    tokens = eval_tokens(tok, num_tokens=args.tokens)
    res = evaluate_lm({"fp32": fp32, "nf4": nf4, "qlora": reloaded}, tokens, reference="fp32")
    common = {"model": "SmolLM2-135M-Instruct", "tool": "lowbit", "machine": machine(),
              "lowbit_version": lowbit.__version__, "eval_tokens": int(tokens.numel()), "head": "fp32"}
    rows = [
        {**common, "method": "fp32", "ppl": res["fp32"].ppl, "kl": 0.0},
        {**common, "method": "nf4 + double quant (block 64), no adapters", "ppl": res["nf4"].ppl, "kl": res["nf4"].kl},
        {**common, "method": f"qlora: nf4 base + LoRA r{args.rank} (alpha {args.alpha:g}) on 7 projections",
         "ppl": res["qlora"].ppl, "kl": res["qlora"].kl, "train_steps": step, "train_s": round(train_s, 1),
         "train_tokens": step * args.batch * args.seq, "lr": args.lr, "first_loss": losses[0] if losses else None,
         "last_loss_mean_20": sum(losses[-20:]) / max(1, len(losses[-20:])),
         **peaks, "process_rss_peak_during_training_mb": rss.peak_mb,
         "base_weights_unchanged_nf4": base_unchanged, "adapter_bytes": adapter_bytes,
         "trainable_params": sum(p.numel() for p in params)},
    ]
    for r in rows:
        log.info("%s", {k: v for k, v in r.items() if k != "machine"})
    results.merge(args.out, rows)


if __name__ == "__main__":
    main()
