"""QAT benchmark -> results/qat.json (the Fashion-MNIST CNN part of the QAT issue).

The CNN of lowbit/models/fashion_cnn.py, its BatchNorms folded into the convs first (lowbit.fold),
so that the fake-quantized conv weights include BN. At each setting, PTQ and QAT side by side:

- W8A8, W4A4, W2A8 (per-channel weights, per-tensor asymmetric activations at each layer's
  input). PTQ = ``prepare_qat(..., QAT(learn=None))`` evaluated with no training (min/max fake
  quantization); QAT = the same prepared model fine-tuned from the fp32 weights with
  ``lowbit.qat.fit`` (AdamW, cosine decay, cross-entropy; ``--kd`` adds distillation from the
  fp32 model, which did not help at 1 epoch here). W4A4/W2A8 also run with the first conv and
  the fc at W8A8, the usual practice for low-bit CNNs (said in the row).
- int8 on real kernels: the W8A8 QAT-trained float weights, through ``StaticPTQ``.
- Peer: PyTorch's eager QAT (torch.ao prepare_qat/convert, x86 qconfig, fused conv+bn+relu,
  FloatFunctional for the residual add) on the same model, data order, steps, batch size,
  optimizer and lr schedule, converted to its real int8 kernels.
- Control: the fp32 model fine-tuned on the same schedule with no quantization, since the
  fp32 checkpoint is trained briefly and QAT's extra steps also train it further.

Every lowbit and torch.ao run sees the same batches (one seeded order, same random flips).
Rows are merged into results/qat.json by (model, method, tool), written atomically, so rows
that other scripts add survive; ``--quick`` writes to a temporary file instead.

    python benchmarks/qat.py                  # full, 936 steps a run: ~10 min on 2 cores
    python benchmarks/qat.py --quick          # 30 steps, 1000 test images: a smoke run
    python benchmarks/qat.py --only w4a4 --steps 400
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import lowbit  # noqa: E402
import results  # noqa: E402  (benchmarks/results.py)
import lowbit.data  # noqa: E402
from lowbit.models.fashion_cnn import FashionCNN, ResidualBlock, load_fashion_cnn, test_accuracy, to_input  # noqa: E402
from lowbit.doctor import machine  # noqa: E402
from lowbit.fold import fold_model, trace_pairs  # noqa: E402
from lowbit.nn.swap import set_submodule  # noqa: E402
from lowbit.qat import (QAT, QATConv2d, QATConvBn2d, QATLinear, distillation_loss, fit,  # noqa: E402
                        prepare_qat)
from lowbit.recipes import from_spec  # noqa: E402

log = logging.getLogger("qat")
MODEL = "fashion-cnn"
GROUPS = ("control", "w8a8", "w8a8-bn", "w4a4", "w2a8", "torch.ao")
EDGE_LAYERS = ("stem.0", "fc")  # the first conv (its input is the image) and the classifier


@dataclass(frozen=True)
class Schedule:
    """One training schedule, shared by every QAT run and the torch.ao peer."""

    steps: int
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 1e-4
    seed: int = 0

    def describe(self) -> str:
        return (f"AdamW lr {self.lr:g} cosine to 0 over {self.steps} steps, batch "
                f"{self.batch_size}, weight decay {self.weight_decay:g} (none on quantizer "
                f"scales), random flips, seed {self.seed}")


@dataclass(frozen=True)
class Setting:
    """A bit-width setting: all layers at (weight_bits, act_bits), or the edge layers at W8A8."""

    weight_bits: int
    act_bits: int
    edge_8bit: bool = False

    @property
    def name(self) -> str:
        return f"W{self.weight_bits}A{self.act_bits}"

    def describe(self) -> str:
        if self.edge_8bit:
            return f"{self.name}, first conv and fc W8A8"
        return f"{self.name}, every conv and the fc"


# --- data -----------------------------------------------------------------------------------
def train_batches(schedule: Schedule) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of (uint8 images (B, 28, 28), labels (B,)), epochs of one seeded
    shuffle each, half of the images flipped left-right: the same list for every run."""
    images, labels = lowbit.data.fashion_mnist("train")
    g = torch.Generator().manual_seed(schedule.seed)
    bs, per_epoch = schedule.batch_size, len(images) // schedule.batch_size
    batches = []
    while len(batches) < schedule.steps:
        order = torch.randperm(len(images), generator=g)
        for i in range(min(per_epoch, schedule.steps - len(batches))):
            idx = order[i * bs:(i + 1) * bs]
            xb = images[idx].clone()
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb[flip] = xb[flip].flip(-1)
            batches.append((xb, labels[idx]))
    return batches


