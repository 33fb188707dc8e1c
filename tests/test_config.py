"""params.yaml validation: every mistake is a ConfigError that names the dotted key."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from tests.conftest import REPO, set_dotted, tiny_params
from pixpro.config import Params, load_params, params_from_dict
from pixpro.config_base import to_dict
from pixpro.errors import ConfigError


def _with(**dotted) -> dict:
    """A minimal raw params dict with dotted keys set (`__` stands for `.` in kwargs)."""
    raw: dict = {}
    for key, value in dotted.items():
        set_dotted(raw, key.replace("__", "."), value)
    return raw


def _raises(raw: dict, pattern: str):
    with pytest.raises(ConfigError, match=pattern):
        params_from_dict(raw)


# --------------------------------------------------------------------------------------------
# Good files


def test_repo_params_yaml_loads():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.source in ("synthetic", "cityscapes")
    # lists come back as tuples of the declared element type
    assert isinstance(params.data.size, tuple) and all(isinstance(v, int) for v in params.data.size)


def test_params_yaml_spells_out_every_default_of_the_code():
    # Every default is written twice, in the dataclasses and in params.yaml: they must agree, and
    # params.yaml must list every key, so `dvc exp show` and `-S` see the whole configuration.
    def flatten(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", list(value) if isinstance(value, (list, tuple)) else value

    in_yaml = dict(flatten(yaml.safe_load((REPO / "params.yaml").read_text())))
    in_code = dict(flatten(to_dict(Params())))
    assert sorted(set(in_code) - set(in_yaml)) == [], "keys missing from params.yaml"
    differing = {key: (in_code[key], in_yaml[key]) for key in in_code if in_code[key] != in_yaml[key]}
    assert differing == {}, "defaults (code, params.yaml) disagree"


def test_defaults_validate_and_round_trip():
    Params().validate()
    assert params_from_dict({}) == Params()
    assert params_from_dict(to_dict(Params())) == Params()


def test_tiny_test_params_validate():
    params = params_from_dict(tiny_params())
    assert params.data.size == (32, 64)


def test_an_empty_file_is_an_error_not_all_defaults(tmp_path):
    # All defaults by accident (an empty or truncated file) is never what was meant.
    path = tmp_path / "params.yaml"
    path.write_text("# nothing set\n")
    with pytest.raises(ConfigError, match=r"params file .*params\.yaml is empty: copy the repository's params\.yaml"):
        load_params(path)
    assert params_from_dict({}) == Params()  # a mapping without keys still means the defaults


def test_int_is_accepted_for_float_and_null_for_optional():
    params = params_from_dict(_with(pretrain__optim__base_lr=1, pretrain__ppm__window=None))
    assert params.pretrain.optim.base_lr == 1.0 and isinstance(params.pretrain.optim.base_lr, float)
    assert params.pretrain.ppm.window is None


# --------------------------------------------------------------------------------------------
# Unknown keys, wrong types


@pytest.mark.parametrize("key", ["data.sizee", "pretrain.optim.lrr", "pretrain.pairs.number",
                                 "data.synthetic.citys"])
def test_unknown_key_is_named_dotted(key):
    _raises(_with(**{key.replace(".", "__"): 1}), rf"unknown key {re.escape(key)}\b")


def test_unknown_top_level_section():
    _raises({"pretrian": {"epochs": 1}}, r"unknown key pretrian\b.*known under params\.yaml")


def test_unknown_key_lists_the_known_ones():
    _raises(_with(data__sizee=[1, 2]), r"known under data: .*\bsize\b")


@pytest.mark.parametrize("key, value, pattern", [
    ("data.workers", "2", r"data\.workers must be an integer, got '2'"),
    ("data.workers", True, r"data\.workers must be an integer, got True"),  # bool is not an int
    ("data.workers", 1.5, r"data\.workers must be an integer"),
    ("seed", "0", r"seed must be an integer"),
    ("data.use_extra", 1, r"data\.use_extra must be true or false"),
    ("data.use_extra", "yes", r"data\.use_extra must be true or false"),
    ("data.size", "128x256", r"data\.size must be a list"),
    ("data.size", [128], r"data\.size must have 2 entries, got 1"),
    ("data.size", [128, 256, 3], r"data\.size must have 2 entries, got 3"),
    ("data.size", [128, "256"], r"data\.size\[1\] must be an integer"),
    ("data.root", 5, r"data\.root must be a string"),
    ("data.synthetic", 5, r"data\.synthetic must be a mapping, got int"),
    ("pretrain.optim.base_lr", "fast", r"pretrain\.optim\.base_lr must be a finite number"),
    ("pretrain.optim.base_lr", float("nan"), r"pretrain\.optim\.base_lr must be a finite number"),
    ("pretrain.optim.base_lr", float("inf"), r"pretrain\.optim\.base_lr must be a finite number"),
    ("pretrain.views.jitter", [0.4, 0.4, 0.2], r"pretrain\.views\.jitter must have 4 entries, got 3"),
    ("pretrain.backbone.decoder_channels", [256, "x", 64, 32],
     r"pretrain\.backbone\.decoder_channels\[1\] must be an integer"),
    ("pretrain.ppm.window", "7", r"pretrain\.ppm\.window must be an integer"),
])
def test_wrong_type_names_the_key(key, value, pattern):
    _raises(_with(**{key.replace(".", "__"): value}), pattern)


def test_top_level_must_be_a_mapping():
    _raises([1, 2], r"params\.yaml must be a mapping, got list")


@pytest.mark.parametrize("key, value", [
    ("data.source", "foo"),
    ("pretrain.backbone.arch", "vit"),
    ("pretrain.optim.name", "adam"),
    ("probe.class_weighting", "auto"),
])
def test_literal_violation_lists_choices(key, value):
    _raises(_with(**{key.replace(".", "__"): value}),
            rf"{re.escape(key)} = '{value}' is not one of '")


def test_data_source_choices_are_spelled_out():
    _raises(_with(data__source="foo"), r"'synthetic', 'cityscapes'")


# --------------------------------------------------------------------------------------------
# Out-of-range values: at least one per section (and per nested pretrain section)


OUT_OF_RANGE = [
    ("seed", -1, r"seed must be >= 0"),
    # data
    ("data.size", [8, 64], r"data\.size must be \[H, W\] with both >= 16"),
    ("data.workers", -1, r"data\.workers must be >= 0"),
    ("data.synthetic.train", 0, r"data\.synthetic\.train"),
    ("data.synthetic.val", 0, r"data\.synthetic\.train/val"),
    ("data.synthetic.extra", -1, r"data\.synthetic\.extra must be >= 0"),
    ("data.synthetic.cities", 0, r"data\.synthetic\.cities must be >= 1"),
    ("data.synthetic.cities", 13, r"data\.synthetic\.cities = 13 is too many: at most 12"),
    ("data.synthetic.raw_size", [8, 512], r"data\.synthetic\.raw_size must be at least 16"),
    # pretrain
    ("pretrain.epochs", 0, r"pretrain\.epochs must be >= 1"),
    ("pretrain.batch_size", 1, r"pretrain\.batch_size must be >= 2"),
    ("pretrain.momentum", 1.5, r"pretrain\.momentum must be in \[0, 1\]"),
    ("pretrain.nproc", 0, r"pretrain\.nproc must be >= 1"),
    ("pretrain.nnodes", 0, r"pretrain\.nnodes must be >= 1"),
    ("pretrain.workers", -1, r"pretrain\.workers must be >= 0"),
    ("pretrain.checkpoint_every", 0, r"pretrain\.checkpoint_every must be >= 1"),
    ("pretrain.log_every", 0, r"pretrain\.log_every must be >= 1"),
    ("pretrain.ddp_timeout_s", 5, r"pretrain\.ddp_timeout_s must be >= 10"),
    ("pretrain.device", "tpu", r"pretrain\.device = 'tpu'; use auto, cpu or cuda"),
    # pretrain.backbone
    ("pretrain.backbone.dim", 0, r"pretrain\.backbone\.dim must be >= 1"),
    ("pretrain.backbone.decoder_channels", [256, 128, 64], r"pretrain\.backbone\.decoder_channels needs 4"),
    ("pretrain.backbone.widths", [64], r"pretrain\.backbone\.widths needs at least 2"),
    ("pretrain.backbone.widths", [64, 0], r"pretrain\.backbone channel widths must be >= 1"),
    # pretrain.views
    ("pretrain.views.scale", [0.5, 0.2], r"pretrain\.views\.scale must be 0 < lo <= hi <= 1"),
    ("pretrain.views.scale", [0.0, 1.0], r"pretrain\.views\.scale"),
    ("pretrain.views.ratio", [1.5, 1.0], r"pretrain\.views\.ratio"),
    ("pretrain.views.flip", 1.5, r"pretrain\.views\.flip must be in \[0, 1\]"),
    ("pretrain.views.min_overlap", -0.1, r"pretrain\.views\.min_overlap must be in \[0, 1\]"),
    ("pretrain.views.blur_p", [1.0, 1.1], r"pretrain\.views\.blur_p probabilities"),
    ("pretrain.views.solarize_p", [-0.1, 0.2], r"pretrain\.views\.solarize_p probabilities"),
    ("pretrain.views.jitter", [0.4, 0.4, 0.2, 0.6], r"pretrain\.views\.jitter must be >= 0, hue <= 0\.5"),
    ("pretrain.views.jitter", [-0.1, 0.4, 0.2, 0.1], r"pretrain\.views\.jitter"),
    ("pretrain.views.max_tries", 0, r"pretrain\.views\.max_tries must be >= 1"),
    # pretrain.pairs
    ("pretrain.pairs.candidates", 0, r"pretrain\.pairs candidates, neighbours and num must be >= 1"),
    ("pretrain.pairs.num", 0, r"pretrain\.pairs candidates"),
    ("pretrain.pairs.dist_thresh", 0.0, r"pretrain\.pairs\.dist_thresh must be > 0"),
    # pretrain.ppm
    ("pretrain.ppm.window", 0, r"pretrain\.ppm\.window must be >= 1, or null"),
    ("pretrain.ppm.gamma", 0, r"pretrain\.ppm\.gamma must be > 0"),
    ("pretrain.ppm.transform_layers", 3, r"pretrain\.ppm\.transform_layers must be 0, 1 or 2"),
    # pretrain.projector
    ("pretrain.projector.hidden", 0, r"pretrain\.projector hidden and out must be >= 1"),
    # pretrain.optim
    ("pretrain.optim.base_lr", -0.1, r"pretrain\.optim\.base_lr must be > 0"),
    ("pretrain.optim.base_lr", 0, r"pretrain\.optim\.base_lr must be > 0"),
    ("pretrain.optim.weight_decay", -1e-4, r"pretrain\.optim\.weight_decay must be >= 0"),
    ("pretrain.optim.momentum", 1.0, r"pretrain\.optim\.momentum must be in \[0, 1\)"),
    ("pretrain.optim.warmup_epochs", -1, r"pretrain\.optim\.warmup_epochs must be >= 0"),
    ("pretrain.optim.min_lr_ratio", 2, r"pretrain\.optim\.min_lr_ratio must be in \[0, 1\]"),
    ("pretrain.optim.trust_coefficient", 0, r"pretrain\.optim\.trust_coefficient must be > 0"),
    # pretrain.loss
    ("pretrain.loss.contrast", -1.0, r"pretrain\.loss\.contrast must be >= 0 \(0 switches the term off\)"),
    ("pretrain.loss.temperature", 0, r"pretrain\.loss\.temperature must be > 0"),
    ("pretrain.loss.coarse_stride", 1, r"pretrain\.loss\.coarse_stride must be >= 2"),
    ("pretrain.loss.stage_pairs", 0, r"pretrain\.loss\.stage_pairs must be >= 1"),
    ("pretrain.loss.stage_layers", [-1, -1], r"pretrain\.loss\.stage_layers must be distinct negative"),
    # extract
    ("extract.pixels_per_image", 0, r"extract\.pixels_per_image must be >= 1"),
    ("extract.batch_size", 0, r"extract\.batch_size must be >= 1"),
    # probe
    ("probe.weight_decay", -1.0, r"probe\.weight_decay must be >= 0"),
    ("probe.max_iter", 0, r"probe\.max_iter must be >= 1"),
    ("probe.tolerance", 0, r"probe\.tolerance must be > 0"),
    # evaluate
    ("evaluate.batch_size", 0, r"evaluate\.batch_size must be >= 1"),
    ("evaluate.overlays", -1, r"evaluate\.overlays must be >= 0"),
    # retrieval
    ("retrieval.queries", 0, r"retrieval\.queries must be >= 1"),
    ("retrieval.k", 5, r"retrieval\.k must be >= 10"),
    ("retrieval.knn_k", 0, r"retrieval\.knn_k must be >= 1"),
    ("retrieval.chunk_size", 0, r"retrieval\.chunk_size must be >= 1"),
    ("retrieval.examples", -1, r"retrieval\.examples must be >= 0"),
    # finetune
    ("finetune.label_fractions", [0.5, 0.0], r"finetune\.label_fractions\[1\] = 0\.0 must be in \(0, 1\]"),
    ("finetune.label_fractions", [], r"finetune\.label_fractions must list at least one fraction"),
    ("finetune.steps", 0, r"finetune\.steps must be >= 1"),
    ("finetune.batch_size", 0, r"finetune\.batch_size must be >= 1"),
    ("finetune.crop_size", [8, 64], r"finetune\.crop_size must be \[h, w\] with both >= 16"),
    ("finetune.crop_scale", [0.5, 0.2], r"finetune\.crop_scale = \[0\.5, 0\.2\] must be \[min, max\]"),
    ("finetune.flip", 1.5, r"finetune\.flip must be a probability in \[0, 1\]"),
    ("finetune.lr_head", 0, r"finetune\.lr_head/lr_backbone must be > 0 \(head\)"),
    ("finetune.weight_decay", -1e-4, r"finetune\.weight_decay must be >= 0"),
    ("finetune.warmup_steps", 20, r"finetune\.warmup_steps must be in \[0, steps\)"),
    ("finetune.head_steps", -1, r"finetune\.head_steps must be >= 0"),
    ("finetune.eval_every", -1, r"finetune\.eval_every must be >= 0"),
    ("finetune.workers", -1, r"finetune\.workers must be >= 0"),
    # top level
    ("threads", 0, r"threads must be >= 1 or auto"),
]


@pytest.mark.parametrize("key, value, pattern", OUT_OF_RANGE, ids=[f"{k}={v}" for k, v, _ in OUT_OF_RANGE])
def test_out_of_range_names_the_key(key, value, pattern):
    _raises(_with(**{key.replace(".", "__"): value}), pattern)


def _sections(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every section of the config: each field whose default is a dataclass,
    nested ones included (pretrain.optim, data.synthetic, ...)."""
    found = []
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        if dataclasses.is_dataclass(default):
            found += [prefix + f.name, *_sections(type(default), f"{prefix}{f.name}.")]
    return found


