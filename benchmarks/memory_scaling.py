"""Peak memory and time of PixPro's loss head as the feature map grows, local vs global PPM.

The head is everything PixPro.forward does after the backbones, forward and backward: the
online propagate() on both views' maps at the pairs (projector + g() + PPM), the target
projector on the gathered pair pixels, and pixpro_pair_loss. Its input is a random feature map
standing in for the backbone output: one image (B=1), its two views concatenated as PixPro
feeds them, i.e. a (2, C=64, H, W) leaf with requires_grad, propagated in one call as
PixPro.forward does; plus a (2, C, H, W) target map. The PixPro is built from params.yaml's
pretrain config (projector dims, pair counts, gamma as configured); only ppm.window varies:
local windows 8 and 16, and global PPM (window null).

Memory: each configuration runs once in a fresh child process (multiprocessing spawn, --jobs
at a time on CPU, the cores split between them). On CPU the peak RSS is reset
(/proc/self/clear_refs) after the inputs are allocated and a small warm-up ran; the figure is
the rise of peak RSS (ru_maxrss) over the RSS at that point (glibc's mmap threshold is pinned
low in the children so freed memory is returned at once). On CUDA it is the rise of
torch.cuda.max_memory_allocated over memory_allocated (bf16 maps under autocast, channels_last,
as the trainer runs). "map grad" is one dense gradient of the (2, C, H, W) map, which any
backward through the backbone needs; "head - map grad" is the rest, which for local PPM should
depend on pairs x window^2 only ("unique px": distinct pixels the windows cover, per view).

Global PPM runs while its predicted need (linear in H*W, fitted from the sizes already run)
stays under --max-gb; the remaining sizes are extrapolated.

Threads: 1 torch thread per child on CPU by default (--threads; see benchmarks/step_cost.py).

Time: one child times the configurations at each size, interleaved (w8, w16, global, w8, ...),
after a warm-up; medians of --repeats. Global is timed only where its memory was under
--time-global-max-gb (it takes ~12 s per call at 256x512 on 2 CPU cores).

Backbone: the default backbone's activation memory (peak rise during a forward with grad, train
mode) on the same two views (batch 2 = one image's two views, as PixPro.forward runs it). On
CPU it is measured at half the largest side (512x1024) and extrapolated x4 to 1024x2048
(activations are linear in pixels) unless --backbone-direct (needs ~8 GB free RAM on CPU).

End-to-end check (--check-size, 256x512 by default): the real backbone's forward + backward on
the two views, once through the head and once from a dense all-ones gradient of its output (what a
bare backbone training step starts from); the difference is what the head really adds, to compare
with the table's "head - map grad". On CPU whole-step RSS peaks move by +-100-250 MB between runs
(allocation order; measured -258 to +162 MB at 128x256-512x1024), so there the check only bounds
the head; on CUDA max_memory_allocated is exact.

Last line: `head memory at 1024x2048 beyond the backbone's own backward = <X>% of the backbone's
activations` for window 8: the head's measured peak rise minus the one dense output-map gradient
that the backbone's backward allocates whether or not there is a head (goal < 5%). The line above
it gives the whole rise, map gradient included.

    .venv/bin/python benchmarks/memory_scaling.py [--max-gb 4] [--repeats 2] [--device auto]
        [--sizes 64x128 128x256 256x512 512x1024 1024x2048] [--backbone-direct] [--jobs 2] [--threads 1]
    # GPU: --device cuda --max-gb 60 --time-global-max-gb 60 --repeats 10 --check-size 512x1024
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from pixpro.precision import autocast_for, precision_name, uses_bf16
from timing import timed  # benchmarks/timing.py

ROOT = Path(__file__).resolve().parent.parent
GB = 1024 ** 3
MB = 1024 ** 2
WARMUP_SIZE = (32, 64)


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# --------------------------------------------------------------------------------------------
# Child-process side
# --------------------------------------------------------------------------------------------


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Meter:
    """Rise of peak memory over the current level, from start() to stop()."""

    def __init__(self, device):
        self.device = device

    def start(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.exact = _reset_peak()
            self.base = _rss_now()
            if not self.exact:  # cannot reset: a peak already above the current level hides part of the rise
                self.base = max(self.base, _peak_rss())

    def stop(self) -> int:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return _peak_rss() - self.base


def _setup(device_name: str, window: int | None, params_path: str):
    """PixPro from params.yaml with ppm.window = window. The head never calls the backbones, so a
    tiny classic UNet of the same `dim` stands in for them, and segmentation_models_pytorch (whose
    import takes seconds) is not imported: children start in ~3 s instead of ~8 s."""
    import types

    if "segmentation_models_pytorch" not in sys.modules:
        sys.modules["segmentation_models_pytorch"] = types.ModuleType("segmentation_models_pytorch")
    import torch

    from pixpro.config import load_params
    from pixpro.model.pixpro import PixPro

    device = torch.device(device_name)
    params = load_params(params_path)
    pre = params.pretrain
    # The output's pixel heads alone: the stage term's heads would need a deeper UNet and their own pairs.
    cfg = dataclasses.replace(pre, ppm=dataclasses.replace(pre.ppm, window=window),
                              backbone=dataclasses.replace(pre.backbone, arch="unet", widths=(4, 8)),
                              loss=dataclasses.replace(pre.loss, stages=0.0))
    torch.manual_seed(0)
    model = PixPro(cfg).to(device).train()
    return torch, device, cfg, model


def _inputs(torch, device, cfg, size: tuple[int, int], seed: int = 0):
    """Feature maps of one image's two views and its pixel pairs (fixed overlapping crops, view 2 flipped)."""
    from pixpro.geometry import sample_positive_pairs

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if uses_bf16(device, cfg.amp) else torch.float32
    fmt = torch.channels_last if cuda and cfg.channels_last else torch.contiguous_format
    gen = torch.Generator(device=device).manual_seed(seed)
    dim = cfg.backbone.dim

    def random_map():  # a random 64x128 tile repeated: drawing 10^9 normals would dominate the run
        th, tw = min(size[0], 64), min(size[1], 128)
        tile = torch.randn(2, dim, th, tw, generator=gen, device=device, dtype=dtype)
        reps = (-(-size[0] // th), -(-size[1] // tw))
        return tile.repeat(1, 1, *reps)[..., :size[0], :size[1]].contiguous(memory_format=fmt)

    features = random_map().requires_grad_(True)
    target = random_map()
    box1 = torch.tensor([[0.10, 0.05, 0.90, 0.75]], device=device)
    box2 = torch.tensor([[0.20, 0.95, 0.95, 0.30]], device=device)  # left > right: flipped
    image_size = (2 * size[0], 2 * size[1])
    pairs = sample_positive_pairs(box1, box2, size, size, image_size, cfg.pairs, generator=gen)
    return features, target, pairs


def _head(torch, model, cfg, device, features, target, pairs) -> None:
    """What PixPro.forward does after its two backbone calls, then backward."""
    with autocast_for(device, cfg.amp):
        loss = model.loss_from_maps(features, target, pairs).total
    loss.backward()


def head_memory_child(device_name: str, config: tuple, size: tuple[int, int], params_path: str,
                      threads: int) -> dict:
    began = time.perf_counter()
    import torch as _torch

    _torch.set_num_threads(threads)
    window = config
    torch, device, cfg, model = _setup(device_name, window, params_path)
    # Warm-up on a tiny map: kernels, thread pools.
    features, target, pairs = _inputs(torch, device, cfg, WARMUP_SIZE)
    _head(torch, model, cfg, device, features, target, pairs)
    model.zero_grad(set_to_none=True)
    del features, target, pairs
    features, target, pairs = _inputs(torch, device, cfg, size)
    meter = Meter(device)
    meter.start()
    _head(torch, model, cfg, device, features, target, pairs)
    peak = meter.stop()
    if window is not None:
        from pixpro.geometry import window_indices

        index, _ = window_indices(pairs.index1, size, window)
        slots, unique = index.numel(), int(torch.unique(index).numel())
    else:
        slots, unique = pairs.index1.numel() * size[0] * size[1], size[0] * size[1]
    return {"peak": peak, "map_grad": features.numel() * features.element_size(),
            "pairs": int(pairs.count.sum()), "slots": slots, "unique": unique,
            "seconds": time.perf_counter() - began}


def head_time_child(device_name: str, configs_all: list, sizes: list, global_sizes: list, params_path: str,
                    threads: int, repeats: int) -> dict:
    """{(size, window): median seconds}; configurations interleaved at each size."""
    import torch as _torch

    _torch.set_num_threads(threads)
    torch, device, cfg, model = _setup(device_name, None, params_path)

    def run(config, inputs):
        features, target, pairs = inputs
        model.window = config
        _head(torch, model, cfg, device, features, target, pairs)
        features.grad = None

    results = {}
    warm = set()
    for size in sizes:
        inputs = _inputs(torch, device, cfg, tuple(size))
        configs = [c for c in configs_all if c is not None or tuple(size) in global_sizes]
        for config in configs:  # warm-up: every configuration at the first size, new ones later
            if config not in warm:
                run(config, inputs)
                warm.add(config)
        samples = {c: [] for c in configs}
        for _ in range(repeats):
            for config in configs:
                samples[config].append(timed(lambda: run(config, inputs), device))
        for config in configs:
            results[(tuple(size), config)] = statistics.median(samples[config])
        del inputs
    return results


def backbone_memory_child(device_name: str, size: tuple[int, int], params_path: str, threads: int) -> dict:
    began = time.perf_counter()
    import torch

    from pixpro.config import load_params
    from pixpro.model.backbone import build_backbone

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    cfg = load_params(params_path).pretrain
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda and cfg.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    backbone = build_backbone(cfg.backbone).to(device, memory_format=fmt).train()
    autocast = lambda: autocast_for(device, cfg.amp)
    with autocast():  # warm-up
        backbone(torch.randn(2, 3, 64, 128, device=device).contiguous(memory_format=fmt)).float().sum().backward()
    backbone.zero_grad(set_to_none=True)
    images = torch.randn(2, 3, *size, device=device).contiguous(memory_format=fmt)
    meter = Meter(device)
    meter.start()
    start = time.perf_counter()
    with autocast():
        out = backbone(images)
    peak = meter.stop()
    seconds = time.perf_counter() - start
    if cuda:
        retained = torch.cuda.memory_allocated(device) - meter.base
    else:
        retained = _rss_now() - meter.base
    del out
    return {"peak": peak, "retained": retained, "seconds": seconds, "child_seconds": time.perf_counter() - began}


def step_memory_child(device_name: str, size: tuple[int, int], params_path: str, threads: int, window: int,
                      with_head: bool) -> dict:
    """Peak rise of a real backbone forward + backward on one image's two views, backward either
    through the head (local PPM with `window`) or from a dense all-ones gradient of
    the output map, which is what the bare backbone's training step would start from."""
    import torch

    torch.set_num_threads(threads)
    from pixpro.config import load_params
    from pixpro.model.pixpro import PixPro

    device = torch.device(device_name)
    cfg = load_params(params_path).pretrain
    torch.manual_seed(0)
    model = PixPro(cfg).to(device).train()
    model.window = window
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda and cfg.channels_last else torch.contiguous_format
    if cuda and cfg.channels_last:
        model = model.to(memory_format=fmt)

    def step(views, target, pairs):
        with autocast_for(device, cfg.amp):
            features = model.backbone(views)
        if with_head:
            _head(torch, model, cfg, device, features, target, pairs)
        else:
            features.backward(torch.ones_like(features))
        model.zero_grad(set_to_none=True)

    for shape in (WARMUP_SIZE, size):
        _, target, pairs = _inputs(torch, device, cfg, shape)
        views = torch.randn(2, 3, *shape, device=device).contiguous(memory_format=fmt)
        meter = Meter(device)
        meter.start()
        step(views, target, pairs)
        peak = meter.stop()
    return {"peak": peak}


def _call(target, *args):
    """Run target(*args) in a fresh spawned process and return its result."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(target, args)


def _memory_pool(workers: int):
    """Fresh spawned process per task. glibc's mmap threshold is pinned low in those children so
    freed tensors go back to the OS at once and peak RSS tracks live memory (the dynamic threshold
    would otherwise let a warm-up's freed heap hide part of the next allocation)."""
    previous = {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"
    try:
        return multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1)
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------


def _predict_global(done_sizes: list, memory: dict, size: tuple[int, int]) -> float:
    """Global PPM's need at `size`: linear in H*W through the last two sizes run (or proportional to
    H*W from one)."""
    points = [(s[0] * s[1], memory[(s, None)]["peak"]) for s in done_sizes]
    pixels = size[0] * size[1]
    if len(points) >= 2:
        (p0, m0), (p1, m1) = points[-2:]
        return m1 + (m1 - m0) / (p1 - p0) * (pixels - p1)
    p1, m1 = points[-1]
    return m1 * pixels / p1


def fmt_bytes(n: float) -> str:
    return f"{n / GB:8.2f} GB" if abs(n) >= GB else f"{n / MB:8.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["64x128", "128x256", "256x512", "512x1024", "1024x2048"])
    parser.add_argument("--windows", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--max-gb", type=float, default=4.0, help="run global PPM only while it is predicted to fit")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions per configuration")
    parser.add_argument("--time-global-max-gb", type=float, default=1.0,
                        help="time global PPM only at sizes where its measured memory is under this")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in each child on CPU (0 = torch's default divided among --jobs "
                             "memory children; the timing child gets all). 1 by default: see step_cost.py")
    parser.add_argument("--jobs", type=int, default=2, help="memory children run at a time on CPU (1 on CUDA)")
    parser.add_argument("--backbone-direct", action="store_true",
                        help="measure the backbone at the largest size instead of extrapolating from half the side")
    parser.add_argument("--check-size", default="256x512",
                        help="size of the end-to-end check (real backbone with and without the head)")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = parser.parse_args()

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    time_threads = args.threads or torch.get_num_threads()  # the timing child runs alone
    # Memory children run --jobs at a time: split the cores between them.
    threads = args.threads or max(1, torch.get_num_threads() // (1 if device.startswith("cuda") else args.jobs))
    sizes = [parse_size(s) for s in args.sizes]
    largest = sizes[-1]
    window_main = args.windows[0]
    configs = list(args.windows) + [None]
    GLOBAL = None
    labels = {c: "global" if c is None else f"w{c}" for c in configs}
    from pixpro.config import load_params

    pcfg = load_params(args.params).pretrain
    print(f"device {device}, threads {threads} per memory child ({1 if cuda else args.jobs} at a time), "
          f"{time_threads} for timing, pairs.num {pcfg.pairs.num}, candidates {pcfg.pairs.candidates}, "
          f"projector {pcfg.backbone.dim}->{pcfg.projector.hidden}->{pcfg.projector.out}, "
          f"transform_layers {pcfg.ppm.transform_layers}, maps (2, {pcfg.backbone.dim}, H, W) "
          f"{precision_name(device, pcfg.amp)}; memory = peak rise, fresh process per row")

    # ---- memory: one fresh process per configuration, --jobs of them at a time (each measures
    # only its own RSS); the global-PPM chain decides its next size from the sizes already run.
    bb_size = largest if (args.backbone_direct or cuda) else (largest[0] // 2, largest[1] // 2)
    check_size = parse_size(args.check_size)
    if check_size not in sizes:
        parser.error(f"--check-size {args.check_size} must be one of --sizes")
    started = time.perf_counter()
    pool = _memory_pool(1 if cuda else args.jobs)
    try:
        pending = {}
        global_sizes: list = []
        stopped_at = None

        def submit_global(i):
            pending[(sizes[i], GLOBAL)] = pool.apply_async(head_memory_child,
                                                           (device, GLOBAL, sizes[i], args.params, threads))

        submit_global(0)
        backbone_job = pool.apply_async(backbone_memory_child, (device, bb_size, args.params, threads))
        check_jobs = {kind: pool.apply_async(step_memory_child, (device, check_size, args.params, threads,
                                                                 window_main, kind == "head"))
                      for kind in ("head", "bare")}
        for config in configs:
            if config != GLOBAL:
                for size in sizes:
                    pending[(size, config)] = pool.apply_async(head_memory_child,
                                                               (device, config, size, args.params, threads))
        memory: dict = {}
        for i, size in enumerate(sizes):
            memory[(size, GLOBAL)] = pending.pop((size, GLOBAL)).get()
            global_sizes.append(size)
            if i + 1 == len(sizes):
                break
            predicted = _predict_global(global_sizes, memory, sizes[i + 1])
            if predicted > args.max_gb * GB:
                stopped_at = i + 1
                break
            submit_global(i + 1)
        for key, job in pending.items():
            memory[key] = job.get()
        backbone = backbone_job.get()
        check = {kind: job.get() for kind, job in check_jobs.items()}
    finally:
        pool.close()
        pool.join()
    memory_s = time.perf_counter() - started

    # ---- time: one process, configurations interleaved at each size
    started = time.perf_counter()
    time_global = [s for s in global_sizes if memory[(s, GLOBAL)]["peak"] <= args.time_global_max_gb * GB]
    times = _call(head_time_child, device, configs, sizes, time_global, args.params, time_threads, args.repeats)
    time_s = time.perf_counter() - started

    scale = (largest[0] * largest[1]) / (bb_size[0] * bb_size[1])
    backbone_peak = backbone["peak"] * scale

    # ---- tables
    print(f"\nhead memory (peak rise, forward + backward) and time (median of {args.repeats})")
    print(f"{'map HxW':>10} {'ppm':>8} {'pairs':>6} {'pairs x K':>10} {'unique px':>10} {'peak':>11} {'map grad':>11} "
          f"{'head - map grad':>16} {'peak/pixel':>11} {'time s':>8}")
    for size in sizes:
        for config in configs:
            label = labels[config]
            row = memory.get((size, config))
            t = times.get((size, config))
            t_text = f"{t:8.4f}" if t is not None else f"{'-':>8}"
            if row is None:
                if config == GLOBAL:
                    print(f"{size_text(size):>10} {label:>8} {'':>6} {'':>10} {'':>10} {'not run':>11}")
                continue
            rest = row["peak"] - row["map_grad"]
            per_pixel = row["peak"] / (size[0] * size[1])
            print(f"{size_text(size):>10} {label:>8} {row['pairs']:6d} {row['slots']:10d} {row['unique']:10d} "
                  f"{fmt_bytes(row['peak'])} "
                  f"{fmt_bytes(row['map_grad'])} {fmt_bytes(rest):>16} {per_pixel:9.0f} B {t_text}")
    if stopped_at is not None:
        print(f"global PPM stopped before {size_text(sizes[stopped_at])}: predicted over --max-gb {args.max_gb:g}. "
              f"Extrapolated need (linear in H*W from the sizes run):")
        for size in sizes[stopped_at:]:
            print(f"  {size_text(size):>10}: {fmt_bytes(_predict_global(global_sizes, memory, size)).strip()}")

    # growth: local should stay flat apart from the map gradient
    first, last = sizes[0], sizes[-1]
    print(f"\ngrowth from {size_text(first)} to {size_text(last)} ({last[0] * last[1] // (first[0] * first[1])}x pixels):")
    for config in configs:
        if config == GLOBAL:
            continue
        a, b = memory[(first, config)], memory[(last, config)]
        print(f"  {labels[config]}: head - map grad {fmt_bytes(a['peak'] - a['map_grad']).strip()} -> "
              f"{fmt_bytes(b['peak'] - b['map_grad']).strip()}; with map grad {fmt_bytes(a['peak']).strip()} -> "
              f"{fmt_bytes(b['peak']).strip()}")
    if len(global_sizes) >= 2:
        a, b = memory[(global_sizes[0], GLOBAL)], memory[(global_sizes[-1], GLOBAL)]
        print(f"  global: {fmt_bytes(a['peak']).strip()} at {size_text(global_sizes[0])} -> "
              f"{fmt_bytes(b['peak']).strip()} at {size_text(global_sizes[-1])} "
              f"({global_sizes[-1][0] * global_sizes[-1][1] // (global_sizes[0][0] * global_sizes[0][1])}x pixels)")

    how = "measured" if scale == 1 else f"measured at {size_text(bb_size)} ({fmt_bytes(backbone['peak']).strip()}), x{scale:g}"
    print(f"\nbackbone activations (2 views of one image, forward with grad) at {size_text(largest)}: "
          f"{fmt_bytes(backbone_peak).strip()} ({how}; retained after forward "
          f"{fmt_bytes(backbone['retained'] * scale).strip()}; forward {backbone['seconds']:.1f} s)")
    child_total = sum(r["seconds"] for r in memory.values()) + backbone["child_seconds"]
    print(f"wall time: memory children {memory_s:.0f} s ({len(memory) + 1} processes, {child_total:.0f} s in them "
          f"after start-up; backbone child {backbone['child_seconds']:.0f} s), timing child {time_s:.0f} s")
    check_row = memory[(check_size, window_main)]
    extra = check["head"]["peak"] - check["bare"]["peak"]
    print(f"end-to-end check at {size_text(check_size)} (real backbone, w{window_main}): peak of backbone forward + head "
          f"+ backward {fmt_bytes(check['head']['peak']).strip()} vs backbone forward + backward from a dense output "
          f"gradient {fmt_bytes(check['bare']['peak']).strip()}: the head adds {fmt_bytes(extra).strip()}; the head "
          f"table predicts head - map grad = {fmt_bytes(check_row['peak'] - check_row['map_grad']).strip()}")
    row = memory[(largest, window_main)]
    print(f"w{window_main} at {size_text(largest)}: head {fmt_bytes(row['peak']).strip()} = "
          f"{100 * row['peak'] / backbone_peak:.2f}% of the backbone's activations, of which one dense gradient of "
          f"the output map {fmt_bytes(row['map_grad']).strip()} that the backbone's own backward allocates as well")
    print(f"head memory at {size_text(largest)} beyond the backbone's own backward = "
          f"{100 * (row['peak'] - row['map_grad']) / backbone_peak:.2f}% of the backbone's activations")

if __name__ == "__main__":
    sys.exit(main())
