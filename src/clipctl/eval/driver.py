"""The pass@k evaluation driver: sample, grade, score, write Parquet (docs/definitions.md section 9).

``evaluate(target, dataset)`` evaluates a model, or each chosen checkpoint of a
run directory, on a benchmark; ``evaluate_checkpoint`` does the same for a model
already in memory (the trainer's periodic evaluation). The estimators live in
``clipctl.eval.passk``, the datasets, templates and graders in ``clipctl.data``;
this module adds the model, the files and resume.

1. Prompts: the benchmark's template (``{prompt}``, or its alias ``{problem}``,
   replaced by the problem), then the tokenizer's chat template when it has
   one: ``data.format_prompt`` with ``chat_template='auto'``, the same
   function that makes training prompts.
2. Sampling goes through the rollout interface (``make_engine``): ``n``
   samples per problem, ``batch_prompts`` problems per ``generate`` call. Each
   call is seeded from ``(seed, step, batch index)``, so a batch's samples do
   not depend on what ran before it: results are reproducible, and an
   interrupted checkpoint resumes with exactly the samples it would have drawn.
3. Resume: a step folder's ``settings.json`` says what its files were made
   with. Finished batches are kept under ``parts/``; ``samples.parquet``
   appears only when every batch is done (then ``parts/`` is removed). A call
   whose settings match a finished step loads no model and generates nothing;
   it only recomputes the scores, so new k values are free.
4. One writer: the whole call holds ``rundir.RunLock`` on the output root (on
   the run directory when the root is inside one). Another evaluation of the
   same root waits for it (up to ``lock_wait`` seconds) and then reuses its
   samples, so concurrent calls with different k both keep every row.
5. Scores: per-problem unbiased pass@k and mean@n averaged over problems, with
   a percentile bootstrap over problems (``passk.bootstrap_ci``, seeded by
   ``seed``, so every k sees the same resamples).

Files, with ``ROOT`` = ``runs/<name>/eval`` for a run directory,
``runs/eval/<model>`` for a model (its step is recorded as 0, the step a run
starting from it would give it), or ``out`` when given::

    ROOT/summary.parquet                   one row per (step, dataset, n, k, temperature, seed); latest wins
    ROOT/<dataset>/step-N/settings.json    what the files beside it were made with
    ROOT/<dataset>/step-N/samples.parquet  one row per sample, written when the step is complete
    ROOT/<dataset>/step-N/summary.parquet  this step's rows of ROOT/summary.parquet
    ROOT/<dataset>/step-N/parts/           finished batches of an unfinished step

Example::

    results = evaluate("runs/r", "gsm8k", EvalConfig(n=8, k=(1, 8), limit=50), seed=0, checkpoints="last")

Settings are a ``config.EvalConfig`` (the run's ``eval`` section, or built from
``eval-passk``'s flags) plus the seed, an argument of its own: ``train.seed``
for the trainer, ``--seed`` for ``eval-passk``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from clipctl.config import EvalConfig, check_section, check_seed
from clipctl.data import (
    BENCHMARKS,
    GRADERS,
    LOCAL_GRADER,
    LOCAL_TEMPLATE,
    Problem,
    extract_prediction,
    format_prompt,
    grade_many,
    gsm8k_gold,
    load_benchmark,
    normalize_template,
)
from clipctl.errors import ConfigError, DataError, ModelError, RunDirError
from clipctl.eval.passk import bootstrap_ci, mean_at_n, pass_at_k_array
from clipctl.rundir import RunLock, ensure_output_dir
from clipctl.runlog import atomic_write_json, read_meta, write_parquet_atomic
from clipctl.runlog import checkpoints as run_checkpoints

SAMPLE_COLUMNS = ("problem_id", "sample_index", "response", "prediction", "correct", "response_tokens", "truncated")
SUMMARY_COLUMNS = (
    "step", "dataset", "n", "k", "temperature", "top_p", "max_new_tokens", "seed",
    "n_problems", "pass_at_k", "mean_at_n", "ci_low", "ci_high",
)
# Extra summary columns: the mean@n interval, and how often max_new_tokens cut a response.
EXTRA_SUMMARY_COLUMNS = ("mean_at_n_ci_low", "mean_at_n_ci_high", "truncated_frac", "response_tokens_mean")
SUMMARY_KEY = ("step", "dataset", "n", "k", "temperature", "seed")
MODEL_STEP = 0  # the step recorded for a plain model target
_STEP_RE = re.compile(r"^(?:step-)?(\d+)$")

Progress = Callable[[int, int], None]  # (samples done, samples in total), over all chosen steps
Log = Callable[[str], None]


# ---------------------------------------------------------------------------
# Datasets, targets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSet:
    """The problems of one dataset with the template and grader that go with them."""

    name: str  # folder name under ROOT and the ``dataset`` column
    problems: list[Problem]
    grader: str
    template: str
    fingerprint: str = field(default="")  # hash of problems, template and grader


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-.") or "x"


def load_eval_set(
    dataset: str,
    *,
    problem_col: Optional[str] = None,
    answer_col: Optional[str] = None,
    id_col: Optional[str] = None,
    limit: Optional[int] = None,
    grader: Optional[str] = None,
    template: Optional[str] = None,
) -> EvalSet:
    """Problems of a benchmark or a local file, with its grader and prompt template.

    A local file defaults to the ``math_verify`` grader and the MATH template
    (answer in ``\\boxed{}``); its name is the file's stem.
    """
    bench = BENCHMARKS.get(dataset)
    problems = load_benchmark(dataset, problem_col=problem_col, answer_col=answer_col, id_col=id_col, limit=limit)
    name = bench.name if bench else _slug(Path(dataset).stem)
    grader = grader or (bench.grader if bench else LOCAL_GRADER)
    if grader not in GRADERS:
        raise ConfigError(f"unknown grader {grader!r}; valid: {', '.join(GRADERS)}")
    # Normalised, so "{problem}" and "{prompt}" spellings share one fingerprint.
    template = normalize_template(template or (bench.template if bench else LOCAL_TEMPLATE))
    if grader == "gsm8k":  # its gold must be a number: fail now, not after sampling
        for p in problems:
            try:
                gsm8k_gold(p.answer)
            except ValueError as e:
                raise DataError(
                    f"problem {p.id!r} of {dataset}: {e}; choose another --answer-col or --grader math_verify"
                ) from None
    seen: dict[str, int] = {}
    for row, p in enumerate(problems):
        if p.id in seen:
            raise DataError(
                f"problem id {p.id!r} appears twice in {dataset} (rows {seen[p.id]} and {row}); "
                "ids must be unique: choose another column with --id-col"
            )
        seen[p.id] = row
    digest = hashlib.sha256(
        json.dumps([grader, template, [asdict(p) for p in problems]], ensure_ascii=False).encode()
    ).hexdigest()[:16]
    return EvalSet(name, problems, grader, template, digest)


@dataclass(frozen=True)
class Target:
    """What to evaluate: ``(step, model path, model key)`` triples and the output root."""

    steps: list[tuple[int, str, str]]
    root: Path
    run_dir: Optional[Path]


def model_label(target: str) -> str:
    """Folder name for a model target: a local folder's name, else the sanitized id."""
    path = Path(target)
    return _slug(path.resolve().name if path.is_dir() else target)


