"""The quantization peers on SmolLM2-135M under lowbit's LLM protocol -> results/llm.json.

    .venv-peers/bin/python benchmarks/llm_peers.py [--tokens 32768] [--out results/llm.json]
                                                   [--peers hqq-w4,hqq-w3,...] [--no-decode]

Runs in the peers' venv (`make peers`: torchao 0.18.0, hqq 0.2.8.post1, bitsandbytes 0.50.2,
optimum-quanto 0.2.7 beside an editable lowbit), and measures every peer with lowbit's own
protocol code so its rows compare with lowbit's: ``lowbit.models.load_model`` (fp32 reference),
``lowbit.data.eval_tokens`` (first ``--tokens`` tokens of prideprejudice, 512-token windows),
``lowbit.eval.evaluate_lm`` (perplexity, KL(fp32 || q), top-1 agreement, in lock-step with fp32)
and ``lowbit.eval.decode_speed`` (batch 1, 2 threads, 32-token prompt, 128 new tokens, median
of 3). Only the 210 decoder linears (q, k, v, o, gate, up, down x 30 layers) are quantized; the
tied embedding / lm_head stays fp32 ("head": "fp32"), as in lowbit's rows.

Each peer quantizes a fresh copy of the fp32 model (the bitsandbytes rows load it again from
the fp32 HF folder through transformers' ``BitsAndBytesConfig``, the path bnb supports).
``quant_s`` is the wall time of the quantizing call; ``bpw_linears`` is counted from the
tensors each peer really stores for those 210 layers (packed weights, scales, zero points,
codebooks; each tensor once) over their 106,168,320 weights; ``quantized_linears`` says how many
of the 210 the peer actually replaced (torchao silently skips shapes its group does not tile).
All the quantized peers are then evaluated in ONE lock-step pass with fp32 (fp32's forward
runs once per window for all of them), so every peer's row comes from the same run. A peer
that fails to quantize (or to run a first 64-token forward) gets a row with ``error`` and the
run goes on. Rows are merged into ``--out``
by (tool, method, num_bits, group_size); other rows are kept.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from llm import merge  # noqa: E402  (benchmarks/llm.py: cheap import, heavy ones are lazy)

MODEL = "smollm2-135m"
MODEL_NAME = "SmolLM2-135M-Instruct"
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LINEAR_WEIGHTS = 106_168_320  # SmolLM2-135M decoder linears (DATA.md)
log = logging.getLogger("lowbit.bench.peers")


def pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def decoder_linears(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of the 7 projection types in every decoder layer (quantized or not)."""
    return {name: m for name, m in model.named_modules()
            if name.startswith("model.layers.") and name.rsplit(".", 1)[-1] in LINEARS}


def is_decoder_linear(name: str) -> bool:
    return name.startswith("model.layers.") and name.rsplit(".", 1)[-1] in LINEARS


# ------------------------------------------------------------------------------ bits per weight

def _storage_key(t: torch.Tensor) -> tuple:
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        ptr = 0
    return ("id", id(t)) if ptr == 0 else (ptr, t.storage_offset(), tuple(t.shape), t.dtype)


def _leaf_tensors(obj, depth: int = 0):
    """The plain tensors behind ``obj``: tensor subclasses (torchao, quanto) are unflattened,
    bitsandbytes quant states and hqq meta dicts are walked."""
    if depth > 6 or obj is None:
        return
    if isinstance(obj, torch.Tensor):
        flatten = getattr(type(obj), "__tensor_flatten__", None)
        if flatten is not None and type(obj) not in (torch.Tensor, nn.Parameter):
            try:
                names, _ = obj.__tensor_flatten__()
            except Exception:  # noqa: BLE001  (not a wrapper subclass after all)
                names = None
            if names:
                for n in names:
                    yield from _leaf_tensors(getattr(obj, n), depth + 1)
                yield from _leaf_tensors(getattr(obj, "quant_state", None), depth + 1)
                return
        yield obj
        # bnb: Params4bit.quant_state, Int8Params.SCB (CB is the data itself)
        yield from _leaf_tensors(getattr(obj, "quant_state", None), depth + 1)
        scb = getattr(obj, "SCB", None)
        if isinstance(scb, torch.Tensor):
            yield scb
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _leaf_tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaf_tensors(v, depth + 1)
    elif type(obj).__name__ == "QuantState":  # bitsandbytes.functional.QuantState
        for attr in ("absmax", "code", "offset", "state2"):
            yield from _leaf_tensors(getattr(obj, attr, None), depth + 1)