def test_every_section_has_an_out_of_range_case():
    keys = [k for k, _, _ in OUT_OF_RANGE]
    sections = _sections(Params)
    assert {"data.synthetic", "pretrain.loss", "finetune"} <= set(sections)  # the walk finds nested ones
    assert [s for s in sections if not any(k.startswith(f"{s}.") for k in keys)] == []
    top_level = [f.name for f in dataclasses.fields(Params) if f.name not in sections]
    assert "threads" in top_level
    assert [name for name in top_level if name not in keys] == []


def test_city_limit_counts_the_extra_split():
    # 24 city names: 12 per split for train/val, 8 once train_extra needs its own cities too
    params_from_dict(_with(data__synthetic__cities=12))
    params_from_dict(_with(data__synthetic__cities=8, data__synthetic__extra=1))
    _raises(_with(data__synthetic__cities=9, data__synthetic__extra=1),
            r"data\.synthetic\.cities = 9 is too many: at most 8 per split for 3 splits")


# --------------------------------------------------------------------------------------------
# Cross-field checks


def test_pairs_num_may_not_exceed_candidates_times_neighbours():
    pairs = {"candidates": 4, "neighbours": 2}
    params_from_dict({"pretrain": {"pairs": {**pairs, "num": 8}}})  # exactly at the limit
    _raises({"pretrain": {"pairs": {**pairs, "num": 9}}},
            r"pretrain\.pairs\.num = 9 exceeds candidates x neighbours = 4 x 2")


