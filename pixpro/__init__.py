"""pixpro: PixPro dense self-supervised pretraining for semantic segmentation.

`pixpro.load_backbone(path)` loads a pretrained backbone (models/backbone.pt or a `pixpro export`
folder) in one call; it is imported on first use, so `import pixpro.config` stays free of torch.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from typing import Any


class _CheckoutStages(MetaPathFinder):
    """Finds `pixpro.stages` in the checkout this package was imported from. The stage commands
    live in the repository's top-level stages/ folder and install as `pixpro.stages` (pyproject's
    package-dir); the editable install maps that name to the installed checkout only. A copy of
    the repository put first on PYTHONPATH (tests, benchmarks/pipeline.py) must run its own
    stages with its own pixpro, not the installed checkout's."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname != "pixpro.stages":
            return None
        return spec_from_file_location(fullname, self.folder / "__init__.py",
                                       submodule_search_locations=[str(self.folder)])


_checkout = Path(__file__).resolve().parent.parent
# Only in a source checkout: an installed wheel has pixpro/stages/, and its site-packages may hold
# some other project's top-level `stages`.
if not (_checkout / "pixpro" / "stages").is_dir() and (_checkout / "stages" / "cli.py").is_file() \
        and (_checkout / "pyproject.toml").is_file():
    sys.meta_path.insert(0, _CheckoutStages(_checkout / "stages"))


def __getattr__(name: str) -> Any:
    if name == "load_backbone":
        from pixpro.export import load_backbone

        return load_backbone
    raise AttributeError(f"module 'pixpro' has no attribute {name!r}")
