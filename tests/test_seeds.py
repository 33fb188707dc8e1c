"""`seed` seeds everything random in a run: another seed changes each random draw, the same
seed repeats it. The data stay fixed here (one prepared set), so each check isolates one draw.

What is random, and where it is seeded: the backbones' init (random branch and pretraining),
the two views of each image, the pixel pairs of each step, the feature bank's pixel sample
and the retrieval queries. The linear probe is not: it starts from zeros and L-BFGS on the
full bank is deterministic. The synthetic scenes follow `seed` too (`prepare`), so a seed sweep
on the default data measures method plus data.
"""

from __future__ import annotations

import itertools

import torch

from pixpro import retrieval as retrieval_module
from pixpro import train as train_module
from pixpro.data.classes import load_class_table
from pixpro.data.views import TwoViewDataset
from pixpro.features import extract_bank, load_frozen_backbone, split_rows
from pixpro.retrieval import run_retrieval
from tests.conftest import make_eval_params

CPU = torch.device("cpu")
SEEDS = (0, 0, 1)  # a repeat, then another seed


def same_then_different(draws: list) -> None:
    """draws made under SEEDS: the first two equal, the third different from the first."""
    def equal(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
        return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b

    assert equal(draws[0], draws[1]), "the same seed must repeat"
    assert not equal(draws[0], draws[2]), "another seed must change the draw"


def test_random_init_follows_the_seed(tmp_path):
    draws = [load_frozen_backbone("random", make_eval_params(seed=s), tmp_path / "absent.pt").state_dict() for s in SEEDS]
    same_then_different(draws)


def test_views_follow_the_seed(prepared):
    images = train_module.pretraining_images(prepared)
    cfg = make_eval_params().pretrain.views
    draws = [TwoViewDataset(images, cfg, s)[(0, 0)] for s in SEEDS]
    same_then_different([(d.view1, d.view2, d.box1, d.box2) for d in draws])


def test_pixel_pairs_follow_the_seed(prepared, tmp_path, monkeypatch):
    # The pair sampler's own generator, so this is not just the views differing.
    real = train_module.sample_positive_pairs
    seeds: list[int] = []

    def recording(*args, **kwargs):
        seeds.append(args[-1].initial_seed())
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "sample_positive_pairs", recording)
    draws = []
    for n, s in enumerate(SEEDS):
        seeds.clear()
        folder = tmp_path / str(n)
        train_module.pretrain(make_eval_params(seed=s, **{"pretrain.epochs": 1}), prepared, folder / "b.pt",
                              folder / "ckpt", folder / "live", log=lambda _: None)
        draws.append(list(seeds))
    same_then_different(draws)
    # One generator a step, shared by the step's samplers (the output's pairs, each stage's): a
    # seed may repeat within a step, never in a later one.
    steps = [seed for seed, _ in itertools.groupby(draws[0])]
    assert len(steps) >= 2 and len(set(steps)) == len(steps), "each step draws its own pairs"


def test_bank_sample_follows_the_seed(prepared, tmp_path):
    params = make_eval_params()
    model = load_frozen_backbone("random", params, tmp_path / "absent.pt")  # one model: only the sample varies
    rows = split_rows(prepared, "train")
    draws = [extract_bank(model, rows, params.extract, s, CPU, 19) for s in SEEDS]
    same_then_different([(b.features, b.labels) for b in draws])


def test_retrieval_queries_follow_the_seed(prepared, tmp_path, monkeypatch):
    params = make_eval_params()
    model = load_frozen_backbone("random", params, tmp_path / "absent.pt")
    train, val = split_rows(prepared, "train"), split_rows(prepared, "val")
    bank = extract_bank(model, train, params.extract, 0, CPU, 19)
    real = retrieval_module.stratified_queries
    drawn: list = []
    monkeypatch.setattr(retrieval_module, "stratified_queries",
                        lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    for s in SEEDS:
        run_retrieval(model, bank, val, train, params.retrieval, s, CPU, params.evaluate.batch_size,
                      load_class_table("cityscapes"))
    same_then_different(drawn)
