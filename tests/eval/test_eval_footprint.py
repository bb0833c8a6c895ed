"""footprint: bytes and bits per weight, tied weights once, lowbit modules self-reported."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from lowbit.eval import footprint, size_on_disk


class TinyLM(nn.Module):
    """Embedding 10x4, one Linear 4x4 with bias, a 10x4 head (tied or not), one buffer."""

    def __init__(self, tied: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        if tied:
            self.lm_head.weight = self.embed.weight
        self.register_buffer("table", torch.zeros(3))

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.lm_head


class FakeQuantLinear(nn.Module):
    """Stands in for a lowbit quantized linear: 4-bit packed weight + fp16 scales."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        packed = torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
        self.register_buffer("packed", packed)
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float16))
        self.shadow = nn.Linear(in_features, out_features)  # a child that must not count again

    def lowbit_footprint(self) -> tuple[int, int]:
        nbytes = self.packed.numel() + 2 * self.scale.numel()
        return nbytes, self.in_features * self.out_features


def test_tied_weights_counted_once():
    fp = footprint(TinyLM(tied=True))
    assert fp.num_params == 40 + 16 + 4  # embedding (= head), proj weight, proj bias
    assert fp.weight_bytes == 4 * 60 and fp.buffer_bytes == 12
    assert fp.size_mb == pytest.approx(252 / 1e6)
    assert fp.bpw_model == 32.0
    assert (fp.num_linear_weights, fp.linear_bytes, fp.bpw_linears) == (20, 80, 32.0)
    assert fp.bpw_head is None  # a tied head is the embedding


def test_untied_head_reported_apart():
    fp = footprint(TinyLM(tied=False))
    assert fp.num_params == 100 and fp.num_linear_weights == 20
    assert fp.bpw_head == 32.0


def test_lowbit_modules_report_themselves():
    model = TinyLM(tied=True)
    model.proj = FakeQuantLinear(4, 4)  # 8 packed bytes + 8 scale bytes for 16 weights
    fp = footprint(model)
    assert fp.num_params == 40 + 16 and fp.weight_bytes == 160 + 16
    assert fp.buffer_bytes == 12  # packed/scale buffers are inside the lowbit module's count
    assert fp.bpw_linears == 8.0 and fp.num_linear_weights == 16
    assert fp.bpw_model == pytest.approx(8 * 176 / 56)


def test_hf_llama_counts(tiny_llama):
    fp = footprint(tiny_llama)
    assert fp.num_params == sum(p.numel() for p in tiny_llama.parameters())
    decoder = [m for m in tiny_llama.model.layers.modules() if isinstance(m, nn.Linear)]
    assert len(decoder) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert fp.num_linear_weights == sum(m.weight.numel() for m in decoder)
    assert fp.bpw_model == fp.bpw_linears == 32.0 and fp.bpw_head is None


def test_size_on_disk(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 23)
    os.link(tmp_path / "a.bin", tmp_path / "sub" / "a-link.bin")  # same file: once
    assert size_on_disk(tmp_path / "a.bin") == 100
    assert size_on_disk(tmp_path) == 123
    with pytest.raises(FileNotFoundError):
        size_on_disk(tmp_path / "missing")
