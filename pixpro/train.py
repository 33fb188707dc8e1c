"""The pretraining loop: data, schedules, AMP, DDP, resumable checkpoints, dvclive logging."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from pixpro.checkpoint import first_difference, git_revision, load_checkpoint, lookup, save_checkpoint
from pixpro.config import Params, PretrainConfig, to_dict
from pixpro.data.manifest import load_manifest
from pixpro.data.views import TwoViewDataset, ViewPair, collate_view_pairs
from pixpro.errors import CheckpointError, ConfigError, DataError, DistributedFailure, Interrupted, TrainingDiverged
from pixpro.geometry import sample_positive_pairs
from pixpro.model.pixpro import LossTerms, PixPro
from pixpro.optim import build_optimizer
from pixpro.schedules import momentum_schedule, warmup_cosine

# Keys that change how a run executes but not what it computes: a checkpoint written under
# other values may be resumed.
EXECUTION_KEYS = ("device", "nproc", "nnodes", "rdzv_endpoint", "workers", "checkpoint_every", "log_every",
                  "ddp_timeout_s", "compile")


# --------------------------------------------------------------------------------------------
# Runtime: device, distributed
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """auto and cuda mean this node's GPU number LOCAL_RANK (global ranks span nodes)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"pretrain.device = {name} but CUDA is not available; use auto or cpu")
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def setup_runtime(cfg: PretrainConfig) -> Runtime:
    """Read torchrun's environment; one process without it. RANK and WORLD_SIZE are global (over
    all nodes), LOCAL_RANK counts this node's processes; nnodes x nproc must match torchrun's."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    launch = "`pixpro pretrain --launch` (as dvc.yaml does) on every node"
    if world_size != cfg.nnodes * cfg.nproc:
        raise ConfigError(f"pretrain.nnodes = {cfg.nnodes} x pretrain.nproc = {cfg.nproc} needs "
                          f"{cfg.nnodes * cfg.nproc} process(es) but WORLD_SIZE = {world_size}; launch with {launch}")
    # Set by torchrun: the right total split over nodes differently (1 x 4 instead of 2 x 2) is an error too.
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.nproc))
    if local_world_size != cfg.nproc:
        raise ConfigError(f"pretrain.nproc = {cfg.nproc} but {local_world_size} process(es) were started on "
                          f"this node; launch with {launch}")
    if cfg.batch_size % world_size:
        raise ConfigError(f"pretrain.batch_size = {cfg.batch_size} is not divisible by the {world_size} processes "
                          f"(pretrain.nnodes x pretrain.nproc)")
    device = select_device(cfg.device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # A dead peer makes collectives fail after this timeout instead of hanging forever.
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.ddp_timeout_s))
    return Runtime(device, rank, world_size)


def configure_determinism(cfg: PretrainConfig, device: torch.device) -> None:
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; scatter/index_add backward and
        # cuDNN autotuning are the other GPU sources of run-to-run noise.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


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
# Logging
# --------------------------------------------------------------------------------------------


class StepLog:
    """Collects per-step tensors and syncs them with the host only every `log_every` steps."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, LossTerms, torch.Tensor, torch.Tensor]] = []
        self.images = 0
        self.started = time.perf_counter()

    def add(self, step: int, terms: LossTerms, pair_count: torch.Tensor, overlap_ok: torch.Tensor) -> None:
        # Detached, as the old single loss was: kept tensors must not hold the step's autograd graph.
        self.pending.append((step, terms._replace(total=terms.total.detach()), pair_count, overlap_ok))
        self.images += pair_count.numel()

    def flush(self, target_drift: Optional[float] = None) -> dict[str, float]:
        """Raise TrainingDiverged at the first non-finite loss; else return averaged stats.
        Diagnostics are those of the last step that carried them (one per log interval)."""
        steps = [s for s, *_ in self.pending]
        # (steps, 4): total, consistency, contrast, coarse
        losses = torch.stack([torch.stack([t.float() for t in terms[:4]]) for _, terms, _, _ in self.pending])
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
        stats = {
            "loss": float(mean[0]),
            "loss_consistency": float(mean[1]),
            "loss_contrast": float(mean[2]),
            "loss_coarse": float(mean[3]),
            "pairs_per_image": float(counts.float().mean()),
            "skipped_images": int((counts == 0).sum()),
            "low_overlap_images": int((~overlap).sum()),
            "images_per_s": self.images / max(elapsed, 1e-9),
        }
        diagnosed = [terms.diagnostics for _, terms, _, _ in self.pending if terms.diagnostics is not None]
        if diagnosed:
            stats.update({name: float(value) for name, value in diagnosed[-1]._asdict().items()})
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


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[Callable[[], bool]]:
    """First Ctrl-C asks the loop to stop after the current step; a second one aborts."""
    requested = {"stop": False}

    def handler(signum, frame):
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (e.g. some test runners): leave signals alone
        yield lambda: False
        return
    try:
        yield lambda: requested["stop"]
    finally:
        signal.signal(signal.SIGINT, previous)


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
    return {"seed": params.seed, "data": to_dict(params.data), "pretrain": pretrain}


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
    step_log = StepLog()
    stats: dict[str, float] = {}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.amp)
    image_size = tuple(params.data.size)
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
                    terms, pair_count = train_step(model, optimizer, batch, step, lr_schedule[step], momentum[step],
                                                   params, device, autocast, image_size, runtime.rank, diagnose)
                    step_log.add(step, terms, pair_count, batch.overlap_ok)
                    step += 1
                    end_of_epoch = step % sampler.steps_per_epoch == 0
                    checkpoint_due = step % cfg.checkpoint_every == 0 or end_of_epoch or step == stop_after
                    if step % cfg.log_every == 0 or checkpoint_due or stop_requested() or step == total_steps:
                        # flush raises before a diverged state is checkpointed
                        stats = step_log.flush(target_drift(unwrap(model)) if runtime.is_main else None)
                        stats.update(lr=float(lr_schedule[step - 1]), momentum=float(momentum[step - 1]))
                        log_stats(live, step, stats)
                        gap = f"  partner gap {stats['partner_gap']:.3f}" if "partner_gap" in stats else ""
                        progress.update(task, completed=step, stats=f"loss {stats['loss']:.4f}{gap}  "
                                                                    f"{stats['images_per_s']:.1f} img/s")
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


