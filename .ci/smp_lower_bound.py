"""Check the oldest segmentation-models-pytorch that pyproject.toml admits really runs our backbone.

The venv holds the newest release, so nothing else would notice if the code came to need a newer
API than the declared lower bound (it did once: smp 0.4's decoder takes `*features`, ours passes a list). This
installs exactly the lower bound, without dependencies, into a temporary folder that shadows
the venv's copy, and runs a forward pass there.

    .venv/bin/python .ci/smp_lower_bound.py [VERSION]   # default: the bound in pyproject.toml
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK = """
import segmentation_models_pytorch as smp, torch
from packaging.version import Version
from pixpro.config import BackboneConfig
from pixpro.model.backbone import build_backbone
assert Version(smp.__version__) == Version({version!r}), smp.__version__
features = build_backbone(BackboneConfig(arch="smp_unet")).eval()(torch.randn(1, 3, 64, 128))
assert features.shape == (1, BackboneConfig().dim, 64, 128), features.shape
print("segmentation-models-pytorch", smp.__version__, "runs the smp_unet backbone")
"""


def declared_lower_bound() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"segmentation-models-pytorch>=([0-9.]+)', text)
    if match is None:
        sys.exit("pyproject.toml declares no lower bound for segmentation-models-pytorch")
    return match.group(1)


def main() -> None:
    version = sys.argv[1] if len(sys.argv) > 1 else declared_lower_bound()
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", folder,
                        f"segmentation-models-pytorch=={version}"], check=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, str(ROOT)])}
        result = subprocess.run([sys.executable, "-c", CHECK.format(version=version)], env=env, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"segmentation-models-pytorch=={version} (the declared lower bound) cannot run the backbone")


if __name__ == "__main__":
    main()
