"""A small conv-BN-ReLU CNN with a residual block and pooling, trained by lowbit on Fashion-MNIST.

It is the labelled accuracy benchmark for static PTQ (benchmarks/ptq.py) and, later, QAT.
Training takes at most ~4 minutes on 2 cores (fewer steps on a busy machine); the checkpoint goes to the lowbit cache (safetensors),
never to git::

    python examples/fashion_cnn.py            # train (or reuse the cached checkpoint), evaluate
    python examples/fashion_cnn.py --retrain  # train again
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from lowbit._cache import cache_dir
from lowbit.data import fashion_mnist

log = logging.getLogger("lowbit")
CHECKPOINT = "fashion_cnn.safetensors"


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]


class ResidualBlock(nn.Module):
    """conv-bn-relu -> conv-bn, plus the input, then relu."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(channels, channels)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(channels, channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(x + self.bn2(self.conv2(h)))


class FashionCNN(nn.Module):
    """(B, 1, 28, 28) normalised images -> (B, 10) logits; 17k parameters."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(1, width), nn.ReLU(), nn.MaxPool2d(2))       # 14x14
        self.block = ResidualBlock(width)
        self.pool = nn.MaxPool2d(2)                                                       # 7x7
        self.conv3 = nn.Sequential(*_conv_bn(width, 2 * width), nn.ReLU())
        self.conv4 = nn.Sequential(*_conv_bn(2 * width, 2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.stem(x)))
        x = self.conv4(self.conv3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (B, 2 * width) -> (B, 10)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 28, 28) -> float (n, 1, 28, 28) in [-1, 1]."""
    return (images.float().unsqueeze(1) / 255.0 - 0.5) / 0.5


def train(epochs: int = 3, batch_size: int = 128, seed: int = 0,
          time_budget_s: float = 240.0) -> FashionCNN:
    """AdamW with a one-cycle schedule and random horizontal flips.

    The number of steps is ``epochs`` worth, cut to what fits ``time_budget_s`` at the speed
    of the first steps (so a busy machine trains less rather than for an hour).
    """
    torch.manual_seed(seed)
    images, labels = fashion_mnist("train")
    x, y = to_input(images), labels
    model = FashionCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = min(epochs * (len(x) // batch_size), _affordable_steps(model, x[:batch_size], time_budget_s))
    log.info("fashion-cnn: training %d steps of %d images", steps, batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    done = 0
    with tqdm(total=steps, desc="train fashion-cnn", unit="step", disable=None) as bar:
        while done < steps:
            order = torch.randperm(len(x))
            for i in range(min(len(x) // batch_size, steps - done)):
                idx = order[i * batch_size:(i + 1) * batch_size]
                xb = x[idx]
                flip = torch.rand(len(xb)) < 0.5
                xb[flip] = xb[flip].flip(-1)
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


def _affordable_steps(model: nn.Module, xb: torch.Tensor, budget_s: float) -> int:
    """Steps that fit ``budget_s``, timed on a throwaway copy of the model (3 steps)."""
    import copy
    probe = copy.deepcopy(model).train()
    opt = torch.optim.SGD(probe.parameters(), lr=0.0)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        loss = probe(xb).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return max(50, int(budget_s / min(times)))


def checkpoint_path() -> Path:
    return cache_dir("models", "fashion-cnn") / CHECKPOINT


def load_fashion_cnn(*, retrain: bool = False) -> FashionCNN:
    """The trained CNN from the cache, training it first (a few minutes) when absent."""
    path = checkpoint_path()
    if path.is_file() and not retrain:
        model = FashionCNN()
        model.load_state_dict(load_file(path), strict=True)
        return model.eval()
    start = time.perf_counter()
    model = train()
    log.info("fashion-cnn trained in %.0f s", time.perf_counter() - start)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)  # atomic: never a half-written checkpoint
    return model


@torch.inference_mode()
def test_accuracy(model: nn.Module, n: int | None = None, batch_size: int = 500) -> float:
    images, labels = fashion_mnist("test")
    images, labels = images[:n], labels[:n]
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(to_input(images[i:i + batch_size]))
        correct += (logits.argmax(-1) == labels[i:i + batch_size]).sum().item()
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    model = load_fashion_cnn(retrain=args.retrain)
    print(f"fashion-cnn fp32 test accuracy: {test_accuracy(model):.4f}  ({checkpoint_path()})")


if __name__ == "__main__":
    main()
