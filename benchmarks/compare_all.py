"""The committed comparisons: ``lowbit compare`` on every bundled model kind -> results/compare/.

Each model runs as its own ``lowbit compare`` process (one at a time: timings need the cores),
writing ``results/compare/<name>/`` (comparison.json, report.md, report.html, plots). The
"user folder" case saves the bundled SmolLM2 with ``save_pretrained`` the way a user would, then
compares that folder.

    python benchmarks/compare_all.py                    # every model
    python benchmarks/compare_all.py fashion-cnn minilm # some of them
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "compare"
RUNS = {
    "smollm2-135m": ["smollm2-135m", "--quick"],
    "minilm": ["minilm", "--quick"],
    "efficientnet-lite0": ["efficientnet-lite0", "--quick"],
    "fashion-cnn": ["fashion-cnn"],
    "austen-lstm": ["austen-lstm"],
    "user-folder": [None, "--quick", "--strategies", "w8a8,rtn:w4g64,gptq:w4g64,hqq:w4g64,nf4"],
}


def user_folder() -> Path:
    """SmolLM2 saved by ``save_pretrained`` (bf16 safetensors + tokenizer), as a user would."""
    import torch

    from lowbit._cache import cache_dir
    from lowbit.models import load_model

    folder = cache_dir("models", "user-saved-smollm2")
    if not (folder / "config.json").is_file():
        model, tokenizer = load_model("smollm2-135m")
        model.to(torch.bfloat16).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(RUNS), help=f"any of {', '.join(RUNS)}")
    args = p.parse_args()
    for name in args.names:
        argv = list(RUNS[name])
        if argv[0] is None:
            argv[0] = str(user_folder())
        cmd = [sys.executable, "-m", "lowbit.cli", "compare", *argv, "--report", str(OUT / name)]
        print("$", " ".join(cmd[2:]), flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd, cwd=ROOT)
        print(f"{name}: exit {code} after {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
