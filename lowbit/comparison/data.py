"""From (model, data name) to the task a comparison measures: what kind of model it is and
which bundled, held-out data its quality is measured on.

Names: ``austen`` (text kinds: LM perplexity on Pride and Prejudice, calibration on Emma and
Mansfield Park; encoder sentences from all six novels, labelled by novel), ``photos``
(EfficientNet-style RGB CNNs: crops of the bundled photos), ``fashion`` (1-channel CNNs:
Fashion-MNIST, labelled), or a path to a UTF-8 ``.txt`` file or a ``.jsonl`` file of
``{"text": ...}`` lines (text kinds: its last tenth is held out for evaluation, the rest
calibrates).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .tasks import KINDS, EncoderTask, ImageTask, LMTask, RNNTask, Task

TEXT_KINDS = ("causal-lm", "rnn-lm", "encoder")
IMAGE_DATA = ("photos", "fashion")


def detect_kind(model: nn.Module, tokenizer: Any = None) -> str:
    """``causal-lm``, ``rnn-lm``, ``encoder`` or ``cnn``, from the model's layers and config."""
    from ..models.hf import is_causal_lm

    if any(isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)) for m in model.modules()):
        return "rnn-lm"
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        causal = type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")) or is_causal_lm(config)
        return "causal-lm" if causal else "encoder"
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return "cnn"
    raise ValueError(f"cannot tell what kind of model {type(model).__name__} is (expected a Hugging "
                     f"Face causal LM or encoder, a model with nn.LSTM/GRU, or a CNN with Conv2d); "
                     f"pass kind= one of {', '.join(KINDS)}")


def _first_conv_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def default_data(kind: str, model: nn.Module) -> str:
    if kind in TEXT_KINDS:
        return "austen"
    return "fashion" if _first_conv_channels(model) == 1 else "photos"


def _wrong_kind(kind: str, data: str, expected: str) -> ValueError:
    return ValueError(f"data {data!r} does not fit a {kind} model: it needs {expected}")


def make_task(kind: str, model: nn.Module, tokenizer: Any, data: Any, *, quick: bool) -> Task:
    """The task of ``kind`` on ``data`` (a :class:`Task` is returned as it is)."""
    if isinstance(data, Task):
        if data.kind != kind:
            raise _wrong_kind(kind, type(data).__name__, f"a {kind} task")
        return data
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    data = default_data(kind, model) if data is None else data
    if not isinstance(data, (str, Path)):
        raise TypeError(f"data must be a name ({', '.join(('austen',) + IMAGE_DATA)}), a .txt file "
                        f"or a lowbit.comparison Task; got {type(data).__name__}")
    name = str(data)
    if kind in TEXT_KINDS:
        if name in IMAGE_DATA:
            raise _wrong_kind(kind, name, "text: 'austen' or a .txt file")
        if tokenizer is None:
            raise ValueError(f"a {kind} comparison needs the model's tokenizer to read text")
        if kind == "encoder":
            return _encoder_task(tokenizer, name, quick)
        return _lm_task(kind, tokenizer, name, quick)
    if name == "austen" or name.endswith((".txt", ".jsonl")):
        raise _wrong_kind(kind, name, "images: 'photos' (RGB, 224x224) or 'fashion' (1-channel 28x28)")
    if name not in IMAGE_DATA:
        raise ValueError(f"unknown image data {name!r}; expected one of {', '.join(IMAGE_DATA)}")
    channels = _first_conv_channels(model)
    if channels is not None and channels != (1 if name == "fashion" else 3):
        raise _wrong_kind(kind, name, f"images with {channels} channel(s) at its first conv")
    return _fashion_task(quick) if name == "fashion" else _photos_task(quick)


