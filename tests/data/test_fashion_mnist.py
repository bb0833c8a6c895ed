import gzip
import struct

import numpy as np
import pytest
import torch

from lowbit.data import fashion_mnist, read_idx


def test_read_idx_gzipped(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">HBB3I", 0, 0x08, 3, 2, 3, 4) + array.tobytes()))
    np.testing.assert_array_equal(read_idx(path), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


@pytest.mark.real
@pytest.mark.parametrize("split, n", [("train", 60_000), ("test", 10_000)])
def test_shapes_and_labels(split, n):
    images, labels = fashion_mnist(split)
    assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert torch.equal(labels.bincount(), torch.full((10,), n // 10))
    assert 0 < images.float().mean() < 255


def test_bad_split():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        fashion_mnist("val")
