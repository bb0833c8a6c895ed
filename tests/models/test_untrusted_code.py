"""No load path of lowbit prompts for or runs code planted in the files it reads (issue 13).

Every test plants an ``evil.py`` that writes a marker file when imported, wires it in through
the JSON files transformers reads, answers "y" on stdin, and checks that lowbit refuses with its
own error before anything is imported: lowbit checkpoints (``lowbit.load`` and their tokenizer),
Hugging Face folders, GGUF files and the CLI. The plants:

- config_auto_map: config.json names an unshipped model_type and classes in evil.py; plain
  transformers asks "Do you wish to run the custom code? [y/N]" and runs evil.py on "y".
- auto_map_on_llama: a shipped model_type that still names evil.py (refused all the same).
- tokenizer_auto_map: tokenizer_config.json names a tokenizer class in evil.py; transformers
  reads this file even beside a GGUF loaded with ``gguf_file=``.
- tokenizer_class_bypass: tokenizer_config.json names "AutoProcessor" as its tokenizer class;
  AutoTokenizer then calls AutoProcessor.from_pretrained WITHOUT trust_remote_code, which asks
  and runs evil.py through processor_config.json even when trust_remote_code=False was passed.
"""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

import lowbit
from lowbit.models import hf, load_gguf, load_hf_folder, load_model
from lowbit.models.hf import (NO_CODE, build_model_from_config, check_folder,
                              load_checkpoint_tokenizer)

ROOT = Path(__file__).resolve().parents[2]
EVIL = """\
import pathlib
pathlib.Path({marker!r}).write_text("evil.py ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, ProcessorMixin


class EvilConfig(LlamaConfig):
    model_type = "evil"


class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig


class EvilTokenizer(PreTrainedTokenizerFast):
    pass


class EvilProcessor(ProcessorMixin):
    attributes = []
"""
CONFIG_PLANTS = ["config_auto_map", "auto_map_on_llama"]
TOKENIZER_PLANTS = ["tokenizer_auto_map", "tokenizer_class_bypass"]
PLANTS = CONFIG_PLANTS + TOKENIZER_PLANTS


def plant(folder: Path, how: str, marker: Path) -> None:
    """Wire ``folder/evil.py`` (which writes ``marker`` when imported) in the way ``how`` says."""
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if how == "config_auto_map":
        config.update(model_type="evil", auto_map={
            "AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
            "AutoModelForCausalLM": "evil.EvilModel"})
    elif how == "auto_map_on_llama":
        config.update(model_type="llama", auto_map={"AutoModelForCausalLM": "evil.EvilModel"})
    elif how == "tokenizer_auto_map":
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "EvilTokenizer",
            "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}}))
    elif how == "tokenizer_class_bypass":
        (folder / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "AutoProcessor"}))
        (folder / "processor_config.json").write_text(json.dumps({
            "processor_class": "EvilProcessor",
            "auto_map": {"AutoProcessor": "evil.EvilProcessor"}}))
    else:
        raise AssertionError(how)
    if config:
        config_path.write_text(json.dumps(config))


def write_tiny_gguf(model: LlamaForCausalLM, path: Path) -> None:
    """``model`` as an f32 llama GGUF with a 128-token byte-level vocabulary (~0.4 MB)."""
    import gguf

    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads

    def interleave(w, n):  # transformers' rotary layout -> llama.cpp's (transformers undoes it)
        return w.reshape(n, 2, w.shape[0] // n // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)

    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                 "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    top = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg.hidden_size // heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([chr(33 + i) for i in range(cfg.vocab_size)])
    w.add_token_scores([0.0] * cfg.vocab_size)
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    for key, t in model.state_dict().items():
        module = key.removesuffix(".weight")
        if module.startswith("model.layers."):
            index, sub = module.removeprefix("model.layers.").split(".", 1)
            name = f"blk.{index}.{per_layer[sub]}"
            t = interleave(t, heads) if sub == "self_attn.q_proj" else t
            t = interleave(t, kv_heads) if sub == "self_attn.k_proj" else t
        else:
            name = top[module]
        w.add_tensor(f"{name}.weight", t.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(127)} | {"[UNK]": 127}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def clean(tiny, tmp_path_factory):
    """Clean folders of each kind, written once: ckpt (lowbit.save), hf, gguf/tiny.gguf."""
    root = tmp_path_factory.mktemp("clean")
    lowbit.save(tiny, root / "ckpt", tokenizer=tiny_tokenizer())
    tiny.save_pretrained(root / "hf")
    (root / "gguf").mkdir()
    write_tiny_gguf(tiny, root / "gguf" / "tiny.gguf")
    return root


@pytest.fixture
def planted(clean, tmp_path, monkeypatch):
    """``planted(kind, how) -> (folder, marker)``: a fresh copy of a clean folder, planted.

    stdin answers "y" to any prompt, and transformers' module cache is redirected into
    tmp_path so nothing would land in the home folder even if a check failed.
    """
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE",
                        str(tmp_path / "modules"))

    def make(kind: str, how: str):
        folder = shutil.copytree(clean / kind, tmp_path / kind)
        plant(folder, how, tmp_path / "MARKER")
        return folder, tmp_path / "MARKER"
    return make


