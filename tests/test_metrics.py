"""Tests for pixpro.metrics, including agreement with the official Cityscapes evaluator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pixpro import metrics as M
from pixpro.data.classes import load_class_table

CITYSCAPES = load_class_table("cityscapes")


# --------------------------------------------------------------------------- #
# Hand-computed segmentation case
# --------------------------------------------------------------------------- #

# 4 classes. Class 2: one false positive, no ground truth -> IoU 0 (counted in the mean).
# Class 3: predicted only on ignored pixels -> absent from both -> NaN (excluded).
_TARGET = torch.tensor([[0, 0, 0, 0, 1, 1], [1, 255, 255, 0, 0, 0]])
_PRED = torch.tensor([[0, 0, 0, 2, 1, 1], [0, 3, 1, 0, 1, 0]])
# Valid pixels (gt, pred): (0,0)x3 (0,2) (1,1)x2 (1,0) (0,0)x2 (0,1)
#   -> row 0: [5, 1, 1, 0], row 1: [1, 2, 0, 0]
_EXPECTED_CONF = torch.tensor(
    [[5, 1, 1, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.int64
)


def test_confusion_matrix_hand_computed():
    conf = M.confusion_matrix(_PRED, _TARGET, num_classes=4)
    assert conf.dtype == torch.int64
    assert torch.equal(conf, _EXPECTED_CONF)
    # Dtype of the labels must not matter (uint8 would overflow target * K if not widened).
    conf_u8 = M.confusion_matrix(_PRED.to(torch.uint8), _TARGET.to(torch.uint8), num_classes=4)
    assert torch.equal(conf_u8, _EXPECTED_CONF)


def test_iou_miou_accuracy_hand_computed():
    conf = M.confusion_matrix(_PRED, _TARGET, num_classes=4)
    iou = M.iou_per_class(conf)
    assert iou.dtype == torch.float64
    # class 0: TP 5, FP 1, FN 2 -> 5/8; class 1: TP 2, FP 1, FN 1 -> 2/4; class 2: 0/1; class 3: NaN
    assert iou[0].item() == pytest.approx(5 / 8)
    assert iou[1].item() == pytest.approx(2 / 4)
    assert iou[2].item() == 0.0
    assert math.isnan(iou[3].item())
    assert M.mean_iou(conf) == pytest.approx((5 / 8 + 1 / 2 + 0.0) / 3)
    assert M.pixel_accuracy(conf) == pytest.approx(7 / 10)


def test_segmentation_scores_json_safe():
    conf = M.confusion_matrix(_PRED, _TARGET, num_classes=4)
    scores = M.segmentation_scores(conf, ["a", "b", "c", "d"])
    assert scores.iou == {"a": pytest.approx(5 / 8), "b": pytest.approx(0.5), "c": 0.0, "d": None}
    d = scores.to_json_dict()
    assert set(d) == {"miou", "pixel_accuracy", "iou"}
    assert d["iou"]["d"] is None
    json.dumps(d, allow_nan=False)  # raises if a NaN slipped through
    empty = M.segmentation_scores(torch.zeros(19, 19, dtype=torch.int64), list(CITYSCAPES.names))
    assert list(empty.iou) == list(CITYSCAPES.names)
    json.dumps(empty.to_json_dict(), allow_nan=False)
    with pytest.raises(ValueError, match="class names"):
        M.segmentation_scores(conf, ["a", "b"])


def test_train_class_names():
    names = CITYSCAPES.names
    assert len(names) == CITYSCAPES.num_classes == 19
    assert names[0] == "road" and names[13] == "car" and names[18] == "bicycle"


def test_errors():
    t = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        M.confusion_matrix(t, torch.zeros(3, 2, dtype=torch.int64), 19)
    with pytest.raises(ValueError, match="pred contains values outside"):
        M.confusion_matrix(torch.tensor([0, 19]), torch.tensor([0, 1]), 19)
    with pytest.raises(ValueError, match="pred contains values outside"):
        M.confusion_matrix(torch.tensor([-1, 0]), torch.tensor([0, 1]), 19)
    with pytest.raises(ValueError, match="target contains values outside"):
        M.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 19]), 19)
    # An out-of-range prediction on an ignored pixel is fine.
    conf = M.confusion_matrix(torch.tensor([0, 255]), torch.tensor([0, 255]), 19)
    assert conf.sum().item() == 1 and conf[0, 0].item() == 1
    with pytest.raises(TypeError, match="integer"):
        M.confusion_matrix(torch.zeros(3), torch.zeros(3, dtype=torch.int64), 19)


# --------------------------------------------------------------------------- #
# Streaming
# --------------------------------------------------------------------------- #


def test_accumulator_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for _ in range(4):
        target = torch.randint(0, 19, (2, 16, 24), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.2] = 255
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target.clamp(max=18),
                           torch.randint(0, 19, target.shape, generator=g))
        preds.append(pred)
        targets.append(target)

    acc = M.ConfusionAccumulator(19)
    assert acc.conf.sum().item() == 0
    for p, t in zip(preds, targets):
        acc.update(p, t)
    one_shot = M.confusion_matrix(torch.cat(preds), torch.cat(targets), 19)
    assert torch.equal(acc.conf, one_shot)
    s = acc.scores()
    assert s.miou == pytest.approx(M.mean_iou(one_shot))
    assert s.pixel_accuracy == pytest.approx(M.pixel_accuracy(one_shot))
    acc.reset()
    assert acc.conf.sum().item() == 0


# --------------------------------------------------------------------------- #
# Agreement with cityscapesscripts
# --------------------------------------------------------------------------- #


def _official_args(tmp_path):
    """A fresh args object for evaluateImgLists (the module-level one is left untouched)."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    a = ev.CArgs()
    a.evalLabels = []  # filled by generateMatrix
    a.evalInstLevelScore = False  # would need *_instanceIds.png, and uses np.in1d (gone in NumPy >= 2.4)
    a.evalPixelAccuracy = False  # np.in1d again; its per-image counts are also inverted upstream
    a.printRow = 5
    a.normalized = True
    a.colorized = False
    a.bold = ""
    a.nocol = ""
    a.JSONOutput = False
    a.exportFile = str(tmp_path / "official.json")  # never written with JSONOutput False
    a.quiet = True
    a.avgClassSize = dict(ev.args.avgClassSize)
    a.predictionPath = None
    a.predictionWalk = None
    return a


