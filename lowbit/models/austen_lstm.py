"""A character-level LSTM language model trained by lowbit on Jane Austen (the recurrent model).

No trained LSTM ships in a package, so lowbit trains one: embedding -> 2-layer ``nn.LSTM``
(hidden 512) -> linear head, on every novel but Pride and Prejudice (held out for evaluation),
for a fixed number of steps with a fixed seed (deterministic; 437 s on a busy 2-core machine).
The checkpoint is cached as safetensors + JSON (never pickle, never committed); later calls load it.
``examples/austen_lstm.py`` is the script around it; ``lowbit.models.load_model("austen-lstm")``
returns ``(model, tokenizer)``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .._cache import cache_dir
from ..data.text import NOVELS, austen_text

log = logging.getLogger("lowbit")
EVAL_NOVEL = "prideprejudice"
TRAIN_NOVELS = tuple(n for n in NOVELS if n != EVAL_NOVEL)
UNKNOWN = "\x00"  # id 0: any character the training text does not have


class CharEncoding(dict):
    """What a tokenizer call returns: ``enc["input_ids"]`` and ``enc.input_ids``."""

    @property
    def input_ids(self):
        return self["input_ids"]


class CharTokenizer:
    """One id per character of ``alphabet`` (id 0 is the unknown character)."""

    def __init__(self, alphabet: str):
        if not alphabet or alphabet[0] != UNKNOWN or len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet must start with {UNKNOWN!r} and repeat no character, got {alphabet[:20]!r}")
        self.alphabet = alphabet
        self._ids = {ch: i for i, ch in enumerate(alphabet)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(UNKNOWN + "".join(sorted(set(text) - {UNKNOWN})))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._ids)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(ch, 0) for ch in text]

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(self.alphabet[i] for i in ids)

    def __call__(self, text: str, return_tensors: str | None = None, add_special_tokens: bool = False,
                 verbose: bool = False) -> CharEncoding:
        """Hugging Face style: ``{"input_ids": list}``, or a ``(1, T)`` LongTensor with ``"pt"``."""
        ids = self.encode(text)
        if return_tensors is None:
            return CharEncoding(input_ids=ids)
        if return_tensors != "pt":
            raise ValueError(f"CharTokenizer returns lists or PyTorch tensors (return_tensors='pt'), got {return_tensors!r}")
        return CharEncoding(input_ids=torch.tensor([ids], dtype=torch.long))


@dataclass(frozen=True)
class AustenLSTMConfig:
    vocab_size: int
    embed_dim: int = 64
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for key in ("vocab_size", "embed_dim", "hidden_size", "num_layers"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"AustenLSTMConfig.{key} must be a positive int, got {getattr(self, key)!r}")


class AustenLSTM(nn.Module):
    """``(B, T)`` character ids -> ``(B, T, vocab)`` next-character logits."""

    def __init__(self, config: AustenLSTMConfig):
        super().__init__()
        self.lowbit_config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_size, config.num_layers,
                            batch_first=True, dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(input_ids))  # (B, T, hidden)
        return self.head(h)  # (B, T, vocab)


def train(steps: int = 360, batch_size: int = 32, seq_len: int = 128, seed: int = 0) -> tuple[AustenLSTM, CharTokenizer]:
    """AdamW with a one-cycle schedule on random windows of the training novels (deterministic)."""
    torch.manual_seed(seed)
    text = austen_text(TRAIN_NOVELS)
    tokenizer = CharTokenizer.from_text(text)
    stream = torch.tensor(tokenizer.encode(text), dtype=torch.long)  # (N,)
    model = AustenLSTM(AustenLSTMConfig(tokenizer.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    log.info("austen-lstm: training %d steps of %d x %d characters", steps, batch_size, seq_len)
    model.train()
    offsets = torch.arange(seq_len + 1)
    for _ in (bar := tqdm(range(steps), desc="train austen-lstm", unit="step", disable=None)):
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size, 1))
        window = stream[starts + offsets]  # (B, T + 1)
        logits = model(window[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval(), tokenizer


def checkpoint_path() -> Path:
    """Folder of the cached checkpoint: ``model.safetensors`` + ``config.json``."""
    return cache_dir("models", "austen-lstm")


def load_austen_lstm(*, retrain: bool = False) -> tuple[AustenLSTM, CharTokenizer]:
    """``(model, tokenizer)`` from the cache, training first (a few minutes) when absent."""
    folder = checkpoint_path()
    weights, meta = folder / "model.safetensors", folder / "config.json"
    if weights.is_file() and meta.is_file() and not retrain:
        saved = json.loads(meta.read_text())
        model = AustenLSTM(AustenLSTMConfig(**saved["model"]))
        model.load_state_dict(load_file(weights), strict=True)
        return model.eval(), CharTokenizer(saved["alphabet"])
    start = time.perf_counter()
    model, tokenizer = train()
    log.info("austen-lstm trained in %.0f s", time.perf_counter() - start)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights.with_suffix(".tmp")))
    meta.with_suffix(".tmp").write_text(json.dumps({"model": asdict(model.lowbit_config),
                                                    "alphabet": tokenizer.alphabet}))
    weights.with_suffix(".tmp").replace(weights)  # atomic: never a half-written checkpoint
    meta.with_suffix(".tmp").replace(meta)
    return model, tokenizer


def eval_ids(tokenizer: CharTokenizer, num_tokens: int = 32768) -> torch.Tensor:
    """The held-out evaluation stream: the first ``num_tokens`` characters of Pride and Prejudice."""
    return torch.tensor(tokenizer.encode(austen_text(EVAL_NOVEL)[:num_tokens]), dtype=torch.long)
