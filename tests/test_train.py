"""The pretraining loop: resume, config checks, divergence, DDP, schedules, optimisers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from pixpro import runtime as runtime_module
from pixpro import train as train_module
from pixpro.errors import ConfigError, PixproError, TrainingDiverged
from pixpro.losses import pixpro_pair_loss
from pixpro.model.pixpro import PixPro
from pixpro.schedules import momentum_schedule, warmup_cosine
from tests.conftest import backbone_state, free_port, make_params, run_pretrain


def test_schedules_are_precomputed_with_the_right_shape():
    lr = warmup_cosine(1.0, 0.01, total_steps=10, warmup_steps=3)
    assert len(lr) == 10
    assert lr[0] == 0.0 and lr[3] == pytest.approx(1.0) and lr[-1] == pytest.approx(0.01)
    assert np.all(np.diff(lr[3:]) <= 0)
    momentum = momentum_schedule(0.99, 5)
    assert momentum[0] == pytest.approx(0.99) and momentum[-1] == pytest.approx(1.0)


def test_pretrain_writes_a_rebuildable_backbone(prepared, tmp_path):
    result, _ = run_pretrain(make_params(), prepared, tmp_path)
    assert result.completed and result.steps == 4  # 4 train images, batch 2, 2 epochs
    saved = torch.load(tmp_path / "backbone.pt", weights_only=False)
    assert saved["backbone_config"]["widths"] == [4, 8]
    assert saved["step"] == 4 and saved["git"]
    assert (tmp_path / "live" / "metrics.json").is_file()


def test_resume_after_interruption_is_bit_exact(prepared, tmp_path):
    params = make_params()
    run_pretrain(params, prepared, tmp_path / "straight")
    first, _ = run_pretrain(params, prepared, tmp_path / "resumed", stop_after=3)
    assert not first.completed and not (tmp_path / "resumed" / "backbone.pt").exists()
    second, logs = run_pretrain(params, prepared, tmp_path / "resumed")
    assert second.resumed_from == 3
    assert any("resuming" in line and "step 3" in line for line in logs)
    expected, actual = backbone_state(tmp_path / "straight"), backbone_state(tmp_path / "resumed")
    assert expected.keys() == actual.keys()
    logged = (tmp_path / "resumed" / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    steps = [int(line.split("\t")[0]) for line in logged.splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # one row per step across the resume
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_checkpoint_from_other_params_is_not_resumed(prepared, tmp_path):
    run_pretrain(make_params(), prepared, tmp_path, stop_after=1)
    result, logs = run_pretrain(make_params(**{"pretrain.ppm.gamma": 1.0}), prepared, tmp_path)
    assert result.resumed_from is None
    assert any("pretrain.ppm.gamma" in line for line in logs)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(prepared, tmp_path, monkeypatch):
    params = make_params(**{"pretrain.checkpoint_every": 1, "pretrain.log_every": 1})
    real_step = train_module.train_step

    def poisoned(*args, **kwargs):
        terms, count = real_step(*args, **kwargs)
        step = args[3]
        return (terms._replace(total=terms.total * float("nan")) if step == 2 else terms), count

    monkeypatch.setattr(train_module, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match="at step 3"):
        run_pretrain(params, prepared, tmp_path)
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_wrong_process_count_is_a_clear_error(prepared, tmp_path):
    with pytest.raises(ConfigError, match="pretrain.nproc = 2"):
        run_pretrain(make_params(**{"pretrain.nproc": 2}), prepared, tmp_path)


def test_batch_larger_than_dataset_is_a_clear_error(prepared, tmp_path):
    with pytest.raises(ConfigError, match="exceeds the 4 pretraining images"):
        run_pretrain(make_params(**{"pretrain.batch_size": 8}), prepared, tmp_path)


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_each_optimiser_trains(prepared, tmp_path, name):
    result, _ = run_pretrain(make_params(**{"pretrain.optim.name": name, "pretrain.epochs": 1}), prepared, tmp_path)
    assert result.completed and np.isfinite(result.final_loss)


# --- DDP: 2 gloo processes at the same global batch agree with 1 process ---------------------

# CPU DDP keeps per-rank BatchNorm statistics (SyncBatchNorm needs CUDA). To compare the runs
# exactly, every train image is the same picture, colour augmentation is off and the views are
# the full image: per-rank BN statistics then equal the global ones, every pixel pairs with
# itself, and any difference comes from DDP itself (sharding, gradient averaging, lr scaling).
DDP_OVERRIDES = {
    "pretrain.batch_size": 4,
    "pretrain.optim.name": "sgd",
    "pretrain.optim.base_lr": 5.0,
    "pretrain.epochs": 2,
    "pretrain.views.scale": [1.0, 1.0],
    "pretrain.views.ratio": [2.0, 2.0],
    "pretrain.views.flip": 0.0,
    "pretrain.views.jitter_p": 0.0,
    "pretrain.views.grayscale_p": 0.0,
    "pretrain.views.blur_p": [0.0, 0.0],
    "pretrain.views.solarize_p": [0.0, 0.0],
    "pretrain.pairs.candidates": 512,
    "pretrain.pairs.neighbours": 1,
    "pretrain.pairs.num": 512,
    "pretrain.loss.stage_pairs": 512,  # every bin of the stage too: no draw that depends on the process
}


@pytest.fixture(scope="module")
def prepared_identical(prepared, tmp_path_factory):
    folder = Path(shutil.copytree(prepared, tmp_path_factory.mktemp("identical") / "data"))
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    train = manifest["split"] == "train"
    manifest.loc[train, "image"] = manifest.loc[train, "image"].iloc[0]
    manifest.to_csv(folder / "manifest.csv", index=False)
    return folder


def _ddp_worker(rank: int, world_size: int, port: int, prepared: str, folder: str, overrides: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    params = make_params(**overrides, **{"pretrain.nproc": world_size})
    run_pretrain(params, Path(prepared), Path(folder))


def _update(folder, initial):
    state = backbone_state(folder)
    return torch.cat([(state[k] - initial[k]).flatten() for k in initial if initial[k].is_floating_point()])


def test_ddp_two_processes_match_one(prepared_identical, tmp_path):
    single = make_params(**DDP_OVERRIDES)
    torch.manual_seed(single.seed)
    initial = PixPro(single.pretrain).backbone.state_dict()
    run_pretrain(single, prepared_identical, tmp_path / "single")
    mp.start_processes(_ddp_worker, args=(2, free_port(), str(prepared_identical), str(tmp_path / "ddp"),
                                          DDP_OVERRIDES), nprocs=2, start_method="spawn")
    expected, actual = _update(tmp_path / "single", initial), _update(tmp_path / "ddp", initial)
    assert expected.norm() > 0.1
    assert (actual - expected).norm() / expected.norm() < 1e-3


def _normaliser_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        online, target, valid = _uneven_pairs()
        weight = torch.ones(4, requires_grad=True)  # a stand-in for the model's parameters
        o = online[rank] * weight
        loss = pixpro_pair_loss(o, target[rank], o, target[rank], valid[rank],
                                runtime_module.pair_normaliser(valid[rank]))
        loss.backward()
        dist.all_reduce(weight.grad)  # what DDP does with gradients: the mean over ranks
        weight.grad /= 2
        if rank == 0:
            torch.save(weight.grad, out)
    finally:
        dist.destroy_process_group()


def _uneven_pairs():
    """Two ranks' batches (1, 5, 4) with 5 and 1 valid pairs."""
    gen = torch.Generator().manual_seed(0)
    online, target = torch.randn(2, 1, 5, 4, generator=gen), torch.randn(2, 1, 5, 4, generator=gen)
    valid = torch.tensor([[[True] * 5], [[True, False, False, False, False]]])
    return online, target, valid