def linear_bpw(model: nn.Module, shapes: dict[str, tuple[int, int]]) -> dict:
    """bits per weight of the decoder linears, from the tensors the peer stores for them."""
    seen, nbytes, quantized, by_dtype = set(), 0, 0, {}
    for name, module in decoder_linears(model).items():
        if type(module) is not nn.Linear or type(module.weight) is not nn.Parameter:
            quantized += 1
        tensors = [*module.parameters(), *module.buffers()]
        tensors += [getattr(module, "W_q", None), getattr(module, "meta", None)]  # hqq
        for t in _leaf_tensors(tensors):
            if t.is_meta or _storage_key(t) in seen:
                continue
            seen.add(_storage_key(t))
            size = t.numel() * t.element_size()
            nbytes += size
            by_dtype[str(t.dtype)] = by_dtype.get(str(t.dtype), 0) + size
    weights = sum(o * i for o, i in shapes.values())
    if weights != LINEAR_WEIGHTS:
        log.warning("decoder linears hold %d weights, expected %d", weights, LINEAR_WEIGHTS)
    return {"bpw_linears": 8 * nbytes / weights, "quantized_linears": quantized,
            "num_linears": len(shapes), "linear_bytes_by_dtype": by_dtype}


# ------------------------------------------------------------------------------ the peers
# Each takes (fp32 model, HF folder) and returns (quantized model, quant_s, extra row fields).

def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _torchao(config_fn):
    def run(model, folder):
        from torchao.quantization import quantize_
        q = copy.deepcopy(model)
        config = config_fn()
        # warm-up on a throwaway layer: torchao's first quantize_ pays one-time lazy imports
        quantize_(nn.Sequential(nn.Linear(128, 128, bias=False)), config_fn())
        _, secs = _timed(lambda: quantize_(q, config, filter_fn=lambda m, fqn: (
            isinstance(m, nn.Linear) and is_decoder_linear(fqn))))
        return q, secs, {"peer_config": repr(config)}
    return run


def torchao_int8():
    from torchao.quantization import Int8WeightOnlyConfig
    return Int8WeightOnlyConfig()


def torchao_w8a8():
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    return Int8DynamicActivationInt8WeightConfig()


def torchao_int4():
    # torchao's default Int4WeightOnlyConfig layout needs CUDA (mslk); this is its CPU path:
    # tinygemm RTN, asymmetric, scale + zero packed per group in the activation dtype (fp32).
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization.quantize_.workflows import Int4ChooseQParamsAlgorithm
    return PrototypeInt4WeightOnlyConfig(
        group_size=64, int4_choose_qparams_algorithm=Int4ChooseQParamsAlgorithm.TINYGEMM,
        set_inductor_config=False)


def _hqq(nbits: int):
    def run(model, folder):
        from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear
        HQQLinear.set_backend(HQQBackend.PYTORCH)
        config = BaseQuantizeConfig(nbits=nbits, group_size=64)  # axis 1, optimize, asym
        q = copy.deepcopy(model)

        def quantize():
            for name, module in list(decoder_linears(q).items()):
                parent_name, _, child = name.rpartition(".")
                layer = HQQLinear(module, config, compute_dtype=torch.float32, device="cpu",
                                  del_orig=True)
                setattr(q.get_submodule(parent_name), child, layer)
        _, secs = _timed(quantize)
        return q, secs, {"peer_config": repr(config["weight_quant_params"])}
    return run


def _bnb(kind: str):
    def run(model, folder):
        import transformers
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
        transformers.logging.set_verbosity_error()
        if kind == "nf4":
            config = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.uint8,
                llm_int8_skip_modules=["lm_head"])
        else:
            config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0,
                                        llm_int8_skip_modules=["lm_head"])
        q, secs = _timed(lambda: AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=config, dtype=torch.float32, device_map="cpu",
            local_files_only=True))
        q.eval()
        extra = {"quant_note": "quant_s = transformers from_pretrained with BitsAndBytesConfig "
                               "(includes the <1 s fp32 safetensors read)"}
        if kind == "int8":  # bnb logs this on its first matmul
            extra["peer_note"] = "bnb MatMul8bitLt casts fp32 activations to fp16 on CPU"
        return q, secs, extra
    return run


def quanto_int8(model, folder):
    from optimum.quanto import freeze, qint8, quantize
    q = copy.deepcopy(model)

    def run():
        with torch.no_grad():  # quanto fails under inference_mode (DATA.md)
            quantize(q, weights=qint8, include=[f"*.{n}" for n in LINEARS], exclude=["lm_head"])
            freeze(q)
    _, secs = _timed(run)
    return q, secs, {}


# name -> (tool package, method, num_bits, group_size, runner)
PEERS = {
    "torchao-int8": ("torchao", "int8 weight-only per-channel", 8, None, _torchao(torchao_int8)),
    "torchao-w8a8": ("torchao", "W8A8 dynamic", 8, None, _torchao(torchao_w8a8)),
    "torchao-int4": ("torchao", "int4 g64 asym (tinygemm RTN)", 4, 64, _torchao(torchao_int4)),
    "hqq-w4": ("hqq", "HQQ W4 g64 asym", 4, 64, _hqq(4)),
    "hqq-w3": ("hqq", "HQQ W3 g64 asym", 3, 64, _hqq(3)),
    "bnb-nf4": ("bitsandbytes", "NF4 + double quant (block 64)", 4, 64, _bnb("nf4")),
    "bnb-int8": ("bitsandbytes", "LLM.int8 (threshold 6)", 8, None, _bnb("int8")),
    "quanto-int8": ("optimum-quanto", "qint8", 8, None, quanto_int8),
}


