"""Per-step schedules, precomputed once and checked, so nothing drifts inside the loop."""

from __future__ import annotations

import numpy as np


def warmup_cosine(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                  warmup_start: float = 0.0) -> np.ndarray:
    """(total_steps,) values: linear warm-up from warmup_start to base, then cosine to final."""
    warmup_steps = min(warmup_steps, total_steps)
    warmup = np.linspace(warmup_start, base, warmup_steps, endpoint=False)
    decay_steps = total_steps - warmup_steps
    progress = np.arange(decay_steps) / max(decay_steps - 1, 1)
    decay = final + 0.5 * (base - final) * (1 + np.cos(np.pi * progress))
    schedule = np.concatenate([warmup, decay])
    assert len(schedule) == total_steps
    return schedule


def momentum_schedule(start: float, total_steps: int) -> np.ndarray:
    """(total_steps,) target momentum: cosine from `start` up to 1 (BYOL)."""
    return warmup_cosine(start, 1.0, total_steps)