def test_matches_official_cityscapes_evaluation(tmp_path, monkeypatch):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
    from cityscapesscripts.helpers.labels import id2label, trainId2label

    # The pure-numpy path of the official evaluator (the Cython one is optional).
    monkeypatch.setattr(ev, "CSUPPORT", False)

    rng = np.random.default_rng(0)
    gt_train_ids = [0, 1, 2, 5, 8, 10, 11, 13]  # other train classes absent from the ground truth
    fp_only_train_id = 14  # truck: predicted, never in the ground truth -> IoU 0
    ignored_label_ids = [0, 1, 4, 5, 9]  # ignoreInEval label ids (unlabeled, ego vehicle, static, ...)
    gt_label_ids = [trainId2label[t].id for t in gt_train_ids] + ignored_label_ids
    pred_choices = np.array(gt_train_ids + [fp_only_train_id])
    assert all(id2label[i].ignoreInEval for i in ignored_label_ids)

    label_to_train = np.full(256, 255, dtype=np.int64)
    for lid, lab in id2label.items():
        if 0 <= lid and 0 <= lab.trainId < 255:
            label_to_train[lid] = lab.trainId
    train_to_label = np.array([trainId2label[t].id for t in range(19)], dtype=np.uint8)

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt_files, pred_files = [], []
    acc = M.ConfusionAccumulator(19)
    for i in range(3):
        gt = rng.choice(gt_label_ids, size=(32, 64)).astype(np.uint8)
        gt_train = label_to_train[gt]
        pred_train = rng.choice(pred_choices, size=gt.shape)
        # Make it a plausible predictor: copy the truth on ~half the valid pixels.
        copy = (rng.random(gt.shape) < 0.5) & (gt_train != 255)
        pred_train = np.where(copy, gt_train, pred_train)

        gt_path = gt_dir / f"city_{i:06d}_000019_gtFine_labelIds.png"
        pred_path = pred_dir / f"city_{i:06d}_000019_pred.png"
        Image.fromarray(gt).save(gt_path)
        # The official script expects labelIds, not trainIds.
        Image.fromarray(train_to_label[pred_train]).save(pred_path)
        gt_files.append(str(gt_path))
        pred_files.append(str(pred_path))

        acc.update(torch.from_numpy(pred_train), torch.from_numpy(gt_train))

    official = ev.evaluateImgLists(pred_files, gt_files, _official_args(tmp_path))
    assert not (tmp_path / "official.json").exists()

    names = list(CITYSCAPES.names)
    ours = acc.scores(names)
    ours_iou = M.iou_per_class(acc.conf)
    for t in range(19):
        theirs = official["classScores"][names[t]]
        if math.isnan(theirs):
            assert math.isnan(ours_iou[t].item()), names[t]
            assert ours.iou[names[t]] is None
        else:
            assert ours_iou[t].item() == pytest.approx(theirs, abs=1e-6), names[t]
    assert ours.iou[names[fp_only_train_id]] == 0.0
    assert official["classScores"][names[fp_only_train_id]] == 0.0
    assert math.isnan(official["classScores"]["bicycle"])  # absent from both
    assert ours.miou == pytest.approx(official["averageScoreClasses"], abs=1e-6)

    # Their labelId confusion matrix, restricted to evaluated rows/cols, is ours permuted.
    their_conf = np.asarray(official["confMatrix"], dtype=np.int64)
    ids = train_to_label.astype(np.int64)
    assert np.array_equal(their_conf[np.ix_(ids, ids)], acc.conf.numpy())
    # Every valid pixel was predicted as some train class, so the restricted matrix holds all of them.
    assert their_conf[ids].sum() == acc.conf.sum().item()