class _Once(logging.Filter):
    """Let each distinct message through once (bitsandbytes warns on every LLM.int8 matmul)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True


def quantize_peer(name, model, folder, shapes, common) -> tuple[dict, nn.Module | None]:
    """(row, quantized model or None): the peer's quantizing call, timed, its storage counted and
    one 64-token forward checked; a peer that fails gets a row with ``error``."""
    pkg, method, bits, group, runner = PEERS[name]
    row = {**common, "tool": f"{pkg} {pkg_version(pkg)}", "method": method, "num_bits": bits,
           "group_size": group, "peer": name}
    try:
        log.info("%s: quantizing", name)
        q, secs, extra = runner(model, folder)
        row.update(quant_s=secs, **extra, **linear_bpw(q, shapes))
        log.info("%s: quantized in %.1f s, %d/%d linears, %.3f bpw", name, secs,
                 row["quantized_linears"], row["num_linears"], row["bpw_linears"])
        with torch.no_grad():
            q(input_ids=torch.arange(64)[None] + 1000, use_cache=False)
        return row, q
    except Exception as e:  # noqa: BLE001  (a failing peer is a row, not the end of the run)
        msg = (str(e).strip().splitlines() or [""])[0]
        row["error"] = f"{type(e).__name__}: {msg}"[:300]
        log.error("%s failed: %s\n%s", name, row["error"], traceback.format_exc())
        return row, None


def evaluate_peers(rows: dict, models: dict, fp32: nn.Module, tokenizer, tokens, decode: bool) -> None:
    """Every quantized peer in one lock-step pass with fp32 (fp32's forward runs once per window
    for all of them); then, optionally, each one's batch-1 decode speed."""
    from lowbit.eval import decode_speed, evaluate_lm

    if models:
        res = evaluate_lm({"fp32": fp32, **models}, tokens, reference="fp32")
        for name in models:
            r = res[name]
            rows[name].update(ppl=r.ppl, kl=r.kl, top1_agreement=r.top1_agreement,
                              fp32_ppl=res["fp32"].ppl, ppl_vs_fp32=r.ppl / res["fp32"].ppl - 1,
                              evaluated_with=sorted(models))
    for name, q in models.items():
        if decode:
            rows[name]["decode_tok_s"] = decode_speed(q, tokenizer, repeats=3).decode_tok_s
        log.info("%s: ppl %.3f kl %.4f top1 %.4f decode %s tok/s", name, rows[name]["ppl"],
                 rows[name]["kl"], rows[name]["top1_agreement"], rows[name].get("decode_tok_s"))
    for row in rows.values():
        row["loadavg"] = os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--out", type=Path, default=ROOT / "results/llm.json")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {', '.join(PEERS)}")
    ap.add_argument("--no-decode", action="store_true", help="skip the batch-1 decode timing")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_Once())
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; known: {', '.join(PEERS)}")

    import lowbit
    from lowbit.data import eval_tokens
    from lowbit.doctor import machine
    from lowbit.models import load_model
    from lowbit.models.smollm2 import convert_smollm2

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, tokenizer = load_model(MODEL)
    model.eval()
    folder = convert_smollm2()  # the fp32 HF folder load_model read (for from_pretrained peers)
    tokens = eval_tokens(tokenizer, num_tokens=args.tokens)
    shapes = {n: tuple(m.weight.shape) for n, m in decoder_linears(model).items()}
    common = {"model": MODEL_NAME, "head": "fp32", "eval_tokens": int(tokens.numel()),
              "lowbit_version": lowbit.__version__, "machine": machine(),
              "transformers": pkg_version("transformers")}
    by_name, quantized = {}, {}
    for name in names:
        by_name[name], q = quantize_peer(name, model, folder, shapes, common)
        if q is not None:
            quantized[name] = q
    evaluate_peers(by_name, quantized, model, tokenizer, tokens, not args.no_decode)
    rows = list(by_name.values())
    merge(args.out, rows)
    print(f"\npeers on {MODEL_NAME}, {int(tokens.numel())} eval tokens -> {args.out}")
    print(f"{'peer':14} {'tool':22} {'method':32} {'ppl':>8} {'kl':>7} {'bpw':>6} {'quant s':>8} "
          f"{'tok/s':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['peer']:14} {r['tool']:22} {r['method']:32} ERROR {r['error']}")
            continue
        dec = f"{r['decode_tok_s']:6.1f}" if "decode_tok_s" in r else f"{'-':>6}"
        print(f"{r['peer']:14} {r['tool']:22} {r['method']:32} {r['ppl']:8.3f} {r['kl']:7.4f} "
              f"{r['bpw_linears']:6.3f} {r['quant_s']:8.1f} {dec}")
    fp32_ppl = next((r["fp32_ppl"] for r in rows if "fp32_ppl" in r), None)
    if fp32_ppl is not None:
        print(f"fp32 (reference) ppl {fp32_ppl:.3f}")


if __name__ == "__main__":
    main()
