"""Distill: dropping blocks keeps a working model; training lowers the KL to the teacher;
Sequence(Distill, WeightOnly) quantizes the student, saves and reloads."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import lowbit
from lowbit.nn import QLinear
from lowbit.recipes import Distill, Sequence, WeightOnly
from lowbit.recipes.distill import drop_blocks, evenly_spaced


def tiny(layers=4):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def windows(n=8, seq=32):
    return torch.randint(0, 96, (n, seq), generator=torch.Generator().manual_seed(1))


def kl_to(teacher, student, ids):
    with torch.no_grad():
        lt = torch.log_softmax(teacher(ids).logits, -1)
        ls = torch.log_softmax(student(ids).logits, -1)
    return (lt.exp() * (lt - ls)).sum(-1).mean().item()


def test_evenly_spaced_keeps_first_and_last():
    assert evenly_spaced(30, 24)[0] == 0 and evenly_spaced(30, 24)[-1] == 29
    assert len(evenly_spaced(30, 24)) == 24
    assert evenly_spaced(4, 2) == (0, 3)
    with pytest.raises(ValueError, match="between 1 and the model's 4 blocks"):
        evenly_spaced(4, 5)


def test_drop_blocks_equals_running_the_kept_blocks():
    model = tiny(4)
    ids = windows(2)
    blocks = list(model.model.layers)
    name, dropped = drop_blocks(model, (0, 3))
    assert name == "model.layers" and dropped == [1, 2]
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert model.model.layers[1] is blocks[3] and model.model.layers[1].self_attn.layer_idx == 1
    out = model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)  # KV cache has 2 slots
    assert out.shape == (1, 7)
    with pytest.raises(ValueError, match="distinct increasing indices"):
        drop_blocks(tiny(4), (2, 1))


def test_distill_lowers_kl_to_teacher_and_reports_dropped_blocks():
    teacher = tiny(4)
    ids = windows(8)
    from lowbit.recipes.distill import drop_blocks as _drop
    import copy
    untrained = copy.deepcopy(teacher)
    _drop(untrained, (0, 3))
    student = lowbit.quantize(teacher, Distill(keep_layers=(0, 3), minutes=None, max_steps=30, lr=3e-3,
                                                hidden_weight=0.1), data=ids)
    assert len(student.model.layers) == 2 and len(teacher.model.layers) == 4  # teacher untouched
    assert kl_to(teacher, student, ids) < 0.5 * kl_to(teacher, untrained, ids)
    removed = [r.name for r in student.lowbit_report.layers if r.status == "removed"]
    assert removed == ["model.layers.1", "model.layers.2"]
    assert not any(p.requires_grad for p in student.parameters())


def test_sequence_distill_then_quantize_saves_and_loads(tmp_path):
    ids = windows(8)
    recipe = Sequence(Distill(num_layers=2, minutes=None, max_steps=3), WeightOnly(num_bits=4, group_size=32, exclude=("lm_head",)))
    assert recipe.needs_data and recipe.describe().startswith("Distill to 2 blocks (3 steps) -> WeightOnly W4")
    q = lowbit.quantize(tiny(4), recipe, data=Sequence.per_step(ids, None))
    assert len(q.model.layers) == 2
    assert sum(isinstance(m, QLinear) for m in q.modules()) == 2 * 7
    lowbit.save(q, tmp_path / "ckpt")
    r = lowbit.load(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(r(ids[:2]).logits, q(ids[:2]).logits)


def test_bad_arguments_say_what_to_pass():
    with pytest.raises(ValueError, match="exactly one of num_layers"):
        Distill()
    with pytest.raises(ValueError, match="needs a budget"):
        Distill(num_layers=2, minutes=None)
    with pytest.raises(ValueError, match=r"\[n, seq_len\] integer tensor"):
        lowbit.quantize(tiny(4), Distill(num_layers=2, max_steps=1), data=torch.randn(2, 8))
    with pytest.raises(TypeError, match="lowbit recipes"):
        Sequence(Distill(num_layers=2), "gptq")
    with pytest.raises(ValueError, match="got 1 data entries for 2 steps"):
        lowbit.quantize(tiny(4), Sequence(Distill(num_layers=2, max_steps=1), WeightOnly()),
                        data=Sequence.per_step(windows()))
    with pytest.raises(ValueError, match="needs calibration data"):
        lowbit.quantize(tiny(4), Sequence(Distill(num_layers=2, max_steps=1)))
