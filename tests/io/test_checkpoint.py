"""save -> load gives bit-identical outputs; damaged or mismatched checkpoints say which tensor."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import lowbit
from lowbit.io import CheckpointError
from lowbit.recipes import DynamicPTQ, WeightOnly

RECIPES = [WeightOnly(num_bits=8, group_size=None), WeightOnly(num_bits=4, group_size=64),
           WeightOnly(num_bits=3, group_size=64), DynamicPTQ()]


def model_factory():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 64), nn.LayerNorm(64))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.describe())
def test_save_load_bit_identical(tmp_path, recipe):
    q = lowbit.quantize(model_factory(), recipe)
    lowbit.save(q, tmp_path / "ckpt")
    back = lowbit.load(tmp_path / "ckpt", model=model_factory())
    x = torch.randn(3, 128)
    with torch.no_grad():
        assert torch.equal(q(x), back(x))
    assert not list(tmp_path.glob(".ckpt.tmp-*"))


def test_int4_checkpoint_is_at_most_27_percent_of_fp32(tmp_path):
    lin = nn.Sequential(nn.Linear(4096, 11008, bias=False))
    lowbit.save(lin, tmp_path / "fp32")
    lowbit.save(lowbit.quantize(lin, WeightOnly(num_bits=4, group_size=128), inplace=True), tmp_path / "int4")
    size = lambda p: sum(f.stat().st_size for f in p.iterdir())  # noqa: E731
    assert size(tmp_path / "int4") <= 0.27 * size(tmp_path / "fp32")


def test_shape_mismatch_names_the_tensor(tmp_path):
    q = lowbit.quantize(model_factory(), WeightOnly(num_bits=4, group_size=64))
    lowbit.save(q, tmp_path / "c")
    t = load_file(tmp_path / "c" / "model.safetensors")
    t["0.weight.scale"] = t["0.weight.scale"][:, :1].contiguous()
    save_file(t, tmp_path / "c" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor '0.weight.scale' is \[256, 1\] torch.bfloat16"):
        lowbit.load(tmp_path / "c", model=model_factory())


def test_wrong_architecture_names_the_tensor(tmp_path):
    lowbit.save(lowbit.quantize(model_factory(), WeightOnly(num_bits=8, group_size=None)), tmp_path / "c")
    other = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 64), nn.LayerNorm(32))
    with pytest.raises(CheckpointError, match=r"tensor '3.(weight|bias)' is \(64,\) torch.float32 in the checkpoint but \(32,\)"):
        lowbit.load(tmp_path / "c", model=other)


def test_format_mismatch_is_reported(tmp_path):
    lowbit.save(lowbit.quantize(model_factory(), WeightOnly(num_bits=4, group_size=64)), tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "lowbit.json").read_text())
    meta["tensors"]["0.weight.data"]["dtype"] = "int8"
    (tmp_path / "c" / "lowbit.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"tensor '0.weight.data' is \[256, 64\] torch.uint8"):
        lowbit.load(tmp_path / "c", model=model_factory())


def test_crash_while_saving_leaves_no_checkpoint(tmp_path, monkeypatch):
    import lowbit.io.checkpoint as ck

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        lowbit.save(model_factory(), tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="lowbit.json not found"):
        lowbit.load(tmp_path)


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="is not a lowbit folder .no lowbit.json.; refusing"):
        lowbit.save(model_factory(), tmp_path / "c")
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"