def resumable_state(path: Path, identity: dict, runtime: Runtime, log: Callable[[str], None]) -> Optional[dict]:
    """The checkpoint at `path` if it was trained under `identity` (run_config), else None.

    Under DDP only rank 0 reads it and broadcasts it, so every rank on every node resumes the
    same step even where its own view of the file is missing or stale (a node-local folder, a
    network filesystem's cache)."""
    found: Optional[dict] | CheckpointError = None
    if runtime.is_main and path.is_file():
        try:
            found = load_checkpoint(path, "pretrain")
        except CheckpointError as err:
            found = err  # sent on, so the other ranks stop with it instead of waiting for the broadcast
        else:
            changed = first_difference(found.get("config"), identity)
            if changed:
                log(f"not resuming {path}: it was trained with {changed} = {lookup(found.get('config'), changed)!r}, "
                    f"params.yaml has {lookup(identity, changed)!r}; starting from step 0")
                found = None
    if runtime.distributed:
        box = [found]
        dist.broadcast_object_list(box, src=0)
        found = box[0]
    if isinstance(found, CheckpointError):
        raise found
    return found


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: ViewPair, step: int, lr: float,
               momentum: float, params: Params, device: torch.device, autocast, image_size: tuple[int, int],
               rank: int, diagnose: bool = False) -> tuple[LossTerms, torch.Tensor]:
    """One optimisation step. Returns (the loss terms, valid pairs per image (B,)), still on
    device; `diagnose` adds the Diagnostics of this step's pairs."""
    cfg = params.pretrain
    for group in optimizer.param_groups:
        group["lr"] = lr
    memory_format = torch.channels_last if device.type == "cuda" and cfg.channels_last else torch.preserve_format
    view1 = batch.view1.to(device, non_blocking=True, memory_format=memory_format)
    view2 = batch.view2.to(device, non_blocking=True, memory_format=memory_format)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.SeedSequence([params.seed, step, rank]).generate_state(1)[0]))
    box1, box2 = batch.box1.to(device), batch.box2.to(device)
    size = tuple(cfg.views.size)
    pairs = sample_positive_pairs(box1, box2, size, size, image_size, cfg.pairs, generator)
    coarse_pairs = None
    if cfg.loss.coarse > 0:
        # Every bin of the pooled view is a candidate: the pooled map is small (e.g. 8 x 16).
        coarse = (size[0] // cfg.loss.coarse_stride, size[1] // cfg.loss.coarse_stride)
        bins = coarse[0] * coarse[1]
        coarse_pairs = sample_positive_pairs(box1, box2, coarse, coarse, image_size,
                                             replace(cfg.pairs, candidates=bins, num=bins), generator)
    with autocast:
        terms = model(view1, view2, pairs, pair_normaliser(pairs.valid), coarse_pairs, diagnose)
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    optimizer.step()
    unwrap(model).momentum_update(momentum)
    return terms, pairs.count


def pair_normaliser(valid: torch.Tensor) -> Optional[torch.Tensor]:
    """Denominator that makes DDP's gradient the mean over all ranks' valid pairs, or None on one
    process. DDP averages gradients over ranks, so each rank divides its pair-loss sum by the
    global count / world size (at least 1 / world size: no valid pair anywhere gives loss 0)."""
    if distributed_world_size() == 1:
        return None
    total = valid.sum().float()
    dist.all_reduce(total)
    return total.clamp(min=1.0) / distributed_world_size()


def distributed_world_size() -> int:
    """Processes in the initialised process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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


def capture_rng() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


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


def log_stats(live, step: int, stats: dict[str, float]) -> None:
    if live is None:
        return
    live.step = step
    for name, value in stats.items():
        live.log_metric(f"train/{name}", value)
    live.next_step()


def training_progress(enabled: bool):
    from rich.progress import TextColumn

    from pixpro.progress import progress_bar

    progress = progress_bar(TextColumn("{task.fields[stats]}"))
    if not enabled:
        progress.disable = True
    return progress