def test_ddp_gradient_is_the_mean_over_all_ranks_pairs(tmp_path):
    # Ranks with unequal valid-pair counts: the averaged gradient must equal the gradient of the
    # loss over all 6 pairs pooled, not the mean of the two ranks' per-rank means.
    assert runtime_module.pair_normaliser(torch.ones(3, dtype=torch.bool)) is None  # one process
    mp.start_processes(_normaliser_worker, args=(free_port(), str(tmp_path / "grad.pt")), nprocs=2,
                       start_method="spawn")
    online, target, valid = _uneven_pairs()
    weight = torch.ones(4, requires_grad=True)
    pooled = (online * weight).reshape(1, 10, 4)
    pixpro_pair_loss(pooled, target.reshape(1, 10, 4), pooled, target.reshape(1, 10, 4),
                     valid.reshape(1, 10)).backward()
    mean_of_means = sum(torch.autograd.grad(
        pixpro_pair_loss(online[r] * weight, target[r], online[r] * weight, target[r], valid[r]), weight)[0]
        for r in range(2)) / 2
    ddp = torch.load(tmp_path / "grad.pt")
    assert torch.allclose(ddp, weight.grad, atol=1e-6)
    assert not torch.allclose(ddp, mean_of_means, atol=1e-3)


def _live_metrics(folder):
    import json

    return json.loads((folder / "live" / "metrics.json").read_text())["train"]


