"""What a fine-tuning run records: one FractionResult per label fraction, kept across an
interruption in a ResultStore (the resume file), and written out as the stage's metrics JSON,
its `dvc plots` CSV and the dvclive val curves.

Apart from the training (pixpro/finetune.py), which fills these as fractions finish: what is
recorded and how it is read back does not depend on how a fraction is trained.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from pixpro.config_finetune import fraction_percent
from pixpro.io import atomic_write_json


@dataclass
class FractionResult:
    fraction: float
    labelled_images: int
    miou: float
    pixel_accuracy: float
    final_loss: float
    skipped_batches: int  # batches whose crops held no labelled pixel
    # (step, val mIoU, val pixel accuracy) during training, steps counted over both phases; the
    # last row is (steps, miou, pixel_accuracy)
    val_curve: list[tuple[int, float, float]] = field(default_factory=list)
    # with finetune.ema_decay: the val mIoU of the last step's weights (miou is the average's)
    last_weights_miou: float | None = None


def print_warning(message: str) -> None:
    print(message, file=sys.stderr)


class ResultStore:
    """Finished fractions of one stage run, kept across an interruption.

    A rerun reuses a fraction only when everything that decides it (its `fingerprint`) is
    unchanged; anything else starts that fraction again. A file that cannot be read back is
    reported through `warn` and then overwritten, never silently dropped."""

    def __init__(self, path: Path, fingerprint: dict, warn: Callable[[str], None] = print_warning):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.results: dict[str, FractionResult] = {}
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
                if saved["fingerprint"] == fingerprint:
                    self.results = {key: FractionResult(**{**found, "val_curve": [tuple(row) for row in
                                                                                  found["val_curve"]]})
                                    for key, found in saved["results"].items()}
            except (OSError, UnicodeDecodeError, ValueError, LookupError, TypeError) as error:
                reason = f"{type(error).__name__}: {error}".splitlines()[0]
                warn(f"warning: resume file {self.path} is damaged ({reason}); training every fraction again")

    def get(self, fraction: float) -> FractionResult | None:
        return self.results.get(repr(fraction))

    def put(self, result: FractionResult) -> None:
        self.results[repr(result.fraction)] = result
        atomic_write_json(self.path, {"fingerprint": self.fingerprint,
                                      "results": {key: asdict(r) for key, r in self.results.items()}})


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_val_curves(live_dir: Path, results: list[FractionResult]) -> None:
    """dvclive curves `val/miou_<p>pct` (val mIoU against the step) under live_dir/plots/metrics,
    one per fraction, rewritten whole from `results` so a resumed run's curves have no duplicates."""
    from dvclive import Live

    # dvc.yaml declares the outputs itself, so dvclive must not edit it; resume=False clears the folder.
    live = Live(str(live_dir), resume=False, dvcyaml=None, save_dvc_exp=False, report=None)
    for result in results:
        for step, miou, _ in result.val_curve:
            live.step = step
            live.log_metric(f"val/miou_{fraction_percent(result.fraction)}pct", miou)
    live.make_summary()


def metrics_dict(results: list[FractionResult]) -> dict:
    """metrics/finetune/<backbone>.json: miou_<p>pct (the contract) and the subset sizes."""
    metrics = {f"miou_{fraction_percent(r.fraction)}pct": r.miou for r in results}
    metrics.update({f"labelled_images_{fraction_percent(r.fraction)}pct": r.labelled_images for r in results})
    return metrics


def curve_frame(results: list[FractionResult]) -> pd.DataFrame:
    """The label-efficiency curve: one row per fraction, for `dvc plots`."""
    return pd.DataFrame({"labelled_fraction": [r.fraction for r in results],
                         "labelled_images": [r.labelled_images for r in results],
                         "miou": [r.miou for r in results],
                         "pixel_accuracy": [r.pixel_accuracy for r in results]})