def select_checkpoints(found: list[tuple[int, Path]], spec: str, run_dir: Path) -> list[tuple[int, Path]]:
    """``all``, ``last`` or a comma list of ``step-N`` (or ``N``) from ``found``."""
    spec = spec.strip()
    if spec == "all":
        return list(found)
    if spec == "last":
        return found[-1:]
    by_step = dict(found)
    available = ", ".join(f"step-{s}" for s, _ in found)
    chosen = []
    for item in (part.strip() for part in spec.split(",")):
        m = _STEP_RE.match(item)
        if not m:
            raise ConfigError(f"--checkpoints {spec!r}: use all, last or step-N,... (e.g. step-1,step-2)")
        step = int(m.group(1))
        if step not in by_step:
            raise RunDirError(f"checkpoint 'step-{step}' not found in {run_dir}; available: {available}")
        if step not in [s for s, _ in chosen]:
            chosen.append((step, by_step[step]))
    return sorted(chosen)


def resolve_target(target: str, checkpoints: str = "all", out: Optional[Path] = None) -> Target:
    """A run directory (a folder with ``run.json``) or a model (HF id, local folder, builtin:tiny)."""
    path = Path(target)
    if path.is_dir() and (path / "run.json").is_file():
        read_meta(path)
        found = run_checkpoints(path)
        if not found:
            raise RunDirError(
                f"run directory {target} has no checkpoints (checkpoints/step-N with trainer_state.pt); "
                "train with train.save_every > 0, or pass a model instead"
            )
        chosen = select_checkpoints(found, checkpoints, path)
        root = Path(out) if out is not None else path / "eval"
        return Target([(s, str(p), f"step-{s}") for s, p in chosen], root, path)
    if (path.is_absolute() or target.startswith((".", "~"))) and not path.expanduser().exists():
        raise ModelError(f"model folder {target} does not exist; pass a model folder, an HF id or builtin:tiny")
    if checkpoints.strip() not in ("all", "last"):
        raise ConfigError(
            f"--checkpoints {checkpoints} needs a run directory (a folder with run.json); {target} is a model"
        )
    root = Path(out) if out is not None else Path("runs") / "eval" / model_label(target)
    # A local folder is keyed by its absolute path, so "m" and "./m" count as the same model.
    key = str(path.resolve()) if path.is_dir() else target
    return Target([(MODEL_STEP, target, key)], root, None)


