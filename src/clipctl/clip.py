"""The clip settings of one update: the one place that says which bounds are valid (no torch).

``ClipSpec(eps_low, eps_high, dual_clip_c)`` is checked once, when it is made;
the config (``algo.*``), the simulator and the policy losses all take one, so
the rule below is written here only (docs/definitions.md section 4):

- ``eps_low`` in ``(0, 1]``: the ratio floor ``1 - eps_low`` for ``A < 0``; 1 disables clip-low;
- ``eps_high`` in ``(0, inf]``: the ratio cap ``1 + eps_high`` for ``A > 0``; ``inf`` disables clip-high;
- ``dual_clip_c`` ``> 1`` or ``None``: the loss of an ``A < 0`` token is at most ``-c A``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from clipctl.errors import ConfigError


def clip_problem(eps_low: float, eps_high: float, dual_clip_c: Optional[float] = None, prefix: str = "") -> Optional[str]:
    """The first broken rule as one message (keys spelled ``prefix + name``), or None."""
    if not 0.0 < eps_low <= 1.0:  # also rejects NaN
        return f"{prefix}eps_low={eps_low} must be in (0, 1]; use 1 to disable clip-low"
    if not eps_high > 0.0:  # also rejects NaN and -inf; +inf is > 0
        return f"{prefix}eps_high={eps_high} must be in (0, inf]; use inf to disable clip-high"
    if dual_clip_c is not None and not dual_clip_c > 1.0:
        return f"{prefix}dual_clip_c={dual_clip_c} must be > 1; use none to disable dual clip"
    return None


@dataclass(frozen=True)
class ClipSpec:
    """Clip-low, clip-high and dual-clip bounds of an update, valid by construction."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: Optional[float] = None

    def __post_init__(self):
        problem = clip_problem(self.eps_low, self.eps_high, self.dual_clip_c)
        if problem:
            raise ConfigError(problem)

    @property
    def low_on(self) -> bool:
        return self.eps_low < 1.0

    @property
    def high_on(self) -> bool:
        return not math.isinf(self.eps_high)

    def without_dual(self) -> "ClipSpec":
        return ClipSpec(self.eps_low, self.eps_high)
