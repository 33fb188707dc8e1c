"""Two augmented views per image, drawn per sample in DataLoader workers, with their boxes.

Randomness is keyed on (seed, epoch, image index), not on worker state, so a resumed or
distributed run draws exactly the same views as an uninterrupted single-process one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as TF

from pixpro.config import ViewsConfig
from pixpro.data.cityscapes import read_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ViewPair(NamedTuple):
    view1: Tensor  # (3, h, w) normalised
    view2: Tensor  # (3, h, w)
    box1: Tensor  # (4,) top, left, bottom, right in [0, 1]; left > right means flipped
    box2: Tensor  # (4,)
    overlap_ok: Tensor  # () bool: False if max_tries crops never overlapped enough


def load_image_tensor(path: str) -> Tensor:
    """(3, H, W) float in [0, 1]."""
    return TF.to_dtype(TF.pil_to_tensor(read_image(path)), torch.float32, scale=True)


def normalize(images: Tensor) -> Tensor:
    return TF.normalize(images, IMAGENET_MEAN, IMAGENET_STD)


def crop_box(i: int, j: int, h: int, w: int, height: int, width: int, flip: bool) -> Tensor:
    left, right = j / width, (j + w) / width
    if flip:
        left, right = right, left
    return torch.tensor([i / height, left, (i + h) / height, right], dtype=torch.float32)


def overlap_fraction(box1: Tensor, box2: Tensor) -> float:
    """Intersection area over the smaller box's area (boxes in [0, 1], flips ignored)."""
    def extent(box):
        top, left, bottom, right = box.tolist()
        return top, min(left, right), bottom, max(left, right)

    t1, l1, b1, r1 = extent(box1)
    t2, l2, b2, r2 = extent(box2)
    inter = max(0.0, min(b1, b2) - max(t1, t2)) * max(0.0, min(r1, r2) - max(l1, l2))
    smaller = min((b1 - t1) * (r1 - l1), (b2 - t2) * (r2 - l2))
    return inter / smaller if smaller > 0 else 0.0


class TwoViewDataset(Dataset):
    """Items are addressed as (epoch, index) so each draw is reproducible; see EpochSampler."""

    def __init__(self, image_paths: list[str], cfg: ViewsConfig, seed: int):
        self.image_paths = list(image_paths)
        self.cfg = cfg
        self.seed = seed
        blur_kernel = 2 * (max(cfg.size) // 20) + 1  # ~10% of the view side, as BYOL at 224
        self.colour = [self._colour(cfg, p_blur, p_sol, blur_kernel)
                       for p_blur, p_sol in zip(cfg.blur_p, cfg.solarize_p)]

    @staticmethod
    def _colour(cfg: ViewsConfig, p_blur: float, p_solarize: float, kernel: int) -> v2.Compose:
        return v2.Compose([
            v2.RandomApply([v2.ColorJitter(*cfg.jitter)], p=cfg.jitter_p),
            v2.RandomGrayscale(p=cfg.grayscale_p),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=p_blur),
            v2.RandomSolarize(threshold=0.5, p=p_solarize),
        ])

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, key: tuple[int, int]) -> ViewPair:
        epoch, index = key
        # One RNG stream per (seed, epoch, image): torchvision's transforms draw from it.
        torch.manual_seed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
        image = load_image_tensor(self.image_paths[index])  # (3, H, W)
        height, width = image.shape[-2:]
        box_pair, ok = self._draw_crops(image)
        views = []
        for (i, j, h, w, flip), colour in zip(box_pair, self.colour):
            view = TF.resized_crop(image, i, j, h, w, list(self.cfg.size), antialias=True)
            if flip:
                view = TF.horizontal_flip(view)
            views.append(normalize(colour(view).clamp(0, 1)))
        boxes = [crop_box(i, j, h, w, height, width, flip) for i, j, h, w, flip in box_pair]
        return ViewPair(views[0], views[1], boxes[0], boxes[1], torch.tensor(ok))

    def _draw_crops(self, image: Tensor) -> tuple[list[tuple[int, int, int, int, bool]], bool]:
        """Resample the pair until the crops overlap by min_overlap, at most max_tries times."""
        height, width = image.shape[-2:]
        best, best_overlap = None, -1.0
        for _ in range(self.cfg.max_tries):
            pair = []
            for _view in range(2):
                i, j, h, w = RandomResizedCrop.get_params(image, list(self.cfg.scale), list(self.cfg.ratio))
                flip = bool(torch.rand(()) < self.cfg.flip)
                pair.append((i, j, h, w, flip))
            boxes = [crop_box(*crop[:4], height, width, crop[4]) for crop in pair]
            overlap = overlap_fraction(*boxes)
            if overlap > best_overlap:
                best, best_overlap = pair, overlap
            if overlap >= self.cfg.min_overlap:
                break
        return best, best_overlap >= self.cfg.min_overlap


def collate_view_pairs(items: list[ViewPair]) -> ViewPair:
    return ViewPair(*(torch.stack(field) for field in zip(*items)))

