"""Cost of one full PixPro training step relative to the bare backbone work inside it.

Full step = `pixpro.train.train_step` as the trainer calls it, with the views already in memory:
pair sampling (sample_positive_pairs on crop boxes drawn as TwoViewDataset draws them), PixPro
forward (online backbone on both views, projector + PPM on the pairs' windows, target backbone +
target projector on the pair pixels), loss, backward, AdamW step (the default optimiser) and the
momentum update.

Bare = the same backbone's work on the same inputs: one online forward + backward on the
concatenated views (`.sum().backward()`) and one target forward of them under no_grad.

CPU threads: 1 by default (--threads): with 2 threads on a machine whose cores other jobs also
use, each OpenMP parallel region waits for a descheduled thread; that slowed AdamW's per-tensor
loop 0.05 s -> 0.2-2 s and the head's small ops alike, while the convolutions barely noticed.

Config: params.yaml's pretrain section with views.size set to each crop size and data.size to
twice the crop (the source image the crops come from). Repetitions are interleaved (full, bare,
full, bare, ...) after a warm-up, and medians are reported. Per size, a breakdown times the
extra parts alone (after the full/bare loop): pair sampling, the online head (propagate on both
views + loss, forward + backward, on a detached feature map), the target projector on the pair
pixels, the optimiser step (fused AdamW/SGD, as the trainer builds it) and the momentum update. Inside the
head (not added to the sum): the online projector alone on the head's distinct window pixels (fwd + bwd,
captured from one head call). "floor ratio" is the full step if the head were
only its projector: bare + the other parts + the projector, over bare. The projector's matrix products
and the optimiser and momentum passes over the parameters are work the method cannot skip, so in this
precision no rewrite of the rest of the head brings the ratio below the floor. `--profile` adds
torch.profiler tables of the top ops (self time, grouped by input shape) of one full step and of
the online head alone. "sys s" is the kernel CPU time of a step: on CPU mostly page faults, as
glibc hands large freed tensors back to the OS and the next step faults them in again.

Allocator: like the `pixpro` command, the script restarts itself with glibc malloc tunables that
keep freed memory for reuse (pixpro/allocator.py); PIXPRO_MALLOC=default measures glibc's
defaults, under which every large tensor is faulted in again at every step.

Precision: every size is measured in each of --precisions (default fp32 and bf16), everything
(full, bare and each part) under bf16 autocast for bf16, as pretrain.amp makes the trainer do
(pixpro/precision.py). On CUDA the model is channels_last, as the trainer does, and every timing
is bracketed by torch.cuda.synchronize.

Last lines: per precision, `ratio`, `floor ratio` and their difference (the head's own overhead
above the floor; CPU goal <= 0.03); then `floor ratio <median>` and `ratio <median>` of the first
of --precisions. A ratio is the median over sizes of the per-size ratio, which is the median over
repetitions of full step / bare step, each full step paired with the bare step timed right after
it (robust to the load drifting on a shared machine); the ratio of the medians is printed too
(goal <= 1.10). With the two default sizes the median is their mean.

    .venv/bin/python benchmarks/step_cost.py [--batch 1] [--sizes 128x256 256x512] [--repeats 5]
        [--device auto|cpu|cuda] [--threads N] [--profile] [--precisions fp32 bf16]
    # GPU-sized: --device cuda --batch 16 --sizes 256x512 512x1024 --repeats 10 --precisions bf16
    # (batch 1 is the CPU default only to stay under 3 minutes on 2 cores. The optimiser and momentum
    # passes do not grow with the batch; the head grows a little faster than the backbone, so the ratio
    # hardly moves: docs/benchmarks.md.)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torchvision.transforms import RandomResizedCrop

from pixpro.allocator import restart_with_tuned_malloc
from pixpro.config import load_params
from pixpro.data.views import ViewPair, crop_box, overlap_fraction
from pixpro.geometry import sample_positive_pairs
from pixpro.model.pixpro import PixPro
from pixpro.optim import build_optimizer
from pixpro.precision import autocast_for, native_cpu_bf16
from pixpro.train import StepContext, train_step
from timing import interleaved, paired_ratio, sync  # benchmarks/timing.py

ROOT = Path(__file__).resolve().parent.parent


class SizeResult(NamedTuple):
    """One crop size's summary row, in one precision."""

    precision: str  # fp32 | bf16
    size: str
    full_s: float  # median full step
    bare_s: float  # median bare step
    ratio_of_medians: float
    paired_ratio: float  # median of full / the bare step right after it
    pairs: int  # valid pairs in the timed batch
    floor_ratio: float  # full step if the head were its projector alone, over bare


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def draw_boxes(batch: int, image_size: tuple[int, int], views_cfg, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes drawn as TwoViewDataset._draw_crops draws them (scale, ratio, flip, min_overlap)."""
    torch.manual_seed(seed)
    height, width = image_size
    dummy = torch.empty(3, height, width)
    boxes1, boxes2 = [], []
    for _ in range(batch):
        best, best_overlap = None, -1.0
        for _ in range(views_cfg.max_tries):
            pair = []
            for _view in range(2):
                i, j, h, w = RandomResizedCrop.get_params(dummy, list(views_cfg.scale), list(views_cfg.ratio))
                pair.append(crop_box(i, j, h, w, height, width, bool(torch.rand(()) < views_cfg.flip)))
            overlap = overlap_fraction(*pair)
            if overlap > best_overlap:
                best, best_overlap = pair, overlap
            if overlap >= views_cfg.min_overlap:
                break
        boxes1.append(best[0])
        boxes2.append(best[1])
    return torch.stack(boxes1), torch.stack(boxes2)


def measure_size(size_text: str, base, args, device: torch.device, precision: str) -> SizeResult:
    """Time full vs bare steps at one crop size in one precision; print its table. Returns the
    summary row."""
    cuda = device.type == "cuda"
    size = parse_size(size_text)
    image_size = (2 * size[0], 2 * size[1])
    params = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, size=image_size),
        pretrain=dataclasses.replace(base.pretrain, batch_size=args.batch,
                                     views=dataclasses.replace(base.pretrain.views, size=size)))
    cfg = params.pretrain
    torch.manual_seed(0)
    model = PixPro(cfg).to(device)
    memory_format = torch.channels_last if cuda and cfg.channels_last else torch.contiguous_format
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, cfg.optim, cfg.optim.base_lr * args.batch / 256,
                                fused=cfg.optim.name != "lars")  # as the trainer builds it
    # The trainer's context (pixpro.precision.autocast_for), forced to this precision.
    amp = autocast_for(device, "always" if precision == "bf16" else "off")

    def autocast():
        return amp

    box1, box2 = draw_boxes(args.batch, image_size, cfg.views, seed=1)
    gen = torch.Generator().manual_seed(2)
    view1 = torch.randn(args.batch, 3, *size, generator=gen).to(device, memory_format=memory_format)
    view2 = torch.randn(args.batch, 3, *size, generator=gen).to(device, memory_format=memory_format)
    batch = ViewPair(view1, view2, box1, box2, torch.ones(args.batch, dtype=torch.bool))
    step_counter = [0]

    # Constant lr and momentum at every step; the step number still varies the pairs drawn.
    context = StepContext(params, device, amp, image_size, lr=[optimizer.param_groups[0]["lr"]] * 100_000,
                          momentum=[0.99] * 100_000)

    def full():
        train_step(model, optimizer, batch, step_counter[0], context)
        step_counter[0] += 1

    both = torch.cat([view1, view2])

    def bare():
        model.backbone.zero_grad(set_to_none=True)
        with autocast():
            out = model.backbone(both)
        out.float().sum().backward()
        with torch.no_grad(), autocast():
            model.target_backbone(both)

    # Parts of the extra work, timed alone.
    def pairs_fn():
        return sample_positive_pairs(box1.to(device), box2.to(device), size, size, image_size,
                                     cfg.pairs, torch.Generator(device=device).manual_seed(3))

    pairs = pairs_fn()
    with torch.no_grad(), autocast():
        feats = model.backbone(both)
        tfeats = model.target_backbone(both)
    feats = feats.detach().requires_grad_(True)

    index = torch.cat([pairs.index1, pairs.index2])
    target = torch.randn(2 * args.batch, cfg.pairs.num, cfg.projector.out, device=device)

    def head(context=autocast):
        with context():
            online = model.propagate(feats, index, groups=2)
            loss = cfg.loss.consistency * model.pair_loss(online, target, pairs.valid)
            if cfg.loss.contrast > 0:
                loss = loss + cfg.loss.contrast * model.contrast_loss(online, target, pairs)
        loss.backward()
        feats.grad = None

    # The projector's inputs in one head call: its distinct window pixels, one (U_g, C) per BN group.
    captured = []
    hook = model.projector.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    head()
    hook.remove()
    projector_rows = [rows.clone().requires_grad_(True) for rows in captured]
    projector_grads = [torch.randn(len(rows), cfg.projector.out, device=device) for rows in projector_rows]

    def projector_fn():
        with autocast():
            outputs = [model.projector(rows) for rows in projector_rows]
        torch.autograd.backward([out.float() for out in outputs], projector_grads)  # dense, like the head's
        for rows in projector_rows:
            rows.grad = None

    def target_head():
        with torch.no_grad(), autocast():
            model.project_target(tfeats, index)

    def optim_fn():
        optimizer.step()

    def momentum_fn():
        model.momentum_update(0.99)

    parts = {"pair sampling": pairs_fn, "online head fwd+bwd": head, "target projector": target_head,
             "optimizer step": optim_fn, "momentum update": momentum_fn}
    inside_head = {"projector fwd+bwd": projector_fn}
    # Full and bare interleaved (after a warm-up of each); then the parts, interleaved among
    # themselves, so they do not disturb the allocator state between full and bare steps.
    sys_times: dict[str, list] = {}
    times = interleaved({"full": full, "bare": bare}, args.repeats, device, sys_times=sys_times)
    part_times = interleaved({**parts, **inside_head}, args.repeats, device)
    full_s, bare_s = statistics.median(times["full"]), statistics.median(times["bare"])
    paired = paired_ratio(times["full"], times["bare"])
    ratio = full_s / bare_s
    print(f"\n== {precision}, crop {size_text} (source image {image_size[0]}x{image_size[1]}), batch {args.batch}, "
          f"valid pairs {int(pairs.count.sum())}/{pairs.valid.numel()} ==")
    print(f"{'':28} {'median s':>9} {'of bare':>8} {'sys s':>7}   samples")
    for name in ("full", "bare"):
        print(f"{name + ' step':28} {statistics.median(times[name]):9.4f} "
              f"{statistics.median(times[name]) / bare_s:8.3f} {statistics.median(sys_times[name]):7.3f}   "
              + " ".join(f"{t:.3f}" for t in times[name]))
    print(f"{'ratio full/bare':28} {paired:9.3f}   median of paired ratios (each full step / the bare step "
          f"right after it); ratio of medians {ratio:.3f}")
    print("breakdown of the extra work (timed alone):")
    medians = {name: statistics.median(samples) for name, samples in part_times.items()}
    for name in parts:
        print(f"  {name:26} {medians[name]:9.4f} {medians[name] / bare_s:8.3f}")
    accounted = sum(medians[name] for name in parts)
    print(f"  {'sum of parts':26} {accounted:9.4f} {accounted / bare_s:8.3f}   "
          f"(full - bare = {full_s - bare_s:.4f} s)")
    print("inside the head (not in the sum):")
    for name in inside_head:
        print(f"  {name:26} {medians[name]:9.4f} {medians[name] / bare_s:8.3f}")
    floor = (bare_s + accounted - medians["online head fwd+bwd"] + medians["projector fwd+bwd"]) / bare_s
    print(f"{'floor ratio':28} {floor:9.3f}   bare + other parts + the head's projector alone, over bare")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        for name, fn in (("one full step", full), ("the online head alone (fwd+bwd)", head)):
            with profile(activities=activities, record_shapes=True) as prof:
                fn()
                sync(device)
            events = sorted(prof.key_averages(group_by_input_shape=True),
                            key=lambda e: -getattr(e, key))[:15]
            total = sum(getattr(e, key) for e in prof.key_averages())
            print(f"torch.profiler, {name}: top ops by {key} (total {total / 1e6:.3f} s)")
            for e in events:
                shapes = str(e.input_shapes)[:70]
                print(f"  {e.key:34} {getattr(e, key) / 1e3:9.1f} ms  x{e.count:<4d} {shapes}")
    return SizeResult(precision, size_text, full_s, bare_s, ratio, paired, int(pairs.count.sum()), floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1,
                        help="images per step (B; the backbone sees 2B views). 1 keeps the CPU default "
                             "under 3 minutes; the backbone scales linearly in B, the head a little faster, "
                             "the optimiser and momentum update not at all")
    parser.add_argument("--sizes", nargs="+", default=["128x256", "256x512"], help="crop sizes HxW")
    parser.add_argument("--repeats", type=int, default=5, help="timed full/bare pairs per size (after 1 warm-up)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on CPU (0 = torch's default). 1 by default: on a shared, "
                             "oversubscribed machine a second OpenMP thread makes every parallel op wait for a "
                             "descheduled thread, which slows the many small ops of the head and the optimiser "
                             "far more (up to 30x) than the backbone's convolutions, and makes timings erratic")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                        help="measure each size in each (bf16 = bf16 autocast, as pretrain.amp gives); the last "
                             "lines are the first's. On a CPU without native bf16, bf16 runs emulated and slowly")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--profile", action="store_true", help="print torch.profiler top ops of a full step and of the online head")
    args = parser.parse_args()
    restart_with_tuned_malloc()  # as the `pixpro` command runs every stage (pixpro/allocator.py)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    if args.threads and not cuda:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    base = load_params(args.params)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}, "
          f"backbone {base.pretrain.backbone.arch}/{base.pretrain.backbone.encoder} dim {base.pretrain.backbone.dim}, "
          f"pairs {base.pretrain.pairs.num}, ppm window {base.pretrain.ppm.window}, optim {base.pretrain.optim.name}, "
          f"repeats {args.repeats} (interleaved, medians), precisions {' '.join(args.precisions)} "
          f"(CPU native bf16: {native_cpu_bf16()})")

    rows = []
    for precision in args.precisions:
        for size_text in args.sizes:
            rows.append(measure_size(size_text, base, args, device, precision))
            if cuda:
                torch.cuda.empty_cache()

    print("\nsummary")
    print(f"{'precision':>9} {'crop':>10} {'full s':>9} {'bare s':>9} {'paired ratio':>13} {'ratio of medians':>17} "
          f"{'pairs':>6} {'floor ratio':>12}")
    for row in rows:
        print(f"{row.precision:>9} {row.size:>10} {row.full_s:9.4f} {row.bare_s:9.4f} {row.paired_ratio:13.3f} "
              f"{row.ratio_of_medians:17.3f} {row.pairs:6d} {row.floor_ratio:12.3f}")
    summary = {}
    for precision in args.precisions:
        mine = [row for row in rows if row.precision == precision]
        ratio = statistics.median(row.paired_ratio for row in mine)
        floor = statistics.median(row.floor_ratio for row in mine)
        summary[precision] = ratio, floor
        print(f"{precision}: ratio {ratio:.3f}, floor ratio {floor:.3f}, ratio - floor ratio {ratio - floor:.3f}")
    ratio, floor = summary[args.precisions[0]]
    print(f"floor ratio {floor:.3f}")
    print(f"ratio {ratio:.3f}")


if __name__ == "__main__":
    sys.exit(main())
