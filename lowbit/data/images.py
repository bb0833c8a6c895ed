"""Real images that load with no network: the photos bundled with scikit-image and
scikit-learn (the EfficientNet-Lite0 benchmark set, DATA.md), as random-resized crops."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "colorwheel", "camera", "coins", "moon", "clock", "grass", "gravel", "brick",
          "cell", "page", "text")


def photos() -> list[torch.Tensor]:
    """The bundled photos as uint8 (3, H, W) tensors (gray ones replicated to RGB)."""
    import skimage.data
    from sklearn.datasets import load_sample_images
    images = [getattr(skimage.data, name)() for name in PHOTOS]
    images += list(load_sample_images().images)
    out = []
    for im in images:
        t = torch.from_numpy(np.array(im, copy=True))
        t = t[..., None].expand(-1, -1, 3) if t.dim() == 2 else t[..., :3]
        out.append(t.permute(2, 0, 1).contiguous())
    return out


def random_crops(images, n: int, seed: int, size: int = 224) -> torch.Tensor:
    """``n`` random-resized crops (area 10-100%, aspect 3/4-4/3, random flips), preprocessed
    as EfficientNet-Lite expects: (x - 127) / 128."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        im = images[int(torch.randint(len(images), (1,), generator=g))]
        h, w = im.shape[1:]
        for _ in range(10):
            area = h * w * (0.1 + 0.9 * torch.rand(1, generator=g).item())
            ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(1, generator=g).item())
            ch, cw = round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))
            if ch <= h and cw <= w:
                break
        else:
            ch = cw = min(h, w)
        top = int(torch.randint(h - ch + 1, (1,), generator=g))
        left = int(torch.randint(w - cw + 1, (1,), generator=g))
        crop = im[None, :, top:top + ch, left:left + cw].float()
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False).round().clamp(0, 255)[0]
        if torch.rand(1, generator=g).item() < 0.5:
            crop = crop.flip(-1)
        out[i] = (crop - 127.0) / 128.0
    return out




def photo_crops(n: int, seed: int) -> torch.Tensor:
    """``n`` preprocessed 224x224 crops of the bundled photos (calibration: seed 0, eval: 1)."""
    return random_crops(photos(), n, seed)