# --------------------------------------------------------------------------- #
# Retrieval
# --------------------------------------------------------------------------- #


def test_precision_at_k_hand_computed():
    query_labels = torch.tensor([0, 0, 1])
    retrieved = torch.tensor([[0, 1, 0], [1, 0, 0], [1, 0, 0]])
    p = M.precision_at_k(query_labels, retrieved, ks=(1, 2, 3))
    # k=1: class 0 -> (1 + 0)/2, class 1 -> 1; mean 0.75 (a plain per-query mean would give 2/3)
    assert p[1] == pytest.approx(0.75)
    # k=2: class 0 -> (1/2 + 1/2)/2, class 1 -> 1/2
    assert p[2] == pytest.approx(0.5)
    # k=3: class 0 -> 2/3, class 1 -> 1/3
    assert p[3] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k=4"):
        M.precision_at_k(query_labels, retrieved, ks=(4,))


def _brute_force_topk(queries, gallery, k):
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    g = torch.nn.functional.normalize(gallery.float(), dim=1)
    return (q @ g.T).topk(k, dim=1)


@pytest.mark.parametrize("k,chunk_size", [(5, 16), (20, 16), (7, 1000), (50, 8)])
def test_topk_cosine_matches_brute_force(k, chunk_size):
    g = torch.Generator().manual_seed(1)
    queries = torch.randn(7, 8, generator=g, dtype=torch.float64) * 3.0
    gallery = torch.randn(50, 8, generator=g, dtype=torch.float64) * torch.rand(50, 1, generator=g, dtype=torch.float64)
    scores, idx = M.topk_cosine(queries, gallery, k, chunk_size=chunk_size)
    ref_scores, ref_idx = _brute_force_topk(queries, gallery, k)
    assert scores.shape == (7, k) and idx.shape == (7, k)
    assert scores.dtype == torch.float32 and idx.dtype == torch.int64
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(idx, ref_idx)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_topk_cosine_errors():
    with pytest.raises(ValueError, match="k=6"):
        M.topk_cosine(torch.randn(2, 3), torch.randn(5, 3), 6)
    with pytest.raises(ValueError, match="gallery"):
        M.topk_cosine(torch.randn(2, 3), torch.randn(5, 4), 1)


def test_knn_vote():
    scores = torch.tensor([[0.9, 0.5, 0.5], [0.5, 0.5, 0.25], [-0.1, -0.1, -0.5]])
    labels = torch.tensor([[2, 1, 1], [3, 0, 5], [4, 4, 2]])
    pred = M.knn_vote(scores, labels, num_classes=6)
    # q0: class 1 sums to 1.0 > 0.9; q1: classes 3 and 0 tie -> lowest id;
    # q2: all negative, class 4 (-0.2) beats class 2 (-0.5) and classes with no votes.
    assert pred.tolist() == [1, 0, 4]
    with pytest.raises(ValueError, match="neighbour_labels"):
        M.knn_vote(scores, torch.full_like(labels, 255), num_classes=6)
