"""The knobs each step trains with: clip bounds and entropy-bonus coefficient, fixed or controlled.

Without ``algo.entropy_target`` the knobs are the config's ``eps_low``,
``eps_high`` and ``entropy_coef`` at every step. With it, ``algo.control``'s
controller sets ``eps_low`` and ``eps_high`` (clip controller, split-range)
or ``entropy_coef`` (bonus controller) from the step's measured Eq. 4
entropy before its updates, against the step's target
(``algo.entropy_target`` and ``algo.entropy_target_schedule``). The values
used and the step's target are logged every step (``eps_low``, ``eps_high``,
``entropy_coef``, ``entropy_target`` columns) and the controller's state
(integral, filtered entropy; with the model step its last output and the
previous step's observation) is saved in checkpoints, so a resumed run
continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from clipctl import algo, schema
from clipctl.algo.control import ControlState, Observation, observe, target_at
from clipctl.config import parse_schedule


@dataclass(frozen=True)
class Knobs:
    eps_low: float
    eps_high: float
    entropy_coef: float
    entropy_target: float = math.nan  # the step's target; NaN without a controller


class EntropyControl:
    def __init__(self, a):
        clip = a.clip  # the policy loss's own two bounds (config.FAMILY_KEYS)
        self.fixed = Knobs(clip.eps_low, clip.eps_high, a.entropy_coef)
        self.state = ControlState()
        self.settings = None
        if a.entropy_target is not None:
            self.settings = algo.ControlSettings(
                target=a.entropy_target, kind=a.entropy_controller, kp=a.controller_kp, ki=a.controller_ki,
                eps_low0=a.eps_low, eps_low_min=a.eps_low_min, eps_low_max=a.eps_low_max,
                coef0=a.entropy_coef, coef_scale=a.entropy_coef_scale, coef_max=a.entropy_coef_max,
                coef_min=a.entropy_coef_min,
                eps_high0=a.eps_high, eps_high_min=a.eps_high_min, eps_high_max=a.eps_high_max,
                ema=a.entropy_ema, schedule=parse_schedule(a.entropy_target_schedule),
                model=a.controller_model, model_frac=a.controller_model_frac, model_gain=a.controller_model_gain,
            )

    def step(self, entropy: float, step: int) -> Knobs:
        """The knobs of step ``step`` whose entropy before its updates is ``entropy`` (advances the state)."""
        s = self.settings
        if s is None:
            return self.fixed
        value, self.state = algo.control_step(entropy, self.state, s, step)
        target = target_at(s, step)
        if s.kind == "clip":
            return Knobs(value[0], value[1], self.fixed.entropy_coef, target)
        return Knobs(self.fixed.eps_low, self.fixed.eps_high, value, target)

    def observe(self, row: dict) -> None:
        """Keep what the model step reads from a finished step's logged row (nothing without the model step)."""
        if self.settings is None or self.settings.model == "none":
            return
        self.state = observe(self.state, Observation(
            eps_low=row["eps_low"], eps_high=row["eps_high"],
            p=row["ratio_below_frac_offpolicy"], q=row["ratio_above_frac_offpolicy"],
            b_low=row["thm2_low"], b_high=row["thm2_high"], dH=row["entropy_post"] - row["entropy"],
        ))

    def columns(self, knobs: Knobs) -> dict:
        """The steps-table columns of the knobs used (target NaN when no controller)."""
        return schema.knob_columns(knobs.eps_low, knobs.eps_high, knobs.entropy_coef, knobs.entropy_target)

    def state_dict(self) -> dict:
        obs = self.state.observed
        return {"integral": self.state.integral, "filtered": self.state.filtered, "model_u": self.state.model_u,
                "observed": None if obs is None else dataclasses.asdict(obs)}

    def load_state_dict(self, state: dict) -> None:
        obs = state.get("observed")
        self.state = ControlState(
            float(state.get("integral", 0.0)), float(state.get("filtered", math.nan)),
            float(state.get("model_u", 0.0)), None if obs is None else Observation(**obs),
        )
