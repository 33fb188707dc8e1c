"""pixpro: PixPro dense self-supervised pretraining for semantic segmentation.

`pixpro.load_backbone(path)` loads a pretrained backbone (models/backbone.pt or a `pixpro export`
folder) in one call; it is imported on first use, so `import pixpro.config` stays free of torch.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "load_backbone":
        from pixpro.export import load_backbone

        return load_backbone
    raise AttributeError(f"module 'pixpro' has no attribute {name!r}")
