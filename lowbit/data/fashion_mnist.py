"""Fashion-MNIST (Xiao et al., 2017) from the Debian package ``dataset-fashion-mnist``."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from .debs import FASHION_MNIST, asset_root

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
_FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped or not): 2 zero bytes, dtype byte, ndim byte, big-endian dims."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    array = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=4 + 4 * ndim)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (n, 28, 28), labels int64 (n,))``; 60000 train, 10000 test."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = asset_root(FASHION_MNIST) / "usr/share/datasets/fashion-mnist"
    images = read_idx(folder / _FILES[split].format("images", 3))
    labels = read_idx(folder / _FILES[split].format("labels", 1))
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
