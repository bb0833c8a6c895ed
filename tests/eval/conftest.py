"""Tiny models shared by the lowbit.eval tests (built here, no downloads)."""
from __future__ import annotations

import pytest
import torch
from torch import nn


class BigramLM(nn.Module):
    """logits[t] = head(embed(token[t])): next-token scores depend on the current token only."""

    def __init__(self, vocab: int = 7, dim: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab, dim, generator=gen))
            self.head.weight.copy_(torch.randn(vocab, dim, generator=gen))
            self.head.bias.copy_(torch.randn(vocab, generator=gen))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids))  # (B, T, V)


@pytest.fixture
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture
def bigram_lm():
    """The BigramLM class: ``bigram_lm(vocab=7, dim=3, seed=0)``."""
    return BigramLM
