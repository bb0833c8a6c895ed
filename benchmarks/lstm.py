"""Dynamic int8 LSTM: lowbit's QLSTM vs torch.ao ``quantize_dynamic`` vs fp32, on the Austen LSTM.

The model is the character LSTM of examples/austen_lstm.py (``load_model("austen-lstm")``).
All three run in ONE process, so ratios hold:

- quality: perplexity on the first 32,768 characters of Pride and Prejudice (held out from
  training), 512-character windows; KL and top-1 agreement against fp32;
- size: bytes of the model as saved (``lowbit.save`` for lowbit; ``torch.save`` of the state
  dict for fp32 and torch.ao, measured in memory);
- latency of a whole forward (embedding, LSTM, head) on ``--seq-len`` characters at batch 1 and
  32, 2 threads, the three interleaved round by round: median, min and max in ms, and tokens/s.

Both quantizers get the LSTM only (``{nn.LSTM}`` for torch.ao; ``DynamicPTQ(include=("lstm",))``
for lowbit), so the same layers are quantized and the head stays fp32 in both::

    python benchmarks/lstm.py            # -> results/lstm.json (~3 minutes; trains the model first if absent)
"""
from __future__ import annotations

import argparse
import copy
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import lowbit  # noqa: E402
import results  # noqa: E402  (benchmarks/results.py)
from lowbit.doctor import machine  # noqa: E402
from lowbit.eval.lm import evaluate_lm  # noqa: E402
from lowbit.models import load_model  # noqa: E402
from lowbit.models.austen_lstm import eval_ids  # noqa: E402
from lowbit.recipes.weight_only import DynamicPTQ  # noqa: E402

log = logging.getLogger("lstm")
VERSION = getattr(lowbit, "__version__", "0.1.0")
MODEL = "austen-lstm"


def candidates(fp32: nn.Module) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """fp32, torch.ao's dynamic int8 LSTM and lowbit's (the LSTM alone quantized in both), and
    the seconds each quantizer took."""
    from torch.ao.quantization import quantize_dynamic

    start = time.perf_counter()
    ao = quantize_dynamic(copy.deepcopy(fp32), {nn.LSTM}, dtype=torch.qint8)
    ao_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = lowbit.quantize(copy.deepcopy(fp32), DynamicPTQ(include=("lstm",)))
    ours_s = time.perf_counter() - start
    log.info("lowbit plan:\n%s", ours.lowbit_report.table())
    return {"fp32": fp32, "torch.ao": ao, "lowbit": ours}, {"torch.ao": ao_s, "lowbit": ours_s}


def size_mb(name: str, model: nn.Module) -> float:
    if name == "lowbit":
        with tempfile.TemporaryDirectory() as tmp:
            folder = lowbit.save(model, Path(tmp) / "ckpt")
            return sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)  # in memory only: the peer's own format
    return buffer.tell() / 2**20


def latency(models: dict, ids: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    """ms per forward of each model on ``ids``, interleaved round by round (a busy machine hits all)."""
    times = {k: [] for k in models}
    with torch.inference_mode():
        for model in models.values():
            model(ids), model(ids)  # warm-up: packing, caches
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(ids)
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "results" / "lstm.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    base = {"machine": dict(machine(), loadavg_at_start=round(os.getloadavg()[0], 2)),
            "lowbit_version": VERSION, "model": MODEL}
    fp32, tokenizer = load_model(MODEL)
    models, quant_s = candidates(fp32)
    quality = evaluate_lm(models, eval_ids(tokenizer), reference="fp32", window=512, batch_size=8)
    stream = eval_ids(tokenizer)
    timings = {}
    for batch in (1, 32):
        ids = stream[: batch * args.seq_len].reshape(batch, args.seq_len)  # (B, T)
        timings[batch] = latency(models, ids, args.rounds)
        log.info("batch %d medians (ms): %s", batch,
                 {k: round(statistics.median(v), 2) for k, v in timings[batch].items()})
    methods = {"fp32": ("fp32", f"torch {torch.__version__}", 32, "aten.lstm (fp32)"),
               "torch.ao": ("dynamic int8 LSTM (quantize_dynamic, qint8)", f"torch.ao {torch.__version__}", 8,
                            "aten.quantized_lstm (fbgemm)"),
               "lowbit": ("w8a8 dynamic LSTM (QLSTM)", "lowbit", 8, models["lowbit"].lstm.kernel())}
    rows = []
    for name, (method, tool, bits, kernel) in methods.items():
        q = quality[name]
        row = dict(base, method=method, tool=tool, num_bits=bits, group_size=None, kernel=kernel,
                   ppl=round(q.ppl, 4), kl=round(q.kl, 6), top1_agreement=round(q.top1_agreement, 5),
                   ppl_vs_fp32=round(q.ppl / quality["fp32"].ppl - 1, 5), eval_tokens=q.num_tokens,
                   size_mb=round(size_mb(name, models[name]), 3), quant_s=round(quant_s.get(name, 0.0), 3),
                   seq_len=args.seq_len, threads=2, rounds=args.rounds, latency_ms={}, tokens_per_s={})
        for batch, times in timings.items():
            t = times[name]
            row["latency_ms"][f"batch_{batch}"] = {"median": round(statistics.median(t), 3),
                                                   "min": round(min(t), 3), "max": round(max(t), 3)}
            row["tokens_per_s"][f"batch_{batch}"] = round(batch * args.seq_len / statistics.median(t) * 1000, 1)
        rows.append(row)
        log.info("%-9s ppl %.4f (%+.3f%%) kl %.5f size %.2f MB latency b1 %s b32 %s", name, q.ppl,
                 100 * row["ppl_vs_fp32"], q.kl, row["size_mb"], row["latency_ms"]["batch_1"],
                 row["latency_ms"]["batch_32"])
    results.merge(args.out, rows)
    log.info("merged %d rows into %s", len(rows), args.out)


if __name__ == "__main__":
    main()
