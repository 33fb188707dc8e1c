"""Seconds per fine-tuning step and per val pass, bf16 autocast (`finetune.amp: always`) against fp32
(`off`), measured side by side: does CPU bf16 pay for the label-efficiency study?

The step is the finetune stage's own work on params.yaml's backbone plus the 1x1 classifier
(pixpro.finetuned_file.Segmenter): forward under autocast, fp32 cross-entropy, backward, AdamW,
on a batch of random crops of `--crop` pixels. The val pass is a forward pass over a batch of
whole images at `--size` (the prepared size; IDD Lite's by default). Both variants start from the
same weights and run interleaved (fp32, bf16, fp32, ...), `--repeats` rounds after a warm-up
round; the speed-up is the median over rounds of fp32 seconds / bf16 seconds.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/finetune_speed.py [--crop 64 96] [--batch 8]
        [--size 160 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
from torch.nn import functional as F

from pixpro.config import load_params
from pixpro.finetuned_file import Segmenter
from pixpro.model.backbone import build_backbone
from pixpro.precision import autocast_for, native_cpu_bf16
from timing import interleaved, paired_ratio  # benchmarks/timing.py

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
CLASSES = 7  # IDD Lite's; the classifier is a 1x1 conv, so the count hardly matters


def step_fn(model: Segmenter, amp: str, images: torch.Tensor, masks: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with autocast_for(CPU, amp):
            logits = model(images)  # (B, K, h, w)
        loss = F.cross_entropy(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def val_fn(model: Segmenter, amp: str, images: torch.Tensor):
    @torch.no_grad()
    def val() -> None:
        with autocast_for(CPU, amp):
            model(images).argmax(1)
    return val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, nargs=2, default=[64, 96])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[160, 224], help="val images [H, W]")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    params = load_params(ROOT / "params.yaml")
    base = Segmenter(build_backbone(params.pretrain.backbone), params.pretrain.backbone.dim, CLASSES)
    crops = torch.randn(args.batch, 3, *args.crop)
    masks = torch.randint(0, CLASSES, (args.batch, *args.crop))
    whole = torch.randn(args.batch, 3, *args.size)
    models = {amp: copy.deepcopy(base).train() for amp in ("off", "always")}
    steps = interleaved({f"step {amp}": step_fn(m, amp, crops, masks) for amp, m in models.items()},
                        args.repeats, CPU)
    for m in models.values():
        m.eval()
    vals = interleaved({f"val {amp}": val_fn(m, amp, whole) for amp, m in models.items()}, args.repeats, CPU)
    print(f"native CPU bf16: {native_cpu_bf16()}; threads {args.threads}; batch {args.batch}, "
          f"crops {args.crop[0]}x{args.crop[1]}, val {args.size[0]}x{args.size[1]}; {args.repeats} rounds")
    print("| work | fp32 s (median) | bf16 s (median) | speed-up (median of paired ratios) |")
    print("|---|---|---|---|")
    for name, key, times in (("training step", "step", steps), ("val forward pass", "val", vals)):
        fp32, bf16 = times[f"{key} off"], times[f"{key} on"]
        print(f"| {name} | {statistics.median(fp32):.3f} | {statistics.median(bf16):.3f} | "
              f"{paired_ratio(fp32, bf16):.2f}x |")


if __name__ == "__main__":
    main()
