"""Background: sky, ground bands, side planes (facades / hedges) and the far end wall."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pixpro.data.synthetic.palette import (_BUILDING, _DIRT, _GLASS, _MARKING, _ROAD, _SIDEWALK,
                                           _SKIES, _TERRAIN, _VEGETATION, _choose, _fade, _frac,
                                           _hash, _leafy, _pick, _rgb3, _value_noise)
from pixpro.data.synthetic.scene import _ID, _Scene

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
