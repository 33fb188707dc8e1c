"""Procedural street scenes written as a raw Cityscapes tree, deterministic from a seed.

Each scene is a small 3-D world seen by a pinhole camera at height `hc` above a flat ground:
a street (road with lane markings, kerbs, sidewalks, optional grass strips) between two sides
that are building facades, a hedge (park) or open terrain, closed by a far wall of buildings or
trees. Surfaces are resolved with a depth buffer; cars are ray-traced boxes, people, poles, signs,
traffic lights and trees are upright billboards, so nearer things are bigger and occlude farther
ones. Colours of different classes deliberately overlap (grey road / sidewalk / buildings / cars /
overcast sky, green terrain / vegetation, sky-blue buildings and window reflections); the classes
differ by texture, shape and context, which is what a dense self-supervised method must pick up.

Image coordinates: pixel (row y, column x); world: X lateral (right +), Y height above ground,
Z depth along the street. A ground point (X, 0, Z) projects to x = vx + f X / Z, y = vy + f hc / Z.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import name2label
from PIL import Image

from pixpro.data.cities import CITY_NAMES

SPLITS = ("train", "val")
EXTRA_SPLIT = "train_extra"  # unlabelled: images only, like Cityscapes' coarse extra set
_SPLIT_INDEX = {"train": 0, "val": 1, EXTRA_SPLIT: 2}

_FRAME = 19  # Cityscapes' annotated frame number in every sequence

# Label ids come from cityscapesscripts; nothing below hard-codes a number.
_ID = {name: name2label[name].id for name in (
    "road", "sidewalk", "building", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "car", "ego vehicle",
)}


@dataclass(frozen=True)
class SceneJob:
    """Everything needed to render and write one image, independently of all others."""

    split: str
    city: str
    stem: str  # "{city}_{seq:06d}_{frame:06d}"
    image_path: Path
    label_path: Path | None  # None for the unlabelled train_extra split
    seed: tuple[int, ...]


# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Background: sky, ground bands, side planes (facades / hedges) and the far end wall.
_ROADK, _SIDEK, _KERBK, _TERRK = 0, 1, 2, 3


@dataclass
class _Segments:
    """Buildings along one axis (depth Z for side facades, lateral X for the end wall)."""

    edges: np.ndarray      # (K-1,) boundaries along the axis
    height: np.ndarray     # (K,) m
    colour: np.ndarray     # (K, 3)
    brick: np.ndarray      # (K,) bool
    storey: np.ndarray     # (K,) m
    spacing: np.ndarray    # (K,) window pitch, m
    win_w: np.ndarray      # (K,) window width / pitch
    win_h: np.ndarray      # (K,) window height / storey
    glass: np.ndarray      # (K, 3)
    shop: np.ndarray       # (K,) bool: ground floor shop windows


def _make_segments(sc: _Scene, start: float, stop: float, lengths: tuple[float, float],
                   heights: tuple[float, float]) -> _Segments:
    """Random buildings covering [start, stop) with lengths and heights drawn from the ranges."""
    rng = sc.rng
    cuts = start + np.cumsum(rng.uniform(*lengths, int(np.ceil((stop - start) / lengths[0]))))
    cuts = cuts[:np.searchsorted(cuts, stop) + 1]  # the last segment reaches past stop
    k = len(cuts)
    glass = _pick(rng, _GLASS, 10, n=k)
    reflect = rng.uniform(0, 0.7, (k, 1)).astype(np.float32)  # windows mirror the sky
    glass = glass * (1 - reflect) + sc.sky_horizon * reflect
    return _Segments(
        edges=cuts[:-1].astype(np.float32),
        height=rng.uniform(*heights, k).astype(np.float32),
        colour=_pick(rng, _BUILDING, 20, n=k),
        brick=rng.random(k) < 0.45,
        storey=rng.uniform(2.8, 3.8, k).astype(np.float32),
        spacing=rng.uniform(1.6, 4.0, k).astype(np.float32),
        win_w=rng.uniform(0.3, 0.7, k).astype(np.float32),
        win_h=rng.uniform(0.35, 0.6, k).astype(np.float32),
        glass=glass.astype(np.float32),
        shop=rng.random(k) < 0.5,
    )


def _facade_colours(sc: _Scene, segs: _Segments, seg: np.ndarray, u: np.ndarray, v: np.ndarray,
                    z, block: tuple[slice, slice]) -> np.ndarray:
    """Facade colours (h, w, 3) over image window `block` (h, w).

    seg: segment index per column (1, w); u (along the facade, m) and depth z: (1, w) or
    scalar; v (height, m): (h, w) or (h, 1). Per-column segments keep the look-ups cheap.
    Built as base colour x per-pixel gain plus glass blended into the windows."""
    ppm = sc.f / z  # pixels per metre at that depth
    gain = 1 + 0.05 * sc.med[block] + 0.015 * sc.fine[block] + 0.06 * sc.coarse[block]  # plaster
    # window grid, one row per storey above the ground floor
    storey, spacing, height = segs.storey[seg], segs.spacing[seg], segs.height[seg]
    level = np.floor(v / storey)
    fv, fu = np.abs(_frac(v / storey) - 0.55), np.abs(_frac(u / spacing) - 0.5)
    hw, hh = segs.win_w[seg] / 2, segs.win_h[seg] / 2
    upper = (level >= 1) & (v < height - 0.8)
    inner = upper & (fu < hw) & (fv < hh)
    frame = upper & (fu < hw + 0.06) & (fv < hh + 0.05) & ~inner
    fw = 0.35 + 0.65 * _fade(spacing * ppm, 6.0)  # far windows fade instead of aliasing
    # brick courses (not across the glass): mortar lines plus per-brick tone
    row = np.floor(v / 0.25)
    brick_u = u / 0.5 + 0.5 * (row - 2 * np.floor(row / 2))  # alternate courses offset
    mortar = (_frac(v / 0.25) < 0.18) | (_frac(brick_u) < 0.09)
    tone = np.where(mortar, 1.25, 0.88 + 0.24 * _hash(row, np.floor(brick_u)))
    gain *= 1 + (_fade(0.25 * ppm) * (segs.brick[seg] & ~inner)) * (tone - 1)
    gain *= 1 + 0.35 * fw * frame
    gain *= np.where(v > height - 0.4, 0.75, 1.0)  # cornice under the roof
    # glass: panes vary (curtains, reflections); shop fronts on the ground floor
    shop = segs.shop[seg] & (v > 0.4) & (v < 2.6) & (np.abs(_frac(u / 5.0) - 0.5) < 0.38)
    lit = np.where(shop, 0.8, 0.7 + 0.6 * _hash(level, np.floor(u / spacing)))
    alpha = np.where(shop, 1.0, np.where(inner, fw, 0.0))
    # seg is per column (1, w): colours as (1, w * 3) rows broadcast over the block's rows
    wall = segs.colour[seg].reshape(1, -1)
    glass = segs.glass[seg].reshape(1, -1) * _rgb3(lit / gain)  # panes ignore the wall's gain
    out = wall + (glass - wall) * _rgb3(alpha)
    out *= _rgb3(gain)
    return out.reshape(gain.shape + (3,))


class _Street:
    """Lateral layout of the street and what stands at both sides."""

    def __init__(self, sc: _Scene):
        rng = sc.rng
        self.road_l, self.road_r = -rng.uniform(1.6, 7.0), rng.uniform(1.6, 7.0)
        self.z_end = rng.uniform(60, 250)
        # bands outward from each road edge: (kind, width, colour)
        sides = {}
        for side in ("left", "right"):
            walk = _pick(rng, _SIDEWALK)
            bands = [(_KERBK, rng.uniform(0.15, 0.3), np.clip(walk * 1.15, 0, 255))]
            if rng.random() < 0.25:
                bands.append((_TERRK, rng.uniform(0.8, 2.5), _pick(rng, _TERRAIN)))
            bands.append((_SIDEK, rng.uniform(1.5, 5.0), walk))
            kind = _choose(rng, ("buildings", "park", "open"), (0.65, 0.2, 0.15))
            if kind != "buildings" or rng.random() < 0.3:
                bands.append((_TERRK, rng.uniform(1.0, 6.0), _pick(rng, _TERRAIN)))
            sides[side] = (kind, bands)
        self.left_kind, left = sides["left"]
        self.right_kind, right = sides["right"]
        self.facade_l = self.road_l - sum(b[1] for b in left)
        self.facade_r = self.road_r + sum(b[1] for b in right)
        # flat band table over X (-inf, inf): left bands (outermost first), road, right bands
        kinds = [b[0] for b in left[::-1]] + [_ROADK] + [b[0] for b in right]
        colours = [b[2] for b in left[::-1]] + [_pick(rng, _ROAD, 12)] + [b[2] for b in right]
        # boundaries in increasing X; the outermost band on each side runs to infinity
        left_cuts = self.road_l - np.cumsum([0.0] + [b[1] for b in left[:-1]])
        right_cuts = self.road_r + np.cumsum([0.0] + [b[1] for b in right[:-1]])
        self.edges = np.concatenate([left_cuts[::-1], right_cuts]).astype(np.float32)
        self.kinds = np.asarray(kinds, np.int8)
        self.label_ids = np.asarray([_ID["road"] if k == _ROADK else _ID["terrain"] if k == _TERRK
                                     else _ID["sidewalk"] for k in kinds], np.uint8)
        self.colours = np.stack(colours).astype(np.float32)
        self.band_bounds = {"left": left, "right": right}

    def band_x(self, side: str, kind: int) -> tuple[float, float] | None:
        """Lateral extent (lo, hi) of the first band of `kind` on `side`, or None."""
        x = self.road_l if side == "left" else self.road_r
        for k, width, _ in self.band_bounds[side]:
            lo, hi = (x - width, x) if side == "left" else (x, x + width)
            if k == kind:
                return lo, hi
            x = lo if side == "left" else hi
        return None


def _draw_sky(sc: _Scene) -> None:
    """Vertical gradient with soft clouds above the horizon; sets sc.sky_horizon (3,)."""
    rng = sc.rng
    zen, hor = _SKIES[rng.integers(len(_SKIES))]
    jit = rng.normal(0, 10, 3)
    zen = np.clip(np.asarray(zen) + jit, 0, 255).astype(np.float32)
    hor = np.clip(np.asarray(hor) + jit, 0, 255).astype(np.float32)
    sc.sky_horizon = hor
    # the ground covers every row below the horizon, so only rows above it are painted
    h = min(int(np.ceil(sc.vy)), sc.h)
    t = np.clip(1 - (np.arange(h) + 0.5) / max(sc.vy, 1.0), 0, 1) ** 0.7  # (h,) 0 at horizon
    sky = np.tile(hor + (zen - hor) * t[:, None], (1, sc.w))  # (h, W * 3), see _rgb3
    clouds = _value_noise(rng, h, sc.w, 18 * sc.w / 512, 60 * sc.w / 512)
    cover = np.clip((clouds - rng.uniform(-0.2, 0.8)) * 2.5, 0, 1) * rng.uniform(0.3, 0.9)
    white = np.tile(np.clip(hor + 25, 0, 255), sc.w)
    sky += (white - sky) * _rgb3(cover)
    sc.image[:h] = sky.reshape(h, sc.w, 3)


def _rows_with(mask: np.ndarray) -> slice | None:
    """Smallest row range holding all True entries of mask (h, w), or None."""
    rows = np.flatnonzero(mask.any(axis=1))
    return slice(int(rows[0]), int(rows[-1]) + 1) if rows.size else None


def _draw_background(sc: _Scene, st: _Street) -> None:
    """Ground, side planes and end wall, resolved per pixel by nearest depth.

    Every surface is textured densely over the smallest image block holding it (dense numpy
    beats gathering scattered pixels) and copied in where it is the nearest."""
    rng = sc.rng
    f, hc, h, w = sc.f, sc.hc, sc.h, sc.w
    px, py = sc.px[None, :], sc.py[:, None]
    r0 = int(np.searchsorted(sc.py, 0.0, side="right"))  # first row below the horizon
    zmin = np.full((h, w), np.inf, np.float32)
    zmin[r0:] = f * hc / py[r0:]  # ground: depth depends on the row only
    win = np.full((h, w), -1, np.int8)  # nearest surface: -1 sky, 0 ground, 1/2 sides, 3 end
    win[r0:] = 0

    # side planes: facades (segments along the street) or a hedge
    c_mid = int(np.searchsorted(sc.px, 0.0))  # columns left of the vanishing point
    planes = {}
    for k, side, x_plane, kind in ((1, "left", st.facade_l, st.left_kind),
                                   (2, "right", st.facade_r, st.right_kind)):
        if kind == "open":
            continue
        cs = slice(0, c_mid) if side == "left" else slice(c_mid, w)
        with np.errstate(divide="ignore"):  # a column exactly at the vanishing point
            z = f * x_plane / px[:, cs]  # (1, wb): where each column's ray meets the plane
        y_world = hc - py * z / f  # (H, wb)
        if kind == "buildings":
            segs = _make_segments(sc, 0.0, st.z_end, (6, 28), (6, 30))
            seg = np.searchsorted(segs.edges, np.minimum(z, st.z_end))  # (1, wb)
            top = segs.height[seg]
        else:
            segs, seg, top = None, None, rng.uniform(0.8, 2.5)
        hit = (z < st.z_end) & (y_world <= top) & (y_world >= -0.5)
        closer = hit & (z < zmin[:, cs])
        win[:, cs][closer] = k
        zmin[:, cs] = np.where(closer, z, zmin[:, cs])
        planes[k] = (cs, z, y_world, segs, seg, kind)

    # end wall across the street: buildings or a tree line
    x_end = px * st.z_end / f  # (1, W)
    y_end = hc - py * st.z_end / f  # (H, 1)
    end_trees = rng.random() < 0.3
    if end_trees:
        top_end = np.interp(x_end, np.linspace(-300, 300, 40), rng.uniform(4, 14, 40))
        end_segs = end_seg = None
    else:
        end_segs = _make_segments(sc, -400.0, 400.0, (8, 30), (5, 40))
        end_seg = np.searchsorted(end_segs.edges, x_end)  # (1, W)
        top_end = end_segs.height[end_seg]
    closer = (y_end <= top_end) & (st.z_end < zmin)
    win[closer] = 3
    zmin[closer] = st.z_end
    sc.depth[:] = zmin

    def put(block, mask, colour, label_ids):
        np.copyto(sc.image[block], colour, where=mask[..., None])
        np.copyto(sc.label[block], label_ids, where=mask)

    if r0 < h:
        block = (slice(r0, h), slice(0, w))
        col, lab = _ground_colours(sc, st, r0)
        put(block, win[block] == 0, col, lab)
    shade = {1: rng.uniform(0.7, 1.1), 2: rng.uniform(0.7, 1.1)}  # sunny and shady side
    for k, (cs, z, y_world, segs, seg, kind) in planes.items():
        rb = _rows_with(win[:, cs] == k)
        if rb is None:
            continue
        block = (rb, cs)
        if kind == "buildings":
            col = _facade_colours(sc, segs, seg, z, y_world[rb], z, block)
            label = _ID["building"]
        else:
            base, alt = _pick(rng, _VEGETATION), _pick(rng, _VEGETATION)
            col = _leafy(base, alt, sc.leaf[block], sc.med[block])
            label = _ID["vegetation"]
        put(block, win[block] == k, col * shade[k], label)
    rb = _rows_with(win == 3)
    if rb is not None:
        block = (rb, slice(0, w))
        if end_trees:
            base, alt = _pick(rng, _VEGETATION), _pick(rng, _VEGETATION)
            col, label = _leafy(base, alt, sc.leaf[block], sc.med[block]), _ID["vegetation"]
        else:
            col = _facade_colours(sc, end_segs, end_seg, x_end, y_end[rb], st.z_end, block)
            label = _ID["building"]
        put(block, win[block] == 3, col, label)


def _ground_colours(sc: _Scene, st: _Street, r0: int) -> tuple[np.ndarray, np.ndarray]:
    """Colours (h, W, 3) and label ids (h, W) of the ground plane over rows r0.. (all below the
    horizon). Band textures give a per-pixel gain; markings and earth are blended in."""
    rng = sc.rng
    block = (slice(r0, sc.h), slice(0, sc.w))
    z = sc.f * sc.hc / sc.py[r0:, None]  # (h, 1)
    x = sc.px[None, :] * z / sc.f  # (h, W) lateral position on the ground
    band = np.searchsorted(st.edges, x)
    kind = st.kinds[band]
    lab = st.label_ids[band]
    col = np.take(st.colours, band, axis=0)  # (h, W, 3)
    fine, med, coarse = sc.fine[block], sc.med[block], sc.coarse[block]

    # asphalt grain; dashed lane lines, optional solid edge lines, sometimes a zebra crossing
    road_gain = 1 + 0.14 * fine + 0.04 * med + 0.06 * coarse
    width = st.road_r - st.road_l
    n_lanes = max(1, int(round(width / rng.uniform(2.8, 3.6))))
    period, duty, phase = rng.uniform(6, 12), rng.uniform(0.3, 0.55), rng.uniform(0, 12)
    paint = np.zeros(x.shape, bool)
    dash = _frac((z + phase) / period) < duty  # (h, 1)
    for i in range(1, n_lanes):
        paint |= (np.abs(x - (st.road_l + i * width / n_lanes)) < 0.075) & dash
    if rng.random() < 0.5:
        paint |= (np.abs(x - st.road_l - 0.3) < 0.07) | (np.abs(x - st.road_r + 0.3) < 0.07)
    if rng.random() < 0.25:
        zc = rng.uniform(6, 30)
        paint |= (z > zc) & (z < zc + 3.5) & (_frac(x - st.road_l) < 0.5)
    paint_col = _pick(rng, _MARKING, 10)
    sel = np.nonzero(paint & (kind == _ROADK))
    # thinner than a pixel far away: blend instead of aliasing; worn paint
    alpha = np.clip(0.15 * sc.f / z[sel[0], 0], 0, 1) * (0.75 + 0.25 * np.clip(med[sel] + 0.5, 0, 1))
    col[sel] += (paint_col - col[sel]) * alpha[:, None]

    # sidewalk tiles laid on the ground plane
    tile = rng.uniform(0.3, 0.8)
    u, v = x / tile, z / tile
    joint = (_frac(u) < 0.07) | (_frac(v) < 0.07)
    tone = np.where(joint, 0.65, 0.93 + 0.14 * _hash(np.floor(u), np.floor(v)))
    walk_gain = (1 + 0.025 * fine + 0.03 * med + 0.05 * coarse) * (1 + _fade(tile * sc.f / z) * (tone - 1))

    # grass blades with patches of dry earth
    dirt = _pick(rng, _DIRT)
    patch = np.clip(coarse * 1.5 - 0.2, 0, 1)
    sel = np.nonzero((patch > 0) & (kind == _TERRK))
    col[sel] += (dirt - col[sel]) * patch[sel][:, None]
    grass_gain = 0.8 + 0.4 * sc.grass[block] + 0.06 * fine

    gain = np.where(kind == _ROADK, road_gain, np.where(kind == _TERRK, grass_gain, walk_gain))
    col.reshape(len(z), -1)[:] *= _rgb3(gain)
    # a building's shadow falling across the street: darker and bluer
    if rng.random() < 0.5:
        s0, s1 = rng.uniform(-6, 6), rng.uniform(-0.3, 0.3)
        dark = (x < s0 + s1 * z) if rng.random() < 0.5 else (x > s0 + s1 * z)
        for channel, factor in enumerate((0.55, 0.58, 0.68)):
            col[..., channel] *= np.where(dark, np.float32(factor), np.float32(1))
    return col, lab


# ----------------------------------------------------------------------------------------------
# Objects
def _billboard(sc: _Scene, x: float, z: float, lx0: float, lx1: float, top: float, base: float = 0.0):
    """Window and local metric coordinates of an upright rectangle facing the camera at ground
    position (x, z), spanning lateral offsets [lx0, lx1] and heights [base, top] (m).
    Returns (win, lx (1, w), ly (h, 1)) or None when off-screen."""
    s = sc.f / z
    xb, yb = sc.vx + s * x, sc.vy + s * sc.hc
    win = sc.box_window(xb + s * lx0, xb + s * lx1, yb - s * top, yb - s * base)
    if win is None:
        return None
    rows, cols = win
    lx = ((np.arange(cols.start, cols.stop) + 0.5 - xb) / s).astype(np.float32)[None, :]
    ly = ((yb - np.arange(rows.start, rows.stop) - 0.5) / s).astype(np.float32)[:, None]
    return win, lx, ly


def _box_window(sc: _Scene, box: tuple[float, ...]):
    """Clipped pixel window of an axis-aligned box (x0, x1, y0, y1, z0, z1) with z0 > 0."""
    x0, x1, y0, y1, z0, z1 = box
    cs = [sc.vx + sc.f * bx / bz for bx in (x0, x1) for bz in (z0, z1)]
    rs = [sc.vy + sc.f * (sc.hc - by) / bz for by in (y0, y1) for bz in (z0, z1)]
    return sc.box_window(min(cs), max(cs), min(rs), max(rs))


def _ray_box(sc: _Scene, win, box: tuple[float, ...]):
    """Intersect camera rays of window `win` with an axis-aligned box (x0, x1, y0, y1, z0, z1).
    Returns t (h, w) entry depth (inf on miss), face (h, w) int (0: X side, 1: top/bottom,
    2: front/back) and the hit point (X, Y, Z), each (h, w)."""
    x0, x1, y0, y1, z0, z1 = box
    rows, cols = win
    dx = sc.px[cols][None, :] / sc.f
    dy = -sc.py[rows][:, None] / sc.f
    dx = np.where(dx == 0, 1e-9, dx)
    dy = np.where(dy == 0, 1e-9, dy)
    ax, bx = x0 / dx, x1 / dx
    ay, by = (y0 - sc.hc) / dy, (y1 - sc.hc) / dy
    txn, txf = np.minimum(ax, bx), np.maximum(ax, bx)
    tyn, tyf = np.minimum(ay, by), np.maximum(ay, by)
    tn = np.maximum(np.maximum(txn, tyn), z0)
    tf = np.minimum(np.minimum(txf, tyf), z1)
    hit = (tn <= tf) & (tn > 0)
    face = np.where(tn == txn, 0, np.where(tn == tyn, 1, 2))
    t = np.where(hit, tn, np.inf)
    return t, face, (tn * dx, sc.hc + tn * dy, np.broadcast_to(tn, t.shape))


def _draw_car(sc: _Scene, x: float, z: float) -> None:
    """A car (lower body, glass cabin, four wheels) whose rear/front face is at depth z."""
    rng = sc.rng
    w2 = rng.uniform(0.82, 0.98)
    length = rng.uniform(3.8, 4.8)
    van = rng.random() < 0.15
    body_top = rng.uniform(0.85, 1.05)
    cab_top = rng.uniform(1.8, 2.1) if van else rng.uniform(1.35, 1.55)
    cab = (z + 0.2, z + length - 0.3) if van else (z + rng.uniform(0.8, 1.2), z + length - 1.2)
    r = 0.33
    parts = {
        "body": (x - w2, x + w2, 0.28, body_top, z, z + length),
        "cabin": (x - w2 + 0.1, x + w2 - 0.1, body_top, cab_top, *cab),
    }
    for i, (wz, wx) in enumerate([(z + 0.8, x - w2), (z + 0.8, x + w2 - 0.25),
                                  (z + length - 0.8, x - w2), (z + length - 0.8, x + w2 - 0.25)]):
        parts[f"wheel{i}"] = (wx, wx + 0.25, 0.0, 2 * r, wz - r, wz + r)
    win = _box_window(sc, (x - w2, x + w2, 0.0, cab_top, z, z + length))
    if win is None:
        return
    colour = _pick(rng, _CAR, 14)
    glass = _pick(rng, _GLASS, 8)
    glass = glass * 0.6 + sc.sky_horizon * 0.4 * rng.uniform(0.2, 1.0)
    front_lights = rng.random() < 0.4  # oncoming: white headlights instead of red tail lights
    lamp_col = np.float32([235, 235, 220]) if front_lights else np.float32([190, 25, 25])
    # nearest part per pixel (each part traced only in its own window), then colour only the
    # pixels that end up visible
    r0, c0 = win[0].start, win[1].start
    t_min = np.full((win[0].stop - r0, win[1].stop - c0), np.inf, np.float32)
    part = np.zeros(t_min.shape, np.int8)
    hits = []
    for k, box in enumerate(parts.values()):
        pwin = _box_window(sc, box)
        hits.append(None)
        if pwin is None:
            continue
        pwin = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(pwin, win))
        if pwin[0].start >= pwin[0].stop or pwin[1].start >= pwin[1].stop:
            continue
        t, face, hit = _ray_box(sc, pwin, box)
        if k >= 2:  # wheels: round when seen from the side
            wz = (box[4] + box[5]) / 2
            t = np.where((face == 0) & ((hit[2] - wz) ** 2 + (hit[1] - r) ** 2 > r * r), np.inf, t)
        local = (slice(pwin[0].start - r0, pwin[0].stop - r0), slice(pwin[1].start - c0, pwin[1].stop - c0))
        closer = t < t_min[local]
        part[local][closer] = k
        t_min[local] = np.where(closer, t, t_min[local])
        hits[k] = (pwin, face, hit)
    vis = sc.visible(win, np.isfinite(t_min), t_min)
    if not vis.any():
        return
    rr, cc = np.nonzero(vis)
    which = part[rr, cc]
    fine = sc.fine[rr + r0, cc + c0]
    out = np.empty((which.size, 3), np.float32)
    for k, (name, box) in enumerate(parts.items()):
        sel = np.flatnonzero(which == k)
        if sel.size == 0:
            continue
        pwin, face_k, hit_k = hits[k]
        pr, pc = rr[sel] + r0 - pwin[0].start, cc[sel] + c0 - pwin[1].start
        face = face_k[pr, pc]
        hx, hy, hz = (a[pr, pc] for a in hit_k)
        if k >= 2:
            wz = (box[4] + box[5]) / 2
            rim = (face == 0) & ((hz - wz) ** 2 + (hy - r) ** 2 < (0.5 * r) ** 2)
            out[sel] = np.where(rim, 150.0, 28.0)[:, None] * (1 + 0.05 * fine[sel])[:, None]
        elif name == "body":
            light = 1.0 + 0.25 * (hy - box[2]) / (box[3] - box[2])  # paint catches the sky
            light *= np.where(face == 0, 0.82, np.where(face == 1, 1.15, 1.0))
            col = colour * (light * (1 + 0.02 * fine[sel]))[:, None]
            end = face == 2
            lamp = end & (np.abs(np.abs(hx - x) - (w2 - 0.2)) < 0.15) & (np.abs(hy - 0.8) < 0.08)
            plate = end & (np.abs(hx - x) < 0.26) & (np.abs(hy - 0.5) < 0.06)
            col[end & (hy < 0.45)] *= 0.6  # bumper
            col[lamp] = lamp_col
            col[plate] = (225, 225, 220)
            out[sel] = col
        else:
            # glass with pillars; the roof is painted
            pillar = ((face == 2) & (np.abs(hx - x) > w2 - 0.25)) | \
                     ((face == 0) & ((np.abs(hz - cab[0]) < 0.2) | (np.abs(hz - cab[1]) < 0.2)
                                     | (np.abs(hz - (cab[0] + cab[1]) / 2) < 0.07)))
            painted = pillar | (face == 1) | (hy < box[2] + 0.08)
            sheen = 1.0 + 0.4 * (hy - box[2]) / (box[3] - box[2])
            out[sel] = np.where(painted[:, None], colour * 0.95, glass * sheen[:, None])
    sc.put(win, vis, out, "car", t_min[vis])


def _draw_person(sc: _Scene, x: float, z: float) -> None:
    """Pedestrian billboard: head, torso, arms and legs (mid-stride), all labelled person."""
    rng = sc.rng
    h = rng.uniform(1.5, 1.95)
    bb = _billboard(sc, x, z, -0.35, 0.35, h + 0.02)
    if bb is None:
        return
    win, lx, ly = bb
    lx = lx + 0.0 * ly  # (h, w)
    head_r = 0.105 * h / 1.75
    head_c = h - head_r
    hip, shoulder = 0.5 * h, 0.8 * h
    stride = rng.uniform(-0.12, 0.12)
    half = 0.2 * h / 1.75
    head = ((lx / (head_r * 0.85)) ** 2 + ((ly - head_c) / head_r) ** 2) < 1
    torso = (ly > hip - 0.03) & (ly < shoulder + 0.05) & (np.abs(lx) < half * (0.75 + 0.25 * (ly - hip) / (shoulder - hip)))
    neck = (np.abs(lx) < 0.05) & (ly > shoulder) & (ly < head_c)
    swing = (hip - ly) / hip  # 0 at hip, 1 at the foot
    leg_l = (ly < hip) & (np.abs(lx + 0.08 + stride * swing) < 0.07)
    leg_r = (ly < hip) & (np.abs(lx - 0.08 - stride * swing) < 0.07)
    arm_t = np.clip((shoulder - ly) / (shoulder - hip + 0.1), 0, 1)
    arms = (ly > hip - 0.1) & (ly < shoulder) & \
           (np.abs(np.abs(lx) - (half + 0.04 + 0.03 * arm_t)) < 0.045)
    mask = head | torso | neck | leg_l | leg_r | arms
    skin, hair = _pick(rng, _SKIN, 8), _pick(rng, _HAIR, 10)
    top = _pick(rng, _CLOTHES, 20)
    bottom = _pick(rng, _TROUSERS, 15)
    rows, cols = win
    folds = (1 + 0.08 * sc.med[rows, cols] + 0.04 * sc.fine[rows, cols])[..., None]
    col = np.where((leg_l | leg_r)[..., None], bottom, top)
    col = np.where(((leg_l | leg_r) & (ly < 0.08))[..., None], np.float32(35), col)
    col = np.where((head | neck)[..., None], skin, col)
    col = np.where((head & (ly > head_c + 0.2 * head_r))[..., None], hair, col)
    col = np.where((arms & (ly < hip + 0.05))[..., None], skin, col)
    shade = (1 - 0.3 * (lx / 0.35) ** 2)[..., None]
    sc.paint(win, mask, col * folds * shade, "person", z)


def _draw_pole(sc: _Scene, x: float, z: float) -> None:
    """A pole, plain or carrying traffic signs, a traffic light or a lamp arm."""
    rng = sc.rng
    height = rng.uniform(3.5, 8.0)
    radius = rng.uniform(0.05, 0.13)
    colour = _pick(rng, _POLE, 12)
    bb = _billboard(sc, x, z, -radius, radius, height)
    if bb is not None:
        win, lx, ly = bb
        cyl = (1.05 - 0.45 * (lx / radius) ** 2)[..., None]  # cylinder shading
        sc.paint(win, np.ones((ly.size, lx.size), bool), colour * cyl, "pole", z)
    kind = _choose(rng, ("plain", "sign", "light", "lamp"), (0.2, 0.45, 0.2, 0.15))
    towards_road = 1.0 if x < 0 else -1.0
    if kind == "sign":
        y = rng.uniform(1.8, max(height - 0.5, 2.0))
        for _ in range(rng.integers(1, 3)):
            _draw_sign(sc, x, z - 0.05, y)
            y -= rng.uniform(0.7, 0.9)
    elif kind == "light":
        _draw_traffic_light(sc, x, z - 0.1, min(height - 0.2, rng.uniform(2.6, 4.5)))
    elif kind == "lamp":
        reach = rng.uniform(0.8, 2.5) * towards_road
        bb = _billboard(sc, x, z, min(0, reach), max(0, reach), height, height - 0.1)
        if bb is not None:
            win, lx, ly = bb
            sc.paint(win, np.ones((ly.size, lx.size), bool), colour * 0.9, "pole", z)
        bb = _billboard(sc, x + reach, z, -0.25, 0.25, height, height - 0.2)
        if bb is not None:
            win, lx, ly = bb
            sc.paint(win, np.ones((ly.size, lx.size), bool), colour * 0.8, "pole", z)


def _draw_sign(sc: _Scene, x: float, z: float, y: float) -> None:
    """A traffic sign centred at height y on a pole at (x, z): disc, triangle or plate."""
    rng = sc.rng
    r = rng.uniform(0.25, 0.4)
    bb = _billboard(sc, x, z, -r, r, y + r, y - r)
    if bb is None:
        return
    win, lx, ly = bb
    v = ly - y
    shape = _choose(rng, ("disc", "triangle", "plate"), (1 / 3, 1 / 3, 1 / 3))
    if shape == "disc":
        d = np.sqrt(lx ** 2 + v ** 2) / r
        mask, inner = d < 1, d < 0.75
    elif shape == "triangle":
        d = np.maximum(-v / r, (v + 2 * np.abs(lx) / np.sqrt(3)) / r * 1.0)
        mask, inner = d < 0.8, d < 0.55
    else:
        d = np.maximum(np.abs(lx) / r, np.abs(v) / (0.7 * r))
        mask, inner = d < 1, d < 0.85
    face, rim = _pick(rng, _SIGN, 10), _pick(rng, _SIGN, 10)
    if rng.random() < 0.25:  # seen from behind: plain metal
        face = rim = _pick(rng, _GREYS, 10)
    col = np.where(inner[..., None], face, rim)
    glyph = inner & (np.abs(lx) < 0.3 * r) & (np.abs(v) < 0.3 * r) & (rng.random() < 0.6)
    col = np.where(glyph[..., None], np.float32(30), col)
    sc.paint(win, mask, col, "traffic sign", z)


def _draw_traffic_light(sc: _Scene, x: float, z: float, y: float) -> None:
    """A three-lamp traffic light whose bottom is at height y."""
    rng = sc.rng
    bb = _billboard(sc, x, z, -0.17, 0.17, y + 0.9, y)
    if bb is None:
        return
    win, lx, ly = bb
    v = ly - y
    housing = _pick(rng, _HOUSING, 8)
    col = np.broadcast_to(housing, (ly.size, lx.size, 3)).copy()
    on = rng.integers(3)
    for i, lit in enumerate([(60, 230, 90), (250, 190, 40), (240, 40, 30)]):
        lamp = (lx ** 2 + (v - 0.17 - 0.28 * i) ** 2) < 0.1 ** 2
        c = np.float32(lit) if i == on else np.float32(lit) * 0.25
        col = np.where(lamp[..., None], c, col)
    mask = np.ones((ly.size, lx.size), bool)
    sc.paint(win, mask, col, "traffic light", z)


def _draw_tree(sc: _Scene, x: float, z: float, bush: bool = False) -> None:
    """A tree (trunk + blobby crown) or a bush; all labelled vegetation."""
    rng = sc.rng
    if bush:
        radius, trunk_h, trunk_r = rng.uniform(0.4, 1.2), 0.0, 0.0
        centre = radius * 0.7
    else:
        radius, trunk_h = rng.uniform(1.3, 3.5), rng.uniform(1.8, 4.0)
        trunk_r = rng.uniform(0.1, 0.22)
        centre = trunk_h + radius * 0.8
    base, alt = _pick(rng, _VEGETATION), _pick(rng, _VEGETATION)
    if trunk_h > 0:
        bb = _billboard(sc, x, z, -trunk_r, trunk_r, trunk_h + radius * 0.5)
        if bb is not None:
            win, lx, ly = bb
            bark = _pick(rng, _BARK, 10)
            rows, cols = win
            col = bark * ((1.05 - 0.4 * (lx / trunk_r) ** 2) * (1 + 0.15 * sc.med[rows, cols]))[..., None]
            sc.paint(win, np.ones((ly.size, lx.size), bool), col, "vegetation", z + 0.05)
    bb = _billboard(sc, x, z, -1.4 * radius, 1.4 * radius, centre + 1.2 * radius,
                    max(centre - 1.2 * radius, 0.0))
    if bb is None:
        return
    win, lx, ly = bb
    n = rng.integers(3, 7)
    blobs = rng.uniform(-0.55, 0.55, (n, 2)) * radius
    radii = rng.uniform(0.45, 0.75, n) * radius
    d2 = np.full((ly.size, lx.size), np.inf, np.float32)  # squared distance in blob radii
    for (bx, by), br in zip(blobs, radii):
        d2 = np.minimum(d2, ((lx - bx) ** 2 + (ly - centre - by * 0.8) ** 2) / (br * br))
    leaf = sc.leaf[win]
    vis = sc.visible(win, d2 < (1 + 0.35 * leaf) ** 2, z)  # ragged outline
    if vis.any():
        sc.put(win, vis, _leafy(base, alt, leaf[vis], sc.med[win][vis]), "vegetation", z)


def _min_visible_z(sc: _Scene, x: float) -> float:
    """Smallest depth at which lateral position x (m) projects inside the image (+5% margin)."""
    return abs(x) * sc.f / (max(sc.vx, sc.w - sc.vx) + 0.05 * sc.w)


def _visible_z(sc: _Scene, x: float, z_lo: float, z_hi: float) -> float | None:
    """Sample a depth in [z_lo, z_hi] (denser nearby) at which lateral position x is on-screen."""
    z_lo = max(z_lo, _min_visible_z(sc, x))
    if z_lo >= z_hi:
        return None
    return float(np.exp(sc.rng.uniform(np.log(z_lo), np.log(z_hi))))


def _draw_objects(sc: _Scene, st: _Street) -> None:
    """Cars, poles (with signs, lights, lamps), trees, bushes and pedestrians, depth-tested."""
    rng = sc.rng
    # beyond ~120 m objects are a few pixels wide at 512 columns and mostly lost in haze
    z_max = min(st.z_end - 5, 120.0)
    # parked cars along both kerbs, moving cars in the lanes
    for side, xc in (("left", st.road_l + 1.1), ("right", st.road_r - 1.1)):
        # only where the camera's lane is clear of the parking strip
        if rng.random() < 0.7 and abs(xc) > 2.0:
            zc = rng.uniform(3, 20)
            while zc < min(z_max, 90.0):
                if rng.random() < 0.55:
                    _draw_car(sc, xc + rng.uniform(-0.2, 0.2), zc)
                zc += rng.uniform(5.0, 14.0)
    width = st.road_r - st.road_l
    for _ in range(rng.integers(0, 4)):
        xc = rng.uniform(st.road_l + 1.2, st.road_r - 1.2) if width > 2.4 else 0.0
        zc = _visible_z(sc, xc, 6.0, min(z_max, 80.0))
        if zc is not None:
            _draw_car(sc, xc, zc)

    # poles on the kerb side of the sidewalks
    for side in ("left", "right"):
        walk = st.band_x(side, _SIDEK)
        xp = walk[1] - 0.4 if side == "left" else walk[0] + 0.4
        zp = rng.uniform(3, 20)
        while zp < z_max:
            if zp >= _min_visible_z(sc, xp):
                _draw_pole(sc, xp, zp)
            zp += rng.uniform(10, 32)

    # trees: a row along the sidewalk sometimes, always in parks and open land; bushes in terrain
    for side, kind in (("left", st.left_kind), ("right", st.right_kind)):
        walk = st.band_x(side, _SIDEK)
        if kind == "buildings" and rng.random() < 0.5:
            xt = walk[1] - 1.0 if side == "left" else walk[0] + 1.0
            zt = rng.uniform(3, 15)
            while zt < z_max:
                _draw_tree(sc, xt + rng.uniform(-0.3, 0.3), zt)
                zt += rng.uniform(7, 16)
        if kind != "buildings":
            sign = -1 if side == "left" else 1
            edge = st.facade_l if side == "left" else st.facade_r
            for _ in range(rng.integers(3, 10)):
                xt = edge + sign * rng.uniform(0.5, 12)
                zt = _visible_z(sc, xt, 4.0, z_max)
                if zt is not None:
                    _draw_tree(sc, xt, zt)
        terr = st.band_x(side, _TERRK)
        if terr is not None:
            for _ in range(rng.integers(0, 5)):
                xb = rng.uniform(*terr)
                zb = _visible_z(sc, xb, 3.0, 60.0)
                if zb is not None:
                    _draw_tree(sc, xb, zb, bush=True)

    # pedestrians on the sidewalks, a few crossing
    for _ in range(rng.integers(1, 10) if rng.random() < 0.85 else 0):
        if rng.random() < 0.15:
            xw = rng.uniform(st.road_l, st.road_r)
        else:
            lo, hi = st.band_x("left" if rng.random() < 0.5 else "right", _SIDEK)
            xw = rng.uniform(lo + 0.3, hi - 0.3) if hi - lo > 0.6 else (lo + hi) / 2
        zw = _visible_z(sc, xw, 3.0, 60.0)
        if zw is not None:
            _draw_person(sc, xw, zw)


def _draw_ego_vehicle(sc: _Scene) -> None:
    """Bonnet of the recording car across the bottom rows (maps to ignore in training)."""
    rng = sc.rng
    h0, h1 = rng.uniform(0.04, 0.1) * sc.h, rng.uniform(0.02, 0.06) * sc.h
    u = (np.arange(sc.w) + 0.5 - sc.w * rng.uniform(0.4, 0.6)) / (sc.w / 2)
    top = sc.h - (h0 + h1 * np.clip(1 - u ** 2, 0, 1))  # (W,) curved bonnet edge
    r0 = max(int(top.min()), 0)
    rows = np.arange(r0, sc.h, dtype=np.float32)[:, None] + 0.5
    mask = rows > top[None, :]
    base = _pick(rng, _BONNET, 8)
    t = np.clip((rows - top[None, :]) / (h0 + h1), 0, 1)[..., None]
    col = base + (sc.sky_horizon - base) * 0.35 * (1 - t)  # sky reflected near the edge
    sc.paint((slice(r0, sc.h), slice(0, sc.w)), mask, col, "ego vehicle", 0.0)


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


def render_scene(seed: tuple[int, ...] | int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene of size (H, W).

    Returns (image (H, W, 3) uint8 RGB, label (H, W) uint8 of Cityscapes labelIds).
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    h, w = (int(v) for v in size)
    sc = _Scene(rng, h, w)
    _draw_sky(sc)
    street = _Street(sc)
    _draw_background(sc, street)
    _draw_objects(sc, street)
    if rng.random() < 0.3:
        _draw_ego_vehicle(sc)
    return _finish(sc), sc.label


# ----------------------------------------------------------------------------------------------
# The tree on disk
def scene_jobs(root: Path, n_train: int, n_val: int, n_cities: int, seed: int,
               n_extra: int = 0) -> list[SceneJob]:
    """One job per image, in split order. Cities are disjoint between splits (like Cityscapes)
    and images go round-robin over a split's `n_cities` cities; each job's seed is derived with
    SeedSequence from (seed, split index, image index), so jobs render in any process and order."""
    root = Path(root)
    counts = {"train": n_train, "val": n_val, EXTRA_SPLIT: n_extra}
    active = [split for split, n in counts.items() if n > 0]
    if n_cities < 1:
        raise ValueError(f"n_cities must be >= 1, got {n_cities}")
    # split k always takes names [k * n_cities, (k + 1) * n_cities): fixed whatever the counts
    slots = max((_SPLIT_INDEX[split] + 1 for split in active), default=0)
    if n_cities * slots > len(CITY_NAMES):
        raise ValueError(f"{n_cities} cities per split for {slots} splits need "
                         f"{n_cities * slots} names, only {len(CITY_NAMES)} exist")
    jobs = []
    for split in active:
        k = _SPLIT_INDEX[split]
        cities = CITY_NAMES[k * n_cities:(k + 1) * n_cities]
        for i in range(counts[split]):
            city, seq = cities[i % n_cities], i // n_cities
            stem = f"{city}_{seq:06d}_{_FRAME:06d}"
            image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            label = (None if split == EXTRA_SPLIT
                     else root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            state = np.random.SeedSequence([seed, _SPLIT_INDEX[split], i]).generate_state(4)
            jobs.append(SceneJob(split, city, stem, image, label, tuple(int(s) for s in state)))
    return jobs


def write_scene(job: SceneJob, size: tuple[int, int]) -> None:
    """Render job's scene at size (H, W) and write its image (and labelIds PNG if labelled)."""
    image, label = render_scene(job.seed, size)
    job.image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(job.image_path, compress_level=1)
    if job.label_path is not None:
        job.label_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(job.label_path)


def _write_star(args: tuple[SceneJob, tuple[int, int]]) -> None:
    write_scene(*args)


def generate_tree(root: Path, n_train: int, n_val: int, n_cities: int, size: tuple[int, int],
                  seed: int, n_extra: int = 0, workers: int = 1) -> list[SceneJob]:
    """Write the whole tree under root (a Pool of `workers` processes when > 1); returns the jobs."""
    jobs = scene_jobs(root, n_train, n_val, n_cities, seed, n_extra)
    size = (int(size[0]), int(size[1]))
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_star, [(job, size) for job in jobs], chunksize=4):
                pass
    else:
        for job in jobs:
            write_scene(job, size)
    return jobs
