"""lowbit.quantize with WeightOnly and DynamicPTQ: swapping, reports, errors."""
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import QEmbedding, QLinear
from lowbit.recipes import DynamicPTQ, WeightOnly


class Tiny(nn.Module):
    def __init__(self, width=128, vocab=50):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.conv = nn.Conv1d(width, width, 1)
        self.block = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as in many LMs

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(self.block(h) + h)


def test_weight_only_swaps_every_linear_and_reports():
    model = Tiny()
    q = lowbit.quantize(model, WeightOnly(num_bits=4, group_size=64))
    assert isinstance(model.block[0], nn.Linear), "not in place by default"
    assert all(isinstance(q.block[i], QLinear) for i in (0, 2)) and isinstance(q.head, QLinear)
    rows = {r.name: r for r in q.lowbit_report.layers}
    assert rows["block.0"].status == "quantized" and rows["block.0"].kernel
    assert rows["block.0"].format == "uint4 asym g64"
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert (q(ids) - model(ids)).norm() / model(ids).norm() < 0.2


def test_tied_embedding_and_head_share_one_packed_table():
    q = lowbit.quantize(Tiny(), WeightOnly(num_bits=8, group_size=None, embeddings=True))
    assert isinstance(q.embed, QEmbedding)
    assert q.embed.weight is q.head.weight


def test_exclude_is_reported():
    q = lowbit.quantize(Tiny(), WeightOnly(num_bits=8, group_size=None, exclude=("head",)))
    rows = {r.name: r for r in q.lowbit_report.layers}
    assert rows["head"].status == "excluded" and isinstance(q.head, nn.Linear)
    assert "head" in q.lowbit_report.table()


def test_group_that_does_not_divide_raises_naming_the_layer():
    model = nn.Sequential(nn.Linear(576, 64))
    with pytest.raises(ValueError, match=r"^0: group_size=128 does not divide its input size 576"):
        lowbit.quantize(model, WeightOnly(num_bits=4, group_size=128))


def test_ragged_layer_skipped_only_when_asked():
    model = nn.Sequential(nn.Linear(576, 64), nn.Linear(64, 128))
    q = lowbit.quantize(model, WeightOnly(num_bits=4, group_size=128, skip_ragged=True))
    rows = {r.name: r for r in q.lowbit_report.layers}
    assert rows["0"].status == "skipped" and "does not divide" in rows["0"].reason
    assert isinstance(q[0], nn.Linear)
    # 64 inputs is not a multiple of 128 either
    assert rows["1"].status == "skipped"


def test_unquantizable_layer_named_in_include_raises():
    with pytest.raises(ValueError, match=r"layer 'conv' is a Conv1d, which this recipe cannot quantize"):
        lowbit.quantize(Tiny(), WeightOnly(num_bits=8, group_size=None, include=("conv",)))


def test_dynamic_ptq_runs_w8a8_on_every_linear():
    model = Tiny()
    q = lowbit.quantize(model, DynamicPTQ())
    assert {m.op for m in q.modules() if isinstance(m, QLinear)} == {"linear_w8a8_dynamic"}
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert (q(ids) - model(ids)).norm() / model(ids).norm() < 0.05


def test_dynamic_ptq_token_groups_fall_back_per_layer_and_survive_save(tmp_path):
    model = Tiny(width=96)  # 96 is not a multiple of 64: block[0] and head fall back to per token
    q = lowbit.quantize(model, DynamicPTQ())
    assert q.block[0].act_group_size is None and q.block[2].act_group_size == 64
    rows = {r.name: r for r in q.lowbit_report.layers}
    assert rows["block.2"].format.endswith("int8 dynamic per token x 64") and rows["block.0"].format.endswith("per token")
    lowbit.save(q, tmp_path / "w8a8")
    loaded = lowbit.load(tmp_path / "w8a8", model=Tiny(width=96))
    assert loaded.block[2].act_group_size == 64 and loaded.block[0].act_group_size is None
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), q(ids))
    with pytest.raises(ValueError, match="act_group_size must be None .* multiple of 64, got 48"):
        DynamicPTQ(act_group_size=48)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_bits=1), "num_bits must be 2..8"),
    (dict(num_bits=4, group_size=100), "power of two"),
    (dict(num_bits=4, method="magic"), "method must be one of"),
])
def test_bad_recipe_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightOnly(**kwargs)


def test_quantize_rejects_non_recipe():
    with pytest.raises(TypeError, match="expected a lowbit recipe"):
        lowbit.quantize(nn.Linear(4, 4), {"bits": 4})


def test_gpt2_conv1d_layers_are_quantized_and_reported(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_positions=32, n_embd=64, n_layer=2, n_head=4)).eval()
    ids = torch.randint(0, 96, (2, 16))
    for spec in ("rtn:w8", "w8a8"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = lowbit.quantize(model, spec)
        rows = {r.name: r for r in q.lowbit_report.layers}
        for name in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"):
            assert rows[name].status == "quantized" and rows[name].module_type == "Conv1D"
        assert rows["transformer.wte"].status == "not-handled"          # listed, with the reason
        with torch.no_grad():
            ref, out = model(ids).logits, q(ids).logits
        assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    lowbit.save(q, tmp_path / "g")
    with torch.no_grad():
        assert torch.equal(lowbit.load(tmp_path / "g")(ids).logits, q(ids).logits)