def test_ppm_window_may_not_exceed_the_view():
    views = {"size": [64, 128]}
    params_from_dict({"pretrain": {"views": views, "ppm": {"window": 64}}})
    _raises({"pretrain": {"views": views, "ppm": {"window": 65}}},
            r"pretrain\.ppm\.window = 65 is larger than the view \[64, 128\]")


@pytest.mark.parametrize("size", [[96, 200], [100, 192], [16, 32]])
def test_view_size_must_be_divisible_by_32_for_smp_unet(size):
    _raises({"pretrain": {"views": {"size": size}, "ppm": {"window": 3}}},
            rf"pretrain\.views\.size = \[{size[0]}, {size[1]}\] must be divisible by 32 for smp_unet")


def test_view_divisor_follows_the_plain_unet_depth():
    # 5 widths = 4 poolings: 16 divides the view, 32 need not
    backbone = {"arch": "unet", "widths": [8, 16, 32, 64, 128]}
    params_from_dict({"pretrain": {"backbone": backbone, "views": {"size": [48, 80]}}})
    _raises({"pretrain": {"backbone": backbone, "views": {"size": [40, 80]}}},
            r"pretrain\.views\.size = \[40, 80\] must be divisible by 16 for unet")


@pytest.mark.parametrize("endpoint", ["node0", "node0:", ":29400", "node0:0", "node0:65536", "node0:port",
                                      "tcp://node0:29400", "node 0:29400"])
