"""The knobs each step trains with: clip bounds and entropy-bonus coefficient, fixed or controlled.

Without ``algo.entropy_target`` the knobs are the config's ``eps_low``,
``eps_high`` and ``entropy_coef`` at every step. With it, ``algo.control``'s PI
controller sets ``eps_low`` (clip controller) or ``entropy_coef`` (bonus
controller) from the step's measured Eq. 4 entropy before its updates. The
values used are logged every step (``eps_low``, ``eps_high``, ``entropy_coef``
columns) and the controller's integral is saved in checkpoints, so a resumed
run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipctl import algo, schema


@dataclass(frozen=True)
class Knobs:
    eps_low: float
    eps_high: float
    entropy_coef: float


class EntropyControl:
    def __init__(self, a):
        clip = a.clip  # the policy loss's own two bounds (config.FAMILY_KEYS)
        self.fixed = Knobs(clip.eps_low, clip.eps_high, a.entropy_coef)
        self.target = a.entropy_target
        self.integral = 0.0
        self.settings = None
        if a.entropy_target is not None:
            self.settings = algo.ControlSettings(
                target=a.entropy_target, kind=a.entropy_controller, kp=a.controller_kp, ki=a.controller_ki,
                eps_low0=a.eps_low, eps_low_min=a.eps_low_min, eps_low_max=a.eps_low_max,
                coef0=a.entropy_coef, coef_scale=a.entropy_coef_scale, coef_max=a.entropy_coef_max,
            )

    def step(self, entropy: float) -> Knobs:
        """The knobs of a step whose entropy before its updates is ``entropy`` (advances the integral)."""
        if self.settings is None:
            return self.fixed
        value, self.integral = algo.control_step(entropy, self.integral, self.settings)
        if self.settings.kind == "clip":
            return Knobs(value, self.fixed.eps_high, self.fixed.entropy_coef)
        return Knobs(self.fixed.eps_low, self.fixed.eps_high, value)

    def columns(self, knobs: Knobs) -> dict:
        """The steps-table columns of the knobs used (target NaN when no controller)."""
        return schema.knob_columns(knobs.eps_low, knobs.eps_high, knobs.entropy_coef, self.target)

    def state_dict(self) -> dict:
        return {"integral": self.integral}

    def load_state_dict(self, state: dict) -> None:
        self.integral = float(state.get("integral", 0.0))
