import math

import numpy as np
import pytest
import torch

from lowbit.models import EfficientNetLite, IMAGENET_CLASSES, load_model, preprocess_image
from lowbit.models.efficientnet_lite import SamePad2d, weights_path

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("size, kernel, stride", [(224, 3, 2), (225, 3, 2), (28, 5, 2), (14, 5, 1)])
def test_same_padding_matches_tensorflow(size, kernel, stride):
    x = torch.zeros(1, 1, size, size)
    conv = torch.nn.Conv2d(1, 1, kernel, stride)
    assert conv(SamePad2d(kernel, stride)(x)).shape[-1] == math.ceil(size / stride)


def test_architecture_size_and_output():
    model = EfficientNetLite().eval()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert len(model._blocks) == 16
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


def test_preprocess_shape_and_range():
    image = np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    x = preprocess_image(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert -127 / 128 <= x.min() and x.max() <= 1.0
    with pytest.raises(ValueError, match="RGB"):
        preprocess_image(np.zeros((2, 4, 4, 3), dtype=np.uint8))


@pytest.mark.real
def test_strict_load_and_real_photos():
    from skimage import data as skimage_data  # pip install scikit-image
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    EfficientNetLite().load_state_dict(state, strict=True)
    model, tokenizer = load_model("efficientnet-lite0")
    assert tokenizer is None and not model.training
    photos = torch.stack([preprocess_image(skimage_data.coffee()),
                          preprocess_image(skimage_data.chelsea())])
    with torch.no_grad():
        top5 = model(photos).topk(5).indices.tolist()
    assert IMAGENET_CLASSES[top5[0][0]] in ("espresso", "cup")
    assert top5[1][0] in CATS and len(CATS & set(top5[1][:3])) >= 2