def test_rdzv_endpoint_must_be_host_port_for_several_nodes(endpoint):
    _raises(_with(pretrain__nnodes=2, pretrain__rdzv_endpoint=endpoint),
            rf"^pretrain\.rdzv_endpoint = {re.escape(repr(endpoint))} must be host:port, e\.g\. node0:29400 .*"
            rf"for pretrain\.nnodes = 2$")
    params_from_dict(_with(pretrain__rdzv_endpoint=endpoint))  # one node never reads it


@pytest.mark.parametrize("endpoint", ["node0:29400", "10.1.2.3:1", "[::1]:29400", "gpu-07.cluster.local:65535"])
def test_rdzv_endpoint_accepts_host_port(endpoint):
    assert params_from_dict(_with(pretrain__nnodes=4, pretrain__rdzv_endpoint=endpoint)).pretrain.nnodes == 4


def test_synthetic_use_extra_needs_extra_scenes():
    _raises(_with(data__use_extra=True),
            r"data\.use_extra is true but data\.synthetic\.extra is 0")
    params_from_dict(_with(data__use_extra=True, data__synthetic__extra=2))
    # a real Cityscapes root brings its own train_extra; the synthetic count does not matter
    params_from_dict(_with(data__use_extra=True, data__source="cityscapes"))


