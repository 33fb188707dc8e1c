"""One image's pinhole camera and canvases (image, label ids, depth), and the photographic finish
(haze, exposure, noise, gamma) applied once everything is drawn."""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import name2label

from pixpro.data.synthetic.palette import _value_noise

# Label ids come from cityscapesscripts; no module of this package hard-codes a number.
_ID = {name: name2label[name].id for name in (
    "road", "sidewalk", "building", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "car", "ego vehicle",
)}


class _Scene:
    """Camera, canvases (image, label, depth) and shared noise fields of one image."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.rng, self.h, self.w = rng, h, w
        self.image = np.zeros((h, w, 3), np.float32)
        self.label = np.full((h, w), _ID["sky"], np.uint8)
        self.depth = np.full((h, w), np.inf, np.float32)
        self.f = w * rng.uniform(0.75, 1.1)        # focal length in pixels
        self.vx = w * rng.uniform(0.42, 0.58)      # vanishing point column
        self.vy = h * rng.uniform(0.3, 0.5)        # horizon row
        self.hc = rng.uniform(1.2, 1.6)            # camera height (m)
        self.px = np.arange(w, dtype=np.float32) + 0.5 - self.vx  # (W,) column offsets
        self.py = np.arange(h, dtype=np.float32) + 0.5 - self.vy  # (H,) row offsets
        s = w / 512  # texture scales are tuned at 512 px wide
        self.fine = (rng.random((h, w), dtype=np.float32) - 0.5) * 3.46  # unit variance
        self.med = _value_noise(rng, h, w, 4 * s)
        self.coarse = _value_noise(rng, h, w, 28 * s)
        self.leaf = 0.6 * _value_noise(rng, h, w, 1.6 * s) + 0.5 * _value_noise(rng, h, w, 5 * s)
        self.grass = _value_noise(rng, h, w, 3 * s, 1.0)  # short vertical blades

    def box_window(self, c0: float, c1: float, r0: float, r1: float):
        """Clip a pixel rectangle to the image: (rows slice, cols slice) or None when empty."""
        c0, c1 = max(int(np.floor(c0)), 0), min(int(np.ceil(c1)), self.w)
        r0, r1 = max(int(np.floor(r0)), 0), min(int(np.ceil(r1)), self.h)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def visible(self, win, mask: np.ndarray, depth) -> np.ndarray:
        """(h, w) bool: pixels of `mask` in window `win` nearer than what is drawn there;
        depth scalar or (h, w)."""
        rows, cols = win
        return mask & (depth < self.depth[rows, cols])

    def put(self, win, vis: np.ndarray, colour: np.ndarray, label: str, depth) -> None:
        """Write the pixels `vis` (h, w) bool of window `win`: colour (k, 3) in row-major
        order of vis or (3,); depth (k,) or scalar."""
        r, c = np.nonzero(vis)
        r += win[0].start
        c += win[1].start
        self.image[r, c] = colour
        self.label[r, c] = _ID[label]
        self.depth[r, c] = depth

    def paint(self, win, mask: np.ndarray, colour: np.ndarray, label: str, depth) -> None:
        """Depth-tested write into window `win`; mask (h, w) bool, colour (3,) or broadcastable
        to (h, w, 3), depth scalar or (h, w)."""
        vis = self.visible(win, mask, depth)
        if not vis.any():
            return
        if np.ndim(colour) == 3:
            colour = np.broadcast_to(colour, mask.shape + (3,))[vis]
        self.put(win, vis, colour, label, depth[vis] if np.ndim(depth) == 2 else depth)


def _finish(sc: _Scene) -> np.ndarray:
    """Haze, exposure, white balance, contrast, sensor noise and gamma -> (H, W, 3) uint8.

    Works in place on the (H, W * 3) view of sc.image with per-pixel fields repeated 3x and
    per-channel constants tiled W times: numpy broadcasting over a trailing axis of 3 runs
    several times slower than flat elementwise loops."""
    rng = sc.rng
    h, w = sc.h, sc.w
    flat = sc.image.reshape(h, w * 3)
    # aerial perspective: far surfaces fade towards the horizon colour; the sky keeps its gradient
    depth = np.where(np.isfinite(sc.depth), sc.depth, 0)
    haze = 1 - np.exp(depth * np.float32(-1 / rng.uniform(120, 600)))
    haze *= rng.uniform(0.4, 0.9)
    haze3 = np.repeat(haze, 3, axis=1)
    flat -= np.tile(sc.sky_horizon, w)
    flat *= 1 - haze3
    # exposure x white balance, then contrast about the mean, folded into one affine map
    gain = rng.uniform(0.92, 1.08, 3).astype(np.float32) * np.float32(rng.uniform(0.7, 1.25))
    contrast = np.float32(rng.uniform(0.75, 1.15))
    mean = float((sc.image[::4, ::4].mean(axis=(0, 1)) + sc.sky_horizon) @ gain) / 3  # subsampled
    flat += np.tile(sc.sky_horizon, w)
    flat *= np.tile(gain * contrast, w)
    flat += np.float32(mean * (1 - contrast) + 0.5)  # + 0.5: round on the cast below
    # sensor noise: mostly luminance (one field for all channels), faint column banding
    noise = rng.random((h, w), dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(rng.uniform(3.0, 9.0))
    flat += np.repeat(noise, 3, axis=1)
    flat += rng.random((1, w * 3), dtype=np.float32) * 2 - 1
    np.clip(flat, 0, 255, out=flat)
    gamma = np.round(255 * (np.arange(256) / 255) ** rng.uniform(0.85, 1.15)).astype(np.uint8)
    return np.take(gamma, sc.image.astype(np.uint8))