def _text_tokens(tokenizer, name: str, num: int, calib_n: int, seq_len: int):
    from ..data import calibration_batches, eval_tokens
    from ..data.tokens import token_ids

    if name == "austen":
        return (eval_tokens(tokenizer, num_tokens=num),
                calibration_batches(tokenizer, n=calib_n, seq_len=seq_len, seed=0),
                f"first {num} tokens of Pride and Prejudice",
                f"{calib_n} windows of {seq_len} tokens from Emma and Mansfield Park (seed 0)")
    from ..data import text_file

    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data {name!r}: no such file; expected 'austen', a UTF-8 .txt "
                                f"file or a .jsonl file of {{\"text\": ...}} lines")
    ids = torch.from_numpy(token_ids(tokenizer, text_file(path)).astype("int64"))
    held = max(ids.numel() // 10, 2)
    if ids.numel() - held < seq_len:
        raise ValueError(f"{path} has {ids.numel()} tokens; a comparison needs at least "
                         f"{seq_len * 10 // 9 + 1} (its last tenth is held out)")
    tokens, train = ids[-held:][:num], ids[:-held]
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, train.numel() - seq_len + 1, (calib_n,), generator=g)
    calib = train[starts[:, None] + torch.arange(seq_len)]
    return (tokens, calib, f"last tenth of {path.name} ({tokens.numel()} tokens)",
            f"{calib_n} windows of {seq_len} tokens from the rest of {path.name} (seed 0)")


def _lm_task(kind: str, tokenizer, name: str, quick: bool) -> LMTask:
    if kind == "rnn-lm":
        num, calib_n, seq_len = (8192, 16, 256) if quick else (32768, 64, 256)
    else:
        num, calib_n, seq_len = (2048, 8, 512) if quick else (32768, 128, 512)
    tokens, calib, eval_desc, calib_desc = _text_tokens(tokenizer, name, num, calib_n, seq_len)
    cls = RNNTask if kind == "rnn-lm" else LMTask
    return cls(tokens=tokens, calib=calib, tokenizer=tokenizer, repeats=1 if quick else 3,
               new_tokens=16 if quick else 128,
               description={"eval": eval_desc, "calibration": calib_desc})


def _encoder_task(tokenizer, name: str, quick: bool) -> EncoderTask:
    from ..data import NOVELS, austen

    if name != "austen":
        from ..data import text_file

        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data {name!r}: no such file; expected 'austen' or a .txt file")
        lines = [l.strip() for l in text_file(path).splitlines() if len(l.split()) >= 4]
        held = lines[-max(len(lines) // 2, 1):]
        return EncoderTask(sentences=held[:2000], calib_sentences=lines[:64], tokenizer=tokenizer,
                           description={"eval": f"{len(held[:2000])} lines of {path.name}",
                                        "calibration": f"64 lines of {path.name}"})
    per_novel = 60 if quick else 300
    sentences, labels, calib = [], [], []
    for label, novel in enumerate(NOVELS):
        lines = [l.strip() for l in austen(novel) if len(l.split()) >= 6]
        sentences += lines[200:200 + per_novel]
        labels += [label] * len(lines[200:200 + per_novel])
        calib += lines[:64 // len(NOVELS) + 1]
    return EncoderTask(sentences=sentences, labels=torch.tensor(labels), calib_sentences=calib[:64],
                       tokenizer=tokenizer, repeats=3 if quick else 5,
                       description={"eval": f"{len(sentences)} lines of the six Austen novels, "
                                            f"labelled by novel (linear probe: even/odd split)",
                                    "calibration": "64 other lines of the same novels"})


def _photos_task(quick: bool) -> ImageTask:
    from ..data.images import photo_crops

    n, calib_n = (200, 64) if quick else (1000, 256)
    return ImageTask(images=photo_crops(n, seed=1), calib=photo_crops(calib_n, seed=0),
                     repeats=3 if quick else 5,
                     description={"eval": f"{n} random 224x224 crops of the bundled photos (seed 1), "
                                          f"no labels: top-1 agreement with fp32",
                                  "calibration": f"{calib_n} other crops (seed 0)"})


def _fashion_task(quick: bool) -> ImageTask:
    from ..data import fashion_mnist
    from ..models.fashion_cnn import to_input

    test_x, test_y = fashion_mnist("test")
    train_x, train_y = fashion_mnist("train")
    n = 2000 if quick else 10000
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train_x), generator=g)
    return ImageTask(images=to_input(test_x[:n]), labels=test_y[:n].long(),
                     calib=to_input(train_x[order[:512]]),
                     train=(to_input(train_x[order]), train_y[order].long()), repeats=5 if quick else 10,
                     description={"eval": f"first {n} Fashion-MNIST test images (labelled)",
                                  "calibration": "512 training images (seed 0); QAT trains on all 60k"})
