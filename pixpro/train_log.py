"""What pretraining reports: per-step loss terms and diagnostics, target drift, dvclive curves."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from pixpro.errors import TrainingDiverged
from pixpro.model.pixpro import LossTerms, PixPro
from pixpro.runtime import distributed_world_size


class StepLog:
    """Collects per-step tensors and syncs them with the host only every `log_every` steps."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, LossTerms, torch.Tensor, torch.Tensor]] = []
        self.images = 0
        self.images_per_s = 0.0
        self.started = time.perf_counter()

    def add(self, step: int, terms: LossTerms, pair_count: torch.Tensor, overlap_ok: torch.Tensor) -> None:
        # Detached, as the old single loss was: kept tensors must not hold the step's autograd graph.
        self.pending.append((step, terms._replace(total=terms.total.detach()), pair_count, overlap_ok))
        self.images += pair_count.numel()

    def flush(self, target_drift: Optional[float] = None) -> dict[str, float]:
        """Raise TrainingDiverged at the first non-finite loss; else return averaged stats.
        Diagnostics are those of the last step that carried them (one per log interval)."""
        steps = [s for s, *_ in self.pending]
        names = ("total", *LossTerms.term_names())  # column 0 is the optimised total
        losses = torch.stack([torch.stack([getattr(terms, name).float() for name in names])
                              for _, terms, _, _ in self.pending])  # (steps, terms)
        if distributed_world_size() > 1:
            # Mean over ranks = the loss over all ranks' pairs (see pair_normaliser); every rank
            # then sees a NaN at the same step and stops together instead of waiting on a dead peer.
            dist.all_reduce(losses)
            losses /= distributed_world_size()
        losses = losses.cpu()
        bad = (~torch.isfinite(losses[:, 0])).nonzero()
        if len(bad):
            raise TrainingDiverged(f"loss became {losses[bad[0, 0], 0].item()} at step {steps[bad[0, 0]] + 1}")
        counts = torch.cat([c for _, _, c, _ in self.pending]).cpu()
        overlap = torch.cat([o for _, _, _, o in self.pending]).cpu()
        elapsed = time.perf_counter() - self.started
        mean = losses.mean(0)
        stats = {"loss": float(mean[0])}
        stats.update({f"loss_{name}": float(value) for name, value in zip(names[1:], mean[1:])})
        stats.update({
            "pairs_per_image": float(counts.float().mean()),
            "skipped_images": int((counts == 0).sum()),
            "low_overlap_images": int((~overlap).sum()),
        })
        self.images_per_s = self.images / max(elapsed, 1e-9)  # logged as a plot only: it is not a result
        diagnosed = [terms.diagnostics for _, terms, _, _ in self.pending if terms.diagnostics is not None]
        if diagnosed:
            stats.update({name: float(value) for name, value in diagnosed[-1]._asdict().items() if value is not None})
        if target_drift is not None:
            stats["target_drift"] = target_drift
        self.pending.clear()
        self.images = 0
        self.started = time.perf_counter()
        return stats


class TargetDrift:
    """Relative distance ||theta - theta_0|| / ||theta_0|| of the target network from its init.

    A target that never moves makes the online network chase random-init features; one that
    moves fast (low momentum) lets both collapse together.
    """

    def __init__(self, model: PixPro) -> None:
        self.initial = [p.detach().clone() for p in self._parameters(model)]
        self.initial_norm = torch.sqrt(sum(p.float().pow(2).sum() for p in self.initial))

    @staticmethod
    def _parameters(model: PixPro) -> list[torch.Tensor]:
        return [*model.target_backbone.parameters(), *model.target_projector.parameters()]

    @torch.no_grad()
    def __call__(self, model: PixPro) -> float:
        moved = sum((p.float() - p0.float()).pow(2).sum() for p, p0 in zip(self._parameters(model), self.initial))
        return float(torch.sqrt(moved) / self.initial_norm.clamp(min=1e-12))


def open_live(live_dir: Path, resume_step: Optional[int]):
    """dvclive logger; when resuming, rows logged after the checkpoint (by the run that was
    killed) are dropped so the curves have one value per step."""
    from dvclive import Live

    if resume_step is not None:
        for table in Path(live_dir, "plots", "metrics").rglob("*.tsv"):
            lines = table.read_text().splitlines()
            kept = [lines[0]] + [line for line in lines[1:] if int(line.split("\t")[0]) <= resume_step]
            table.write_text("\n".join(kept) + "\n")
    # dvc.yaml declares dvclive's outputs itself, so dvclive must not edit it.
    return Live(str(live_dir), resume=resume_step is not None, dvcyaml=None, save_dvc_exp=False, report=None)


def log_stats(live, step: int, stats: dict[str, float], images_per_s: float) -> None:
    """Results go through dvclive (curves and metrics.json); throughput only to its curve, as it
    changes from run to run and would make every `dvc metrics diff` noisy."""
    if live is None:
        return
    live.step = step
    for name, value in stats.items():
        live.log_metric(f"train/{name}", value)
    throughput = Path(live.plots_dir, "metrics", "train", "images_per_s.tsv")
    throughput.parent.mkdir(parents=True, exist_ok=True)
    new_file = not throughput.exists()
    with throughput.open("a") as table:  # dvclive's own TSV layout, so `dvc plots` reads it alike
        if new_file:
            table.write("step\timages_per_s\n")
        table.write(f"{step}\t{images_per_s}\n")
    live.next_step()


def training_progress(enabled: bool):
    from rich.progress import TextColumn

    from pixpro.progress import progress_bar

    progress = progress_bar(TextColumn("{task.fields[stats]}"))
    if not enabled:
        progress.disable = True
    return progress
