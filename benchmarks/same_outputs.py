"""Did a change move any quantized model? Hashes of every packed tensor and of the logits of
SmolLM2-135M under the demo's and the LLM methods' data-free recipes, for this tree and for a
git revision, compared side by side (bit for bit).

    python benchmarks/same_outputs.py 7ee2b78      # the revision to compare against

The revision is checked out into a temporary git worktree and run with the same Python; only
constructor APIs present in both trees are used (WeightOnly, DynamicPTQ, NF4, LLMInt8).
Writes results/same_outputs.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hashes() -> dict:
    import torch

    import lowbit
    from lowbit.models import load_model
    from lowbit.qtensor import QTensor
    from lowbit.recipes import NF4, DynamicPTQ, LLMInt8, WeightOnly

    warnings.simplefilter("ignore")
    model, _ = load_model("smollm2-135m")
    recipes = {"w8 per-channel rtn +emb": WeightOnly(num_bits=8, group_size=None, embeddings=True),
               "w4 g64 rtn +emb": WeightOnly(num_bits=4, group_size=64, embeddings=True),
               "w4 g64 hqq": WeightOnly(num_bits=4, group_size=64, method="hqq"),
               "w3 g64 rtn": WeightOnly(num_bits=3, group_size=64),
               "w8a8 dynamic": DynamicPTQ(), "nf4": NF4(), "llm.int8": LLMInt8()}
    ids = (torch.arange(64).reshape(1, 64) * 7) % 49152
    out = {}
    for name, recipe in recipes.items():
        q = lowbit.quantize(model, recipe)
        h = hashlib.sha256()
        for mname, m in q.named_modules():
            w = getattr(m, "weight", None)
            if isinstance(w, QTensor):
                for key, t in w.tensors().items():
                    h.update(f"{mname}.{key}".encode())
                    h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
        with torch.no_grad():
            logits = q(ids).logits
        out[name] = {"packed": h.hexdigest(), "logits": hashlib.sha256(logits.numpy().tobytes()).hexdigest()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rev", help="git revision to compare against")
    p.add_argument("--json", default=str(ROOT / "results" / "same_outputs.json"))
    p.add_argument("--hashes-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hashes_only:
        print(json.dumps(hashes()))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), args.rev], check=True)
        try:
            script = Path(__file__).resolve()
            env = dict(os.environ, PYTHONPATH=str(tree))  # import that tree's lowbit
            old = subprocess.run([sys.executable, str(script), args.rev, "--hashes-only"], cwd=tree,
                                 env=env, check=True, capture_output=True, text=True).stdout
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    old, new = json.loads(old.strip().splitlines()[-1]), hashes()
    import lowbit
    from lowbit.doctor import machine
    from lowbit.kernels import kernel_for

    path = kernel_for("linear_int4", "cpu", __import__("torch").float32, (1, 64))
    rows = [{"model": "smollm2-135m", "method": k, "tool": f"lowbit {lowbit.__version__}",
             "lowbit_version": lowbit.__version__, "machine": machine(), "rev": args.rev,
             "kernels": "reference" if path.startswith("reference.") else "C++",
             "same_packed": old[k]["packed"] == new[k]["packed"],
             "same_logits": old[k]["logits"] == new[k]["logits"]} for k in new]
    for r in rows:
        print(f"{r['method']:28s} packed {'same' if r['same_packed'] else 'DIFFERENT'}, "
              f"logits {'same' if r['same_logits'] else 'DIFFERENT'}")
    Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["same_packed"] and r["same_logits"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