def assert_refused(excinfo, marker: Path, capsys) -> None:
    message = str(excinfo.value)
    assert NO_CODE in message and "trust_remote_code" not in message
    assert not marker.exists(), "evil.py ran"
    printed = capsys.readouterr()
    assert "[y/N]" not in printed.out + printed.err


@pytest.mark.parametrize("how", CONFIG_PLANTS)
def test_lowbit_load_refuses_planted_code(planted, how, capsys):
    folder, marker = planted("ckpt", how)
    with pytest.raises(ValueError) as excinfo:
        lowbit.load(folder)
    assert_refused(excinfo, marker, capsys)


@pytest.mark.parametrize("how", PLANTS)
def test_checkpoint_tokenizer_refuses_planted_code(planted, how, capsys):
    folder, marker = planted("ckpt", how)
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint_tokenizer(folder)
    assert_refused(excinfo, marker, capsys)


@pytest.mark.parametrize("loader", [load_hf_folder, lambda folder: load_model(str(folder))],
                         ids=["load_hf_folder", "load_model"])
@pytest.mark.parametrize("how", PLANTS)
def test_hf_folder_refuses_planted_code(planted, how, loader, capsys):
    folder, marker = planted("hf", how)
    with pytest.raises(ValueError) as excinfo:
        loader(folder)
    assert_refused(excinfo, marker, capsys)


@pytest.mark.parametrize("loader", [load_gguf, lambda path: load_model(str(path))],
                         ids=["load_gguf", "load_model"])
@pytest.mark.parametrize("how", PLANTS)
def test_gguf_refuses_planted_code_beside_it(planted, how, loader, capsys):
    folder, marker = planted("gguf", how)
    with pytest.raises(ValueError) as excinfo:
        loader(folder / "tiny.gguf")
    assert_refused(excinfo, marker, capsys)


CLI_CASES = [("generate", "ckpt", "config_auto_map"), ("doctor", "ckpt", "config_auto_map"),
             ("eval", "ckpt", "config_auto_map"), ("generate", "ckpt", "tokenizer_auto_map"),
             ("doctor", "gguf", "tokenizer_auto_map")]


