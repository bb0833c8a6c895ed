"""Pruning: the algorithms against straightforward references, sparse storage round trips, the
recipe on tiny decoder LMs and CNNs, and the errors of bad input."""
import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import lowbit
from lowbit.algorithms.gptq import gptq, sparsegpt
from lowbit.algorithms.prune import keep_by_score, magnitude_keep, parse_pattern, wanda_keep
from lowbit.formats import int_format, sparse_bits_per_weight
from lowbit.nn import QLinear, SparseQLinear
from lowbit.qtensor import QTensor, SparseQTensor
from lowbit.recipes import Prune, Sequence, WeightOnly, from_spec, to_spec

U4G64 = int_format(4, signed=False, symmetric=False, group_size=64).replace(scale_dtype="bfloat16")
FORMATS = [U4G64, int_format(4, group_size=32), int_format(8),
           int_format(3, signed=False, symmetric=False, group_size=64).replace(scale_dtype="bfloat16")]


def problem(N=48, K=256, T=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g)
    X = torch.randn(T, K, generator=g) @ (torch.eye(K) + 0.3 * torch.randn(K, K, generator=g) / math.sqrt(K))
    X = X * (0.2 + 3 * torch.rand(K, generator=g))       # uneven input scales, as in LLMs
    return W, X, X.T @ X


def out_err(W, Wq, X):
    return float(((X @ (W - Wq).T) ** 2).mean())


