"""The fine-tuned network's file: how `pixpro finetune --model` writes the network of the largest
label fraction (KeptNetwork), and how `pixpro predict --head finetune-100pct` reads it back
(read_finetuned), and the model both hold (Segmenter). pixpro/backbone_file.py is its
counterpart for the pretrained backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch import Tensor, nn

from pixpro.backbone_file import BackboneFile, Preprocessing, build_from_file
from pixpro.checkpoint import git_revision, load_checkpoint, save_checkpoint
from pixpro.config_base import to_dict
from pixpro.config_finetune import FinetuneConfig
from pixpro.data.classes import ClassTable
from pixpro.errors import CheckpointError
from pixpro.features import embed
from pixpro.precision import amp_setting


class Segmenter(nn.Module):
    """backbone (B, 3, H, W) -> (B, C, H, W) unit-length pixel features, then a 1x1 conv -> (B, K, H, W)
    class logits: the linear probe's model (features.embed), so a probe's weights are a classifier."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(embed(self.backbone, images))


FINETUNED_FORMAT = "pixpro-finetuned-segmenter"


class KeptNetwork:
    """Where label_efficiency saves the network of the largest fraction (1.0 by default: the one
    `pixpro predict --head finetune-100pct` uses), and what the file records beside its weights.

    The file is a torch checkpoint whose `backbone` and `backbone_config` are named as in
    models/backbone.pt, so pixpro.load_backbone reads its fine-tuned backbone too; `classifier` is
    the 1x1 conv's state, and the rest says how to use it and where it came from.
    """

    def __init__(self, path: Path, backbone_config: dict, classes: ClassTable, image_size: tuple[int, int],
                 cfg: FinetuneConfig, seed: int, initial_weights: str):
        self.path = Path(path)
        self.record = {
            "format": FINETUNED_FORMAT,
            "backbone_config": backbone_config,
            "class_names": list(classes.names),  # indexed by train id
            "class_colors": np.asarray(classes.colors).tolist(),  # (K, 3) RGB
            "image_size": list(image_size),  # (H, W) it was trained and scored at: data.size
            "preprocessing": Preprocessing().to_dict(),  # what fine-tuning fed it (views.normalize)
            "finetune_config": to_dict(cfg),
            "initial_weights": initial_weights,  # pretrained | random
            "seed": seed,
        }

    def save(self, model: Segmenter, fraction: float, labelled_images: int, miou: float, fingerprint: dict) -> None:
        """Write the file atomically (temp file + rename): a kill mid-write keeps the previous one.
        The fraction's numbers come as plain values so this module needs nothing of finetune.py."""
        save_checkpoint(self.path, {
            **self.record,
            "backbone": {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()},
            "classifier": {k: v.detach().cpu() for k, v in model.classifier.state_dict().items()},
            "fraction": fraction, "labelled_images": labelled_images, "miou": miou,
            "fingerprint": fingerprint, "git": git_revision(),
        })

    def problem(self, fraction: float, fingerprint: dict) -> str | None:
        """Why the file cannot stand for `fraction` finished under `fingerprint`, or None if it can."""
        if not self.path.is_file():
            return f"{self.path} is missing"
        try:
            saved = load_checkpoint(self.path, "finetune")
        except CheckpointError:
            return f"{self.path} cannot be read"
        if (saved.get("format"), saved.get("fraction"), saved.get("fingerprint")) != (FINETUNED_FORMAT, fraction,
                                                                                     fingerprint):
            return f"{self.path} was saved by another run"
        return None


class FinetunedNetwork(NamedTuple):
    """A network saved by KeptNetwork, read back for predicting."""
    path: Path
    model: Segmenter  # eval mode, on the CPU: (B, 3, H, W) normalised images -> (B, K, H, W) logits
    fraction: float  # the share of the labelled train images it was fine-tuned on
    class_names: tuple[str, ...]  # indexed by train id
    image_size: tuple[int, int]  # (H, W) it was trained and scored at
    preprocessing: Preprocessing
    amp: str  # its precision setting (pixpro/precision.py), as finetune.amp: predict computes as it was scored


def read_finetuned(path: Path) -> FinetunedNetwork:
    """The network `pixpro finetune --model` saved; one-line CheckpointErrors for anything else."""
    path = Path(path)
    saved = load_checkpoint(path, "finetune")  # missing or corrupt: says to run `dvc repro finetune`
    if saved.get("format") != FINETUNED_FORMAT:
        raise CheckpointError(f"{path} is not a fine-tuned network; use the --model file of `pixpro finetune`")
    try:
        preprocessing = Preprocessing.from_dict(saved["preprocessing"], path)
        backbone = build_from_file(BackboneFile(path, saved["backbone"], saved["backbone_config"], {}, preprocessing))
        weight = saved["classifier"]["weight"]  # (K, C, 1, 1)
        model = Segmenter(backbone, weight.shape[1], weight.shape[0])
        model.classifier.load_state_dict(saved["classifier"])
        names = tuple(saved["class_names"])
        if len(names) != weight.shape[0]:
            raise ValueError(f"{len(names)} class names for {weight.shape[0]} classifier outputs")
        return FinetunedNetwork(path, model.eval(), float(saved["fraction"]), names,
                                tuple(saved["image_size"]), preprocessing, amp_setting(saved["finetune_config"]["amp"]))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise CheckpointError(f"{path} is a damaged fine-tuned network ({reason}); delete it and rerun "
                              f"`dvc repro finetune`") from None