@pytest.mark.parametrize("command,kind,how", CLI_CASES, ids=["-".join(c) for c in CLI_CASES])
def test_cli_refuses_planted_code_with_yes_on_stdin(planted, command, kind, how):
    folder, marker = planted(kind, how)
    target = folder / "tiny.gguf" if kind == "gguf" else folder
    args = [str(target), "hi"] if command == "generate" else [str(target)]
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT),
           "HF_MODULES_CACHE": str(marker.parent / "modules")}
    env.pop("TERM", None)
    r = subprocess.run([sys.executable, "-m", "lowbit.cli", command, *args], input="y\n",
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("lowbit: error: ") and r.stderr.strip().count("\n") == 0
    assert NO_CODE in r.stderr and "trust_remote_code" not in r.stderr
    assert "[y/N]" not in r.stdout + r.stderr and not marker.exists()


def test_the_config_plant_is_live_in_plain_transformers(planted):
    """The premise: without lowbit's checks transformers asks, reads "y", and runs evil.py."""
    folder, marker = planted("ckpt", "config_auto_map")
    code = "import sys, transformers; transformers.AutoConfig.from_pretrained(sys.argv[1])"
    env = {**os.environ, "HF_MODULES_CACHE": str(marker.parent / "modules")}
    r = subprocess.run([sys.executable, "-c", code, str(folder)], input="y\n", capture_output=True,
                       text=True, timeout=300, env=env)
    assert "[y/N]" in r.stdout and marker.read_text() == "evil.py ran", r.stderr


def test_clean_folders_load_the_same_model(clean, tiny):
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = tiny(ids).logits
        for model in (lowbit.load(clean / "ckpt"), load_hf_folder(clean / "hf")[0]):
            assert torch.equal(model(ids).logits, want)
        model, tokenizer = load_gguf(clean / "gguf" / "tiny.gguf")
        assert torch.equal(model(ids).logits, want)
    assert tokenizer("#$%").input_ids == [2, 3, 4]  # token i is chr(33 + i)
    tokenizer = load_checkpoint_tokenizer(clean / "ckpt")
    assert tokenizer("w5 w7 zz").input_ids == [5, 7, 127]
    assert load_checkpoint_tokenizer(clean / "hf") is None  # no tokenizer files: none


@pytest.mark.parametrize("name", ["pipeline", "AutoModel", "BertModel", "LlamaPreTrainedModel",
                                  "__class__", "LlamaForCausalLM; import os", ["LlamaForCausalLM"]])
def test_checkpoint_model_class_must_be_the_configs_architecture(clean, tmp_path, monkeypatch,
                                                                 name):
    called = []
    monkeypatch.setattr(transformers, "pipeline", lambda *a, **k: called.append(a))
    folder = shutil.copytree(clean / "ckpt", tmp_path / "ckpt")
    meta = json.loads((folder / "lowbit.json").read_text())
    meta["model"]["class"] = name
    (folder / "lowbit.json").write_text(json.dumps(meta))
    expected = r"model_type 'llama'; expected one of \[.*'LlamaForCausalLM'"
    with pytest.raises(ValueError, match=expected):
        lowbit.load(folder)
    assert not called


def test_model_class_must_be_a_pretrained_model(clean, monkeypatch):
    called = []
    monkeypatch.setattr(transformers, "pipeline", lambda *a, **k: called.append(a))
    monkeypatch.setattr(hf, "_model_classes", lambda model_type: {"pipeline"})
    with pytest.raises(ValueError, match="transformers.pipeline is .* not a PreTrainedModel"):
        build_model_from_config(clean / "hf", "pipeline")
    assert not called


def test_build_model_from_config_builds_any_class_of_that_model_type(clean, tiny):
    model = build_model_from_config(clean / "hf", "LlamaModel")
    assert type(model) is LlamaModel and not model.training
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (64, 2)
    model = build_model_from_config(clean / "hf", "LlamaForCausalLM")
    assert model.state_dict().keys() == tiny.state_dict().keys()


def test_unshipped_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "evil", "hidden_size": 8}))
    expected = f"model_type 'evil' is not an architecture transformers .* {NO_CODE}"
    with pytest.raises(ValueError, match=expected):
        check_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="model_type None is not an architecture"):
        load_hf_folder(tmp_path)


@pytest.mark.parametrize("config,match", [
    ({"model_type": "llava",
      "text_config": {"model_type": "llama", "auto_map": {"AutoConfig": "e.C"}}},
     "asks to import Python code"),
    ({"model_type": "llama", "tokenizer_class": "AutoProcessor"}, "not a tokenizer class"),
    ({"model_type": "llama", "tokenizer_class": "a.b:c"}, "must be a class name"),
    (["model_type", "llama"], "expected a JSON object, got a list"),
], ids=["nested_auto_map", "config_tokenizer_class", "dotted_tokenizer_class", "not_an_object"])
def test_config_json_is_checked_as_data(tmp_path, config, match):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        check_folder(tmp_path)


def test_json_files_are_size_limited_and_must_parse(tmp_path, monkeypatch):
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        check_folder(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad": "x" * 2000}))
    monkeypatch.setattr(hf, "MAX_JSON_BYTES", 1024)
    with pytest.raises(ValueError, match="tokenizer_config.json is larger than 1,024 bytes"):
        check_folder(tmp_path)
    assert check_folder(tmp_path / "absent") is None
