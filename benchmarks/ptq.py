"""Classic PTQ benchmark -> results/ptq.json (issue 4).

EfficientNet-Lite0, static int8: lowbit StaticPTQ (histogram observer; --all-observers adds
MinMax, Percentile and MSE), against PyTorch's eager
static PTQ (torch.ao prepare/convert, x86 qconfig, per-channel weights) and ONNX Runtime's
quantize_static (QDQ, per-channel), all calibrated on the same 256 random crops of the bundled
photos; top-1 agreement and KL vs fp32 on 1000 other crops and on 1000 Fashion-MNIST test
images resized to 224x224 RGB; latency at batch 1 and 16 on 2 threads, fp32 measured in the
same run (medians of interleaved rounds). Also: the ONNX QDQ export of lowbit's model in ONNX
Runtime, the Fashion-MNIST CNN (lowbit/models/fashion_cnn.py) with every observer, and
all-MiniLM-L6-v2 with DynamicPTQ.

    python benchmarks/ptq.py            # full (~20-40 min on a busy 2-core machine)
    python benchmarks/ptq.py --quick    # smaller sets, for a smoke run
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import lowbit  # noqa: E402
import results  # noqa: E402  (benchmarks/results.py)
import lowbit.data  # noqa: E402
import lowbit.nn  # noqa: E402
from lowbit.doctor import machine  # noqa: E402
from lowbit.eval import cosine_agreement, kl_divergence, top1_agreement  # noqa: E402
from lowbit.io.onnx import export_onnx  # noqa: E402
from lowbit.models import load_model  # noqa: E402
from lowbit.nn.static import float_crossings  # noqa: E402
from lowbit.recipes import from_spec  # noqa: E402
from lowbit.data.images import photos, random_crops  # noqa: E402

log = logging.getLogger("ptq")
OBSERVERS = ("minmax", "moving_average", "percentile", "histogram", "mse")
EFFNET_OBSERVERS = ("minmax", "percentile", "histogram", "mse")  # the four
VERSION = getattr(lowbit, "__version__", "0.1.0")


# --- data ---------------------------------------------------------------------------------
def fashion_224(n: int) -> torch.Tensor:
    images, _ = lowbit.data.fashion_mnist("test")
    x = images[:n].float()[:, None]                                            # (n, 1, 28, 28)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False).round()
    return ((x - 127.0) / 128.0).expand(-1, 3, -1, -1).contiguous()


# --- helpers ------------------------------------------------------------------------------
@torch.inference_mode()
def logits_of(fn, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    return torch.cat([torch.as_tensor(fn(x[i:i + batch])).float() for i in range(0, len(x), batch)])


def latency(fns: dict, x: torch.Tensor, rounds: int, calls: int) -> dict[str, float]:
    """Median ms per call, the candidates interleaved round by round (a busy machine hits all)."""
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn(x), fn(x)  # warm-up: kernel creation, caches
        for _ in range(rounds):
            for name, fn in fns.items():
                for _ in range(calls):
                    start = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - start)
    return {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}


def quality(ref: dict, got: dict) -> dict:
    row = {}
    for set_name in ref:
        row[f"top1_agreement_{set_name}"] = round(top1_agreement(ref[set_name], got[set_name]), 4)
        row[f"kl_{set_name}"] = round(kl_divergence(ref[set_name], got[set_name]), 5)
    row["top1_agreement"], row["kl"] = row["top1_agreement_crops"], row["kl_crops"]
    return row


# --- peers --------------------------------------------------------------------------------
def torch_ao_static(model: nn.Module, calib: torch.Tensor, example: torch.Tensor) -> nn.Module:
    """PyTorch eager static PTQ: fuse conv+bn(+ReLU6), x86 qconfig (per-channel weights,
    histogram activations), quantized adds, fixed zero padding, QuantStub/DeQuantStub around
    the model.

    Eager mode fuses conv+bn+ReLU but has no ReLU6 fusion. Left unfused, each conv's output
    observer sees the pre-clamp range (the stem's reaches ~140) and ReLU6 then runs on that
    coarse 7-bit grid: 5 levels in [0, 6], top-1 agreement 0.18. So conv+bn+ReLU6 fuses to
    ``ConvReLU2d`` whose float forward clamps at 6 while calibrating (its output observer sees
    [0, 6]), followed by a quantized ReLU6. The x86 qconfig's ``reduce_range`` puts [0, 6] on
    0..127 of a uint8 tensor, so ``quantized.conv2d_relu`` alone would let values up to 12
    through (stem output error 0.19 instead of 0.024); the ReLU6 after it clamps them. Each
    use of ReLU6 gets its own module so that each conv fuses with one.
    """
    import torch.ao.nn.intrinsic as nni
    import torch.ao.nn.quantized as nnq
    from torch.ao import quantization as tq
    from torch.ao.nn.intrinsic import ConvReLU2d
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from lowbit.models.efficientnet_lite import SamePad2d

    model = copy.deepcopy(model).eval()
    pads = {}
    def record(name):
        def hook(mod, args):
            h, w = args[0].shape[-2:]
            s, k = mod.stride, mod.kernel_size
            ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
            pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
            pads[name] = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        return hook
    handles = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules()
               if isinstance(m, SamePad2d)]
    with torch.no_grad():
        model(example[:1])
    for h in handles:
        h.remove()
    for name, pad in pads.items():  # TF SAME at 224x224 is a fixed zero padding (pads the zero point)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.ZeroPad2d(pad))

    def fuse_conv_bn_relu6(is_qat, conv, bn, relu6):
        fused = ConvReLU2d(fuse_conv_bn_eval(conv, bn), nn.ReLU())
        fused[1] = relu6  # clamp at 6 while calibrating: the output observer sees [0, 6]
        return nn.Sequential(fused, nn.ReLU6())  # converted: conv2d_relu, then quantized relu6

    model.act_stem, model.act_head = nn.ReLU6(), nn.ReLU6()
    groups = [["_conv_stem", "_bn0", "act_stem"], ["_conv_head", "_bn1", "act_head"]]
    for i, block in enumerate(model._blocks):
        block.act_expand, block.act_depthwise = nn.ReLU6(), nn.ReLU6()
        if block.has_expand:
            groups.append([f"_blocks.{i}._expand_conv", f"_blocks.{i}._bn0", f"_blocks.{i}.act_expand"])
        groups += [[f"_blocks.{i}._depthwise_conv", f"_blocks.{i}._bn1", f"_blocks.{i}.act_depthwise"],
                   [f"_blocks.{i}._project_conv", f"_blocks.{i}._bn2"]]
        block.skip_add = nnq.FloatFunctional()
        def block_forward(self, x):
            h = x
            if self.has_expand:
                h = self.act_expand(self._bn0(self._expand_conv(h)))
            h = self.act_depthwise(self._bn1(self._depthwise_conv(self._depthwise_pad(h))))
            h = self._bn2(self._project_conv(h))
            return self.skip_add.add(x, h) if self.residual else h
        block.forward = types.MethodType(block_forward, block)
    def model_forward(self, x):
        x = self.act_stem(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = self.act_head(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(x.mean(dim=(2, 3))))
    model.forward = types.MethodType(model_forward, model)
    tq.fuse_modules(model, groups, inplace=True, fuse_custom_config_dict={
        "additional_fuser_method_mapping": {(nn.Conv2d, nn.BatchNorm2d, nn.ReLU6): fuse_conv_bn_relu6}})
    assert sum(isinstance(m, nni.ConvReLU2d) for m in model.modules()) == 2 + 15 + 16
    wrapped = tq.QuantWrapper(model).eval()
    wrapped.qconfig = tq.get_default_qconfig("x86")
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.prepare(wrapped, inplace=True)
        with torch.no_grad():
            for i in range(0, len(calib), 32):
                wrapped(calib[i:i + 32])
        tq.convert(wrapped, inplace=True)
    return wrapped


def export_fp32_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def ort_session(path: Path):
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x.numpy()})[0]


def ort_static(fp32_onnx: Path, calib: torch.Tensor, out: Path, method: str = "MinMax") -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib[i:i + 32].numpy()} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method))
    return out


# --- the three benchmarks -------------------------------------------------------------------
def efficientnet_rows(args, base: dict) -> list[dict]:
    n_calib = args.calib or (64 if args.quick else 256)
    n_eval = args.eval or (200 if args.quick else 1000)
    model, _ = load_model("efficientnet-lite0")
    images = photos()
    calib = random_crops(images, n_calib, seed=0)
    sets = {"crops": random_crops(images, n_eval, seed=1), "fashion": fashion_224(n_eval)}
    log.info("EfficientNet-Lite0: %d calibration crops, %d eval crops + %d Fashion-MNIST",
             n_calib, n_eval, n_eval)
    ref = {k: logits_of(model, x) for k, x in sets.items()}
    calib_batches = [calib[i:i + 32] for i in range(0, len(calib), 32)]
    rows, runners = [], {"fp32": model}
    common = dict(base, model="efficientnet-lite0", num_bits=8, group_size=None)
    rows.append(dict(common, method="fp32", tool=f"torch {torch.__version__}", num_bits=32,
                     top1_agreement=1.0, kl=0.0))
    def lowbit_row(observer):
        start = time.perf_counter()
        q = lowbit.quantize(model, from_spec(f"static:{observer}"), data=calib_batches)
        quant_s = time.perf_counter() - start
        got = {k: logits_of(q, x) for k, x in sets.items()}
        rows.append(dict(common, method=f"static int8 ({observer})", tool="lowbit",
                         quant_s=round(quant_s, 1), **quality(ref, got)))
        log.info("lowbit %s: %s", observer, {k: v for k, v in rows[-1].items() if "top1" in k})
        dump(args, rows)
        return q, got

    lowbit_model, lowbit_got = lowbit_row(args.observer)
    runners["lowbit"] = lowbit_model
    rows[-1]["float_crossings"] = float_crossings(lowbit_model)
    rows[-1]["int8_layers"] = len(lowbit_model.lowbit_report.quantized)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # lowbit's own model exported as QDQ ONNX, run in ONNX Runtime
        export_onnx(lowbit_model, sets["crops"][:1], tmp / "lowbit_qdq.onnx")
        run_export = ort_session(tmp / "lowbit_qdq.onnx")
        got = {k: logits_of(run_export, x) for k, x in sets.items()}
        row = dict(common, method=f"static int8 ({args.observer}) ONNX QDQ export",
                   tool="lowbit -> onnxruntime", **quality(ref, got))
        row["top1_agreement_vs_lowbit_int8"] = round(top1_agreement(lowbit_got["crops"], got["crops"]), 4)
        row["top1_agreement_vs_lowbit_int8_fashion"] = round(
            top1_agreement(lowbit_got["fashion"], got["fashion"]), 4)
        rows.append(row)
        runners["lowbit_onnx"] = run_export
        log.info("lowbit ONNX export: %s", row)
        dump(args, rows)
        # peer 1: torch.ao eager static PTQ
        start = time.perf_counter()
        ao = torch_ao_static(model, calib, calib)
        ao_s = time.perf_counter() - start
        got = {k: logits_of(ao, x) for k, x in sets.items()}
        rows.append(dict(common, method="static int8 (x86 qconfig: histogram act, per-channel w)",
                         tool=f"torch.ao eager {torch.__version__}", quant_s=round(ao_s, 1),
                         **quality(ref, got)))
        runners["torch.ao"] = ao
        log.info("torch.ao: %s", rows[-1])
        dump(args, rows)
        # peer 2: ONNX Runtime quantize_static (QDQ, per-channel)
        import onnxruntime
        fp32_onnx = export_fp32_onnx(model, calib[:1], tmp / "fp32.onnx")
        runners["ort_fp32"] = ort_session(fp32_onnx)
        # ORT's Entropy calibration keeps every activation of every batch: OOM-killed at 21 GB
        # RSS on 256 crops here, so only its default (MinMax) runs.
        for method in ("MinMax",):
            if args.quick and method != "MinMax":
                continue
            start = time.perf_counter()
            path = ort_static(fp32_onnx, calib, tmp / f"ort_{method}.onnx", method)
            ort_s = time.perf_counter() - start
            run = ort_session(path)
            got = {k: logits_of(run, x) for k, x in sets.items()}
            rows.append(dict(common, method=f"quantize_static QDQ per-channel ({method})",
                             tool=f"onnxruntime {onnxruntime.__version__}",
                             quant_s=round(ort_s, 1), **quality(ref, got)))
            if method == "MinMax":
                runners["ort_int8"] = run
            log.info("onnxruntime %s: %s", method, rows[-1])
            dump(args, rows)
        rows.append(dict(common, method="fp32", tool=f"onnxruntime {onnxruntime.__version__}",
                         num_bits=32))
        # latency, interleaved, fp32 in the same run
        for batch, rounds, calls in ((1, args.rounds, 10), (16, args.rounds, 2)):
            x = sets["crops"][:batch].contiguous()
            ms = latency(runners, x, rounds, calls)
            log.info("latency batch %d (ms): %s", batch, ms)
            key = f"latency_ms_b{batch}"
            for row in rows:
                who = _runner_of(row)
                if who in ms:
                    row[key] = ms[who]
                    row[f"latency_vs_fp32_b{batch}"] = round(ms[who] / ms["fp32"], 3)
    dump(args, rows)
    if args.all_observers:  # the Fashion-MNIST CNN shows every observer side by side anyway
        for observer in EFFNET_OBSERVERS:
            if observer != args.observer:
                lowbit_row(observer)
    for row in rows:
        if "latency_ms_b1" in row:
            row["latency_ms"] = {"batch_1": row.get("latency_ms_b1"), "batch_16": row.get("latency_ms_b16")}
    return rows


def dump(args, rows) -> None:
    """Partial results, so that an interrupted run still leaves its measurements."""
    Path(args.out + ".partial").write_text(json.dumps(rows, indent=1) + "\n")


def _runner_of(row: dict) -> str | None:
    if row["method"] == "fp32" and row["tool"].startswith("torch"):
        return "fp32"
    if row["tool"] == "lowbit" and "float_crossings" in row:
        return "lowbit"
    if row["tool"] == "lowbit -> onnxruntime":
        return "lowbit_onnx"
    if row["tool"].startswith("torch.ao"):
        return "torch.ao"
    if row["tool"].startswith("onnxruntime") and row["method"] == "fp32":
        return "ort_fp32"
    if row["tool"].startswith("onnxruntime") and "(MinMax)" in row["method"]:
        return "ort_int8"
    return None


def fashion_rows(args, base: dict) -> list[dict]:
    from lowbit.models.fashion_cnn import load_fashion_cnn, to_input

    model = load_fashion_cnn()
    images, labels = lowbit.data.fashion_mnist("test")
    train, _ = lowbit.data.fashion_mnist("train")
    n = 2000 if args.quick else 10000
    x, y = to_input(images[:n]), labels[:n]
    g = torch.Generator().manual_seed(0)
    calib = to_input(train[torch.randperm(len(train), generator=g)[:512]])
    calib_batches = [calib[i:i + 64] for i in range(0, len(calib), 64)]

    def acc(m):
        return round((logits_of(m, x, 500).argmax(-1) == y).double().mean().item(), 4)

    ref = logits_of(model, x, 500)
    common = dict(base, model="fashion-cnn", group_size=None)
    fp32_acc = round((ref.argmax(-1) == y).double().mean().item(), 4)
    rows = [dict(common, method="fp32", tool=f"torch {torch.__version__}", num_bits=32,
                 accuracy=fp32_acc, eval_images=n)]
    for observer in OBSERVERS:
        q = lowbit.quantize(model, from_spec(f"static:{observer}"), data=calib_batches)
        got = logits_of(q, x, 500)
        rows.append(dict(common, method=f"static int8 ({observer})", tool="lowbit", num_bits=8,
                         accuracy=acc(q), accuracy_drop_points=round(100 * (fp32_acc - acc(q)), 2),
                         top1_agreement=round(top1_agreement(ref, got), 4),
                         kl=round(kl_divergence(ref, got), 5), eval_images=n))
        log.info("fashion-cnn %s: %s", observer, rows[-1]["accuracy"])
    return rows


def minilm_rows(args, base: dict) -> list[dict]:
    model, tok = load_model("minilm")
    model.eval()
    lines = [l.strip() for l in lowbit.data.austen("emma") if len(l.split()) >= 6]
    sentences = lines[:400 if args.quick else 2000]
    q = lowbit.quantize(model, from_spec("w8a8:act_group_size=none"))  # per token: cosine 0.996 needs no groups

    @torch.inference_mode()
    def embed(m, texts):
        out = []
        for i in range(0, len(texts), 64):
            enc = tok(texts[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = m(**enc).last_hidden_state                                    # (B, T, 384)
            mask = enc["attention_mask"][..., None].float()
            out.append(F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    cos = cosine_agreement(embed(model, sentences), embed(q, sentences))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tok.vocab_size, (32, 128), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ms = latency({"fp32": lambda b: model(**b), "dynamic": lambda b: q(**b)}, batch,
                 rounds=args.rounds, calls=2)
    fp32_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))
    q_bytes = sum(m.weight.nbytes for m in q.modules() if isinstance(m, lowbit.nn.QLinear))
    common = dict(base, model="all-MiniLM-L6-v2", group_size=None)
    tput = {k: round(32 * 128 / (v / 1000)) for k, v in ms.items()}
    return [
        dict(common, method="fp32", tool=f"torch {torch.__version__}", num_bits=32,
             cosine=1.0, latency_ms={"batch_32x128": ms["fp32"]}, tokens_per_s=tput["fp32"],
             linear_weight_mb=round(fp32_bytes / 2**20, 2)),
        dict(common, method="dynamic W8A8 (per-token act, per-channel w)", tool="lowbit",
             num_bits=8, cosine=round(cos, 5), sentences=len(sentences),
             latency_ms={"batch_32x128": ms["dynamic"]}, tokens_per_s=tput["dynamic"],
             throughput_vs_fp32=round(ms["fp32"] / ms["dynamic"], 3),
             linear_weight_mb=round(q_bytes / 2**20, 2),
             linear_weight_ratio=round(fp32_bytes / q_bytes, 3),
             kernel=next(m for m in q.modules() if isinstance(m, lowbit.nn.QLinear)).kernel(
                 torch.zeros(4096, 384))),
    ]


def sensitivity_rows(args, base: dict) -> list[dict]:
    """How fragile is top-1 on the evaluation sets, whatever the quantizer? The fp32 model's
    confidence, and the agreement of two float perturbations far gentler than int8: bf16
    weights and activations, and 1% relative Gaussian noise on every weight (seed 0)."""
    n_eval = args.eval or (200 if args.quick else 1000)
    model, _ = load_model("efficientnet-lite0")
    sets = {"crops": random_crops(photos(), n_eval, seed=1), "fashion": fashion_224(n_eval)}
    with torch.no_grad():
        ref = {k: logits_of(model, x) for k, x in sets.items()}
        bf16 = copy.deepcopy(model).bfloat16()
        noisy = copy.deepcopy(model)
        g = torch.Generator().manual_seed(0)
        for p in noisy.parameters():
            p.add_(p * 0.01 * torch.randn(p.shape, generator=g))
        perturbed = {"bf16 weights and activations": {k: logits_of(lambda b: bf16(b.bfloat16()), x) for k, x in sets.items()},
                     "fp32 + 1% weight noise": {k: logits_of(noisy, x) for k, x in sets.items()}}
    common = dict(base, model="efficientnet-lite0", tool=f"torch {torch.__version__}", group_size=None)
    rows = []
    for name, got in perturbed.items():
        row = dict(common, method=f"sensitivity: {name}", num_bits=16 if "bf16" in name else 32,
                   **quality(ref, got))
        for k, logits in ref.items():
            top2 = logits.softmax(-1).topk(2, -1).values
            row[f"fp32_mean_max_prob_{k}"] = round(top2[:, 0].mean().item(), 4)
            row[f"fp32_median_top2_margin_{k}"] = round((top2[:, 0] - top2[:, 1]).median().item(), 4)
        rows.append(row)
        log.info("%s: %s", name, {k: v for k, v in row.items() if "top1" in k or "fp32_" in k})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets, fewer rounds")
    parser.add_argument("--only", choices=("efficientnet", "fashion", "minilm", "sensitivity"), action="append")
    parser.add_argument("--observer", default="histogram", help="lowbit observer timed and exported")
    parser.add_argument("--all-observers", action="store_true",
                        help="EfficientNet with every observer, not only --observer")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--calib", type=int, default=None, help="EfficientNet calibration crops")
    parser.add_argument("--eval", type=int, default=None, help="EfficientNet eval crops (and as many Fashion-MNIST)")
    parser.add_argument("--out", default=str(ROOT / "results" / "ptq.json"))
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 7)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    base = {"machine": dict(machine(), loadavg_at_start=round(os.getloadavg()[0], 2)),
            "lowbit_version": VERSION}
    rows = []
    for name, fn in (("fashion", fashion_rows), ("minilm", minilm_rows), ("efficientnet", efficientnet_rows),
                     ("sensitivity", sensitivity_rows)):
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        rows += fn(args, base)
        log.info("%s done in %.0f s", name, time.perf_counter() - start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results.merge(out, rows)
    log.info("merged %d rows into %s", len(rows), out)


if __name__ == "__main__":
    main()
