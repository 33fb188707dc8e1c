"""Fine-tuning for label efficiency: nested subsets, planned crops, learning, resume, the stage."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.optim.swa_utils import AveragedModel

from pixpro.config_finetune import FinetuneConfig
from pixpro.data.classes import load_prepared_classes
from pixpro.errors import ConfigError, DataError
from pixpro.features import init_backbone, split_rows
from pixpro.finetune import (CropPlan, PlannedCrops, TrainResult, crop_plan, evaluation_steps, label_efficiency,
                             labelled_subsets, score_segmenter, train_segmenter)
from pixpro.finetune_results import FractionResult, ResultStore, metrics_dict
from pixpro.finetuned_file import Segmenter
from pixpro.model.backbone import build_backbone
from pixpro.report import finetune_table
from tests.conftest import VENV_BIN, make_eval_params, tiny_params

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- subsets


def test_subsets_are_nested_sized_by_rounding_and_fixed_by_the_seed():
    subsets = labelled_subsets(200, (0.05, 0.2, 1.0), seed=3)
    assert [len(s) for s in subsets.values()] == [10, 40, 200]
    assert set(subsets[0.05].tolist()) <= set(subsets[0.2].tolist()) <= set(range(200))
    assert sorted(subsets[1.0].tolist()) == list(range(200))
    again = labelled_subsets(200, (0.2,), seed=3)
    assert torch.equal(again[0.2], subsets[0.2])  # the same images whichever fractions are listed
    other = labelled_subsets(200, (0.2,), seed=4)
    assert not torch.equal(other[0.2], subsets[0.2])


def test_a_fraction_that_selects_no_image_says_how_many_it_would_need():
    with pytest.raises(ConfigError, match=r"0.001 x 200 labelled train images rounds to 0 images; use at least 0.005"):
        labelled_subsets(200, (0.001, 1.0), seed=0)


@pytest.mark.parametrize("overrides, message", [
    ({"finetune.label_fractions": [0.0, 1.0]}, r"finetune.label_fractions\[0\].*must be in \(0, 1\]"),
    ({"finetune.label_fractions": [0.5, 1.5]}, r"finetune.label_fractions\[1\].*must be in \(0, 1\]"),
    ({"finetune.label_fractions": [0.051, 0.049]}, r"same metric key miou_<p>pct twice"),
    ({"finetune.label_fractions": []}, r"at least one fraction"),
    ({"finetune.crop_size": [48, 64], "pretrain.backbone.arch": "smp_unet", "pretrain.views.size": [64, 128]},
     r"finetune.crop_size.*divisible by 32 for smp_unet"),
    ({"finetune.warmup_steps": 3, "finetune.steps": 3}, r"warmup_steps.*\[0, steps\)"),
    ({"finetune.lr_head": 0.0}, r"lr_head"),
    ({"finetune.head_steps": -1}, r"finetune.head_steps.*>= 0"),
    ({"finetune.eval_every": -1}, r"finetune.eval_every.*>= 0"),
    ({"finetune.head_init": "linear"}, r"finetune.head_init"),
    ({"finetune.class_weighting": "inverse"}, r"finetune.class_weighting"),
])
def test_bad_finetune_params_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_eval_params(**overrides)


# --------------------------------------------------------------------------- crops


def test_crop_plan_stays_inside_the_image_keeps_the_crop_aspect_and_repeats():
    cfg = FinetuneConfig(crop_size=(32, 64), crop_scale=(0.2, 1.0), flip=0.5)
    subset = torch.tensor([4, 9, 2])
    plan = crop_plan(subset, 300, (128, 256), cfg, torch.Generator().manual_seed(0))
    top, left, height, width = plan.box.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 128).all() and (left + width <= 256).all()
    assert ((width / height - 2.0).abs() < 0.1).all()
    area = (height * width).double() / (128 * 256)
    assert area.min() > 0.18 and area.max() <= 1.0
    assert set(plan.image.tolist()) == {4, 9, 2}
    # every image once per pass, so the counts differ by at most one
    assert max(plan.image.bincount()[[2, 4, 9]]) - min(plan.image.bincount()[[2, 4, 9]]) <= 1
    assert 0.4 < plan.flip.float().mean() < 0.6
    again = crop_plan(subset, 300, (128, 256), cfg, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(plan, again))


def _write_pair(folder, name, image: np.ndarray, mask: np.ndarray) -> dict:
    Image.fromarray(image).save(folder / f"{name}.png")
    Image.fromarray(mask).save(folder / f"{name}_mask.png")
    return {"image": str(folder / f"{name}.png"), "mask": str(folder / f"{name}_mask.png")}


def test_planned_crops_cut_the_same_box_from_image_and_mask_and_flip_both(tmp_path):
    # Mask = column index // 8, image red channel = the same: a crop must keep them aligned.
    columns = np.arange(64) // 8
    mask = np.tile(columns.astype(np.uint8), (32, 1))
    image = np.zeros((32, 64, 3), np.uint8)
    image[..., 0] = mask * 30
    rows = pd.DataFrame([_write_pair(tmp_path, "a", image, mask)])
    plan = CropPlan(torch.tensor([0, 0]), torch.tensor([[0, 16, 16, 32], [0, 16, 16, 32]]), torch.tensor([False, True]))
    crops = PlannedCrops(rows, plan, (16, 32))
    plain, flipped = crops[0], crops[1]
    assert plain.image.shape == (3, 16, 32) and plain.mask.shape == (16, 32)
    assert plain.mask[0].tolist() == [2] * 8 + [3] * 8 + [4] * 8 + [5] * 8  # nearest: labels are never blended
    assert torch.equal(flipped.mask, plain.mask.flip(-1)) and torch.equal(flipped.image, plain.image.flip(-1))
    red = plain.image[0]  # normalised red rises with the label inside the crop
    assert (red[:, 8:16].mean() > red[:, :8].mean()) and (red[:, 24:].mean() > red[:, 16:24].mean())


# --------------------------------------------------------------------------- learning


def _stripes_dataset(tmp_path, count: int) -> pd.DataFrame:
    """Images whose colour gives the class: left half red = 0, right half blue = 1, a band ignored."""
    rows = []
    rng = np.random.default_rng(0)
    for i in range(count):
        split = int(rng.integers(16, 48))
        image = np.zeros((32, 64, 3), np.uint8)
        image[:, :split, 0] = 220
        image[:, split:, 2] = 220
        image = np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((32, 64), np.uint8)
        mask[:, split:] = 1
        mask[:2] = 255
        rows.append(_write_pair(tmp_path, f"s{i}", image, mask))
    return pd.DataFrame(rows)


class TwoClasses:
    num_classes = 2
    names = ("red", "blue")


def test_fine_tuning_learns_a_colour_rule_an_untrained_head_does_not_know(tmp_path):
    rows = _stripes_dataset(tmp_path, 6)
    cfg = FinetuneConfig(steps=30, batch_size=4, crop_size=(16, 32), crop_scale=(0.3, 1.0), lr_head=0.01,
                         lr_backbone=0.003, warmup_steps=2)
    params = make_eval_params()

    def fresh() -> Segmenter:
        torch.manual_seed(0)
        return Segmenter(build_backbone(params.pretrain.backbone), params.pretrain.backbone.dim, 2)

    untrained, _ = score_segmenter(fresh().eval(), rows, 3, CPU, TwoClasses, amp=False, description="")
    model = fresh()
    result = train_segmenter(model, rows, torch.arange(6), (32, 64), cfg, torch.Generator().manual_seed(0), CPU,
                             "test")
    trained, accuracy = score_segmenter(model, rows, 3, CPU, TwoClasses, amp=False, description="")
    assert result.skipped_batches == 0 and np.isfinite(result.final_loss) and result.val_curve == []
    assert trained > 0.9 and accuracy > 0.95, (trained, untrained)
    assert trained > untrained + 0.2


def test_zero_backbone_lr_trains_the_head_only(tmp_path):
    rows = _stripes_dataset(tmp_path, 2)
    params = make_eval_params()
    torch.manual_seed(0)
    model = Segmenter(build_backbone(params.pretrain.backbone), params.pretrain.backbone.dim, 2)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head = model.classifier.weight.detach().clone()
    cfg = FinetuneConfig(steps=3, batch_size=2, crop_size=(16, 32), lr_backbone=0.0, warmup_steps=0)
    train_segmenter(model, rows, torch.arange(2), (32, 64), cfg, torch.Generator().manual_seed(0), CPU, "test")
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert not torch.equal(head, model.classifier.weight)


def _stripes_model(seed: int = 0) -> Segmenter:
    params = make_eval_params()
    torch.manual_seed(seed)
    return Segmenter(build_backbone(params.pretrain.backbone), params.pretrain.backbone.dim, 2)


def _backbone_state(model: Segmenter) -> dict:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def _states_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_lp_ft_fits_the_head_on_the_untouched_backbone_before_training_both(tmp_path):
    rows = _stripes_dataset(tmp_path, 4)
    model = _stripes_model()
    initial, head = _backbone_state(model), model.classifier.weight.detach().clone()
    cfg = FinetuneConfig(head_steps=4, steps=3, batch_size=2, crop_size=(16, 32), lr_backbone=0.01, warmup_steps=0,
                         head_init="random")
    seen = []

    def score(network):  # called after the head phase (step 4) and the last step (7)
        assert network is model  # no weight average: the model itself
        seen.append((_states_equal(initial, _backbone_state(model)), torch.equal(head, model.classifier.weight)))
        return 0.5, 0.5

    result = train_segmenter(model, rows, torch.arange(4), (32, 64), cfg, torch.Generator().manual_seed(0), CPU,
                             "test", score=score)
    assert [step for step, *_ in result.val_curve] == [4, 7]
    # After the head phase: backbone weights and BatchNorm statistics as they were, the head moved.
    assert seen[0] == (True, False)
    assert seen[1][0] is False  # then the backbone learns too


def test_a_probe_head_predicts_what_the_linear_probe_on_the_same_pixels_predicts(tmp_path):
    from pixpro.config_eval import ExtractConfig, ProbeConfig
    from pixpro.features import embed, extract_bank
    from pixpro.finetune import fit_probe_head
    from pixpro.probe import fit_probe

    rows = _stripes_dataset(tmp_path, 4)
    model = _stripes_model()
    initial = _backbone_state(model)
    extract, probe = ExtractConfig(pixels_per_image=32, batch_size=2), ProbeConfig()
    subset = torch.tensor([2, 0])
    fit_probe_head(model, rows, subset, extract, probe, 0, CPU, 2)
    assert _states_equal(initial, _backbone_state(model))  # weights and BatchNorm statistics
    # The probe stage's recipe, by hand, on the same two images.
    bank = extract_bank(model.backbone.eval(), rows.iloc[[2, 0]], extract, 0, CPU, 2)
    linear = fit_probe(bank.features.float(), bank.labels.long(), 2, probe).probe
    images = torch.stack([PlannedCrops(rows, CropPlan(torch.tensor([i]), torch.tensor([[0, 0, 32, 64]]),
                                                      torch.tensor([False])), (32, 64))[0].image for i in range(4)])
    with torch.no_grad():
        by_hand = linear(embed(model.backbone, images).permute(0, 2, 3, 1)).argmax(-1)  # (4, 32, 64)
        assert torch.equal(model(images).argmax(1), by_hand)
    assert by_hand.unique().tolist() == [0, 1]  # a fitted probe, not a constant map


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freeze_bn_keeps_running_statistics_while_the_backbone_weights_learn(tmp_path, freeze_bn):
    rows = _stripes_dataset(tmp_path, 2)
    model = _stripes_model()
    initial = _backbone_state(model)
    cfg = FinetuneConfig(steps=3, batch_size=2, crop_size=(16, 32), lr_backbone=0.01, warmup_steps=0,
                         freeze_bn=freeze_bn)
    train_segmenter(model, rows, torch.arange(2), (32, 64), cfg, torch.Generator().manual_seed(0), CPU, "test")
    after = model.backbone.state_dict()
    statistics = [k for k in initial if k.endswith(("running_mean", "running_var"))]
    weights = [k for k, v in initial.items() if k not in statistics and v.is_floating_point()]
    assert statistics and weights
    assert all(torch.equal(initial[k], after[k]) for k in statistics) == freeze_bn
    assert not all(torch.equal(initial[k], after[k]) for k in weights)


@pytest.mark.parametrize("head_steps, steps, every, expected", [
    (0, 10, 0, [10]),
    (0, 10, 4, [4, 8, 10]),
    (4, 10, 5, [4, 5, 10, 14]),
    (3, 3, 3, [3, 6]),
    ("probe", 10, 5, [0, 5, 10]),  # a probe head: also before the first step
])
def test_val_is_scored_every_eval_every_steps_at_the_end_of_the_head_phase_and_at_the_end(
        head_steps, steps, every, expected):
    head_init = "probe" if head_steps == "probe" else "random"
    head_steps = 0 if head_steps == "probe" else head_steps
    cfg = FinetuneConfig(head_steps=head_steps, steps=steps, eval_every=every, warmup_steps=0, head_init=head_init)
    assert sorted(evaluation_steps(cfg)) == expected


def test_a_scorer_gives_a_val_curve_and_leaves_training_mode_as_the_phase_wants(tmp_path):
    rows = _stripes_dataset(tmp_path, 2)
    model = _stripes_model()
    cfg = FinetuneConfig(steps=4, batch_size=2, crop_size=(16, 32), eval_every=2, warmup_steps=0, freeze_bn=True,
                         head_init="random")
    modes = []

    def score(network):
        network.eval()  # as score_segmenter does
        return 0.1 * len(modes), 0.2

    original = model.classifier.forward

    def spy(features):
        bn = [m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        modes.append((model.training, any(bn)))
        return original(features)

    model.classifier.forward = spy
    result = train_segmenter(model, rows, torch.arange(2), (32, 64), cfg, torch.Generator().manual_seed(0), CPU,
                             "test", score=score)
    assert [step for step, *_ in result.val_curve] == [2, 4]
    # Every training step, also the ones after a val pass: training mode, BatchNorm frozen.
    assert modes == [(True, False)] * 4


def test_ema_decay_scores_and_keeps_the_moving_average_of_weights_and_batchnorm_statistics(tmp_path):
    rows = _stripes_dataset(tmp_path, 2)
    decay = 0.5
    cfg = FinetuneConfig(steps=3, batch_size=2, crop_size=(16, 32), lr_backbone=0.01, warmup_steps=0,
                         head_init="random", ema_decay=decay)
    # The weights after each optimiser step, as the average receives them.
    states = []
    update = AveragedModel.update_parameters

    def recording_update(average, network):
        states.append({k: v.detach().clone() for k, v in network.state_dict().items()})
        update(average, network)

    scored = []

    def score(network):
        scored.append({k: v.clone() for k, v in network.state_dict().items()})
        return float(len(scored)), 0.0

    model = _stripes_model()
    with mock.patch.object(AveragedModel, "update_parameters", recording_update):
        result = train_segmenter(model, rows, torch.arange(2), (32, 64), cfg, torch.Generator().manual_seed(0), CPU,
                                 "test", score=score)
    assert len(states) == 3
    # The first update copies the weights; each later one moves the average by (1 - decay).
    by_hand = dict(states[0])
    for state in states[1:]:
        by_hand = {k: v.lerp(state[k], 1 - decay) if v.is_floating_point() else v for k, v in by_hand.items()}
    averaged_keys = [k for k, v in by_hand.items() if v.is_floating_point()]
    assert any(k.endswith("running_mean") for k in averaged_keys)  # BatchNorm statistics are averaged too
    for key in averaged_keys:
        torch.testing.assert_close(scored[0][key], by_hand[key])  # the curve scores the average...
        torch.testing.assert_close(scored[1][key], states[-1][key])  # ...then the last weights are scored once
        torch.testing.assert_close(model.state_dict()[key], by_hand[key])  # the kept network is the average
    assert not torch.equal(by_hand["classifier.weight"], states[-1]["classifier.weight"])
    assert result.val_curve == [(3, 1.0, 0.0)] and result.last_weights_score == (2.0, 0.0)


def test_crop_seed_draws_another_crop_order_and_zero_keeps_the_runs_own(prepared, tmp_path):
    params = make_eval_params()
    classes = load_prepared_classes(prepared)
    train, val = split_rows(prepared, "train"), split_rows(prepared, "val")
    seeds = []

    def record(model, rows, subset, image_size, cfg, generator, *args, **kwargs):
        seeds.append(generator.initial_seed())
        return TrainResult(0.0, 0, [(cfg.steps, 0.5, 0.5)])

    for crop_seed in (0, 1):
        cfg = dataclasses.replace(params.finetune, label_fractions=(0.5, 1.0), head_init="random", crop_seed=crop_seed)
        with mock.patch("pixpro.finetune.train_segmenter", record):
            label_efficiency(lambda: init_backbone("random", params, tmp_path / "absent.pt"),
                             params.pretrain.backbone.dim, train, val, tuple(params.data.size), cfg, 3, classes, CPU,
                             ResultStore(tmp_path / f"resume{crop_seed}.json", {"crop_seed": crop_seed}), "test")
    # crop_seed 0: the stream every earlier run had (seed x 1000003 + the fraction's index)
    assert seeds[:2] == [3 * 1_000_003, 3 * 1_000_003 + 1]
    assert len(set(seeds)) == 4  # another crop_seed: other streams, still one per fraction


@pytest.mark.parametrize("key, value, match", [
    ("ema_decay", 1.0, r"finetune.ema_decay.*\[0, 1\)"),
    ("ema_decay", -0.1, r"finetune.ema_decay"),
    ("crop_seed", -1, r"finetune.crop_seed"),
])
def test_bad_ema_decay_or_crop_seed_is_refused(key, value, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneConfig(**{key: value}).validate("finetune")


@pytest.mark.parametrize("damage", [
    "{\"fingerprint\": {\"recipe\": 1}, \"results\": {\"1.0\": {\"fraction\"",  # cut off mid-write
    "[1, 2]",
    "{\"fingerprint\": {\"recipe\": 1}}",
    "{\"fingerprint\": {\"recipe\": 1}, \"results\": {\"1.0\": {\"fraction\": 1.0, \"colour\": 3}}}",
    "\udcff",
])
def test_a_damaged_resume_file_is_reported_in_one_line_and_replaced(tmp_path, damage):
    path = tmp_path / "resume.json"
    path.write_bytes(damage.encode("utf-8", "surrogateescape"))
    warnings = []
    store = ResultStore(path, {"recipe": 1}, warn=warnings.append)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"warning: resume file {path} is damaged (")
    assert store.get(1.0) is None
    result = FractionResult(1.0, 4, 0.3, 0.8, 1.0, 0, [(5, 0.3, 0.8)])
    store.put(result)
    assert ResultStore(path, {"recipe": 1}, warn=warnings.append).get(1.0) == result and len(warnings) == 1


def test_another_recipe_starts_over_without_a_warning(tmp_path):
    path = tmp_path / "resume.json"
    ResultStore(path, {"recipe": 1}).put(FractionResult(1.0, 4, 0.3, 0.8, 1.0, 0, [(5, 0.3, 0.8)]))
    warnings = []
    assert ResultStore(path, {"recipe": 2}, warn=warnings.append).get(1.0) is None and warnings == []


# --------------------------------------------------------------------------- resume and the stage


def test_an_interrupted_run_reuses_finished_fractions_only_under_the_same_fingerprint(prepared, tmp_path):
    params = make_eval_params()
    classes = load_prepared_classes(prepared)
    train, val = split_rows(prepared, "train"), split_rows(prepared, "val")
    calls = []

    def init():
        calls.append(1)
        return init_backbone("random", params, tmp_path / "absent.pt")

    live = tmp_path / "live"
    cfg = dataclasses.replace(params.finetune, eval_every=2)  # 3 steps: val at the probe head (0), after 2 and 3

    def run(store: ResultStore):
        calls.clear()
        return label_efficiency(init, params.pretrain.backbone.dim, train, val, tuple(params.data.size),
                                cfg, params.seed, classes, CPU, store, "random", log=lambda _: None, live=live)

    def curves() -> dict[str, pd.DataFrame]:
        tables = (live / "plots" / "metrics" / "val").glob("*.tsv")
        return {table.name: pd.read_csv(table, sep="\t") for table in tables}

    path = tmp_path / "resume.json"
    first = run(ResultStore(path, {"recipe": 1}))
    assert len(calls) == 2  # one fresh backbone per fraction
    written = curves()
    assert sorted(written) == ["miou_100pct.tsv", "miou_50pct.tsv"]  # one dvclive curve val/miou_<p>pct per fraction
    for result in first:
        table = written[f"miou_{round(100 * result.fraction)}pct.tsv"]
        assert table["step"].tolist() == [0, 2, 3] and table.iloc[-1, 1] == pytest.approx(result.miou)
    shutil.rmtree(live)
    reused = run(ResultStore(path, {"recipe": 1}))
    assert calls == [] and reused == first
    assert all(curves()[name].equals(table) for name, table in written.items())  # rewritten from the store
    # A half-finished run (the 100% fraction lost) trains only what is missing.
    saved = json.loads(path.read_text())
    del saved["results"]["1.0"]
    path.write_text(json.dumps(saved))
    resumed = run(ResultStore(path, {"recipe": 1}))
    assert len(calls) == 1 and resumed == first  # and the retrained fraction repeats exactly
    assert all(curves()[name].equals(table) for name, table in written.items())  # rewritten, not appended to
    run(ResultStore(path, {"recipe": 2}))
    assert len(calls) == 2  # another recipe: nothing reused


def _backbone_and_classifier(path) -> dict:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return {**{f"backbone.{k}": v for k, v in saved["backbone"].items()},
            **{f"classifier.{k}": v for k, v in saved["classifier"].items()}}


def test_the_largest_fractions_network_is_saved_and_survives_or_is_retrained_on_resume(prepared, tmp_path):
    from pixpro.config_base import to_dict
    from pixpro import load_backbone
    from pixpro.finetuned_file import KeptNetwork, read_finetuned

    params = make_eval_params()
    classes = load_prepared_classes(prepared)
    train, val = split_rows(prepared, "train"), split_rows(prepared, "val")
    saved, resume = tmp_path / "models" / "random.pt", tmp_path / "resume.json"
    calls, logs = [], []

    def init():
        calls.append(1)
        if interrupt and len(calls) == 2:
            raise KeyboardInterrupt  # killed as the second fraction starts
        return init_backbone("random", params, tmp_path / "absent.pt")

    def run(fractions=(1.0, 0.5), fingerprint=None):
        calls.clear()
        cfg = dataclasses.replace(params.finetune, label_fractions=fractions)
        keep = KeptNetwork(saved, to_dict(params.pretrain.backbone), classes, tuple(params.data.size), cfg,
                           params.seed, "random")
        return label_efficiency(init, params.pretrain.backbone.dim, train, val, tuple(params.data.size), cfg,
                                params.seed, classes, CPU, ResultStore(resume, fingerprint or {"recipe": 1}),
                                "random", log=logs.append, keep=keep)

    # Interrupted after the 100% fraction finished: its network is already saved ...
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        run()
    written = saved.stat().st_mtime_ns
    network = read_finetuned(saved)
    assert network.fraction == 1.0 and network.class_names == classes.names and network.image_size == (32, 64)
    assert network.amp == "cuda"  # params' finetune.amp: predict computes in the precision it was scored in
    legacy = torch.load(saved, weights_only=False)  # saved when finetune.amp was a boolean
    legacy["finetune_config"]["amp"] = False
    torch.save(legacy, tmp_path / "legacy.pt")
    assert read_finetuned(tmp_path / "legacy.pt").amp == "off"
    # ... and a resume trains only the 50% fraction, leaving the saved network as it was.
    interrupt = False
    results = run()
    assert len(calls) == 1 and saved.stat().st_mtime_ns == written
    full = results[0]
    # The file holds the network that was scored: scoring it again gives the recorded numbers.
    assert score_segmenter(network.model, val, 2, CPU, classes, amp=False, description="") == (
        full.miou, full.pixel_accuracy)
    weights = _backbone_and_classifier(saved)
    # Its backbone is named as in models/backbone.pt, so the backbone loader reads it too.
    loaded = load_backbone(saved).module.state_dict()
    assert all(torch.equal(v, weights[f"backbone.{k}"]) for k, v in loaded.items())
    # The record says 100% is done but the file is gone (deleted by hand, or never pulled from the
    # DVC cache): that fraction is trained again, to the same weights, and saved again.
    saved.unlink()
    assert run() == results and len(calls) == 1
    assert f"random 100%: finished in the interrupted run, but {saved} is missing; training it again" in logs
    again = _backbone_and_classifier(saved)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    # A file saved by another run (another fingerprint) does not stand for this one either.
    other = torch.load(saved, weights_only=False)
    other["fingerprint"] = {"recipe": 0}
    torch.save(other, saved)
    run()
    assert len(calls) == 1
    assert f"random 100%: finished in the interrupted run, but {saved} was saved by another run; training it again" \
        in logs


def test_without_a_full_fraction_the_largest_is_kept_and_predict_names_the_missing_one(prepared, tmp_path):
    from pixpro.config_base import to_dict
    from pixpro.errors import CheckpointError
    from pixpro.finetuned_file import KeptNetwork, read_finetuned
    from pixpro.predict import finetuned_for_prediction

    params = make_eval_params()
    classes = load_prepared_classes(prepared)
    train, val = split_rows(prepared, "train"), split_rows(prepared, "val")
    cfg = dataclasses.replace(params.finetune, label_fractions=(0.5, 0.25))
    saved = tmp_path / "half.pt"
    keep = KeptNetwork(saved, to_dict(params.pretrain.backbone), classes, tuple(params.data.size), cfg, params.seed,
                       "random")
    label_efficiency(lambda: init_backbone("random", params, tmp_path / "absent.pt"), params.pretrain.backbone.dim,
                     train, val, tuple(params.data.size), cfg, params.seed, classes, CPU,
                     ResultStore(tmp_path / "resume.json", {}), "random", log=lambda _: None, keep=keep)
    assert read_finetuned(saved).fraction == 0.5
    with pytest.raises(CheckpointError, match=r"half.pt holds the network fine-tuned on 50% of the labels, not "
                                              r"100%: finetune.label_fractions had no 1.0; add it and rerun "
                                              r"`dvc repro finetune`$"):
        finetuned_for_prediction(saved, classes)


def test_a_file_that_is_no_fine_tuned_network_is_one_line(tmp_path):
    from pixpro.checkpoint import save_checkpoint
    from pixpro.errors import CheckpointError
    from pixpro.finetuned_file import FINETUNED_FORMAT, read_finetuned
    from tests.conftest import save_backbone_file

    with pytest.raises(CheckpointError, match=r"absent.pt not found: run `dvc repro finetune` first"):
        read_finetuned(tmp_path / "absent.pt")
    backbone = save_backbone_file(tmp_path / "backbone.pt", make_eval_params())
    with pytest.raises(CheckpointError, match=r"backbone.pt is not a fine-tuned network; use the --model file"):
        read_finetuned(backbone)
    save_checkpoint(tmp_path / "cut.pt", {"format": FINETUNED_FORMAT, "preprocessing": {}})
    with pytest.raises(CheckpointError, match=r"cut.pt is a damaged fine-tuned network \(KeyError: 'backbone'\)"):
        read_finetuned(tmp_path / "cut.pt")


def test_stage_writes_the_contracted_keys_for_both_backbones_on_the_same_images(prepared, tmp_path):
    import yaml

    from tests.conftest import TINY_EVAL, TINY_PRETRAIN
    from tests.conftest import save_backbone_file

    from pixpro.finetuned_file import read_finetuned

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params({**TINY_PRETRAIN, **TINY_EVAL, "finetune.eval_every": 2}),
                                          sort_keys=False))
    checkpoint = save_backbone_file(tmp_path / "backbone.pt", make_eval_params())
    metrics = {}
    for backbone in ("pretrained", "random"):
        out = tmp_path / backbone
        proc = subprocess.run(
            [str(VENV_BIN / "pixpro"), "finetune", "--backbone", backbone, "--params", str(params_file),
             "--data", str(prepared), "--checkpoint", str(checkpoint), "--metrics", str(out / "m.json"),
             "--curve", str(out / "curve.csv"), "--resume", str(out / "resume.json"), "--model",
             str(out / "models" / "net.pt"), "--live", str(out / "live")],
            capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        metrics[backbone] = json.loads((out / "m.json").read_text())
        curve = pd.read_csv(out / "curve.csv")
        assert curve["labelled_fraction"].tolist() == [0.5, 1.0] and curve["labelled_images"].tolist() == [2, 4]
        network = read_finetuned(out / "models" / "net.pt")
        assert network.fraction == 1.0 and network.image_size == (32, 64)
        # val mIoU during training, one dvclive curve per fraction: the probe head (0), every 2 steps, the end
        tables = sorted((out / "live" / "plots" / "metrics" / "val").glob("*.tsv"))
        assert [t.name for t in tables] == ["miou_100pct.tsv", "miou_50pct.tsv"]
        for table in tables:
            rows = pd.read_csv(table, sep="\t")
            assert rows["step"].tolist() == [0, 2, 3] and rows[table.stem].between(0, 1).all()
        assert rows.iloc[-1][table.stem] == pytest.approx(metrics[backbone]["miou_50pct"])
    for m in metrics.values():
        assert set(m) == {"miou_50pct", "miou_100pct", "labelled_images_50pct", "labelled_images_100pct"}
        assert all(0 <= m[k] <= 1 for k in ("miou_50pct", "miou_100pct"))
    # Different starting weights train differently (after 3 tiny steps both may still score 0).
    losses = {b: json.loads((tmp_path / b / "resume.json").read_text())["results"]["1.0"]["final_loss"]
              for b in metrics}
    assert losses["pretrained"] != losses["random"]
    table = finetune_table(metrics)
    assert list(table.index) == ["50% of the labels (2 images)", "100% of the labels (4 images)"]
    assert table.loc["50% of the labels (2 images)", "gain"] == pytest.approx(
        metrics["pretrained"]["miou_50pct"] - metrics["random"]["miou_50pct"])


def test_stage_refuses_a_fraction_that_selects_no_image_before_training(prepared, tmp_path):
    import yaml

    from tests.conftest import TINY_EVAL, TINY_PRETRAIN

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params({**TINY_PRETRAIN, **TINY_EVAL,
                                                       "finetune.label_fractions": [0.05, 1.0]}), sort_keys=False))
    proc = subprocess.run(
        [str(VENV_BIN / "pixpro"), "finetune", "--backbone", "random", "--params", str(params_file),
         "--data", str(prepared), "--metrics", str(tmp_path / "m.json"), "--curve", str(tmp_path / "c.csv"),
         "--resume", str(tmp_path / "r.json"), "--model", str(tmp_path / "net.pt"), "--live", str(tmp_path / "live")],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    assert "0.05 x 4 labelled train images rounds to 0 images; use at least 0.25" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.json").exists()
    assert not (tmp_path / "net.pt").exists()


def test_metrics_dict_names_keys_by_rounded_percent():
    results = [FractionResult(0.05, 10, 0.3, 0.8, 1.0, 0), FractionResult(1.0, 200, 0.5, 0.9, 0.5, 0)]
    assert metrics_dict(results) == {"miou_5pct": 0.3, "miou_100pct": 0.5, "labelled_images_5pct": 10,
                                     "labelled_images_100pct": 200}


def test_report_draws_the_label_efficiency_curve_in_fraction_order(tmp_path):
    from pixpro.report import finetune_curves
    from pixpro.viz import plot_label_efficiency

    metrics = {"pretrained": {"miou_100pct": 0.5, "miou_5pct": 0.3, "labelled_images_5pct": 10},
               "random": {"miou_5pct": 0.2, "miou_100pct": 0.45}}
    curves = finetune_curves(metrics)
    assert curves == {"pretrained": ([0.05, 1.0], [0.3, 0.5]), "random": ([0.05, 1.0], [0.2, 0.45])}
    plot_label_efficiency(curves, tmp_path / "curve.png", "test")
    assert Image.open(tmp_path / "curve.png").size[0] > 300


def test_labels_saved_interpolates_on_a_log_scale_between_measured_fractions():
    from pixpro.report import labels_saved

    # random reaches 0.40 with all labels; pretrained crosses 0.40 between 5% (0.30) and 20% (0.50),
    # halfway in score, so halfway in log(fraction): sqrt(0.05 * 0.2) = 0.1 -> 10x fewer labels.
    saved = labels_saved([0.05, 0.2, 1.0], [0.30, 0.50, 0.55], [0.20, 0.30, 0.40])
    assert saved.bound == "interpolated" and saved.target == 0.40
    assert saved.fraction == pytest.approx(0.1) and saved.factor == pytest.approx(10.0)
    assert "10x fewer labels" in saved.describe() and "40.0" in saved.describe()
    # Reached at the first crossing, even if a later fraction dips below again.
    assert labels_saved([0.1, 0.5, 1.0], [0.2, 0.5, 0.3], [0.1, 0.2, 0.4]).fraction == pytest.approx(
        math.exp(math.log(0.1) + (0.4 - 0.2) / 0.3 * math.log(5)))


def test_labels_saved_says_when_it_is_only_a_bound_or_none():
    from pixpro.report import labels_saved

    early = labels_saved([0.05, 1.0], [0.45, 0.6], [0.2, 0.4])
    assert (early.bound, early.fraction, early.factor) == ("at_most", 0.05, 20.0)
    assert "at least 20x" in early.describe()
    never = labels_saved([0.05, 1.0], [0.2, 0.39], [0.2, 0.4])
    assert never.bound == "never" and math.isnan(never.factor) and "no labels saved" in never.describe()
    # Against the largest fraction measured, when that is not all labels.
    half = labels_saved([0.1, 0.5], [0.2, 0.4], [0.1, 0.3])
    assert half.largest == 0.5 and half.factor == pytest.approx(0.5 / half.fraction)
    # A random network that gains nothing from more labels: the budget has not converged.
    flat = labels_saved([0.05, 1.0], [0.3, 0.4], [0.25, 0.25])
    assert flat.bound == "unconverged" and "has not converged" in flat.describe()
    with pytest.raises(ValueError, match="two fractions"):
        labels_saved([1.0], [0.3], [0.2])
    with pytest.raises(ValueError, match="ascending"):
        labels_saved([1.0, 0.05], [0.1, 0.2], [0.1, 0.2])
    with pytest.raises(ValueError, match="one pretrained"):
        labels_saved([0.05, 1.0], [0.1], [0.1, 0.2])


def test_report_states_labels_saved_from_the_finetune_metrics(tmp_path):
    from pixpro.report import finetune_labels_saved

    metrics = {"pretrained": {"miou_5pct": 0.30, "miou_20pct": 0.50, "miou_100pct": 0.55},
               "random": {"miou_5pct": 0.20, "miou_20pct": 0.30, "miou_100pct": 0.40}}
    assert finetune_labels_saved(metrics).factor == pytest.approx(10.0)
    metrics["random"].pop("miou_20pct")
    with pytest.raises(DataError, match="fractions differ"):
        finetune_labels_saved(metrics)


def test_label_efficiency_plot_draws_the_seeds_band_and_the_target(tmp_path):
    from pixpro.viz import plot_label_efficiency

    curves = {"pretrained": ([0.05, 1.0], [0.3, 0.5]), "random": ([0.05, 1.0], [0.2, 0.45])}
    seeds = {"pretrained": [[0.28, 0.49], [0.32, 0.51]], "random": [[0.19, 0.44], [0.21, 0.46]]}
    plot_label_efficiency(curves, tmp_path / "plain.png", "test")
    plot_label_efficiency(curves, tmp_path / "seeds.png", "test", seeds=seeds, target=0.45)
    plain, banded = (np.asarray(Image.open(tmp_path / n).convert("RGB"), dtype=np.int64) for n in ("plain.png", "seeds.png"))
    # The band and the dashed level add ink; the plain picture has none of it.
    assert plain.shape == banded.shape
    assert ((banded < 250).any(-1)).sum() > ((plain < 250).any(-1)).sum() * 1.1


def test_both_backbones_start_from_the_same_classifier(tmp_path, monkeypatch):
    # Loading a pretrained file builds the architecture twice (random init, then the saved
    # config), so the global RNG differs afterwards; the classifier must not depend on that.
    import pixpro.finetune as finetune
    from tests.conftest import save_backbone_file

    params = make_eval_params()
    checkpoint = save_backbone_file(tmp_path / "backbone.pt", params)
    seen = {}

    def capture(model, *args, **kwargs):
        seen.setdefault("weights", []).append(model.classifier.weight.detach().clone())
        raise StopIteration  # enough: training is not needed to see the init

    monkeypatch.setattr(finetune, "train_segmenter", capture)
    rows = pd.DataFrame({"image": ["unused"] * 4, "mask": ["unused"] * 4})
    cfg = dataclasses.replace(params.finetune, head_init="random")  # a probe head depends on the features
    for kind in ("pretrained", "random"):
        with pytest.raises(StopIteration):
            label_efficiency(lambda: init_backbone(kind, params, checkpoint), params.pretrain.backbone.dim, rows,
                             rows, (32, 64), cfg, params.seed, TwoClasses, CPU,
                             ResultStore(tmp_path / f"{kind}.json", {}), kind, log=lambda _: None)
    assert torch.equal(seen["weights"][0], seen["weights"][1])


class _ProbeFitted(Exception):
    pass


def test_the_probe_head_is_fitted_with_the_extract_and_probe_sections_of_params(prepared, tmp_path, monkeypatch):
    # The stage once left them out, so the head was fitted with ExtractConfig() / ProbeConfig()
    # whatever params.yaml said; the defaults equal params.yaml, so only a non-default shows it.
    import yaml
    from typer.testing import CliRunner

    import pixpro.finetune as finetune
    import pixpro.finetune_results as finetune_results
    from pixpro.config import load_params
    from pixpro.stages.cli import app
    from tests.conftest import TINY_EVAL, TINY_PRETRAIN

    seen = {}
    real_extract = finetune.extract_bank

    def extract(backbone, rows, cfg, *args):
        seen["extract"] = cfg
        return real_extract(backbone, rows, cfg, *args)

    def fit(features, labels, num_classes, cfg):
        seen["probe"], seen["pixels"] = cfg, len(labels)
        raise _ProbeFitted  # enough: the fit's inputs are what is checked

    stores = []
    real_store = finetune_results.ResultStore
    monkeypatch.setattr(finetune, "extract_bank", extract)
    monkeypatch.setattr(finetune, "fit_probe", fit)
    monkeypatch.setattr(finetune_results, "ResultStore", lambda *args: stores.append(real_store(*args)) or stores[-1])
    monkeypatch.setattr("pixpro.stages._common.pin_threads", lambda setting: 1)  # leave this process's threads
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params({**TINY_PRETRAIN, **TINY_EVAL, "extract.pixels_per_image": 5,
                                                       "probe.weight_decay": 0.25, "probe.max_iter": 7}),
                                          sort_keys=False))
    result = CliRunner().invoke(app, [
        "finetune", "--backbone", "random", "--params", str(params_file), "--data", str(prepared),
        "--metrics", str(tmp_path / "m.json"), "--curve", str(tmp_path / "c.csv"), "--resume", str(tmp_path / "r.json"),
        "--model", str(tmp_path / "net.pt"), "--live", str(tmp_path / "live")])
    assert isinstance(result.exception, _ProbeFitted), result.output
    params = load_params(params_file)
    assert seen["extract"] == params.extract and seen["extract"].pixels_per_image == 5
    assert seen["probe"] == params.probe and (seen["probe"].weight_decay, seen["probe"].max_iter) == (0.25, 7)
    assert seen["pixels"] <= 2 * 5  # the 0.5 fraction's 2 images, at most 5 pixels each
    # ...and a resume record is reused only under the same probe recipe
    assert stores[0].fingerprint["probe_head"]["probe"]["weight_decay"] == 0.25
    assert stores[0].fingerprint["probe_head"]["extract"]["pixels_per_image"] == 5


def test_the_label_efficiency_profile_is_a_finetune_overlay_that_validates_over_idd_lite(tmp_path):
    import yaml

    from pixpro.config import load_params
    from tests.conftest import REPO

    profile = yaml.safe_load((REPO / "experiments" / "label_efficiency.yaml").read_text())
    assert list(profile) == ["finetune"]
    merged = yaml.safe_load((REPO / "params.yaml").read_text())
    for overlay in (yaml.safe_load((REPO / "experiments" / "idd_lite.yaml").read_text()), profile):
        for section, values in overlay.items():
            merged[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merged))
    cfg = load_params(tmp_path / "params.yaml").finetune
    assert cfg.steps > 0 and cfg.eval_every > 0 and cfg.head_init == "probe"
    # Crops keep about the prepared scale: the crop's share of the image lies inside crop_scale.
    share = cfg.crop_size[0] * cfg.crop_size[1] / (merged["data"]["size"][0] * merged["data"]["size"][1])
    assert cfg.crop_scale[0] <= share <= cfg.crop_scale[1]


def test_balanced_class_weights_are_n_over_classes_times_count_from_the_fractions_masks(tmp_path):
    from pixpro.finetune import pixel_class_weights

    image = np.zeros((4, 8, 3), np.uint8)
    first = np.zeros((4, 8), np.uint8)  # 24 pixels of class 0, 6 of class 2, 2 ignored
    first[0, :6] = 2
    first[1, :2] = 255
    second = np.full((4, 8), 2, np.uint8)  # not in the subset: must not count
    rows = pd.DataFrame([_write_pair(tmp_path, "a", image, first), _write_pair(tmp_path, "b", image, second)])
    weights = pixel_class_weights(rows, torch.tensor([0]), 3)
    assert weights.tolist() == pytest.approx([30 / (2 * 24), 0.0, 30 / (2 * 6)])