# --------------------------------------------------------------------------------------------
# Files


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"params file .*nope\.yaml not found"):
        load_params(tmp_path / "nope.yaml")


def test_directory_is_not_a_params_file(tmp_path):
    with pytest.raises(ConfigError, match=r"not found"):
        load_params(tmp_path)


@pytest.mark.parametrize("text", ["data: [1, 2\n", "data:\n  size: [1\n  root: x\n", "a: b: c\n",
                                  "data:\n\tsize: 1\n"])
def test_malformed_yaml(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"params\.yaml is not valid YAML: ") as info:
        load_params(path)
    assert "\n" not in str(info.value)  # one line for the CLI


def test_binary_file_is_a_config_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe garbage")
    with pytest.raises(ConfigError, match=r"params\.yaml is not"):
        load_params(path)


def test_yaml_list_at_top_level(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- seed\n- data\n")
    with pytest.raises(ConfigError, match=r"must be a mapping, got list"):
        load_params(path)


def test_file_errors_name_the_dotted_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ndata:\n  sizee: [32, 64]\n")
    with pytest.raises(ConfigError, match=r"unknown key data\.sizee"):
        load_params(path)


@pytest.mark.parametrize("threads", [0, -2])
def test_threads_must_be_positive(threads):
    with pytest.raises(ConfigError, match=r"^threads must be >= 1"):
        params_from_dict(tiny_params({"threads": threads}))


def test_the_benchmarks_tiny_params_are_a_runnable_pipeline_config():
    # benchmarks/tiny_params.yaml is the README's quick smoke run (benchmarks/pipeline.py --params
    # ..., benchmarks/queue_concurrency.py): deep-merged over params.yaml it must validate, and every
    # label fraction must select an image of its tiny train split (a stage added later once broke it).
    from benchmarks.pipeline import deep_merge
    from pixpro.finetune import labelled_subsets

    merged = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                        yaml.safe_load((REPO / "benchmarks" / "tiny_params.yaml").read_text()))
    params = params_from_dict(merged)
    subsets = labelled_subsets(params.data.synthetic.train, params.finetune.label_fractions, params.seed)
    assert all(len(rows) >= 1 for rows in subsets.values())