# ---------------------------------------------------------------------------
# Scores (pure)
# ---------------------------------------------------------------------------


def _sorted_ks(cfg: EvalConfig) -> tuple[int, ...]:
    """The k values of pass@k as scored: sorted, each once."""
    return tuple(sorted({int(k) for k in cfg.k}))


def summarize(samples: pd.DataFrame, *, step: int, dataset: str, cfg: EvalConfig, seed: int) -> pd.DataFrame:
    """Summary rows, one per k (sorted, each once), from a step's samples (docs/definitions.md section 9).

    Per problem ``c`` = correct samples out of ``n``; pass@k and mean@n are the
    averages over problems of ``pass_at_k_array(n, c, k)`` and ``c / n``; the
    intervals are percentile bootstraps over problems seeded by ``seed``.
    """
    grouped = samples.groupby("problem_id", sort=False)
    sizes = grouped.size().to_numpy()
    if np.any(sizes != cfg.n):
        raise RunDirError(
            f"step {step} of {dataset}: samples hold {int(sizes.min())}..{int(sizes.max())} samples per problem, "
            f"expected n={cfg.n}; delete that step folder and rerun"
        )
    counts = grouped["correct"].sum().to_numpy().astype(np.int64)
    acc = mean_at_n(cfg.n, counts)
    acc = np.atleast_1d(np.asarray(acc, dtype=np.float64))
    mean_lo, mean_hi = bootstrap_ci(acc, seed=seed)
    rows = []
    for k in _sorted_ks(cfg):
        per_problem = pass_at_k_array(cfg.n, counts, k)
        lo, hi = bootstrap_ci(per_problem, seed=seed)
        rows.append({
            "step": int(step), "dataset": dataset, "n": int(cfg.n), "k": int(k),
            "temperature": float(cfg.temperature), "top_p": float(cfg.top_p),
            "max_new_tokens": int(cfg.max_new_tokens), "seed": int(seed),
            "n_problems": int(len(counts)), "pass_at_k": float(per_problem.mean()),
            "mean_at_n": float(acc.mean()), "ci_low": lo, "ci_high": hi,
            "mean_at_n_ci_low": mean_lo, "mean_at_n_ci_high": mean_hi,
            "truncated_frac": float(samples["truncated"].mean()),
            "response_tokens_mean": float(samples["response_tokens"].mean()),
        })
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS + EXTRA_SUMMARY_COLUMNS))