def naive_sparsegpt(W, H, sparsity, block, damp=0.01):
    """Algorithm 1 of the SparseGPT paper written directly: every column's error is applied to
    ALL later columns at once (no lazy batching); the mask of each block of ``block`` columns
    is chosen from w^2 / [H^-1]_jj^2 when the block starts."""
    W = W.clone().double()
    K = W.shape[1]
    H = H.double() + damp * torch.diag(H).mean() * torch.eye(K, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    keep = torch.ones_like(W, dtype=torch.bool)
    for j in range(K):
        if j % block == 0:
            blk = slice(j, min(j + block, K))
            sal = (W[:, blk] ** 2 / torch.diag(U)[blk] ** 2).reshape(-1)
            drop = int(sal.numel() * sparsity)
            m = torch.ones_like(sal, dtype=torch.bool)
            m[torch.topk(sal, drop, largest=False).indices] = False
            keep[:, blk] = m.reshape(W.shape[0], -1)
        err = W[:, j] * (~keep[:, j]) / U[j, j]
        W[:, j:] -= err[:, None] * U[j, j:][None, :]
    return keep, W * keep


# --- algorithms ----------------------------------------------------------------------------
def test_sparsegpt_lazy_batches_match_the_direct_algorithm():
    W, X, H = problem()
    ref_keep, ref_W = naive_sparsegpt(W, H, 0.5, block=64)
    r = sparsegpt(W, H, sparsity=0.5, lazy_batch=64)
    assert (r.keep == ref_keep).float().mean() > 0.995
    assert torch.allclose(r.W.double(), ref_W, atol=1e-3, rtol=1e-3)


def test_sparsegpt_beats_wanda_beats_magnitude_on_output_error():
    W, X, H = problem()
    sgpt = sparsegpt(W, H, sparsity=0.5).W
    wanda = W * wanda_keep(W, torch.diag(H), 0.5)
    mag = W * magnitude_keep(W, 0.5)
    assert out_err(W, sgpt, X) < out_err(W, wanda, X) < out_err(W, mag, X)
    assert float((sgpt == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)


def test_sparsegpt_without_pruning_is_gptq():
    W, X, H = problem()
    a = gptq(W, H, U4G64, act_order=False)
    b = sparsegpt(W, H, sparsity=0.0, fmt=U4G64).q
    assert torch.equal(a.q, b.q) and torch.equal(a.scale, b.scale)


def test_gptq_with_a_mask_keeps_it_and_compensates():
    W, X, H = problem()
    keep = wanda_keep(W, torch.diag(H), 0.5)
    q = gptq(W, H, U4G64, keep=keep)
    st = SparseQTensor.from_int(q.q, q.scale, q.zero_point, U4G64, keep)
    rtn = QTensor.from_float(W * keep, U4G64).dequantize() * keep
    assert torch.equal(st.keep(), keep)
    assert out_err(W, st.dequantize(), X) < out_err(W, rtn, X)


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_patterns_keep_n_of_every_m(pattern):
    n, m = parse_pattern(pattern)
    W, X, H = problem()
    for keep in (sparsegpt(W, H, pattern=(n, m)).keep, wanda_keep(W, torch.diag(H), pattern=(n, m)),
                 magnitude_keep(W, pattern=(n, m)), sparsegpt(W, H, pattern=(n, m), fmt=U4G64).keep):
        assert torch.equal(keep.reshape(W.shape[0], -1, m).sum(-1), torch.full((W.shape[0], W.shape[1] // m), n))


def test_joint_sparsegpt_quantizes_and_prunes_in_one_sweep():
    W, X, H = problem()
    r = sparsegpt(W, H, sparsity=0.5, fmt=U4G64)
    st = SparseQTensor.from_int(r.q.q, r.q.scale, r.q.zero_point, U4G64, r.keep)
    float_only = sparsegpt(W, H, sparsity=0.5).W
    rtn_after = QTensor.from_float(float_only, U4G64).dequantize() * (float_only != 0)
    assert out_err(W, st.dequantize(), X) < out_err(W, rtn_after, X)


def test_magnitude_matches_torch_l1_unstructured():
    from torch.nn.utils import prune

    lin = nn.Linear(96, 40)
    keep = magnitude_keep(lin.weight, 0.5)
    prune.l1_unstructured(lin, "weight", amount=0.5)
    assert torch.equal(keep, lin.weight_mask.bool())


def test_wanda_compares_within_rows():
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    x_sq = torch.tensor([16.0, 1.0, 1.0, 1.0])   # input 0 has norm 4
    keep = wanda_keep(W, x_sq, 0.5)
    assert keep.tolist() == [[True, False, False, True], [True, False, False, True]]


def test_keep_by_score_tensor_vs_row_scope():
    score = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert keep_by_score(score, 0.5, per_row=False).tolist() == [[False, False], [True, True]]
    assert keep_by_score(score, 0.5, per_row=True).tolist() == [[False, True], [False, True]]


# --- sparse storage --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label())
def test_sparse_qtensor_round_trip_is_exact(fmt):
    W, X, H = problem(N=20, K=128)
    r = sparsegpt(W, H, sparsity=0.6, fmt=fmt)
    st = SparseQTensor.from_int(r.q.q, r.q.scale, r.q.zero_point, fmt, r.keep)
    st.validate("w")
    dense = QTensor.from_int(r.q.q, r.q.scale, r.q.zero_point, fmt).dequantize()
    assert torch.equal(st.dequantize(), dense * r.keep)
    assert torch.equal(st.int_values()[r.keep], r.q.q[r.keep])
    again = SparseQTensor.from_tensors(st.tensors("p."), st.layout(), "p.")
    assert torch.equal(again.dequantize(), st.dequantize())
    nnz = int(r.keep.sum())
    expected = 20 * 16 + math.ceil(nnz * fmt.num_bits / 8) + sum(
        t.numel() * t.element_size() for t in (r.q.scale, r.q.zero_point) if t is not None)
    assert st.nbytes == expected


def test_sparse_bits_formula_matches_storage():
    W = torch.randn(64, 256)
    keep = torch.rand(64, 256) > 0.5
    keep[:, :2] = True
    q = QTensor.from_float(W, U4G64)
    st = SparseQTensor.from_int(q.int_values(), q.scale, q.zero_point, U4G64, keep)
    kept = float(keep.float().mean())
    assert st.bits_per_weight == pytest.approx(sparse_bits_per_weight(U4G64, W.numel(), 64, kept), abs=0.01)
    assert st.bits_per_weight < q.bits_per_weight


def test_sparse_qtensor_validate_names_the_damage():
    q = QTensor.from_float(torch.randn(8, 64), U4G64)
    st = SparseQTensor.from_int(q.int_values(), q.scale, q.zero_point, U4G64, torch.rand(8, 64) > 0.5)
    short = SparseQTensor(st.mask, st.values[:-1], st.scale, st.zero_point, st.format, st.shape)
    with pytest.raises(ValueError, match=r"w\.values: the mask keeps \d+ values of 4 bits"):
        short.validate("w")
    bad = SparseQTensor(st.mask, st.values, -st.scale, st.zero_point, st.format, st.shape)
    with pytest.raises(ValueError, match="w.scale holds NaN, inf or negative"):
        bad.validate("w")
    odd = QTensor.from_float(torch.randn(4, 64), U4G64)
    st = SparseQTensor.from_int(odd.int_values(), odd.scale, odd.zero_point, U4G64, torch.ones(4, 64, dtype=torch.bool))
    wide = SparseQTensor(torch.cat([st.mask, torch.full((4, 1), 255, dtype=torch.uint8)], 1), st.values,
                         st.scale, st.zero_point, st.format, st.shape)
    with pytest.raises(ValueError, match="w.mask: a sparse"):
        wide.validate("w")


# --- the recipe on tiny decoder LMs --------------------------------------------------------
def tiny_llama(layers=2, init=0.02):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                                        tie_word_embeddings=True, initializer_range=init)).eval()


def calib(n=8, T=32):
    return torch.randint(0, 96, (n, T), generator=torch.Generator().manual_seed(1))


def assert_round_trip(q, tmp_path):
    """Save and load ``q``; the loaded model's logits are bit-identical. Returns it."""
    ids = calib(2, 16)
    with torch.no_grad():
        out = q(ids).logits
    lowbit.save(q, tmp_path / "ckpt")
    back = lowbit.load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(back(ids).logits, out)
    return back


def block_linears(model):
    return {n: m for n, m in model.named_modules() if ".layers." in n and isinstance(m, (nn.Linear, QLinear, SparseQLinear))}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_recipe_prunes_every_block_linear_and_leaves_the_head(method):
    model = tiny_llama()
    q = lowbit.quantize(model, Prune(method=method, sparsity=0.5), data=calib())
    for name, m in block_linears(q).items():
        zeros = float((m.weight == 0).float().mean())
        assert zeros == pytest.approx(0.5, abs=0.01), name
    assert float((q.lm_head.weight == 0).float().mean()) == 0
    report = {r.name: r for r in q.lowbit_report.layers}
    assert report["model.layers.0.mlp.down_proj"].status == "pruned"
    assert "outside the decoder blocks" in report["lm_head"].reason


def test_joint_mode_stores_sparse_and_round_trips(tmp_path):
    model = tiny_llama()
    q = lowbit.quantize(model, from_spec("sparsegpt:50%,w4g64"), data=calib())
    layers = block_linears(q)
    assert all(isinstance(m, SparseQLinear) for m in layers.values())
    assert all(m.weight.bits_per_weight < 3.6 for m in layers.values())
    back = assert_round_trip(q, tmp_path)
    assert isinstance(back.model.layers[1].mlp.up_proj, SparseQLinear)


def test_prune_then_quantize_keeps_the_zeros_and_stores_them_sparse():
    model = tiny_llama()
    q = lowbit.quantize(model, Sequence(Prune(method="wanda", pattern="2:4"),
                                        WeightOnly(num_bits=4, group_size=64, method="gptq")), data=calib())
    for name, m in block_linears(q).items():
        assert isinstance(m, SparseQLinear), name
        keep = m.weight.keep()
        assert torch.equal(keep.reshape(keep.shape[0], -1, 4).sum(-1), torch.full((keep.shape[0], keep.shape[1] // 4), 2))
        assert bool((m.weight.dequantize()[~keep] == 0).all())
    assert isinstance(q.lm_head, QLinear)        # dense weight: dense storage


def test_weight_only_stores_sparse_only_when_smaller():
    model = tiny_llama()
    lowbit.quantize(model, Prune(method="magnitude", sparsity=0.2), inplace=True)   # 20% < 1/4
    q = lowbit.quantize(model, WeightOnly(num_bits=4, group_size=64))
    assert not any(isinstance(m, SparseQLinear) for m in q.modules())
    q = lowbit.quantize(model, WeightOnly(num_bits=8))                                 # 20% > 1/8
    assert isinstance(q.model.layers[0].mlp.up_proj, SparseQLinear)
    plan = WeightOnly(num_bits=8).plan(model)
    row = next(p for p in plan.layers if p.name == "model.layers.0.mlp.up_proj")
    assert "pruned (bitmask)" in row.format and row.kernel.startswith("reference.")


def test_structured_mlp_pruning_shrinks_the_model_and_reloads(tmp_path):
    model = tiny_llama()
    q = lowbit.quantize(model, Prune(method="wanda", structured="mlp", sparsity=0.25), data=calib())
    for block in q.model.layers:
        assert block.mlp.up_proj.out_features == 96 and block.mlp.down_proj.in_features == 96
    assert q.config.intermediate_size == 96
    assert q.lowbit_report.details["mlp_channels"] == {"before": 128, "after": 96, "blocks": 2}
    assert_round_trip(q, tmp_path)


def test_structured_keeps_the_most_important_channels():
    model = tiny_llama()
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.down_proj.weight[:, :32] *= 100         # these channels dominate the output
    q = lowbit.quantize(model, Prune(method="magnitude", structured="mlp", sparsity=0.5), data=None)
    kept = q.model.layers[0].mlp.down_proj.weight
    assert torch.allclose(kept[:, :32], mlp.down_proj.weight[:, :32])


def test_recovery_distillation_trains_the_pruned_model():
    model = tiny_llama(init=0.2)            # peaked outputs: pruning half the MLP costs real KL
    ids = calib(16, 32)
    recipe = Prune(method="magnitude", structured="mlp", sparsity=0.5)
    before = lowbit.quantize(model, recipe, data=ids)
    after = lowbit.quantize(model, lowbit.recipes.base.replace(recipe, recover_steps=20, recover_lr=3e-4), data=ids)
    assert after.lowbit_report.details["recovery"]["steps"] == 20
    assert not any(p.requires_grad for p in after.parameters())

    def kl(q):
        with torch.no_grad():
            t, s = model(ids).logits.log_softmax(-1), q(ids).logits.log_softmax(-1)
        return float((t.exp() * (t - s)).sum(-1).mean())

    assert kl(after) < 0.8 * kl(before)


def test_cnn_wanda_and_static_int8():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    q = lowbit.quantize(model, Prune(method="wanda", sparsity=0.5), data=data)
    for m in (q[0], q[5]):
        assert float((m.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert float((q[2].weight == 0).float().mean()) == pytest.approx(4 / 9)   # depthwise: 4 of each 9
    s = lowbit.quantize(model, Sequence(Prune(method="magnitude", sparsity=0.5), lowbit.recipes.StaticPTQ()),
                        data=data)
    assert s(data[0]).shape == (4, 10)


def test_spec_round_trips():
    for spec in ("sparsegpt:50%", "wanda:2:4", "sparsegpt:50%,w4g64", "magnitude:25%,mlp",
                 "sparsegpt:50%+gptq:w4g64"):
        assert to_spec(from_spec(spec)) == spec


# --- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, "half"])
def test_sparsity_outside_the_unit_interval_is_refused(sparsity):
    with pytest.raises(ValueError, match=r"sparsity is the fraction of weights removed, in \[0, 1\)"):
        Prune(sparsity=sparsity)


def test_pattern_whose_m_does_not_divide_names_the_layer():
    model = tiny_llama()
    recipe = Prune(method="wanda", pattern="2:3")
    plan = recipe.plan(model)
    assert any(p.status == "error" and "model.layers.0.self_attn.q_proj" in p.reason for p in plan.layers)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj: an 2:3 pattern groups the "
                                         r"inputs by 3, which does not divide this layer's 64 inputs"):
        lowbit.quantize(model, recipe, data=calib())


@pytest.mark.parametrize("bad", ["4:2", "2-4", "0:4", (2,)])
def test_malformed_patterns_are_refused(bad):
    with pytest.raises(ValueError, match="an N:M pattern keeps N of every M"):
        Prune(pattern=bad)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_layer_without_calibration_inputs_is_named(method):
    model = tiny_llama()
    model.model.layers[1].mlp.unused = nn.Linear(64, 64)      # never called by the forward
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.unused got no calibration inputs"):
        lowbit.quantize(model, Prune(method=method), data=calib())


def test_joint_mode_is_sparsegpt_only():
    with pytest.raises(ValueError, match=r"Sequence\(Prune\(method='wanda'"):
        Prune(method="wanda", num_bits=4)


# --- the real model --------------------------------------------------------------------------
@pytest.mark.real
def test_smollm2_two_blocks_sparsegpt_beats_magnitude():
    from lowbit.data import calibration_batches
    from lowbit.models import load_model

    model, tok = load_model("smollm2-135m")
    ids = calibration_batches(tok, n=4, seq_len=64)
    inc = ("model.layers.0.*", "model.layers.1.*")
    held = calibration_batches(tok, n=1, seq_len=64, seed=7)
    with torch.no_grad():
        ref = model(held).logits.log_softmax(-1)

    def kl(recipe):
        q = lowbit.quantize(model, recipe, data=ids)
        with torch.no_grad():
            out = q(held).logits.log_softmax(-1)
        return float((ref.exp() * (ref - out)).sum(-1).mean())

    assert kl(Prune(method="sparsegpt", include=inc)) < kl(Prune(method="magnitude", include=inc))


def test_structured_heads_removes_query_heads_per_kv_group_and_reloads(tmp_path):
    model = tiny_llama()                          # 4 query heads in 2 key/value groups of 2
    q = lowbit.quantize(model, Prune(method="wanda", structured="heads", sparsity=0.5), data=calib())
    attn = q.model.layers[0].self_attn
    assert attn.q_proj.out_features == 2 * 16 and attn.o_proj.in_features == 2 * 16
    assert attn.num_key_value_groups == 1 and q.config.num_attention_heads == 2
    assert q.lowbit_report.details["attention_heads"] == {"before": 4, "after": 2, "blocks": 2}
    assert_round_trip(q, tmp_path)
    plan = Prune(method="wanda", structured="heads", sparsity=0.5).plan(model)
    rows = {p.name: p for p in plan.layers}
    assert rows["model.layers.0.self_attn.k_proj"].status == "float"
    assert rows["model.layers.0.self_attn.q_proj"].status == "quantize"


def test_structured_heads_keeps_the_important_head_of_each_group():
    model = tiny_llama()
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        attn.o_proj.weight[:, 16:32] *= 50        # head 1 (group 0) and head 2 (group 1) dominate
        attn.o_proj.weight[:, 32:48] *= 50
    q = lowbit.quantize(model, Prune(method="magnitude", structured="heads", sparsity=0.5))
    kept = q.model.layers[0].self_attn.o_proj.weight
    assert torch.equal(kept, attn.o_proj.weight[:, 16:48])


def test_structured_heads_needs_a_whole_number_of_heads_per_group():
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn: structured='heads' removes whole "
                                         r"query heads from each of its 2 key/value groups of 2"):
        lowbit.quantize(tiny_llama(), Prune(method="magnitude", structured="heads", sparsity=0.1))


def test_pattern_plan_counts_kept_values():
    model = tiny_llama()
    row = next(p for p in Prune(method="sparsegpt", pattern="1:4", num_bits=4).plan(model).layers
               if p.name == "model.layers.0.mlp.up_proj")
    assert "75% pruned" in row.format


def test_true_sequential_off_takes_every_group_from_the_unpruned_block():
    model = tiny_llama()
    a = lowbit.quantize(model, Prune(method="sparsegpt"), data=calib())
    b = lowbit.quantize(model, Prune(method="sparsegpt", true_sequential=False), data=calib())
    # q/k/v see the block's input either way; o_proj's input differs once q/k/v are pruned
    assert torch.equal(a.model.layers[0].self_attn.q_proj.weight, b.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(a.model.layers[0].self_attn.o_proj.weight, b.model.layers[0].self_attn.o_proj.weight)
