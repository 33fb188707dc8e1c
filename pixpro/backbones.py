"""The two backbones every evaluation stage runs for (dvc.yaml's `foreach`): the pretrained
one and its random-init twin, which carries each experiment's baseline."""

BACKBONES: tuple[str, ...] = ("pretrained", "random")
