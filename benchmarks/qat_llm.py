"""Weight-only W3 g64 QAT of SmolLM2-135M with distillation from the fp32 model -> results/qat.json.

    python benchmarks/qat_llm.py [--minutes 60] [--bits 3] [--seq 256] [--batch 4] [--lr 1e-4]
                                 [--learn none|lsq] [--init gptq|rtn] [--tokens 32768]
                                 [--out results/qat.json]

The decoder linears start from GPTQ's grid (128 x 512 calibration tokens, seed 0, as in
results/llm.json) or from RTN, then train on the KL divergence to the fp32 teacher's
next-token distributions (temperature 1), on random windows of emma + mansfieldpark (seed 2),
for at most ``--minutes``. ``--learn none`` keeps the starting grid's scales and zero points
and trains the latent weights (straight-through), so training decides which grid point each
weight takes; ``--learn lsq`` trains the step sizes too. The trained model is converted to real 3-bit QLinear
layers (``cpu.lowbit_gemv``) and evaluated under DATA.md's protocol against fp32, beside the
starting point (GPTQ or RTN) it came from.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("lowbit.bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--learn", choices=("none", "lsq"), default="none",
                    help="none: the starting grid (scales, zero points) stays fixed, weights train; "
                         "lsq: the step sizes train too (with AdamW at 1e-5 this diverged: see qat.json)")
    ap.add_argument("--init", choices=("gptq", "rtn"), default="gptq")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--out", type=Path, default=ROOT / "results/qat.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    import lowbit
    from lowbit.data import calibration_batches, eval_tokens
    from lowbit.doctor import machine
    from lowbit.eval import evaluate_lm, footprint
    from lowbit.models import load_model
    from lowbit.nn import QLinear
    from lowbit.qat import QAT, convert, distillation_loss, fit, freeze_observers, prepare_qat
    from lowbit.recipes import from_spec

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results  # noqa: E402

    teacher, tok = load_model("smollm2-135m")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    recipe = from_spec(f"{args.init}:w{args.bits}g64,exclude=lm_head")
    calib = calibration_batches(tok, n=args.calib, seq_len=512, seed=0) if recipe.needs_data else None
    start_q = lowbit.quantize(teacher, recipe, data=calib)
    init = {n: m.weight for n, m in start_q.named_modules() if isinstance(m, QLinear)}
    learn = None if args.learn == "none" else args.learn
    student = prepare_qat(teacher, QAT(num_bits=args.bits, group_size=64, learn=learn, exclude=("lm_head",)),
                          init=init)
    if learn is None:
        freeze_observers(student)  # keep the starting grid: only which grid point each weight takes changes
    for name, p in student.named_parameters():  # train the decoder linears and their step sizes only
        p.requires_grad_(".weight_quant." in name or (".module." in name and name.endswith("weight")))
    params = [p for p in student.parameters() if p.requires_grad]
    data = calibration_batches(tok, n=8192, seq_len=args.seq, seed=2)
    steps_budget = args.minutes * 60
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def kd_loss(model, ids):
        with torch.no_grad():
            t = teacher(input_ids=ids, use_cache=False).logits
        return distillation_loss(model(input_ids=ids, use_cache=False).logits, t)

    # fit() runs a fixed list of batches; take as many as the time budget allows, measured on 2 steps.
    t0 = time.perf_counter()
    fit(student, kd_loss, [data[:args.batch]] * 2, optimizer=torch.optim.SGD(params, lr=0.0),
        freeze_observers_at=None, freeze_bn_at=None, desc="probe")
    per_step = (time.perf_counter() - t0) / 2
    steps = max(1, min(len(data) // args.batch, int(steps_budget / per_step)))
    log.info("QAT: %d steps of %d x %d tokens (%.1f s/step)", steps, args.batch, args.seq, per_step)
    batches = [data[i * args.batch:(i + 1) * args.batch] for i in range(steps)]
    t0 = time.perf_counter()
    losses = fit(student, kd_loss, batches, optimizer=opt, freeze_observers_at=None, freeze_bn_at=None,
                 desc=f"QAT W{args.bits}")
    train_s = time.perf_counter() - t0
    q = convert(student.eval())
    tokens = eval_tokens(tok, num_tokens=args.tokens)
    res = evaluate_lm({"fp32": teacher, "start": start_q, "qat": q}, tokens, reference="fp32")
    common = {"model": "SmolLM2-135M-Instruct", "tool": "lowbit", "machine": machine(),
              "lowbit_version": lowbit.__version__, "eval_tokens": int(tokens.numel()), "head": "fp32",
              "num_bits": args.bits, "group_size": 64}
    rows = [
        {**common, "method": f"{args.init} W{args.bits} g64 (QAT starting point)", "ppl": res["start"].ppl,
         "kl": res["start"].kl, "bpw_linears": footprint(start_q).bpw_linears},
        {**common, "method": (f"QAT W{args.bits} g64 + distillation from fp32 "
                              f"({'LSQ' if learn else 'grid fixed'}, init {args.init})"),
         "ppl": res["qat"].ppl, "kl": res["qat"].kl, "bpw_linears": footprint(q).bpw_linears,
         "train_steps": steps, "train_s": round(train_s, 1), "train_tokens": steps * args.batch * args.seq,
         "lr": args.lr, "first_loss": losses[0], "last_loss_mean_20": sum(losses[-20:]) / len(losses[-20:]),
         "kernels": sorted({r.kernel for r in q.lowbit_report.quantized})},
    ]
    for r in rows:
        log.info("%s", {k: v for k, v in r.items() if k != "machine"})
    results.merge(args.out, rows)


if __name__ == "__main__":
    main()
