"""Algorithms on small synthetic problems, each against a property it must satisfy."""
import pytest
import torch

from lowbit import primitives as P
from lowbit.algorithms.awq import awq_scale, output_error
from lowbit.algorithms.gptq import gptq
from lowbit.algorithms.hqq import hqq, hqq_objective
from lowbit.algorithms.rtn import rtn
from lowbit.formats import int_format
from lowbit.qtensor import QTensor

ASYM4 = int_format(4, signed=False, symmetric=False, group_size=32)


def correlated_inputs(n=2048, k=128, seed=0):
    """Inputs with strongly correlated channels and a few large ones (like LLM activations)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    X = torch.randn(n, k, generator=g) @ mix                      # (n, k)
    X[:, :4] *= 8                                                 # outlier channels
    return X


def weights(n=64, k=128, seed=1):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def dequant(qw, fmt):
    return P.dequantize(qw.q, qw.scale, qw.zero_point, fmt)


def layer_error(W, Wq, X):
    return ((X @ (W - Wq).T) ** 2).mean().item()


def test_gptq_output_error_below_rtn_on_correlated_inputs():
    X, W = correlated_inputs(), weights()
    H = X.T @ X / X.shape[0]
    for fmt in (ASYM4, int_format(3, signed=True, symmetric=True, group_size=32),
                int_format(4, signed=False, symmetric=False)):
        err_rtn = layer_error(W, dequant(rtn(W, fmt), fmt), X)
        for act_order in (False, True):
            err = layer_error(W, dequant(gptq(W, H, fmt, act_order=act_order), fmt), X)
            assert err < 0.7 * err_rtn, (fmt.label(), act_order, err, err_rtn)


def test_gptq_act_order_static_groups_are_contiguous_and_match_the_qtensor():
    X, W = correlated_inputs(), weights()
    H = X.T @ X / X.shape[0]
    qw = gptq(W, H, ASYM4, act_order=True)
    assert qw.scale.shape == (64, 128 // 32) and qw.zero_point.shape == qw.scale.shape
    assert qw.q.dtype == torch.uint8 and int(qw.q.max()) <= 15
    qt = QTensor.from_int(qw.q, qw.scale, qw.zero_point, ASYM4)
    # groups are the contiguous column blocks of the stored layout: w = s[g] (q - z[g])
    s = qw.scale.float().repeat_interleave(32, dim=1)
    z = qw.zero_point.float().repeat_interleave(32, dim=1)
    torch.testing.assert_close(qt.dequantize(), s * (qw.q.float() - z))
    # and re-quantizing the dequantized weight with the stored qparams gives the same integers
    assert torch.equal(P.quantize(qt.dequantize(), qw.scale, qw.zero_point, ASYM4), qw.q)


def test_hqq_objective_decreases_over_iterations():
    W = weights(128, 256) * torch.rand(1, 256) * 3
    W[0, :5] = 20.0                                               # outliers the lp loss ignores
    losses = [hqq_objective(W, hqq(W, ASYM4, iters=n), ASYM4) for n in (0, 1, 5, 20)]
    assert all(b <= a + 1e-7 for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.97 * losses[0], losses
    qw = hqq(W, ASYM4)
    assert qw.zero_point.dtype == torch.bfloat16 and qw.scale.dtype == torch.bfloat16


def test_hqq_least_squares_refit_lowers_every_groups_squared_error():
    W = weights(256, 512)
    def sq_err(qw):                                               # per group (256, 16)
        R = dequant(qw, ASYM4)
        return (W - R).pow(2).reshape(256, 16, 32).mean(-1)
    plain, scale_only, refit = hqq(W, ASYM4, refit=0), hqq(W, ASYM4, refit=1), hqq(W, ASYM4)
    assert torch.equal(plain.zero_point, scale_only.zero_point)  # round 1 refits the scale alone
    assert not torch.equal(plain.zero_point, refit.zero_point)   # later rounds move Z too
    errs = [sq_err(qw) for qw in (plain, scale_only, hqq(W, ASYM4, refit=3), refit)]
    for a, b in zip(errs, errs[1:]):                              # no group ever gets worse
        assert bool((b <= a).all())
    assert errs[1].mean() < 0.99 * errs[0].mean() and errs[-1].mean() < errs[1].mean(), \
        [e.mean().item() for e in errs]


def test_hqq_keeps_the_best_stored_zero_point_of_each_group():
    W = weights(128, 256) * torch.rand(1, 256, generator=torch.Generator().manual_seed(2)) * 3
    def group_loss(qw):                                           # per group lp loss (128, 8)
        return (W - dequant(qw, ASYM4)).abs().pow(0.7).reshape(128, 8, 32).mean(-1)
    rtn_like, fitted = hqq(W, ASYM4, iters=0), hqq(W, ASYM4, refit=0)
    assert bool((group_loss(fitted) <= group_loss(rtn_like)).all())
    assert (group_loss(fitted) < group_loss(rtn_like)).float().mean() > 0.25
    with pytest.raises(ValueError, match="refit"):
        hqq(W, ASYM4, refit=-1)


def test_awq_scaling_leaves_the_float_function_unchanged():
    X, W = correlated_inputs(), weights()
    H = X.T @ X / X.shape[0]
    s = awq_scale([W], X.abs().mean(0), H, ASYM4)
    assert not torch.allclose(s, torch.ones_like(s))              # a non-trivial scale was found
    torch.testing.assert_close((X / s) @ (W * s).T, X @ W.T, rtol=1e-4, atol=1e-4)


def test_awq_scale_error_not_above_rtn():
    X, W = correlated_inputs(), weights()
    H = X.T @ X / X.shape[0]
    s = awq_scale([W], X.abs().mean(0), H, ASYM4)
    err_rtn = output_error(W - dequant(rtn(W, ASYM4), ASYM4), H)
    err_awq = output_error(W - dequant(rtn(W * s, ASYM4), ASYM4) / s, H)
    assert err_awq <= err_rtn


def test_rtn_mse_error_not_above_plain_rtn():
    W = weights(64, 256)
    W[:, ::17] *= 6                                               # heavy tails: clipping helps
    for fmt in (ASYM4, int_format(3, signed=False, symmetric=False, group_size=64),
                int_format(4, signed=True, symmetric=True, group_size=64), int_format(8)):
        plain = (W - dequant(rtn(W, fmt), fmt)).pow(2).sum(1)   # per row
        mse = (W - dequant(rtn(W, fmt, mse_clip=True), fmt)).pow(2).sum(1)
        assert bool((mse <= plain + 1e-6).all()), fmt.label()
        if fmt.num_bits < 8:
            assert mse.sum() < plain.sum()
