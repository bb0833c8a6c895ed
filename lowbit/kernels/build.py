"""Build lowbit's C++ CPU kernels: ``python -m lowbit.kernels.build``.

Two extensions: the AVX-512 one (lowbit/kernels/cpu/*.cpp, skipped on CPUs without AVX-512)
and the recurrent-net one (lowbit/kernels/rnn/*.cpp, AVX2 + FMA: any recent x86-64). Each is
compiled once per (torch version, source and flag hash) into
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
RNN_NAME = "lowbit_rnn_kernels"
RNN_SOURCE_DIR = Path(__file__).parent / "rnn"
# baseline x86-64 with AVX2: no AVX-512; no FMA contraction, so the C++ rescale rounds like the reference
RNN_CFLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp"]


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.cpp"))


def compile_extension(name: str, source_dir: Path, include_dirs: tuple[Path, ...] = (),
                      verbose: bool = False, cflags: list[str] = CFLAGS):
    """Compile (if not cached) and import the C++ sources of ``source_dir`` as module ``name``.

    The build folder is keyed by torch version and a hash of the flags, the sources and every
    header they can include, so an edit rebuilds and an unchanged tree reuses the cache.
    """
    from torch.utils import cpp_extension

    cpps = sorted(source_dir.glob("*.cpp"))
    digest = hashlib.sha256(" ".join(cflags).encode())
    for path in cpps + [h for d in (source_dir, *include_dirs) for h in sorted(d.glob("*.h"))]:
        digest.update(path.name.encode() + path.read_bytes())
    prefix = "" if name == NAME else f"{name.removeprefix('lowbit_').removesuffix('_kernels')}-"
    folder = cache_dir("kernels", f"{prefix}torch-{torch.__version__}-{digest.hexdigest()[:16]}")
    return cpp_extension.load(name=name, sources=[str(p) for p in cpps], extra_cflags=cflags,
                              extra_ldflags=["-fopenmp"],
                              extra_include_paths=[str(d) for d in include_dirs],
                              build_directory=str(folder), verbose=verbose)


def load(verbose: bool = False):
    """Compile (if not cached) and import the CPU extension module; raises on build failure."""
    return compile_extension(NAME, SOURCE_DIR, verbose=verbose)


def load_rnn(verbose: bool = False):
    """Compile (if not cached) and import the recurrent-net extension (AVX2); raises on failure."""
    return compile_extension(RNN_NAME, RNN_SOURCE_DIR, verbose=verbose, cflags=RNN_CFLAGS)


def _build(what: str, missing: list[str], loader, verbose: bool) -> int:
    if missing:  # importing the build here would die with SIGILL
        print(f"lowbit.kernels.build: {what} skipped, this CPU lacks {', '.join(missing)}; its ops "
              f"run their pure-PyTorch reference path (slow)", file=sys.stderr)
        return 0
    try:
        module = loader(verbose=verbose)
    except Exception as error:  # report, never crash the caller's build with a traceback
        print(f"lowbit.kernels.build: {what} failed to build: {error}", file=sys.stderr)
        return 1
    print(f"lowbit.kernels.build: built {module.__file__}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from lowbit.kernels import rnn
    from lowbit.kernels.cpu import missing_cpu_flags

    verbose = "-v" in argv or "--verbose" in argv
    failed = _build("recurrent-net kernels (AVX2)", rnn.missing_cpu_flags(), load_rnn, verbose)
    failed |= _build("C++ kernels (AVX-512)", missing_cpu_flags(), load, verbose)
    return failed


if __name__ == "__main__":
    sys.exit(main())
