"""Unpack lowbit's offline data and convert its bundled LM: ``python -m lowbit.setup_assets``.

Idempotent: each step is skipped when its result already exists. Works unattended (CI) as
root on a fresh machine that has only lowbit's pip packages: the .debs come from
``apt-get download`` (running ``apt-get update`` first when the package lists are missing).
"""
from __future__ import annotations

import argparse
import logging
import time

from .data.debs import ASSETS, ensure_asset

log = logging.getLogger("lowbit.setup_assets")


def setup_assets(models: bool = True) -> None:
    """Unpack every Debian data package, convert SmolLM2-135M-Instruct to fp32, train austen-lstm."""
    for asset in ASSETS:
        start = time.perf_counter()
        already = asset.ready()
        root = ensure_asset(asset)
        log.info("%-14s %s (%s, %.1f s)", asset.name, root, "present" if already else "unpacked",
                 time.perf_counter() - start)
    if models:
        from .models.smollm2 import convert_smollm2, converted_path

        start = time.perf_counter()
        already = (converted_path() / "config.json").is_file()
        folder = convert_smollm2()
        log.info("%-14s %s (%s, %.1f s)", "smollm2-135m", folder,
                 "present" if already else "converted", time.perf_counter() - start)
        from .models.austen_lstm import checkpoint_path, load_austen_lstm

        start = time.perf_counter()
        already = (checkpoint_path() / "config.json").is_file()
        load_austen_lstm()  # trains it (~7 min on 2 cores) when not cached
        log.info("%-14s %s (%s, %.1f s)", "austen-lstm", checkpoint_path(),
                 "present" if already else "trained", time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lowbit.setup_assets", description=__doc__)
    parser.add_argument("--no-models", action="store_true", help="only unpack the data")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    setup_assets(models=not args.no_models)


if __name__ == "__main__":
    main()