def merge_summary(path: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Add ``rows`` to the summary at ``path`` (latest row wins per ``SUMMARY_KEY``), atomically."""
    frames = []
    if path.is_file():
        try:
            frames.append(pd.read_parquet(path))
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise RunDirError(
                f"cannot read {path} ({type(e).__name__}); delete it and rerun (step folders keep the samples)"
            ) from None
    frames.append(rows)
    merged = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    merged = merged.drop_duplicates(subset=list(SUMMARY_KEY), keep="last")
    merged = merged.sort_values(["dataset", "step", "n", "temperature", "seed", "k"], kind="stable")
    merged = merged.reset_index(drop=True)
    write_parquet_atomic(merged, path)
    return merged


# ---------------------------------------------------------------------------
# One step: generate (resumably), grade, write
# ---------------------------------------------------------------------------


def batch_seed(seed: int, step: int, batch: int) -> int:
    """Seed of one ``generate`` call, a pure function of (seed, step, batch index)."""
    return int(np.random.SeedSequence([seed, step, batch]).generate_state(1, np.uint32)[0])


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _work_key(model_key: str, step: int, eval_set: EvalSet, cfg: EvalConfig, seed: int) -> dict:
    """Everything that decides a step's samples (``batch_prompts`` aside: any batching gives valid samples).

    These keys and values are what earlier ``settings.json`` files hold (``limit`` None for all problems),
    so their finished steps are reused.
    """
    return {
        "model": model_key, "step": int(step), "dataset": eval_set.name, "fingerprint": eval_set.fingerprint,
        "grader": eval_set.grader, "template": eval_set.template, "n": int(cfg.n), "temperature": float(cfg.temperature),
        "top_p": float(cfg.top_p), "max_new_tokens": int(cfg.max_new_tokens), "seed": int(seed),
        "limit": _limit(cfg), "n_problems": len(eval_set.problems),
    }


def _limit(cfg: EvalConfig) -> Optional[int]:
    """``eval.limit`` as the data layer takes it: None for every problem (the config's 0)."""
    return int(cfg.limit) if cfg.limit else None


def _prompt_ids(eval_set: EvalSet, tokenizer) -> list[list[int]]:
    texts = [format_prompt(p.problem, eval_set.template, tokenizer, "auto") for p in eval_set.problems]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _generate_batch(engine, prompts: list[list[int]], problems: Sequence[Problem], cfg: EvalConfig, seed: int) -> pd.DataFrame:
    """One ``generate`` call; ``seed`` is the batch's (``batch_seed``), not the evaluation's."""
    from clipctl.rollout import SamplingParams

    out = engine.generate(prompts, SamplingParams(cfg.n, cfg.temperature, cfg.top_p, cfg.max_new_tokens, seed))
    if len(out.response_text) != len(problems) * cfg.n:
        raise RuntimeError(
            f"engine returned {len(out.response_text)} responses for {len(problems)} prompts x n={cfg.n}"
        )
    return pd.DataFrame({
        "problem_id": [p.id for p in problems for _ in range(cfg.n)],
        "sample_index": [j for _ in problems for j in range(cfg.n)],
        "response": list(out.response_text),
        "response_tokens": out.response_mask.sum(dim=1).cpu().numpy().astype(np.int64),
        "truncated": out.truncated.cpu().numpy().astype(bool),
    })


def _evaluate_step(
    step: int,
    model_key: str,
    step_dir: Path,
    eval_set: EvalSet,
    cfg: EvalConfig,
    seed: int,
    get_engine: Callable[[], tuple[object, object]],
    advance: Callable[[int], None],
    log: Log,
) -> pd.DataFrame:
    """The samples of one step: read back when done with the same settings, else generated."""
    samples_path = step_dir / "samples.parquet"
    key = _work_key(model_key, step, eval_set, cfg, seed)
    stored = _read_json(step_dir / "settings.json")
    if stored is not None and {k: stored.get(k) for k in key} == key and samples_path.is_file():
        log(f"step {step}: {eval_set.name} already sampled with these settings; no generation")
        advance(len(eval_set.problems) * cfg.n)
        return pd.read_parquet(samples_path)

    engine, tokenizer = get_engine()  # before touching files: a bad model path leaves nothing behind
    run_key = {**key, "batch_prompts": int(cfg.batch_prompts)}
    parts = step_dir / "parts"
    if stored != run_key:  # other work (or other batching) in this folder: start it afresh
        samples_path.unlink(missing_ok=True)
        (step_dir / "summary.parquet").unlink(missing_ok=True)
        shutil.rmtree(parts, ignore_errors=True)
        atomic_write_json(step_dir / "settings.json", run_key)
    prompts = _prompt_ids(eval_set, tokenizer)
    frames = []
    size = cfg.batch_prompts
    for b, start in enumerate(range(0, len(eval_set.problems), size)):
        chunk = eval_set.problems[start : start + size]
        part = parts / f"batch-{b:06d}.parquet"
        if part.is_file():
            frames.append(pd.read_parquet(part))
        else:
            df = _generate_batch(engine, prompts[start : start + size], chunk, cfg, batch_seed(seed, step, b))
            write_parquet_atomic(df, part)
            frames.append(df)
        advance(len(chunk) * cfg.n)
    samples = pd.concat(frames, ignore_index=True)
    golds = {p.id: p.answer for p in eval_set.problems}
    log(f"step {step}: grading {len(samples)} responses ({eval_set.grader})")
    responses = samples["response"].tolist()
    scores = grade_many(
        eval_set.grader, responses, [golds[pid] for pid in samples["problem_id"]], processes=cfg.grader_processes
    )
    samples["prediction"] = [extract_prediction(eval_set.grader, r) for r in responses]
    samples["correct"] = np.asarray(scores) > 0.5
    samples = samples[list(SAMPLE_COLUMNS)]
    write_parquet_atomic(samples, samples_path)  # the step is complete only from here on
    shutil.rmtree(parts, ignore_errors=True)
    return samples


def _run_steps(
    target: Target,
    eval_set: EvalSet,
    cfg: EvalConfig,
    seed: int,
    engine_for: Callable[[str], Callable[[], tuple[object, object]]],
    progress: Optional[Progress],
    log: Log,
) -> pd.DataFrame:
    total = len(target.steps) * len(eval_set.problems) * cfg.n
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    frames = []
    for step, model_path, model_key in target.steps:
        step_dir = target.root / eval_set.name / f"step-{step}"
        samples = _evaluate_step(step, model_key, step_dir, eval_set, cfg, seed, engine_for(model_path), advance, log)
        rows = summarize(samples, step=step, dataset=eval_set.name, cfg=cfg, seed=seed)
        merge_summary(step_dir / "summary.parquet", rows)
        merge_summary(target.root / "summary.parquet", rows)
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def _inside(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _eval_set(dataset: str, cfg: EvalConfig) -> EvalSet:
    return load_eval_set(
        dataset, problem_col=cfg.problem_col, answer_col=cfg.answer_col, id_col=cfg.id_col, limit=_limit(cfg),
        grader=cfg.grader, template=cfg.template,
    )


def _check_settings(cfg: EvalConfig, seed: int) -> None:
    check_section("eval", cfg)
    check_seed(seed)


def _check_engine(engine: str) -> None:
    from clipctl.rollout import ENGINES

    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def evaluate(
    target: str,
    dataset: str,
    cfg: EvalConfig = EvalConfig(),
    *,
    seed: int = 0,
    engine: str = "hf",
    checkpoints: str = "all",
    out: Optional[Union[str, Path]] = None,
    dtype: str = "float32",
    device: Optional[str] = None,
    lock_wait: float = 3600.0,
    progress: Optional[Progress] = None,
    log: Optional[Log] = None,
) -> pd.DataFrame:
    """Evaluate a model or a run directory's checkpoints; returns the summary rows of this call.

    Args:
        target: HF id, local model folder, ``builtin:tiny``, or a run directory
            (a folder with ``run.json``): then each chosen checkpoint.
        dataset: a ``BENCHMARKS`` name or a local ``.jsonl``/``.json``/``.parquet`` file.
        cfg: sampling, grading, scoring and dataset columns (``EvalConfig``; ``every`` and
            ``datasets`` are the trainer's and unused here).
        seed: sampling and bootstrap seed, in [0, ``config.MAX_SEED``].
        engine: rollout engine name (``rollout.ENGINES``).
        checkpoints: ``all``, ``last`` or ``step-N,...`` (run directories only).
        out: output root instead of ``runs/<name>/eval`` or ``runs/eval/<model>``.
        dtype, device: how to load the model (device: cuda when available).
        lock_wait: seconds to wait while another ``eval-passk`` writes the same output
            (a training run holding it is refused at once); 0 refuses at once.
        progress: called with (samples done, samples in total) over all steps.
        log: receives one-line messages.

    Returns:
        one row per (step, k) with ``SUMMARY_COLUMNS`` and ``EXTRA_SUMMARY_COLUMNS``.

    Raises:
        ConfigError, DataError, ModelError, RunDirError: bad settings, dataset,
        model path or run directory.
    """
    log = log or (lambda msg: None)
    _check_settings(cfg, seed)
    _check_engine(engine)
    from clipctl.models import DTYPES

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    eval_set = _eval_set(dataset, cfg)
    plan = resolve_target(str(target), checkpoints, Path(out) if out is not None else None)

    def engine_for(model_path: str) -> Callable[[], tuple[object, object]]:
        loaded: list = []

        def get():  # loads on first call only: finished steps never load their model
            if not loaded:
                import torch

                from clipctl.models import load_model, load_tokenizer, resolve_model_path
                from clipctl.rollout import make_engine

                resolved = resolve_model_path(model_path, log)
                tokenizer = load_tokenizer(resolved)
                dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
                model = load_model(resolved, dtype).to(dev)
                model.eval()
                loaded.append((make_engine(engine, model, tokenizer), tokenizer))
            return loaded[0]

        return get

    # The whole evaluation holds one lock: two evaluations into one root would otherwise share step
    # folders and read-modify-write summary.parquet at once, losing rows. Inside a run directory it is
    # the run's lock, so a training run and an evaluation never write the run at once.
    in_run = plan.run_dir is not None and _inside(plan.root, plan.run_dir)
    lock = RunLock(plan.run_dir if in_run else plan.root, "eval-passk", wait=lock_wait, log=log, elsewhere="pass another --out")
    created: list[Path] = []
    try:
        with contextlib.ExitStack() as held:
            if in_run:
                held.enter_context(lock)
            created = ensure_output_dir(plan.root, "--out")  # before any sampling: a bad place fails at once
            if not in_run:  # the root's lock file needs the root
                held.enter_context(lock)
            results = _run_steps(plan, eval_set, cfg, seed, engine_for, progress, log)
    except BaseException:
        for folder in reversed(created):  # after the lock file is gone: leave no empty folders behind
            _rmdir_if_empty(folder)
        raise
    log(f"eval directory: {plan.root}")
    return results


def evaluate_checkpoint(
    model,
    tokenizer,
    run_dir: Union[str, Path],
    step: int,
    dataset: str,
    cfg: EvalConfig = EvalConfig(),
    *,
    seed: int = 0,
    engine: Union[str, object] = "hf",
    out: Optional[Union[str, Path]] = None,
    progress: Optional[Progress] = None,
    log: Optional[Log] = None,
) -> pd.DataFrame:
    """Evaluate an in-memory model as step ``step`` of ``run_dir``; same files as ``evaluate``.

    For the trainer's periodic evaluation (``cfg`` the run's ``eval`` section,
    ``seed`` its ``train.seed``). ``engine`` is an engine name or a
    ready ``RolloutEngine`` (e.g. the trainer's vLLM engine after
    ``sync_weights``). The global torch RNG state is restored afterwards, so a
    run's training draws are the same with and without evaluation. The files
    count as step ``step`` of the run: ``clipctl eval-passk RUN_DIR`` with the
    same settings later skips that step.
    """
    import torch

    from clipctl.rollout import make_engine

    log = log or (lambda msg: None)
    _check_settings(cfg, seed)
    if isinstance(engine, str):
        _check_engine(engine)
    if step < 0:
        raise ConfigError(f"step ({step}) must be >= 0")
    eval_set = _eval_set(dataset, cfg)
    run_dir = Path(run_dir)
    root = Path(out) if out is not None else run_dir / "eval"
    plan = Target([(int(step), "", f"step-{int(step)}")], root, run_dir)

    def engine_for(_: str):
        return lambda: (make_engine(engine, model, tokenizer) if isinstance(engine, str) else engine, tokenizer)

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        return _run_steps(plan, eval_set, cfg, seed, engine_for, progress, log)
