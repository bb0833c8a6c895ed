"""SmoothQuant: the migration is exact in float; the recipe folds into the norms of a Llama."""
import pytest
import torch
from torch import nn

from lowbit.algorithms.smoothquant import migrate, smoothing_scales
from lowbit.nn.llm_int8 import StaticW8A8Linear
from lowbit.recipes.smoothquant import SmoothQuant, StaticW8A8, smooth_pairs


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    for name, p in model.named_parameters():  # non-trivial norms and outlier channels
        if "norm" in name:
            p.data = 1 + torch.rand_like(p) * (1 + 20 * (torch.arange(p.numel()) % 17 == 0))
    return model


def test_scales_follow_the_formula():
    act = torch.tensor([1.0, 10.0, 100.0])
    W1, W2 = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[-4.0, 0.1, 0.1]])
    s = smoothing_scales(act, [W1, W2], alpha=0.5)
    torch.testing.assert_close(s, torch.tensor([1 / 2, 10 ** 0.5, 100 ** 0.5 / 2 ** 0.5]))


def test_migration_is_exact_in_float_layernorm():
    torch.manual_seed(0)
    norm, fc1, fc2 = nn.LayerNorm(32), nn.Linear(32, 16), nn.Linear(32, 8)
    norm.weight.data, norm.bias.data = torch.randn(32), torch.randn(32)
    x = torch.randn(5, 32) * torch.linspace(0.1, 30, 32)
    before = (fc1(norm(x)), fc2(norm(x)))
    s = smoothing_scales(norm(x).abs().amax(0), [fc1.weight, fc2.weight], 0.7)
    w, b, (W1, W2) = migrate(norm.weight.data, norm.bias.data, [fc1.weight.data, fc2.weight.data], s)
    norm.weight.data, norm.bias.data, fc1.weight.data, fc2.weight.data = w, b, W1, W2
    for y0, y1 in zip(before, (fc1(norm(x)), fc2(norm(x)))):
        assert (y0 - y1).abs().max() < 1e-4


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_recipe_migration_leaves_llama_output_unchanged_before_rounding(alpha, monkeypatch):
    import lowbit.recipes.smoothquant as llm
    model = _tiny_llama()
    ids = torch.randint(0, 96, (2, 12))
    ref = model(ids).logits
    monkeypatch.setattr(llm, "_swap_w8a8", lambda model, recipe, absmax, act: None)  # no rounding
    SmoothQuant(alpha=alpha).apply(model, torch.randint(0, 96, (4, 16)))
    assert (model(ids).logits - ref).abs().max() < 1e-4
    q_norm = model.model.layers[0].input_layernorm.weight
    assert not torch.allclose(q_norm, torch.ones_like(q_norm))  # scales really were folded


def test_pairs_found_on_llama_and_clear_error_elsewhere():
    pairs = smooth_pairs(_tiny_llama())
    assert [p[0] for p in pairs[:2]] == ["model.layers.0.input_layernorm",
                                         "model.layers.0.post_attention_layernorm"]
    assert [n.rsplit(".", 1)[1] for n, _ in pairs[1][2]] == ["gate_proj", "up_proj"]
    assert pairs[2][0] == "model.layers.0.mlp.up_proj"  # up rows -> down: act(gate) * up / s
    with pytest.raises(ValueError, match="no normalisation -> linear pair"):
        smooth_pairs(nn.Sequential(nn.Linear(4, 4)))


def _w8a8_static_error(X, W):
    """Output error of int8 per-tensor X (max|X| / 127) x int8 per-channel W."""
    sx = X.abs().max() / 127
    sw = W.abs().amax(1, keepdim=True) / 127
    Y = (torch.round(X / sx) * sx) @ (torch.round(W / sw) * sw).T
    return (Y - X @ W.T).pow(2).mean()


def test_smoothing_lowers_w8a8_error_with_outlier_channels():
    torch.manual_seed(0)
    X = torch.randn(256, 128)
    X[:, ::16] *= 50  # a few outlier features, as in LLM activations (SmoothQuant Fig. 4)
    W = torch.randn(64, 128) * 0.05
    s = smoothing_scales(X.abs().amax(0), [W], alpha=0.5)
    _, _, (Ws,) = migrate(torch.ones(128), None, [W], s)
    naive, smoothed = _w8a8_static_error(X, W), _w8a8_static_error(X / s, Ws)
    assert smoothed < naive / 4


def test_recipe_quantizes_a_llama_to_static_w8a8():
    from lowbit import quantize
    model = _tiny_llama()
    calib, ids = torch.randint(0, 96, (8, 16)), torch.randint(0, 96, (2, 16))
    q = quantize(model, SmoothQuant(alpha=0.5), data=calib)
    assert isinstance(q.model.layers[0].mlp.down_proj, StaticW8A8Linear)
    assert isinstance(q.lm_head, nn.Linear)  # the head stays float by default
    err = (q(ids).logits - model(ids).logits).abs().max()
    assert err < 0.5 * model(ids).logits.abs().max()


def test_static_w8a8_linear_is_exact_integer_math():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    from lowbit.formats import INT8
    from lowbit.qtensor import QTensor
    q = StaticW8A8Linear(QTensor.from_float(lin.weight.detach(), INT8), lin.bias, 0.02)
    x = torch.randn(3, 64)
    x_q = torch.round(x / 0.02).clamp(-127, 127)
    y_ref = (x_q.double() @ q.weight.data.double().T).float() * (0.02 * q.weight.scale.reshape(-1)) + lin.bias
    torch.testing.assert_close(q(x), y_ref, rtol=1e-6, atol=1e-6)
