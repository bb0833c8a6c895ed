"""LoRA / QLoRA: adapters on a frozen NF4 base — gradients, training, save/load alone, merge."""
import pytest
import torch
from torch import nn

import lowbit
from lowbit.lora import LoRAConfig, LoRALinear, add_lora, load_adapters, lora_parameters, merge_lora, save_adapters
from lowbit.nn.nf4 import NF4Linear
from lowbit.recipes import NF4


class Tiny(nn.Module):
    def __init__(self, width=128):
        super().__init__()
        torch.manual_seed(0)
        self.up_proj = nn.Linear(width, 2 * width)
        self.down_proj = nn.Linear(2 * width, width)
        self.lm_head = nn.Linear(width, 10)

    def forward(self, x):
        return self.lm_head(self.down_proj(torch.relu(self.up_proj(x))))


def qlora_model():
    q = lowbit.quantize(Tiny(), NF4(block_size=64, double_quant=True))
    return add_lora(q, LoRAConfig(rank=4, alpha=8))


def test_adapters_start_as_identity_and_only_they_train():
    base = lowbit.quantize(Tiny(), NF4(block_size=64, double_quant=True))
    x = torch.randn(3, 128)
    with torch.no_grad():
        before = base(x)
    model = add_lora(base, LoRAConfig(rank=4, alpha=8))
    assert isinstance(model.up_proj, LoRALinear) and isinstance(model.up_proj.base, NF4Linear)
    assert not isinstance(model.lm_head, LoRALinear)  # excluded by default
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_parameters(model)) and len(trainable) == 4


def test_gradient_through_the_quantized_base_matches_the_dequantized_float_layer():
    model = qlora_model()
    layer = model.down_proj
    x = torch.randn(5, 256, requires_grad=True)
    layer(x).pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    w = layer.base.weight.dequantize(torch.float32)
    ref = torch.nn.functional.linear(x2, w, layer.base.bias) + layer.scaling * (x2 @ layer.lora_A.T @ layer.lora_B.T)
    ref.pow(2).sum().backward()
    assert ((x.grad - x2.grad).norm() / x2.grad.norm()).item() < 2e-2  # the NF4 kernel's bf16 rounding


def test_lora_on_a_float_base_gives_the_float_gradients():
    # nn.Linear's weight is a Parameter: the backward must use it as is (Tensor.dequantize()
    # exists on plain tensors too and takes no dtype, so a duck-typed check broke this case)
    float_model = Tiny()
    model = add_lora(Tiny(), LoRAConfig(rank=4, alpha=8))
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.normal_(0, 0.05)
    x = torch.randn(5, 128, requires_grad=True)
    model.down_proj(model.up_proj(x)).pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    up, down = model.up_proj, model.down_proj
    h = float_model.up_proj(x2) + up.scaling * (x2 @ up.lora_A.detach().T @ up.lora_B.detach().T)
    ref = float_model.down_proj(h) + down.scaling * (h @ down.lora_A.detach().T @ down.lora_B.detach().T)
    ref.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    assert down.lora_A.grad is not None and up.lora_B.grad is not None


def test_training_lowers_the_loss_and_leaves_the_nf4_base_bit_identical():
    model = qlora_model()
    packed_before = {n: m.base.weight.data.clone() for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    torch.manual_seed(1)
    x, target = torch.randn(64, 128), torch.randint(0, 10, (64,))
    opt = torch.optim.AdamW(lora_parameters(model).values(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    for n, m in model.named_modules():
        if isinstance(m, LoRALinear):
            assert isinstance(m.base, NF4Linear) and m.base.weight.format.name == "nf4"
            assert torch.equal(m.base.weight.data, packed_before[n])


def test_adapters_save_alone_and_load_onto_a_fresh_nf4_base(tmp_path):
    model = qlora_model()
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.normal_(0, 0.05)
    save_adapters(model, tmp_path / "adapters")
    files = sorted(p.name for p in (tmp_path / "adapters").iterdir())
    assert files == ["adapters.safetensors", "lora.json"]
    size = (tmp_path / "adapters" / "adapters.safetensors").stat().st_size
    assert size < 4 * sum(p.numel() for p in lora_parameters(model).values()) + 4096  # adapters only
    fresh = lowbit.quantize(Tiny(), NF4(block_size=64, double_quant=True))
    load_adapters(fresh, tmp_path / "adapters")
    x = torch.randn(4, 128)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    with pytest.raises(FileNotFoundError, match="holds no LoRA adapters"):
        load_adapters(fresh, tmp_path)


def test_merge_folds_the_adapters_into_float_weights():
    model = qlora_model()
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.normal_(0, 0.05)
    x = torch.randn(4, 128)
    with torch.no_grad():
        before = model(x)
        merged = merge_lora(model)
        assert isinstance(merged.up_proj, nn.Linear) and not lora_parameters(merged)
        after = merged(x)
    assert ((after - before).norm() / before.norm()).item() < 1e-2


def test_add_lora_without_targets_says_so():
    with pytest.raises(ValueError, match="no linear layer matches targets"):
        add_lora(Tiny(), LoRAConfig(targets=("q_proj",)))
