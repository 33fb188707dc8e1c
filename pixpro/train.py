"""The pretraining loop: data order, schedules, one step, checkpoints. The process set-up lives in
pixpro.runtime, what is logged in pixpro.train_log, checkpoint state and RNG in pixpro.checkpoint."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from pixpro.checkpoint import capture_rng, git_revision, restore_rng, resumable_state, save_checkpoint
from pixpro.config import PairsConfig, Params
from pixpro.config_base import to_dict
from pixpro.data.manifest import load_manifest
from pixpro.data.views import TwoViewDataset, ViewPair, collate_view_pairs
from pixpro.errors import ConfigError, DataError, DistributedFailure, Interrupted
from pixpro.geometry import PixelPairs, sample_positive_pairs
from pixpro.model.pixpro import LossTerms, PixPro, StagePairs
from pixpro.optim import build_optimizer
from pixpro.precision import autocast_for
from pixpro.runtime import configure_determinism, graceful_interrupt, pair_normaliser, setup_runtime
from pixpro.schedules import momentum_schedule, warmup_cosine
from pixpro.train_log import StepLog, TargetDrift, log_stats, open_live, training_progress

# Keys that change how a run executes but not what it computes: a checkpoint written under
# other values may be resumed.
EXECUTION_KEYS = ("device", "nproc", "nnodes", "rdzv_endpoint", "workers", "checkpoint_every", "log_every",
                  "ddp_timeout_s", "compile")


# --------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------


class EpochSampler(Sampler):
    """DistributedSampler order (reshuffled every epoch, one shard per rank), yielding
    (epoch, index) keys so the dataset can seed each draw, and able to skip the batches a
    resumed run already trained on."""

    def __init__(self, size: int, batch_size: int, world_size: int, rank: int, seed: int):
        self.inner = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True,
                                        seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.steps_per_epoch = len(self.inner) // batch_size
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(self.inner)[self.skip_batches * self.batch_size: self.steps_per_epoch * self.batch_size]
        return iter([(self.epoch, index) for index in order])

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.skip_batches) * self.batch_size


def pretraining_images(prepared_dir: Path) -> list[str]:
    manifest = load_manifest(prepared_dir)
    rows = manifest[manifest["split"].isin(["train", "train_extra"])]
    if rows.empty:
        raise DataError(f"{prepared_dir}/manifest.csv lists no train images to pretrain on")
    return rows["image"].tolist()


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainResult:
    steps: int
    resumed_from: Optional[int]
    final_loss: Optional[float]
    completed: bool


def run_config(params: Params) -> dict:
    """What determines a run's result: compared with a checkpoint's before resuming it."""
    pretrain = to_dict(params.pretrain)
    for key in EXECUTION_KEYS:
        pretrain.pop(key)
    data = to_dict(params.data)
    data.pop("workers")  # preparation's process count: it never changes what pretraining reads
    return {"seed": params.seed, "data": data, "pretrain": pretrain}


def unwrap(model: nn.Module) -> PixPro:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def pretrain(params: Params, prepared_dir: Path, output: Path, checkpoint_dir: Path, live_dir: Path,
             stop_after: Optional[int] = None, log: Callable[[str], None] = print) -> PretrainResult:
    """Train PixPro and write `output` (online backbone + config). Resumes from
    checkpoint_dir/last.pt when its config matches. `stop_after` ends early after that many
    steps, with a checkpoint, as an interruption would (used by tests)."""
    cfg = params.pretrain
    runtime = setup_runtime(cfg)
    device = runtime.device
    configure_determinism(cfg, device)
    cuda = device.type == "cuda"

    torch.manual_seed(params.seed)  # same initial weights on every rank
    dataset = TwoViewDataset(pretraining_images(prepared_dir), cfg.views, params.seed)
    per_rank_batch = cfg.batch_size // runtime.world_size
    sampler = EpochSampler(len(dataset), per_rank_batch, runtime.world_size, runtime.rank, params.seed)
    if sampler.steps_per_epoch == 0:
        raise ConfigError(f"pretrain.batch_size = {cfg.batch_size} exceeds the {len(dataset)} pretraining images")
    total_steps = cfg.epochs * sampler.steps_per_epoch
    loader = DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler, num_workers=cfg.workers,
                        collate_fn=collate_view_pairs, pin_memory=cuda, drop_last=True,
                        persistent_workers=cfg.workers > 0)

    model: nn.Module = PixPro(cfg).to(device)
    target_drift = TargetDrift(model)  # before a resumed state is loaded: drift is from the seed's init
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if runtime.distributed and cuda:  # SyncBatchNorm is CUDA-only; CPU DDP (gloo, tests) keeps per-rank BN
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.compile:
        # In place (nn.Module.compile), not torch.compile(module): the latter's wrapper prefixes every
        # state_dict key with `_orig_mod.`, so its checkpoints and backbone.pt would not load uncompiled.
        model.backbone.compile()
        model.target_backbone.compile()
    if runtime.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    peak_lr = cfg.optim.base_lr * cfg.batch_size / 256
    lr_schedule = warmup_cosine(peak_lr, peak_lr * cfg.optim.min_lr_ratio, total_steps,
                                round(cfg.optim.warmup_epochs * sampler.steps_per_epoch))
    momentum = momentum_schedule(cfg.momentum, total_steps)
    optimizer = build_optimizer(unwrap(model), cfg.optim, peak_lr, fused=cfg.optim.name != "lars")

    checkpoint_path = Path(checkpoint_dir) / "last.pt"
    identity = run_config(params)
    step, resumed_from = 0, None
    state = resumable_state(checkpoint_path, identity, runtime, log)
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        step = resumed_from = state["step"]
        log(f"resuming from {checkpoint_path} at step {step} of {total_steps}")

    def write_checkpoint() -> None:
        if runtime.is_main:
            save_checkpoint(checkpoint_path, {
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "scaler": None,
                "step": step, "epoch": step // sampler.steps_per_epoch, "rng": capture_rng(),
                "config": identity, "git": git_revision(), "world_size": runtime.world_size,
            })

    live = open_live(live_dir, resumed_from) if runtime.is_main else None
    if live is not None:  # how the run was made: results depend on the thread count (threads: auto)
        live.log_param("threads", torch.get_num_threads())
        log(f"pretraining on {device} with {torch.get_num_threads()} CPU thread(s)")
    step_log = StepLog()
    stats: dict[str, float] = {}
    context = StepContext(params, device, autocast_for(device, cfg.amp), tuple(params.data.size), lr_schedule,
                          momentum, runtime.rank)
    progress = training_progress(runtime.is_main)
    try:
        with graceful_interrupt() as stop_requested, progress:
            task = progress.add_task("pretrain", total=total_steps, completed=step, stats="")
            model.train()
            while step < total_steps:
                epoch = step // sampler.steps_per_epoch
                sampler.set_epoch(epoch, skip_batches=step - epoch * sampler.steps_per_epoch)
                for batch in loader:
                    diagnose = (step + 1) % cfg.log_every == 0 or step + 1 == total_steps
                    terms, pair_count = train_step(model, optimizer, batch, step, context, diagnose)
                    step_log.add(step, terms, pair_count, batch.overlap_ok)
                    step += 1
                    end_of_epoch = step % sampler.steps_per_epoch == 0
                    checkpoint_due = step % cfg.checkpoint_every == 0 or end_of_epoch or step == stop_after
                    if step % cfg.log_every == 0 or checkpoint_due or stop_requested() or step == total_steps:
                        # flush raises before a diverged state is checkpointed
                        stats = step_log.flush(target_drift(unwrap(model)) if runtime.is_main else None)
                        stats.update(lr=float(lr_schedule[step - 1]), momentum=float(momentum[step - 1]))
                        log_stats(live, step, stats, step_log.images_per_s)
                        gap = f"  partner gap {stats['partner_gap']:.3f}" if "partner_gap" in stats else ""
                        progress.update(task, completed=step, stats=f"loss {stats['loss']:.4f}{gap}  "
                                                                    f"{step_log.images_per_s:.1f} img/s")
                    if checkpoint_due or stop_requested():
                        write_checkpoint()
                    if stop_requested():
                        raise Interrupted(f"interrupted at step {step}/{total_steps}; checkpoint saved to "
                                          f"{checkpoint_path}. Rerun `dvc repro pretrain` to resume.")
                    if step == stop_after:
                        return PretrainResult(step, resumed_from, stats.get("loss"), completed=False)
        if runtime.is_main:
            save_checkpoint(output, export_backbone(unwrap(model), params, step))
            log(f"wrote {output} after {step} steps")
        return PretrainResult(step, resumed_from, stats.get("loss"), completed=True)
    except (RuntimeError, dist.DistBackendError) as err:
        if not runtime.distributed:
            raise
        # A peer died or stopped answering: gloo/NCCL report it as a RuntimeError.
        raise DistributedFailure(f"rank {runtime.rank}: a DDP peer failed or timed out near step {step + 1} "
                                 f"({str(err).splitlines()[0][:120]}); rerun to resume from the last "
                                 f"checkpoint in {checkpoint_path.parent}") from None
    finally:
        if live is not None:
            live.end()
        if runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class StepContext:
    """What every step of one run shares; train_step reads step-dependent values from it by index."""

    params: Params
    device: torch.device
    autocast: contextlib.AbstractContextManager  # re-entered every step
    image_size: tuple[int, int]  # (H, W) of the prepared images: the boxes' coordinate frame
    lr: Sequence[float]  # per step (schedules.warmup_cosine)
    momentum: Sequence[float]  # per step (schedules.momentum_schedule)
    rank: int = 0


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: ViewPair, step: int,
               context: StepContext, diagnose: bool = False) -> tuple[LossTerms, torch.Tensor]:
    """One optimisation step. Returns (the loss terms, valid pairs per image (B,)), still on
    device; `diagnose` adds the Diagnostics of this step's pairs."""
    cfg = context.params.pretrain
    device = context.device
    for group in optimizer.param_groups:
        group["lr"] = context.lr[step]
    memory_format = torch.channels_last if device.type == "cuda" and cfg.channels_last else torch.preserve_format
    view1 = batch.view1.to(device, non_blocking=True, memory_format=memory_format)
    view2 = batch.view2.to(device, non_blocking=True, memory_format=memory_format)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.SeedSequence([context.params.seed, step, context.rank]).generate_state(1)[0]))
    box1, box2 = batch.box1.to(device), batch.box2.to(device)
    size = tuple(cfg.views.size)
    pairs = sample_positive_pairs(box1, box2, size, size, context.image_size, cfg.pairs, generator)
    coarse_pairs = None
    if cfg.loss.coarse > 0:
        # Every bin of the pooled view is a candidate: the pooled map is small (e.g. 8 x 16).
        coarse = (size[0] // cfg.loss.coarse_stride, size[1] // cfg.loss.coarse_stride)
        bins = coarse[0] * coarse[1]
        coarse_pairs = sample_positive_pairs(box1, box2, coarse, coarse, context.image_size,
                                             replace(cfg.pairs, candidates=bins, num=bins), generator)
    stage_pairs = []
    for layer in cfg.loss.stage_layers if cfg.loss.stages > 0 else ():
        stride = cfg.backbone.stage_strides[layer]
        found = pairs_on_grid(box1, box2, (size[0] // stride, size[1] // stride), context.image_size, cfg.pairs,
                              cfg.loss.stage_pairs, generator)
        stage_pairs.append(StagePairs(layer, found, pair_normaliser(found.valid)))
    with context.autocast:
        terms = model(view1, view2, pairs, pair_normaliser(pairs.valid), coarse_pairs, diagnose, tuple(stage_pairs))
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    optimizer.step()
    unwrap(model).momentum_update(context.momentum[step])
    return terms, pairs.count


def pairs_on_grid(box1: torch.Tensor, box2: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int],
                  sampling: PairsConfig, num: int, generator: torch.Generator) -> PixelPairs:
    """Positive pairs between the views' (h, w) = `grid` bins, for a map coarser than the views:
    every bin is a candidate when there are fewer than sampling.candidates, and at most `num` are kept."""
    bins = grid[0] * grid[1]
    sampling = replace(sampling, candidates=min(sampling.candidates, bins), num=min(num, bins))
    return sample_positive_pairs(box1, box2, grid, grid, image_size, sampling, generator)


def export_backbone(model: PixPro, params: Params, step: int) -> dict:
    """What evaluation needs to rebuild the online backbone, and where it came from."""
    return {
        "backbone": {k: v.cpu() for k, v in model.backbone.state_dict().items()},
        "backbone_config": to_dict(params.pretrain.backbone),
        "pretrain_config": to_dict(params.pretrain),
        "seed": params.seed,
        "step": step,
        "git": git_revision(),
    }


