"""Objects standing on the ground, depth-tested against the background and each other: cars
(ray-traced boxes), people, poles, signs, traffic lights and trees (upright billboards), and the
ego vehicle's bonnet."""

from __future__ import annotations

import numpy as np

from pixpro.data.synthetic.background import _SIDEK, _TERRK, _Street
from pixpro.data.synthetic.palette import (_BARK, _BONNET, _CAR, _CLOTHES, _GLASS, _GREYS, _HAIR,
                                           _HOUSING, _POLE, _SIGN, _SKIN, _TROUSERS, _VEGETATION,
                                           _choose, _leafy, _pick)
from pixpro.data.synthetic.scene import _Scene


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