def calibration_batch(n: int = 512, seed: int = 1) -> torch.Tensor:
    """``n`` training images as ONE batch: prepare_qat's activation ranges come from the first
    batch it sees only (see the report), so one batch of 512 is the whole calibration set."""
    images, _ = lowbit.data.fashion_mnist("train")
    g = torch.Generator().manual_seed(seed)
    return to_input(images[torch.randperm(len(images), generator=g)[:n]])   # (n, 1, 28, 28)


# --- models ---------------------------------------------------------------------------------
def folded(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with each BatchNorm folded into its conv (the BN becomes Identity)."""
    model = copy.deepcopy(model).eval()
    conv_bn, _ = trace_pairs(model, lambda m: m(example))
    fold_model(model, conv_bn)
    return model


def prepare(model: nn.Module, setting: Setting, learn: str | None, calib: torch.Tensor) -> nn.Module:
    """The fake-quantized copy of ``model`` for ``setting``, activation ranges from ``calib``."""
    exclude = EDGE_LAYERS if setting.edge_8bit else ()
    q = prepare_qat(model, QAT(num_bits=setting.weight_bits, act_bits=setting.act_bits,
                               learn=learn, exclude=exclude), data=[calib])
    if setting.edge_8bit:
        prepare_qat(q, QAT(num_bits=8, act_bits=8, learn=learn, include=EDGE_LAYERS),
                    data=[calib], inplace=True)
    return q


def unwrap_qat(model: nn.Module) -> nn.Module:
    """A copy with each QATConv2d/QATLinear replaced by its trained float layer (``.module``)."""
    model = copy.deepcopy(model)
    names = [n for n, m in model.named_modules() if isinstance(m, (QATConv2d, QATConvBn2d, QATLinear))]
    for name in names:
        set_submodule(model, name, model.get_submodule(name).module)
    return model.eval()


def formats_of(model: nn.Module) -> dict[str, str]:
    """{layer: "weight format / input format"} as the QAT layers train them."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (QATConv2d, QATConvBn2d, QATLinear)):
            acts = m.input_quant.fmt.label() if m.input_quant is not None else "float"
            out[name] = f"{m.weight_quant.stored_fmt.label()} / {acts} (learn={m.weight_quant.learn})"
    return out


# --- training -------------------------------------------------------------------------------
def optimizer_for(model: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    """AdamW with cosine decay, stepped by a post-step hook (fit takes no scheduler); learned
    quantizer scales and offsets get no weight decay."""
    quant, rest = [], []
    for name, p in model.named_parameters():
        (quant if name.endswith((".scale", ".zero_point")) else rest).append(p)
    groups = [{"params": rest, "weight_decay": schedule.weight_decay}]
    if quant:
        groups.append({"params": quant, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=schedule.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, schedule.steps) / schedule.steps)))
    opt.register_step_post_hook(lambda *_: sched.step())
    return opt


def loss_fn(teacher: nn.Module | None, kd_weight: float = 0.5, temperature: float = 2.0):
    """Cross-entropy, or (1 - kd_weight) CE + kd_weight KD(fp32 teacher) when a teacher is given."""
    def loss(model: nn.Module, batch) -> torch.Tensor:
        images, labels = batch
        x = to_input(images)                                                  # (B, 1, 28, 28)
        logits = model(x)
        ce = F.cross_entropy(logits, labels)
        if teacher is None:
            return ce
        with torch.no_grad():
            target = teacher(x)
        kd = distillation_loss(logits, target, temperature=temperature)
        return (1 - kd_weight) * ce + kd_weight * kd
    return loss


def train(model: nn.Module, batches, schedule: Schedule, desc: str, teacher=None, **fit_kw) -> float:
    """Fine-tune ``model`` in place with lowbit.qat.fit; returns the wall time in seconds."""
    opt = optimizer_for(model, schedule)
    start = time.perf_counter()
    losses = fit(model, loss_fn(teacher), batches, optimizer=opt, desc=desc, **fit_kw)
    seconds = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10):]
    log.info("%s: %d steps in %.0f s, loss %.3f -> %.3f", desc, len(losses), seconds,
             losses[0], sum(tail) / len(tail))
    return seconds


