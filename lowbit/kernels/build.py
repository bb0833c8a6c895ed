"""Build lowbit's C++ CPU kernels (lowbit/kernels/cpu/*.cpp, NF4 included): ``python -m lowbit.kernels.build``.

The extension is compiled once per (torch version, source and flag hash) into
``lowbit._cache.cache_dir("kernels", ...)``; later loads reuse it.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from lowbit._cache import cache_dir

NAME = "lowbit_cpu_kernels"
SOURCE_DIR = Path(__file__).parent / "cpu"
CFLAGS = ["-O3", "-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
          "-mavx512vnni", "-mavx512bf16", "-mavx512vbmi", "-mamx-tile", "-mamx-int8", "-fopenmp"]


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.cpp"))


def load(verbose: bool = False):
    """Compile (if not cached) and import the CPU extension module; raises on build failure.

    The build folder is keyed by torch version and a hash of the flags, the sources and the
    headers, so an edit rebuilds and an unchanged tree reuses the cache.
    """
    from torch.utils import cpp_extension

    digest = hashlib.sha256(" ".join(CFLAGS).encode())
    for path in sources() + sorted(SOURCE_DIR.glob("*.h")):
        digest.update(path.name.encode() + path.read_bytes())
    folder = cache_dir("kernels", f"torch-{torch.__version__}-{digest.hexdigest()[:16]}")
    return cpp_extension.load(name=NAME, sources=[str(p) for p in sources()], extra_cflags=CFLAGS,
                              extra_ldflags=["-fopenmp"], build_directory=str(folder), verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from lowbit.kernels.cpu import missing_cpu_flags

    missing = missing_cpu_flags()
    if missing:  # loading AVX-512 code here would die of SIGILL; the reference kernels run instead
        print(f"lowbit.kernels.build: skipped, this CPU lacks {', '.join(missing)}")
        return 0
    try:
        module = load(verbose="-v" in argv or "--verbose" in argv)
    except Exception as error:  # report, never crash the caller's build with a traceback
        print(f"lowbit.kernels.build: C++ kernels failed to build: {error}", file=sys.stderr)
        return 1
    print(f"lowbit.kernels.build: built {module.__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
