"""Token streams for the language-model benchmark protocol (see shared DATA.md).

calibration = 128 windows of 512 tokens drawn with seed 0 from emma + mansfieldpark;
evaluation = the first 32768 tokens of prideprejudice, scored in 512-token windows.

Each novel is tokenized on its own as one string (lines joined by "\\n") with
``add_special_tokens=False``: no BOS/EOS is inserted anywhere, so a window is plain text that
may start mid-sentence. Token ids are cached in ``cache_dir("tokens")`` keyed by the text and
the tokenizer, so only the first call per (tokenizer, novel) pays for tokenizing (~1 s).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile

import numpy as np
import torch

from .._cache import cache_dir
from .text import austen_text

log = logging.getLogger(__name__)

CALIBRATION_NOVELS = ("emma", "mansfieldpark")
EVAL_NOVEL = "prideprejudice"


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of everything that decides the tokenizer's output ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{state}".encode()).hexdigest()[:16]


def token_ids(tokenizer, text: str) -> np.ndarray:
    """``text`` tokenized without special tokens, as int32 ids; cached on disk."""
    if tokenizer is None or not callable(tokenizer):
        raise TypeError(f"expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    text_hash = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = cache_dir("tokens") / f"{text_hash}-{tokenizer_fingerprint(tokenizer)}.npy"
    if path.is_file():
        return np.load(path)
    log.info("tokenizing %d characters (cached in %s)", len(text), path.parent)
    ids = np.asarray(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"],
                     dtype=np.int32)
    fd, tmp = tempfile.mkstemp(suffix=".npy", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        np.save(f, ids)
    os.replace(tmp, path)
    return ids


def novel_tokens(tokenizer, novel: str) -> torch.Tensor:
    """All tokens of one Austen novel, LongTensor (num_tokens,)."""
    return torch.from_numpy(token_ids(tokenizer, austen_text(novel)).astype(np.int64))


def calibration_batches(tokenizer, n: int = 128, seq_len: int = 512, seed: int = 0,
                        novels: tuple[str, ...] = CALIBRATION_NOVELS) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens at uniform random offsets, LongTensor (n, seq_len).

    The novels are tokenized separately and concatenated in order; the offsets come from a
    ``torch.Generator`` seeded with ``seed``, so equal arguments give equal batches everywhere.
    """
    if n < 1 or seq_len < 1:
        raise ValueError(f"n and seq_len must be positive, got n={n}, seq_len={seq_len}")
    if isinstance(novels, str):
        novels = (novels,)
    stream = torch.cat([novel_tokens(tokenizer, novel) for novel in novels])  # (T,)
    if stream.numel() < seq_len:
        raise ValueError(f"{'+'.join(novels)} has {stream.numel()} tokens, fewer than "
                         f"seq_len={seq_len}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len + 1, (n,), generator=generator)
    offsets = starts[:, None] + torch.arange(seq_len)  # (n, seq_len)
    return stream[offsets]


def eval_tokens(tokenizer, novel: str = EVAL_NOVEL, num_tokens: int = 32768) -> torch.Tensor:
    """The first ``num_tokens`` tokens of ``novel`` (no BOS added), LongTensor (num_tokens,)."""
    tokens = novel_tokens(tokenizer, novel)
    if tokens.numel() < num_tokens:
        raise ValueError(f"{novel} has only {tokens.numel()} tokens; asked for {num_tokens}")
    return tokens[:num_tokens].clone()