def test_dvclive_gets_the_diagnostics_and_each_loss_term(prepared, tmp_path):
    run_pretrain(make_params(**{"pretrain.loss.consistency": 1.0, "pretrain.loss.coarse": 1.0,
                       "pretrain.loss.coarse_stride": 4}), prepared, tmp_path)
    logged = _live_metrics(tmp_path)
    for name in ("partner_gap", "feature_std", "effective_rank", "target_drift", "loss_consistency",
                 "loss_contrast", "loss_coarse"):
        assert name in logged and np.isfinite(logged[name]), name
    assert logged["target_drift"] > 0
    assert 1.0 <= logged["effective_rank"] <= 8.0  # pretrain.backbone.dim
    assert logged["loss_coarse"] != 0.0
    assert logged["loss"] == pytest.approx(logged["loss_consistency"] + logged["loss_contrast"]
                                           + logged["loss_coarse"] + logged["loss_stages"], rel=1e-4)
    history = (tmp_path / "live" / "plots" / "metrics" / "train" / "partner_gap.tsv").read_text().splitlines()
    assert len(history) - 1 == 4  # one row per logged step (log_every 1, 4 steps)


def test_frozen_backbone_control_trains_only_the_heads(prepared, tmp_path):
    # The control a shortcut would pass: with the backbone frozen at its random init only the
    # projector and g() learn. (On these tiny params the heads alone reach the trained loss too;
    # docs/method.md compares the two at the default scale.)
    params = make_params(**{"pretrain.freeze_backbone": True})
    result, _ = run_pretrain(params, prepared, tmp_path)
    assert result.completed and np.isfinite(result.final_loss)
    torch.manual_seed(params.seed)
    untouched = PixPro(params.pretrain)
    frozen = backbone_state(tmp_path)
    weights = {k: v for k, v in untouched.backbone.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(frozen[k], v) for k, v in weights.items())
    heads = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["model"]
    assert not torch.equal(heads["projector.net.0.weight"], untouched.projector.net[0].weight)


def test_frozen_backbone_control_cannot_reach_the_trained_loss(prepared, tmp_path):
    # A loss that a shortcut meets would be reached by the heads alone on a random backbone.
    # Same seed, so both runs see the same views and pairs; only the backbone's training differs.
    # Measured on these params (80 steps, last step's loss, 1 thread), the InfoNCE on the output
    # alone: trained - frozen = -0.046, -0.103, -0.040 for seeds 0, 1, 2 (with the consistency
    # term added: -0.16, -0.27, -0.05). With today's stage term on the one coarser stage of this
    # 2-level UNet the gap is -0.011, -0.141, -0.068 (the stage term's own: -0.001, -0.057, -0.050):
    # too close to the heads-alone loss at seed 0 for a one-seed check, so this one checks the
    # output's term (docs/method.md has both rows).
    losses = {}
    for frozen in (False, True):
        params = make_params(**{"pretrain.epochs": 40, "pretrain.freeze_backbone": frozen,
                                "pretrain.loss.stages": 0.0})
        result, _ = run_pretrain(params, prepared, tmp_path / f"frozen_{frozen}")
        losses[frozen] = result.final_loss
    assert losses[False] < losses[True] - 0.02, losses


def test_compiled_pretraining_writes_loadable_weights_and_resumes_uncompiled(prepared, tmp_path, monkeypatch):
    # torch.compile(module) would prefix every state_dict key with `_orig_mod.`, and neither
    # extract nor an uncompiled resume could load the result. The eager backend keeps this fast:
    # key naming comes from how the module is wrapped, not from the backend.
    from pixpro.features import load_frozen_backbone

    real_compile = torch.nn.Module.compile
    compiled = []

    def eager_compile(module, *args, **kwargs):
        compiled.append(type(module).__name__)
        real_compile(module, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    params = make_params(**{"pretrain.compile": True})
    first, _ = run_pretrain(params, prepared, tmp_path, stop_after=2)
    assert compiled and not first.completed
    checkpoint = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["model"]
    assert not any("_orig_mod" in key for key in checkpoint)
    second, _ = run_pretrain(make_params(), prepared, tmp_path)  # compile off: still resumes
    assert second.resumed_from == 2 and second.completed
    assert not any("_orig_mod" in key for key in backbone_state(tmp_path))
    load_frozen_backbone("pretrained", params, tmp_path / "backbone.pt")  # strict load


def test_preparation_workers_do_not_stop_a_resume(prepared, tmp_path):
    first, _ = run_pretrain(make_params(), prepared, tmp_path, stop_after=2)
    assert not first.completed
    second, logs = run_pretrain(make_params(**{"data.workers": 3}), prepared, tmp_path)
    assert second.resumed_from == 2, logs


def test_a_data_error_in_a_loader_worker_reaches_the_user_as_its_own_line(prepared, tmp_path):
    broken = tmp_path / "prepared"
    shutil.copytree(prepared, broken)
    manifest = pd.read_csv(broken / "manifest.csv")
    manifest.loc[manifest["split"] == "train", "image"] = str(tmp_path / "missing.png")
    manifest.to_csv(broken / "manifest.csv", index=False)
    with pytest.raises(PixproError) as caught:  # raised in the worker, rebuilt by the DataLoader
        run_pretrain(make_params(**{"pretrain.workers": 1}), broken, tmp_path / "run")
    message = str(caught.value)
    assert "missing.png" in message and "Traceback" not in message and "\n" not in message
