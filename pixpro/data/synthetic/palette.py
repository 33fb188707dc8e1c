"""Colour palettes and the noise and pattern helpers that texture every surface."""

from __future__ import annotations

import numpy as np
from PIL import Image


# Palettes (RGB), (k, 3) float32. Shared greys make colour alone ambiguous between stuff
# classes and cars; greens are shared between vegetation and terrain.
def _palette(*groups: list) -> np.ndarray:
    return np.asarray([c for group in groups for c in group], np.float32)


_GREY_LIST = [(128, 128, 128), (100, 100, 104), (158, 156, 152), (80, 80, 84), (188, 188, 185)]
_GREYS = _palette(_GREY_LIST)
_BUILDING = _palette(_GREY_LIST, [(190, 174, 148), (150, 82, 62), (118, 94, 76), (220, 210, 186),
                                  (150, 176, 204), (146, 168, 140), (198, 160, 158), (62, 62, 68),
                                  (120, 140, 170)])
_ROAD = _palette([(90, 90, 95), (120, 117, 118), (70, 70, 76), (142, 139, 136), (106, 100, 112),
                  (160, 158, 155)])
_SIDEWALK = _palette(_GREY_LIST, [(170, 160, 148), (160, 118, 108), (185, 180, 168),
                                  (120, 116, 126)])
_CAR_LIST = [(192, 194, 198), (232, 232, 228), (30, 30, 36), (160, 32, 30), (40, 62, 140),
             (30, 40, 80), (60, 92, 60), (130, 162, 192), (200, 190, 160), (96, 120, 70)]
_CAR = _palette(_GREY_LIST, _CAR_LIST)
_VEGETATION = _palette([(60, 100, 40), (82, 120, 50), (44, 70, 36), (100, 130, 62),
                        (112, 110, 52), (140, 120, 52), (92, 110, 90), (70, 92, 70),
                        (120, 140, 80)])
_TERRAIN = _palette([(110, 140, 70), (130, 150, 82), (150, 140, 92), (120, 100, 72),
                     (90, 120, 60), (140, 160, 100), (100, 110, 80)])
_DIRT = _palette([(120, 100, 72), (140, 120, 90)])
_POLE = _palette(_GREY_LIST, [(40, 40, 46), (60, 82, 62), (172, 172, 172), (96, 90, 80)])
_SIGN = _palette([(200, 30, 30), (30, 70, 170), (235, 235, 235), (230, 190, 30), (40, 120, 60),
                  (150, 150, 150)])
_HOUSING = _palette([(30, 30, 32), (52, 52, 56), (90, 90, 90), (190, 160, 30), (40, 60, 45)])
_GLASS = _palette([(40, 48, 60), (70, 80, 92), (24, 26, 30)])
_MARKING = _palette([(225, 225, 220), (215, 190, 80)])
_BARK = _palette([(90, 70, 50), (110, 100, 90), (70, 60, 50)])
_SKIN = _palette([(232, 190, 160), (200, 150, 110), (150, 100, 70), (100, 70, 50),
                  (240, 210, 185)])
_HAIR = _palette([(30, 22, 15), (90, 60, 30), (180, 150, 90), (60, 60, 60)])
_CLOTHES = _palette(_GREY_LIST, _CAR_LIST, [(200, 40, 40), (40, 40, 160), (190, 174, 148),
                                            (150, 82, 62), (146, 168, 140)])
_TROUSERS = _palette([(40, 45, 70), (30, 30, 30), (110, 100, 80), (70, 70, 72)])
_BONNET = _palette([(20, 20, 24), (40, 40, 48), (30, 34, 60), (90, 90, 92)])
_SKIES = [  # (zenith, horizon)
    ((70, 122, 200), (168, 198, 230)),   # clear
    ((140, 170, 205), (200, 210, 222)),  # hazy
    ((168, 170, 176), (208, 210, 214)),  # overcast
    ((118, 124, 134), (164, 168, 176)),  # dark overcast
    ((96, 140, 196), (214, 196, 170)),   # low sun
]


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 18.0,
          n: int | None = None) -> np.ndarray:
    """Colour(s) from palette (k, 3) with per-instance brightness and colour jitter: (3,), or
    (n, 3) when n is given; float32 in [0, 255]."""
    # one uniform draw per number (index, brightness, 3 jitters): this is called thousands of
    # times per image, and each Generator call has a fixed overhead
    u = rng.random((1 if n is None else n, 5), dtype=np.float32)
    col = palette[(u[:, 0] * len(palette)).astype(np.int64)] * (0.85 + 0.3 * u[:, 1:2])
    col += (u[:, 2:] - 0.5) * np.float32(jitter * 3.46)  # uniform with std `jitter`
    np.clip(col, 0, 255, out=col)
    return col[0] if n is None else col


def _choose(rng: np.random.Generator, options: tuple[str, ...], p: tuple[float, ...]) -> str:
    """One of options with probabilities p (cheaper than Generator.choice for a scalar)."""
    return options[min(int(np.searchsorted(np.cumsum(p), rng.random())), len(options) - 1)]


def _value_noise(rng: np.random.Generator, h: int, w: int, cell_y: float,
                 cell_x: float | None = None) -> np.ndarray:
    """Smooth random field (h, w) float32 in [-1, 1]: uniform lattice values every `cell` pixels,
    bilinearly upsampled by PIL (several times faster than numpy gathers)."""
    cell_x = cell_y if cell_x is None else cell_x
    cell_y, cell_x = max(cell_y, 1.0), max(cell_x, 1.0)
    grid = rng.uniform(-1, 1, (int(np.ceil(h / cell_y)) + 2, int(np.ceil(w / cell_x)) + 2))
    oy, ox = rng.uniform(0, 1, 2)  # sub-cell phase, so lattices of different fields don't align
    field = Image.fromarray(grid.astype(np.float32)).resize(
        (w, h), Image.Resampling.BILINEAR, box=(ox, oy, ox + w / cell_x, oy + h / cell_y))
    return np.asarray(field)


def _rgb3(field: np.ndarray) -> np.ndarray:
    """Per-pixel field (h, w) -> (h, w * 3), each value repeated for R, G, B.

    Image math here runs on (h, w * 3) views of (h, w, 3) arrays: numpy broadcasting over a
    trailing axis of length 3 is several times slower than flat elementwise loops."""
    return np.repeat(field, 3, axis=1)


def _frac(x: np.ndarray) -> np.ndarray:
    """Fractional part in [0, 1), also for negative x (np.modf is slower and keeps the sign)."""
    return x - np.floor(x)


def _hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cheap deterministic pseudo-random value in [0, 1) per integer cell (a, b), same shape."""
    return _frac(np.sin(a * 12.9898 + b * 78.233) * 43758.547)


def _fade(period_px: np.ndarray, full: float = 4.0) -> np.ndarray:
    """Contrast of a periodic pattern whose period spans `period_px` pixels: 0 when it would
    alias (< ~1.5 px), 1 when well resolved; keeps far bricks and tiles from turning into moire."""
    return np.clip((period_px - 1.5) / (full - 1.5), 0.0, 1.0)


def _leafy(base: np.ndarray, alt: np.ndarray, leaf: np.ndarray, med: np.ndarray) -> np.ndarray:
    """Blotchy foliage colour (..., 3) from two greens (3,) and noise samples leaf, med (...)."""
    mix = np.clip(0.5 + 0.8 * med, 0, 1)[..., None]
    shade = 0.2 + 1.1 * np.clip(0.5 + 1.1 * leaf, 0, 1)
    return (base + (alt - base) * mix) * shade[..., None]