# --- the torch.ao peer -----------------------------------------------------------------------
class _AOBlock(ResidualBlock):
    """ResidualBlock with the add and the final ReLU as one quantizable FloatFunctional."""

    def __init__(self, channels: int):
        from torch.ao.nn.quantized import FloatFunctional
        super().__init__(channels)
        self.skip_add = FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        return self.skip_add.add_relu(x, self.bn2(self.conv2(h)))


class AOFashionCNN(FashionCNN):
    """FashionCNN for torch.ao eager mode: same parameters and names, Quant/DeQuantStub around."""

    FUSE = [["stem.0", "stem.1", "stem.2"], ["block.conv1", "block.bn1", "block.relu1"],
            ["block.conv2", "block.bn2"], ["conv3.0", "conv3.1", "conv3.2"],
            ["conv4.0", "conv4.1", "conv4.2"]]

    def __init__(self, width: int = 16):
        from torch.ao.quantization import DeQuantStub, QuantStub
        super().__init__(width)
        self.block = _AOBlock(width)
        self.quant, self.dequant = QuantStub(), DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.stem(self.quant(x))))
        x = self.conv4(self.conv3(x))
        return self.dequant(self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)))


def torch_ao_qat(fp32: FashionCNN, batches, schedule: Schedule, n_eval: int, fp32_acc: float) -> dict:
    """torch.ao eager QAT on the same batches and schedule; the int8 model's accuracy etc."""
    from torch.ao import quantization as tq
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats

    model = AOFashionCNN(fp32.fc.in_features // 2)
    model.load_state_dict(fp32.state_dict(), strict=True)
    port_acc = test_accuracy(model.eval(), n_eval)
    if abs(port_acc - fp32_acc) > 1e-9:
        raise RuntimeError(f"torch.ao port of FashionCNN is wrong: fp32 accuracy {port_acc} != "
                           f"{fp32_acc} (FashionCNN)")
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():  # torch.ao eager mode warns of its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        model.train()
        tq.fuse_modules_qat(model, AOFashionCNN.FUSE, inplace=True)
        model.qconfig = tq.get_default_qat_qconfig("x86")
        tq.prepare_qat(model, inplace=True)
        # torch.ao's own recipe for the late steps, at the fractions fit uses for lowbit:
        # BN statistics frozen at half, observers at 80% of the steps.
        opt = optimizer_for(model, schedule)
        done = [0]

        def late_steps(*_):
            done[0] += 1
            if done[0] == int(0.5 * schedule.steps):
                model.apply(freeze_bn_stats)
            if done[0] == int(0.8 * schedule.steps):
                model.apply(tq.disable_observer)
        opt.register_step_post_hook(late_steps)
        start = time.perf_counter()
        losses = fit(model, loss_fn(None), batches, optimizer=opt, desc="torch.ao QAT W8A8",
                     freeze_observers_at=None, freeze_bn_at=None)
        train_s = time.perf_counter() - start
        fake_acc = test_accuracy(model.eval(), n_eval)
        int8 = tq.convert(model.eval(), inplace=False)
        acc = test_accuracy(int8, n_eval)
    log.info("torch.ao QAT: %d steps in %.0f s, loss %.3f; fake-quant %.4f, int8 %.4f",
             len(losses), train_s, losses[-1], fake_acc, acc)
    return {"accuracy": acc, "fake_quant_accuracy": fake_acc, "port_fp32_accuracy": port_acc,
            "train_s": train_s}


# --- rows -----------------------------------------------------------------------------------
class Bench:
    """Shared inputs of every run, and the rows so far (merged into ``out`` after each)."""

    def __init__(self, args) -> None:
        self.args, self.out, self.rows = args, Path(args.out), []
        self.schedule = Schedule(steps=args.steps, lr=args.lr)
        self.n_eval = 1000 if args.quick else 10000
        self.fp32 = load_fashion_cnn()
        self.calib = calibration_batch()
        self.model = folded(self.fp32, self.calib[:8])
        self.fp32_acc = test_accuracy(self.fp32, self.n_eval)
        folded_acc = test_accuracy(self.model, self.n_eval)
        if abs(folded_acc - self.fp32_acc) > 2 / self.n_eval:
            raise RuntimeError(f"BN folding changed the accuracy: {folded_acc} vs {self.fp32_acc}")
        self.batches = train_batches(self.schedule)
        self.base = {"model": MODEL, "fp32_accuracy": self.fp32_acc, "eval_images": self.n_eval,
                     "batch_size": self.schedule.batch_size, "quick": bool(args.quick),
                     "machine": dict(machine(), loadavg_at_start=round(os.getloadavg()[0], 2)),
                     "lowbit_version": lowbit.__version__}
        log.info("fashion-cnn fp32 %.4f on %d test images; %d training steps of %d images",
                 self.fp32_acc, self.n_eval, self.schedule.steps, self.schedule.batch_size)

    def add(self, method: str, tool: str, weight_bits: int, act_bits: int, accuracy: float,
            notes: str, train_steps: int = 0, train_s: float = 0.0, **extra) -> None:
        row = dict(self.base, method=method, tool=tool, weight_bits=weight_bits,
                   act_bits=act_bits, accuracy=round(accuracy, 4),
                   delta_points=round(100 * (accuracy - self.fp32_acc), 2),
                   train_steps=train_steps, train_s=round(train_s, 1), notes=notes, **extra)
        self.rows.append(row)
        log.info("%-58s %-18s acc %.4f (%+.2f points)", method, tool, accuracy, row["delta_points"])
        results.merge(self.out, [row])

    def qat(self, setting: Setting, learn: str | None, kd: bool) -> tuple[nn.Module, float]:
        """QAT of ``setting`` from the folded fp32 weights; returns (model, train seconds)."""
        q = prepare(self.model, setting, learn, self.calib)
        teacher = self.model if kd else None
        seconds = train(q, self.batches, self.schedule, f"QAT {setting.name} learn={learn}",
                        teacher=teacher)
        return q.eval(), seconds


def run_control(b: Bench) -> None:
    ft = copy.deepcopy(b.model)
    seconds = train(ft, b.batches, b.schedule, "fp32 fine-tune")
    b.add("fp32 fine-tuned (same schedule, no quantization)", f"torch {torch.__version__}", 32, 32,
          test_accuracy(ft.eval(), b.n_eval), "control: what the QAT steps alone buy; BN folded, "
          f"cross-entropy; {b.schedule.describe()}", b.schedule.steps, seconds)


def run_setting(b: Bench, setting: Setting, learns: tuple, kd: bool) -> dict:
    """PTQ and QAT rows of one setting; returns {label: (trained model, train seconds)}."""
    w, a = setting.weight_bits, setting.act_bits
    ptq = prepare(b.model, setting, None, b.calib).eval()
    b.add(f"PTQ {setting.name}{' (edges W8A8)' if setting.edge_8bit else ''} min/max fake quant",
          "lowbit", w, a, test_accuracy(ptq, b.n_eval),
          f"prepare_qat(QAT(learn=None)) on the BN-folded model, no training; {setting.describe()}; "
          "activation ranges = min/max of 512 training images", formats=formats_of(ptq))
    trained = {}
    for learn in learns:
        q, seconds = b.qat(setting, learn, kd)
        label = "LSQ" if learn == "lsq" else "observers" if learn is None else learn
        label += ", CE+KD" if kd else ""
        loss = "0.5 CE + 0.5 KD(fp32 teacher, T=2)" if kd else "cross-entropy"
        b.add(f"QAT {setting.name}{' (edges W8A8)' if setting.edge_8bit else ''} ({label})",
              "lowbit", w, a, test_accuracy(q, b.n_eval),
              f"fake-quant accuracy after lowbit.qat.fit from the fp32 weights; {setting.describe()}; "
              f"learn={learn}; {loss}; {b.schedule.describe()}; observers frozen at 80%",
              b.schedule.steps, seconds, formats=formats_of(q))
        trained[label] = (q, seconds)
    return trained


def run_int8(b: Bench, trained: dict) -> None:
    """The W8A8 QAT-trained float weights on lowbit's real int8 kernels (StaticPTQ)."""
    for label, (q, seconds) in trained.items():
        int8 = lowbit.quantize(unwrap_qat(q), from_spec("static:minmax"), data=[b.calib])
        kernels = sorted({r.kernel for r in int8.lowbit_report.quantized})
        b.add(f"QAT W8A8 ({label}) -> real int8 kernels", "lowbit", 8, 8,
              test_accuracy(int8, b.n_eval),
              "real int8 kernels (StaticPTQ on QAT-trained weights): the .module weights of the "
              "W8A8 QAT model, StaticPTQ(observer='minmax') calibrated on the same 512 images "
              "(per-channel int8 weights = the grid QAT trained on for learn=None)",
              b.schedule.steps, seconds, kernels=kernels, int8_layers=len(int8.lowbit_report.quantized))


def run_int8_bn(b: Bench) -> None:
    """W8A8 QAT from the unfolded fp32 model, BN folding simulated (QATConvBn2d: BatchNorm keeps
    batch statistics until frozen at 50%, as in torch.ao), then lowbit's real int8 kernels."""
    for learn in (None, "lsq"):
        q = prepare_qat(b.fp32, QAT(num_bits=8, act_bits=8, learn=learn), data=[b.calib])
        seconds = train(q, b.batches, b.schedule, f"QAT W8A8 BN simulated learn={learn}")
        q.eval()
        label = "LSQ" if learn == "lsq" else "observers"
        b.add(f"QAT W8A8 ({label}, BN folding simulated)", "lowbit", 8, 8, test_accuracy(q, b.n_eval),
              "fake-quant accuracy; prepare_qat(QAT(batchnorm='simulate')) on the unfolded fp32 model: "
              "each conv's weight fake-quantized after folding BN's running statistics into it, BN "
              f"on batch statistics until frozen at 50%; learn={learn}; cross-entropy; "
              f"{b.schedule.describe()}; observers frozen at 80%", b.schedule.steps, seconds,
              formats=formats_of(q))
        int8 = lowbit.quantize(unwrap_qat(q), from_spec("static:minmax"), data=[b.calib])
        b.add(f"QAT W8A8 ({label}, BN folding simulated) -> real int8 kernels", "lowbit", 8, 8,
              test_accuracy(int8, b.n_eval),
              "real int8 kernels: StaticPTQ(observer='minmax') folds the trained BN into the trained "
              "conv weights and quantizes them, calibrated on the same 512 images",
              b.schedule.steps, seconds, kernels=sorted({r.kernel for r in int8.lowbit_report.quantized}),
              int8_layers=len(int8.lowbit_report.quantized))


def run_torch_ao(b: Bench) -> None:
    r = torch_ao_qat(b.fp32, b.batches, b.schedule, b.n_eval, b.fp32_acc)
    b.add("QAT W8A8 -> real int8 kernels", f"torch.ao {torch.__version__}", 8, 8, r["accuracy"],
          "eager QAT: fuse_modules_qat (conv+bn+relu), get_default_qat_qconfig('x86') (per-channel "
          "symmetric int8 weights, quint8 activations with reduce_range), FloatFunctional.add_relu "
          f"for the residual, QuantStub/DeQuantStub; same batches and {b.schedule.describe()}, "
          "cross-entropy; BN stats frozen at 50%, observers at 80%; convert() to int8 (x86 engine)",
          b.schedule.steps, r["train_s"], fake_quant_accuracy=round(r["fake_quant_accuracy"], 4),
          port_fp32_accuracy=r["port_fp32_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="30 steps, 1000 test images, results to a temporary file")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run (default 936 = 2 epochs; 30 with --quick)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--kd", choices=("none", "low-bit", "all"), default="none",
                        help="distil from the fp32 model: never, for W4A4/W2A8 only, or always")
    parser.add_argument("--only", choices=GROUPS, action="append")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.steps = args.steps or (30 if args.quick else 936)
    default_out = Path(tempfile.gettempdir()) / "lowbit-qat-quick.json" if args.quick \
        else ROOT / "results" / "qat.json"
    args.out = args.out or str(default_out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    b = Bench(args)
    b.add("fp32", f"torch {torch.__version__}", 32, 32, b.fp32_acc,
          "lowbit/models/fashion_cnn.py checkpoint (load_fashion_cnn), no quantization")
    groups = args.only or GROUPS
    kd_low = args.kd != "none"
    if "control" in groups:
        run_control(b)
    if "w8a8" in groups:
        trained = run_setting(b, Setting(8, 8), (None, "lsq"), kd=args.kd == "all")
        run_int8(b, trained)
    if "w8a8-bn" in groups:
        run_int8_bn(b)
    for bits in ((4, 4), (2, 8)):
        if f"w{bits[0]}a{bits[1]}" in groups:
            for edge in (False, True):
                run_setting(b, Setting(*bits, edge_8bit=edge), ("lsq",), kd=kd_low)
    if "torch.ao" in groups:
        run_torch_ao(b)
    log.info("%d rows merged into %s in %.0f s", len(b.rows), b.out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
