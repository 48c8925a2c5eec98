"""Run logs -> tables (pandas). No plotting, no printing.

``analyze_runs`` turns run directories (``clipctl train`` or ``clipctl
simulate``) into one row per run and one row per group of runs (seeds of one
setting). Column meanings are in ``docs/analysis.md``; the quantities are those
of docs/definitions.md sections 5-8.

Two caveats are built into the names:

1. ``thm*_vs_raw_*`` compare the predicted drift with the raw change
   ``entropy_post - entropy``, which mixes clipping with everything else the
   step did (docs/definitions.md section 8); they are confounded and expected
   to be weak or negative.
2. ``thm*_vs_attr_*`` compare it with the clip-attributed change of the clip
   probe (docs/definitions.md section 8), the test the theory is actually about.

Simulated runs (``clipctl simulate``) also log the exact value of each
estimator (``<name>_exact``); ``thm*_vs_exact_*`` then say how well the
sampled estimators track the quantities they estimate.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from clipctl.config import Config, config_to_dict
from clipctl.errors import ClipctlError, RunDirError
from clipctl.runlog import Run, logged_steps, read_columns, read_run

# Always in the default grouping (so every label names the clip setting); the
# other default keys are those whose values differ between the runs.
CLIP_GROUP_KEYS = ("algo.eps_low", "algo.eps_high")
# Config keys by their last name: the clip knobs a setting comparison changes,
# and the seeds that tell the runs of one setting apart.
CLIP_KNOB_NAMES = ("eps_low", "eps_high", "dual_clip_c")
SEED_NAMES = ("seed",)
# How long a run is does not change any of its steps (no schedule depends on it).
RUN_LENGTH_KEYS = ("train.steps", "simulate.steps")
# A run collapsed when its final entropy is under this share of its first
# step's entropy, exploded when over EXPLODE_RATIO times it (docs/analysis.md).
COLLAPSE_RATIO, EXPLODE_RATIO = 0.25, 1.5
# Config values every per-run row carries (dotted section.key names).
CONFIG_KEYS = ("algo.eps_low", "algo.eps_high", "reward.kind", "train.seed", "optim.lr")
FRACTION_COLUMNS = ("clip_low_frac", "clip_high_frac", "ratio_below_frac", "ratio_above_frac")
BRACKET_COLUMNS = ("thm1_low", "thm1_high", "thm2_low", "thm2_high")
# The probe's replays (docs/definitions.md section 8) and what analysis derives from them for every run.
REPLAY_COLUMNS = ("entropy_post_replay", "entropy_post_noclip", "entropy_post_lowonly", "entropy_post_highonly")
ATTRIBUTED_COLUMNS = (
    "clip_attributed_dH", "clip_low_attributed_dH", "clip_high_attributed_dH",
    "clip_low_alone_dH", "clip_high_alone_dH", "clip_interaction_dH",
)
# The regressor of the attribution regression: what the step would have done to entropy without clipping.
NOCLIP_CHANGE = "noclip_dH"
# Regressed on NOCLIP_CHANGE per group: the total and its additive split.
REGRESSED_COLUMNS = ATTRIBUTED_COLUMNS[:3]
ID_COLUMNS = ("run", "path")
X_AXES = ("step", "tokens")


class AnalysisError(ClipctlError):
    """Runs cannot be found, grouped or summarised as asked."""


# ---------------------------------------------------------------- finding and reading runs


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def resolve_runs(paths_or_globs: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories named by paths or globs, in the given order, without repeats.

    A glob keeps only the matches that hold a ``run.json``. A folder without
    ``run.json`` whose sub-folders are runs (e.g. ``clipctl simulate dynamics --out``)
    stands for those runs. A plain path that is neither fails in ``read_run``
    with a message naming it.
    """
    found: list[Path] = []
    items = [str(p) for p in paths_or_globs]
    if not items:
        raise AnalysisError("no runs given; pass run directories or globs such as 'runs/*'")
    for item in items:
        if _is_glob(item):
            matches = [Path(m) for m in sorted(glob.glob(item))]
            runs = [m for m in matches if (m / "run.json").is_file()]
            if not runs:
                # A glob over a folder of folders of runs: look one level down.
                runs = [r for m in matches if m.is_dir() for r in _child_runs(m)]
            if not runs:
                raise AnalysisError(
                    f"no runs matched '{item}' ({len(matches)} paths matched, none holds a run.json); "
                    "check the path or quote the glob"
                )
            found.extend(runs)
        else:
            path = Path(item)
            if path.is_dir() and not (path / "run.json").is_file() and _child_runs(path):
                found.extend(_child_runs(path))
            else:
                found.append(path)
    seen, out = set(), []
    for p in found:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _child_runs(folder: Path) -> list[Path]:
    return sorted(c for c in folder.iterdir() if c.is_dir() and (c / "run.json").is_file())


def load_runs(
    paths_or_globs: Iterable[str | os.PathLike], note: Optional[Callable[[str], None]] = None
) -> list[Run]:
    """``read_run`` every resolved run; runs without steps yet (a run just started, or one that
    failed at start) are skipped with a one-line ``note`` each; none with steps is an error."""
    runs, empty = [], []
    for path in resolve_runs(paths_or_globs):
        run = read_run(path)
        if logged_steps(run.path):  # from the file names: the steps are read only by what needs them
            runs.append(run)
        else:
            empty.append(path)
    if not runs:
        others = f" (nor do {len(empty) - 1} other run(s))" if len(empty) > 1 else ""
        raise RunDirError(
            f"run '{empty[0]}' has no steps yet{others}; wait for its first step or leave it out of the list"
        )
    for path in empty:
        (note or (lambda msg: None))(f"note: skipped {path}: no steps yet")
    return runs


def read_eval_summary(run: Run) -> pd.DataFrame:
    """``<run>/eval/summary.parquet`` or an empty DataFrame when absent."""
    path = Path(run.path) / "eval" / "summary.parquet"
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path)
    except Exception as e:  # a torn or foreign file: name it and the fix
        raise RunDirError(f"cannot read {path}: {e}; rerun clipctl eval-passk for that run") from None


# ---------------------------------------------------------------- config values and groups


_DEFAULTS = config_to_dict(Config())


def config_value(run: Run, key: str):
    """``meta['config'][section][key]`` for a dotted ``section.key``; NaN when absent.

    A key the run's section lacks but the current config has (the run was
    made before the key existed, when it behaved as its default) reads as
    that default, so runs from before and after a new key group together.
    Simulator runs (a ``simulate`` section) are not ``clipctl train`` runs and
    get no defaults.
    """
    section, _, name = key.partition(".")
    values = run.config.get(section)
    if not isinstance(values, dict):
        return math.nan
    defaults = {} if "simulate" in run.config else _DEFAULTS.get(section, {})
    value = values.get(name, defaults.get(name, math.nan))
    if isinstance(value, (list, dict)):
        return str(value)
    if key == "algo.entropy_controller" and run.config.get("algo", {}).get("entropy_target") is None:
        return "off"  # no target: the controller setting does nothing
    return value


def valid_group_keys(runs: Sequence[Run]) -> list[str]:
    keys = set()
    for run in runs:
        for section, values in run.config.items():
            if isinstance(values, dict):
                keys.update(f"{section}.{k}" for k in values)
    return sorted(keys)


def parse_keys(text: Optional[str | Sequence[str]]) -> Optional[list[str]]:
    """``'algo.eps_low,optim.lr'`` (or a list of such strings) -> list of keys, each once; None stays None."""
    if text is None:
        return None
    items = [text] if isinstance(text, str) else list(text)
    # A repeated key would make a duplicate column, which pandas groups with a warning.
    keys = dict.fromkeys(k.strip() for item in items for k in item.split(",") if k.strip())
    return list(keys) or None


def _key_name(key: str) -> str:
    return key.rpartition(".")[2]


def default_group_keys(runs: Sequence[Run]) -> list[str]:
    """``algo.eps_low``, ``algo.eps_high`` and every other config key whose value differs between the runs.

    Seeds are left out (they tell a group's runs apart), and so are keys that
    restate a key already chosen: equal values on every run (``simulate.lr`` and
    ``optim.lr``), or for the ``simulate`` section, which restates the
    simulator's parameters, the same split of the runs (``simulate.reward``
    and ``reward.kind``).
    """
    values = {k: [format_value(config_value(r, k)) for r in runs] for k in valid_group_keys(runs)}
    chosen = [k for k in CLIP_GROUP_KEYS if k in values]
    for key in sorted(values, key=lambda k: (k.startswith("simulate."), k)):
        v = values[key]
        if key in chosen or _key_name(key) in SEED_NAMES or len(set(v)) < 2:
            continue
        if any(v == values[c] or (key.startswith("simulate.") and _same_split(v, values[c])) for c in chosen):
            continue
        chosen.append(key)
    return chosen


def _same_split(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether two value lists split the runs into the same groups."""
    return len(set(a)) == len(set(b)) == len(set(zip(a, b)))


def check_group_keys(runs: Sequence[Run], keys: Sequence[str]) -> None:
    valid = valid_group_keys(runs)
    for key in keys:
        if key not in valid:
            raise AnalysisError(
                f"unknown group key '{key}'; use section.key from the runs' config, one of: {', '.join(valid)}"
            )


def format_value(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:g}"
    return str(value)


_SHORT = {
    "algo.eps_low": "eps_low", "algo.eps_high": "eps_high", "reward.kind": "reward",
    "algo.entropy_target": "target", "algo.entropy_controller": "controller",
}


def group_label(values: dict, keys: Sequence[str]) -> str:
    """``{'algo.eps_low': 0.2, 'algo.eps_high': inf}`` -> ``'eps_low=0.2, eps_high=inf'``."""
    return ", ".join(f"{_SHORT.get(k, k)}={format_value(values[k])}" for k in keys)


def label_keys(values: Sequence[dict], keys: Sequence[str]) -> list[str]:
    """The keys a label needs: the clip settings always, any other key only where it varies."""
    varying = [k for k in keys if len({format_value(v[k]) for v in values}) > 1]
    return [k for k in keys if k in ("algo.eps_low", "algo.eps_high") or k in varying] or list(keys)


# ---------------------------------------------------------------- statistics helpers


# The statistics below work on plain float arrays (numpy, not pandas Series
# operations): analyze-clip-stats calls them a few dozen times per run, and over
# a sweep of 1,000 runs pandas' per-call overhead was most of the time.


def _pair(x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return a, b, np.isfinite(a) & np.isfinite(b)


def sign_agreement(x, y) -> float:
    """Share of rows with ``sign(x) == sign(y)`` among rows where both are finite and non-zero."""
    a, b, ok = _pair(x, y)
    ok &= (a != 0) & (b != 0)
    return float((np.sign(a[ok]) == np.sign(b[ok])).mean()) if ok.any() else math.nan


def pearson(x, y) -> float:
    """Pearson correlation over rows where both are finite; NaN with < 3 rows or a constant series."""
    a, b, ok = _pair(x, y)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson on pandas' average ranks (ties share theirs); no SciPy needed."""
    a, b, ok = _pair(x, y)
    return pearson(pd.Series(a[ok]).rank().to_numpy(), pd.Series(b[ok]).rank().to_numpy())


def _mean(v: np.ndarray) -> float:
    """Mean over the non-NaN values (pandas' ``mean``); NaN when there are none."""
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else math.nan


def mean_se(v: np.ndarray) -> tuple[float, float, int]:
    """Mean, standard error (sd / sqrt(n)) and count of the finite values; NaN where undefined."""
    v = v[np.isfinite(v)]
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    se = float(v.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return mean, se, n


def _positive_share(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float((v > 0).mean()) if len(v) else math.nan


# Clip events per step: the counts where the steps table has them, else the
# fractions (a count over a positive token count: > 0 exactly when a clip acted).
EVENT_COLUMNS = ("n_clip_low", "n_clip_high", "n_dual_clip", "clip_low_frac", "clip_high_frac", "dual_clip_frac")
# Every steps column the per-run summary reads (read_columns reads only these).
SUMMARY_COLUMNS = (
    "step", "entropy", "entropy_post", "entropy_target", "eps_low", "eps_high", "entropy_coef", "reward_mean",
    *FRACTION_COLUMNS, *BRACKET_COLUMNS, "thm1_drift", "thm2_drift", *REPLAY_COLUMNS, "probe_noise",
    *EVENT_COLUMNS, "ratio_below_frac_exact", "ratio_above_frac_exact", "thm1_drift_exact", "thm2_drift_exact",
)


def attribution_columns(steps) -> dict[str, np.ndarray]:
    """The clip attributions of every step, recomputed from the logged replay entropies.

    ``steps``: a mapping of column name -> array (a steps DataFrame or
    ``Columns.arrays``) with ``entropy``, ``entropy_post`` and the
    ``entropy_post_*`` replay columns. Returns ``ATTRIBUTED_COLUMNS``
    (``clipctl.effects.attribution_split``) and ``noclip_dH = entropy_post_noclip
    - entropy``, NaN on steps not probed. Analysis reads every run through this
    function, so runs logged before the Shapley split (whose
    ``clip_low/high_attributed_dH`` hold the one-sided values) and after it
    agree. Runs from before the fourth replay have no ``entropy_post_replay``:
    their real step stands in for it (``probe_noise`` is 0 on a CPU).
    """
    from clipctl.effects import attribution_split

    def col(name: str) -> np.ndarray:
        return np.asarray(steps[name], dtype=float) if name in steps else np.full(n, math.nan)

    n = len(steps["step"]) if "step" in steps else len(next(iter(steps.values()), []))
    replay = col("entropy_post_replay") if "entropy_post_replay" in steps else col("entropy_post")
    noclip = col("entropy_post_noclip")
    out = attribution_split(replay, noclip, col("entropy_post_lowonly"), col("entropy_post_highonly"))
    out[NOCLIP_CHANGE] = noclip - col("entropy")
    return out


def clip_events(c: "Columns") -> dict[str, np.ndarray]:
    """Per step, whether clip-low, clip-high and any clip (dual clip too) acted, from the event counts."""
    def acted(count: str, frac: str) -> np.ndarray:
        v = c[count] if count in c else c[frac]
        return np.nan_to_num(v, nan=0.0) > 0

    low, high = acted("n_clip_low", "clip_low_frac"), acted("n_clip_high", "clip_high_frac")
    return {"low": low, "high": high, "any": low | high | acted("n_dual_clip", "dual_clip_frac")}


class Columns:
    """A run's steps columns as float arrays in step order, with the attributions recomputed
    (``attribution_columns``); a column the run lacks reads as NaNs."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values()))) if arrays else 0

    @classmethod
    def of_arrays(cls, arrays: dict[str, np.ndarray]) -> "Columns":
        """Steps columns with the attributions recomputed from their replay entropies."""
        return cls({**arrays, **attribution_columns(arrays)})

    @classmethod
    def of_run(cls, run: Run) -> "Columns":
        return cls.of_arrays(read_columns(run.path, "steps", SUMMARY_COLUMNS))

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            return np.full(self.n, math.nan)
        return self.arrays[name]


def _col(steps: pd.DataFrame, name: str) -> pd.Series:
    return steps[name].astype(float) if name in steps else pd.Series(math.nan, index=steps.index)


# ---------------------------------------------------------------- combining updates


def combine_updates(updates: pd.DataFrame) -> pd.DataFrame:
    """Step-level clip/theory stats recombined from the updates table's ``SUM_KEYS``.

    Sums are added over a step's minibatches before dividing
    (``clipctl.schema.finalize_clip_stats``), so each conditional mean is weighted
    by the size of its region, and an empty region gives NaN (docs/definitions.md section 7).
    Returns one row per step: ``step``, the ``SUM_KEYS`` totals and ``STAT_KEYS``.
    """
    from clipctl.schema import SUM_KEYS, finalize_clip_stats

    if updates.empty:
        return pd.DataFrame(columns=["step", *SUM_KEYS])
    # Runs written before the covariance losses existed logged no covariance events: 0, truly.
    updates = updates.assign(**{k: 0.0 for k in ("n_cov_low", "n_cov_high") if k not in updates})
    missing = [k for k in ("step", *SUM_KEYS) if k not in updates]
    if missing:
        raise AnalysisError(
            f"the updates table lacks {', '.join(missing)}; it was not written by clipctl train or simulate"
        )
    totals = updates.groupby("step", sort=True)[list(SUM_KEYS)].sum()
    rows = [{"step": int(step), **sums.to_dict(), **finalize_clip_stats(sums.to_dict())} for step, sums in totals.iterrows()]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- per-run summary


def _entropy_summary(c: Columns) -> dict:
    start = float(c["entropy"][0])
    post = float(c["entropy_post"][-1])
    end = post if math.isfinite(post) else float(c["entropy"][-1])
    change = end - start
    return {
        "n_steps": c.n,
        "entropy_start": start,
        "entropy_end": end,
        "entropy_change": change,
        "entropy_change_rel": change / start if start else math.nan,
    }


def target_segments(target: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: the index ranges over which ``target`` holds one value (a schedule's pieces)."""
    t = np.asarray(target, dtype=np.float64)
    cuts = [0, *(i for i in range(1, len(t)) if t[i] != t[i - 1]), len(t)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def target_tracking(entropy: np.ndarray, target: np.ndarray, band: float = 0.1) -> dict:
    """How a run's entropy tracked a (possibly scheduled) target, per step (docs/entropy-control.md).

    Per piece of constant target ``T`` (``target_segments``), steps ``0..m-1``:

    - tracking error: the mean of ``|H - T|`` and of ``|H - T| / T`` over
      the piece's last half (steps ``m // 2`` on), pooled over pieces by step;
    - overshoot: the largest excursion past ``T`` on the far side from where
      the piece started (``H_0 < T``: ``max(H - T) / T``; above: ``max(T - H) / T``),
      0 when it never crossed; the largest over pieces;
    - settling: the number of steps after which ``|H - T| / T`` stays within
      ``band`` to the piece's end (0 if always inside; NaN if its last step
      is outside); the largest over pieces, NaN if any piece never settled.

    Non-finite targets (no controller) give NaN throughout.
    """
    h, t = np.asarray(entropy, dtype=np.float64), np.asarray(target, dtype=np.float64)
    nan = {"track_err": math.nan, "track_err_rel": math.nan, "overshoot_rel": math.nan, "settling_steps": math.nan}
    if len(t) == 0 or not np.isfinite(t).all():
        return nan
    late, overshoot, settle = [], 0.0, []
    for a, b in target_segments(t):
        seg, goal = h[a:b], t[a]
        late.append(np.arange(a + (b - a) // 2, b))
        side = 1.0 if seg[0] < goal else -1.0  # approached from below: overshoot is H above T
        overshoot = max(overshoot, float(np.max(side * (seg - goal))) / goal)
        outside = np.flatnonzero(np.abs(seg - goal) / goal > band)
        last = outside[-1] if len(outside) else -1
        settle.append(math.nan if last == len(seg) - 1 else float(last + 1))
    idx = np.concatenate(late)
    err = np.abs(h[idx] - t[idx])
    return {
        "track_err": _mean(err),
        "track_err_rel": _mean(err / t[idx]),
        "overshoot_rel": overshoot,
        "settling_steps": math.nan if any(math.isnan(x) for x in settle) else max(settle),
    }


def _control_summary(c: Columns, entropy: dict) -> dict:
    """Entropy control: tracking of the target over each target piece's last half, the knobs at the end, collapse/explosion."""
    start, end = entropy["entropy_start"], entropy["entropy_end"]
    half = slice(c.n // 2, None)  # reward: the run's last half
    track = target_tracking(c["entropy"], c["entropy_target"])
    return {
        "entropy_target": float(c["entropy_target"][-1]),
        "entropy_track_err": track["track_err"],
        "entropy_track_err_rel": track["track_err_rel"],
        "entropy_overshoot_rel": track["overshoot_rel"],
        "entropy_settling_steps": track["settling_steps"],
        "eps_low_last": float(c["eps_low"][-1]),
        "entropy_coef_last": float(c["entropy_coef"][-1]),
        "reward_last_half": _mean(c["reward_mean"][half]),
        "collapsed": bool(start > 0 and end < COLLAPSE_RATIO * start),
        "exploded": bool(start > 0 and end > EXPLODE_RATIO * start),
    }


def _theory_summary(c: Columns) -> dict:
    out = {f"avg_{name}": _mean(c[name]) for name in FRACTION_COLUMNS}
    for name in BRACKET_COLUMNS:
        out[f"{name}_pos_share"] = _positive_share(c[name])
    raw = c["entropy_post"] - c["entropy"]
    for thm in ("thm1", "thm2"):
        drift = c[f"{thm}_drift"]
        out[f"{thm}_vs_raw_sign_agree"] = sign_agreement(drift, raw)
        out[f"{thm}_vs_raw_pearson"] = pearson(drift, raw)
        out[f"{thm}_vs_raw_spearman"] = spearman(drift, raw)
    return out


def _attribution_summary(c: Columns) -> dict:
    attr = c["clip_attributed_dH"]
    probed = np.isfinite(attr)
    out: dict = {"n_probed": int(probed.sum())}
    for name in (*ATTRIBUTED_COLUMNS, NOCLIP_CHANGE):
        mean, se, _ = mean_se(c[name][probed])
        out[f"{name}_avg"], out[f"{name}_se"] = mean, se
    # "A clip acted" is read from its event counts, never from a non-zero
    # attributed change (any replay noise makes that non-zero on a GPU).
    events = clip_events(c)
    low, high = c["clip_low_attributed_dH"], c["clip_high_attributed_dH"]
    acted_low, acted_high = probed & events["low"], probed & events["high"]
    out["n_clip_steps"] = int((probed & events["any"]).sum())
    out["n_clip_low_steps"], out["n_clip_high_steps"] = int(acted_low.sum()), int(acted_high.sum())
    # Sign shares: description only (they mostly follow the sign of the unclipped step, see the regression).
    out["clip_low_raises_share"] = float((low[acted_low] > 0).mean()) if acted_low.any() else math.nan
    out["clip_high_lowers_share"] = float((high[acted_high] < 0).mean()) if acted_high.any() else math.nan
    for thm in ("thm1", "thm2"):
        drift = c[f"{thm}_drift"]
        out[f"{thm}_vs_attr_sign_agree"] = sign_agreement(drift[probed], attr[probed])
        out[f"{thm}_vs_attr_pearson"] = pearson(drift[probed], attr[probed])
    # The noise floor, as description: a replay of the real step lands probe_noise away from it (0 on a CPU).
    noise = np.abs(c["probe_noise"][probed])
    noise = noise[np.isfinite(noise)]
    out["probe_noise_abs_max"] = float(noise.max()) if len(noise) else math.nan
    out["probe_noise_abs_mean"] = float(noise.mean()) if len(noise) else math.nan
    return out


def _exact_summary(c: Columns) -> dict:
    """Sampled estimators against their exact values; only for runs with ``*_exact`` columns (simulated)."""
    if not any(f"{thm}_drift_exact" in c for thm in ("thm1", "thm2")):
        return {}
    out: dict = {}
    for name in ("ratio_below_frac", "ratio_above_frac"):
        out[f"avg_{name}_exact"] = _mean(c[f"{name}_exact"])
    for thm in ("thm1", "thm2"):
        est, exact = c[f"{thm}_drift"], c[f"{thm}_drift_exact"]
        out[f"{thm}_vs_exact_sign_agree"] = sign_agreement(est, exact)
        out[f"{thm}_vs_exact_pearson"] = pearson(est, exact)
        ok = np.isfinite(est) & np.isfinite(exact)
        den = float((exact[ok] ** 2).mean()) if ok.any() else math.nan
        out[f"{thm}_vs_exact_rel_rmse"] = (
            math.sqrt(float(((est[ok] - exact[ok]) ** 2).mean()) / den) if ok.any() and den > 0 else math.nan
        )
    return out


def _eval_summary(run: Run) -> dict:
    ev = read_eval_summary(run)
    needed = {"step", "dataset", "k", "pass_at_k", "mean_at_n"}
    if ev.empty or not needed <= set(ev.columns):
        return {}
    out = {}
    several_temps = "temperature" in ev and ev["temperature"].nunique() > 1
    keys = ["dataset", "k"] + (["temperature"] if several_temps else [])
    for key, rows in ev.sort_values("step", kind="stable").groupby(keys, sort=True):
        dataset, k = key[0], int(key[1])
        tag = f"eval_{dataset}_k{k}" + (f"_t{format_value(float(key[2]))}" if several_temps else "")
        first, last = rows.iloc[0], rows.iloc[-1]
        out[f"{tag}_first_step"] = int(first["step"])
        out[f"{tag}_last_step"] = int(last["step"])
        out[f"{tag}_pass_at_k_first"] = float(first["pass_at_k"])
        out[f"{tag}_pass_at_k_last"] = float(last["pass_at_k"])
        out[f"{tag}_mean_at_n_first"] = float(first["mean_at_n"])
        out[f"{tag}_mean_at_n_last"] = float(last["mean_at_n"])
    return out


def summarize_run(run: Run, extra_keys: Sequence[str] = (), c: Optional[Columns] = None) -> dict:
    """One per-run row (see ``docs/analysis.md`` for every column); ``c``: its columns, if already read."""
    c = c if c is not None else Columns.of_run(run)
    row: dict = {"run": run.name, "path": str(run.path)}
    for key in dict.fromkeys((*CONFIG_KEYS, *extra_keys)):
        row[key] = config_value(run, key)
    row.update(_entropy_summary(c))
    row.update(_control_summary(c, row))
    row.update(_theory_summary(c))
    row.update(_attribution_summary(c))
    row.update(_exact_summary(c))
    row.update(_eval_summary(run))
    return row


def _group_table(per_run: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    config_cols = set(CONFIG_KEYS) | set(keys)
    numeric = [
        c for c in per_run.columns
        if c not in config_cols and c not in ID_COLUMNS and pd.api.types.is_numeric_dtype(per_run[c])
    ]
    # NaN-safe keys: eps_high may be inf, a key may be missing (NaN) in old runs.
    labels = ["\x00".join(format_value(v) for v in r) for r in per_run[list(keys)].itertuples(index=False)]
    shown = label_keys(per_run[list(keys)].to_dict(orient="records"), keys)
    frame = per_run[list(keys)].assign(**{c: per_run[c].astype(float) for c in numeric}, _label=labels)
    g = frame.groupby("_label", sort=False)  # groups in order of first appearance
    out = g[list(keys)].head(1).reset_index(drop=True)
    out.insert(len(keys), "group", [group_label(r, shown) for r in out.to_dict(orient="records")])
    out.insert(len(keys) + 1, "n_runs", g.size().to_numpy())
    if not numeric:
        return out
    stats = g[numeric].agg(["mean", "std"])  # std: ddof 1, NaN below two values
    stats.columns = [f"{c}_{stat}" for c, stat in stats.columns]
    return pd.concat([out, stats.reset_index(drop=True)], axis=1)


def analyze_runs(
    paths_or_globs: Iterable[str | os.PathLike],
    group_by: Optional[Sequence[str] | str] = None,
    note: Optional[Callable[[str], None]] = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per_run, per_group)`` tables for the runs named by paths or globs (``clip_report``'s tables).

    ``group_by``: dotted config keys (``section.key``); default
    ``default_group_keys``. The group table has the group keys, ``group`` (a
    label), ``n_runs`` and ``<col>_mean`` / ``<col>_std`` across runs of every
    numeric per-run column (std needs two runs).
    """
    report = clip_report(paths_or_globs, group_by, note)
    return report.per_run, report.per_group


@dataclass
class ClipReport:
    """What ``analyze-clip-stats`` reports on a set of runs.

    ``steps``: one row per run and logged step: ``group``, ``run`` (its path),
    ``family`` (the run's config apart from clip knobs and run length: runs of
    one family share their random numbers), ``step``, ``entropy``,
    ``entropy_post``, ``noclip_dH``, ``ATTRIBUTED_COLUMNS``, ``low_on``,
    ``high_on``, ``any_on`` (that clip is enabled), ``acted_low``,
    ``acted_high``, ``acted_any`` (it had events), ``unit`` (rows identical by
    construction share it: step 1 of one family) and ``shared``.
    """

    runs: list[Run]
    keys: list[str]
    per_run: pd.DataFrame
    per_group: pd.DataFrame
    steps: pd.DataFrame

    def regression(self) -> pd.DataFrame:
        return attribution_regression(self.steps, self.per_group, self.keys)

    def paired(self, baseline: Optional[str] = None) -> pd.DataFrame:
        return paired_effects(self, baseline)


def clip_report(
    paths_or_globs: Iterable[str | os.PathLike],
    group_by: Optional[Sequence[str] | str] = None,
    note: Optional[Callable[[str], None]] = None,
) -> ClipReport:
    """Read the runs once and build the per-run, per-group and per-step tables."""
    runs = load_runs(paths_or_globs, note)
    keys = parse_keys(group_by) or default_group_keys(runs)
    check_group_keys(runs, keys)
    return build_report(runs, keys)


def build_report(runs: Sequence[Run], keys: Sequence[str]) -> ClipReport:
    """``clip_report`` on runs already loaded, grouped by ``keys`` (checked by the caller)."""
    keys = list(keys)
    cols = [Columns.of_run(r) for r in runs]
    labels = [group_label({k: config_value(r, k) for k in keys}, keys) for r in runs]
    steps = step_frame(runs, cols, labels)
    shared = steps[steps["shared"] & np.isfinite(steps["clip_attributed_dH"])].groupby("run").size()
    rows = []
    for run, c in zip(runs, cols):
        row = summarize_run(run, keys, c)
        row["n_shared_steps"] = int(shared.get(str(run.path), 0))
        rows.append(row)
    per_run = pd.DataFrame(rows)
    return ClipReport(list(runs), keys, per_run, _group_table(per_run, keys), steps)


# ---------------------------------------------------------------- families, shared steps, regression


def family_key(run: Run, keys: Sequence[str]) -> str:
    """The run's config values on ``keys`` apart from the clip knobs and the run length, seed included.

    Runs of one family differ only in their clip settings: they start from the
    same weights and draw the same prompts, samples and rewards where the
    policy is the same, so their step 1 is identical up to the clip knobs.
    """
    kept = [k for k in keys if _key_name(k) not in CLIP_KNOB_NAMES and k not in RUN_LENGTH_KEYS]
    return "\x00".join(f"{k}={format_value(config_value(run, k))}" for k in kept)


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def step_frame(runs: Sequence[Run], cols: Sequence[Columns], labels: Sequence[str]) -> pd.DataFrame:
    """The long per-step table of ``ClipReport.steps``.

    Step 1 of runs of one family (``family_key``) is the same step by
    construction in every clip setting: the same start, samples and rewards,
    so the no-clip replay (and any replay whose clip knobs agree) is
    bit-identical. Those rows share ``unit`` and are ``shared``; a pooled
    estimate counts each unit once.
    """
    all_keys = valid_group_keys(runs)
    frames = []
    for run, c, label in zip(runs, cols, labels):
        family = family_key(run, all_keys)
        # A clip is on at a step when its bound binds anything: the step's logged bound, else the config's.
        eps_low = np.where(np.isfinite(c["eps_low"]), c["eps_low"], _as_float(config_value(run, "algo.eps_low")))
        eps_high = np.where(np.isfinite(c["eps_high"]), c["eps_high"], _as_float(config_value(run, "algo.eps_high")))
        dual = run.config.get("algo", {}).get("dual_clip_c") not in (None, "none")
        events = clip_events(c)
        step = c["step"].astype(int)
        frame = {
            "group": label, "run": str(run.path), "family": family, "step": step,
            "entropy": c["entropy"], "entropy_post": c["entropy_post"], NOCLIP_CHANGE: c[NOCLIP_CHANGE],
            **{name: c[name] for name in ATTRIBUTED_COLUMNS},
            "low_on": eps_low < 1, "high_on": np.isfinite(eps_high), "acted_low": events["low"],
            "acted_high": events["high"], "acted_any": events["any"],
            "unit": [f"{family}\x00step=1" if s == 1 else f"{run.path}\x00step={s}" for s in step],
        }
        frame["any_on"] = frame["low_on"] | frame["high_on"] | dual
        frames.append(pd.DataFrame(frame))
    out = pd.concat(frames, ignore_index=True)
    out["shared"] = out.groupby("unit")["unit"].transform("size") > 1
    return out


# Which steps enter each attribution's regression: those where that clip was on.
_ON = {"clip_attributed_dH": "any_on", "clip_low_attributed_dH": "low_on", "clip_high_attributed_dH": "high_on"}
_ACTED = {"clip_attributed_dH": "acted_any", "clip_low_attributed_dH": "acted_low", "clip_high_attributed_dH": "acted_high"}
POOLED_LABEL = "all groups (shared steps once)"
REGRESSION_TITLE = (
    "clip-attributed change = intercept + slope x unclipped change (noclip_dH), per step; "
    "SE clustered by run (CR1), 95% CI with clusters - 1 df"
)
PAIRED_TITLE = "paired effect on entropy (nats): setting minus baseline, seed by seed; 95% t CI"


def regress_attribution(rows: pd.DataFrame, name: str) -> dict:
    """One attribution regressed on ``noclip_dH`` over ``rows`` (a slice of ``ClipReport.steps``).

    Rows where the clip is off or the step was not probed are left out; rows
    of one ``unit`` (identical by construction) are merged into one, their
    mean. Clusters are families (``family_key``): within one clip setting, a
    run; across settings, the runs that share their random numbers. Returns
    ``clipctl.effects.ols_clustered``'s fields, the plain mean with its
    clustered SE, the share of positive steps, ``n_shared`` (rows shared with
    another run, before merging) and ``n_acted`` (merged rows with events).
    """
    from clipctl.effects import mean_clustered, ols_clustered, reading

    rows = rows[rows[_ON[name]] & np.isfinite(rows[name]) & np.isfinite(rows[NOCLIP_CHANGE])]
    merged = rows.groupby("unit", sort=False).agg(
        x=(NOCLIP_CHANGE, "mean"), y=(name, "mean"), cluster=("family", "first"), acted=(_ACTED[name], "max")
    )
    fit = ols_clustered(merged["x"], merged["y"], merged["cluster"])
    mean, mean_se = mean_clustered(merged["y"], merged["cluster"])
    y = merged["y"].to_numpy(dtype=float)
    return {
        "attribution": name, "n_steps": fit["n"], "n_clusters": fit["n_clusters"],
        "n_shared": int(rows["shared"].sum()), "n_acted": int(merged["acted"].sum()),
        **{k: fit[k] for k in fit if k.startswith("intercept")},
        "intercept_reading": reading(fit["intercept"], fit["intercept_se"], fit["n_clusters"] - 1),
        **{k: fit[k] for k in fit if k.startswith("slope")},
        "mean": mean, "mean_se": mean_se, "pos_share": float((y > 0).mean()) if len(y) else math.nan,
    }


def attribution_regression(steps: pd.DataFrame, per_group: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Per group and pooled over all groups, each of ``REGRESSED_COLUMNS`` regressed on the unclipped change.

    The intercept is the attribution at zero unclipped change (the direction
    the theory predicts), the slope the share of the unclipped change that
    clipping removes or adds (damping when negative). One row per (group,
    attribution): the group keys, ``group``, then ``regress_attribution``'s
    fields; the pooled rows (``group`` = ``POOLED_LABEL``, keys NaN) count each
    step shared by construction once.
    """
    out = []
    for _, g in per_group.iterrows():
        rows = steps[steps["group"] == group_label(g.to_dict(), keys)]
        out += [{**{k: g[k] for k in keys}, "group": g["group"], **regress_attribution(rows, a)} for a in REGRESSED_COLUMNS]
    if len(per_group) > 1:
        out += [{**{k: math.nan for k in keys}, "group": POOLED_LABEL, **regress_attribution(steps, a)} for a in REGRESSED_COLUMNS]
    return pd.DataFrame(out)


# ---------------------------------------------------------------- paired setting effects

# The default baseline of paired effects: the symmetric PPO/GRPO clip, when a group has it.
DEFAULT_BASELINE = "algo.eps_low=0.2,algo.eps_high=0.2"
PAIRED_QUANTITIES = ("entropy_end", "entropy_last_half", "entropy_step")


def parse_setting(text: str) -> dict[str, str]:
    """``'algo.eps_low=0.2,algo.eps_high=inf'`` -> ``{key: formatted value}`` (values compared as
    ``format_value`` prints them: ``1.0`` and ``1`` agree, ``inf`` is infinity, ``true``/``false`` booleans)."""
    out = {}
    for item in [i.strip() for i in text.split(",") if i.strip()]:
        key, eq, value = (p.strip() for p in item.partition("="))
        if not eq or not key or not value:
            raise AnalysisError(f"--baseline item '{item}' is not KEY=VALUE; write e.g. --baseline {DEFAULT_BASELINE}")
        if value.lower() in ("true", "false"):
            out[key] = str(value.lower() == "true")
        else:
            out[key] = format_value(_as_float(value)) if math.isfinite(_as_float(value)) or value.lower() in (
                "inf", "+inf", "-inf") else value
    if not out:
        raise AnalysisError(f"--baseline is empty; write e.g. --baseline {DEFAULT_BASELINE}")
    return out


def _baseline_spec(report: ClipReport, baseline: Optional[str]) -> dict[str, str]:
    spec = parse_setting(baseline or DEFAULT_BASELINE)
    valid = valid_group_keys(report.runs)
    for key in spec:
        if key not in valid:
            raise AnalysisError(f"unknown baseline key '{key}'; use section.key from the runs' config, one of: {', '.join(valid)}")
        if key not in report.keys:
            raise AnalysisError(
                f"baseline key '{key}' is not a group key (groups by {', '.join(report.keys)}); add it to --group-by"
            )
    groups = report.per_group.to_dict(orient="records")
    if not any(all(format_value(g[k]) == v for k, v in spec.items()) for g in groups):
        text = ",".join(f"{k}={v}" for k, v in spec.items())
        how = "no --baseline given and no group has the default" if baseline is None else "no group has"
        raise AnalysisError(
            f"unknown baseline '{text}': {how} these values; groups: {'; '.join(g['group'] for g in groups)}; "
            "pass --baseline KEY=VALUE,... naming one of them"
        )
    return spec


def pairing_keys(report: ClipReport) -> list[str]:
    """Config keys two runs must agree on to be paired: the seeds, and every key that varies within a group
    (the rest is constant within each group: part of the setting being compared)."""
    by_group: dict[str, list[Run]] = {}
    for run, label in zip(report.runs, _run_labels(report)):
        by_group.setdefault(label, []).append(run)
    keys = []
    for key in valid_group_keys(report.runs):
        varies = any(len({format_value(config_value(r, key)) for r in runs}) > 1 for runs in by_group.values())
        if _key_name(key) in SEED_NAMES or varies:
            keys.append(key)
    return keys


def _run_labels(report: ClipReport) -> list[str]:
    return [group_label({k: config_value(r, k) for k in report.keys}, report.keys) for r in report.runs]


def _pairs(report: ClipReport, spec: dict[str, str]) -> list[tuple[dict, dict, list[tuple[str, str]]]]:
    """``(group, baseline group, [(run path, baseline run path), ...])`` for every group with a baseline group:
    the group with the baseline's values on its keys and the group's own on the other group keys."""
    groups = report.per_group.to_dict(orient="records")
    labels, keys = _run_labels(report), pairing_keys(report)
    members: dict[str, dict[str, str]] = {}
    for run, label in zip(report.runs, labels):
        pair_key = "\x00".join(format_value(config_value(run, k)) for k in keys)
        seen = members.setdefault(label, {})
        if pair_key in seen:
            raise AnalysisError(
                f"runs {seen[pair_key]} and {run.path} have the same seed and config; leave one out of the list"
            )
        seen[pair_key] = str(run.path)
    full = {group_label(g, report.keys): g for g in groups}
    out = []
    for label, g in full.items():
        if all(format_value(g[k]) == v for k, v in spec.items()):
            continue  # a baseline group itself
        wanted = [spec[k] if k in spec else format_value(g[k]) for k in report.keys]
        base = next((b for bl, b in full.items() if [format_value(b[k]) for k in report.keys] == wanted), None)
        if base is None:
            continue
        mine, theirs = members.get(label, {}), members.get(group_label(base, report.keys), {})
        pairs = [(mine[k], theirs[k]) for k in mine if k in theirs]
        if pairs:
            out.append((g, base, pairs))
    return out


def paired_effects(report: ClipReport, baseline: Optional[str] = None) -> pd.DataFrame:
    """Per-seed differences of each setting from its baseline: end-of-run entropy, its last-half mean, per step.

    ``baseline``: ``KEY=VALUE,...`` over group keys (default
    ``DEFAULT_BASELINE``); each group is compared with the group that has
    those values and its own on the other group keys, run by run over runs
    that agree on ``pairing_keys`` (same seed). Per pair: ``entropy_end``
    (the per-run column) of the run minus the baseline run's;
    ``entropy_last_half``: the mean of the per-step difference of ``entropy``
    over the last half of the steps both logged; ``entropy_step``: that
    difference at each step. Each is summarised over pairs by
    ``clipctl.effects.paired_summary`` (mean, SE, t-based 95 % CI, signs).
    Rows: group keys, ``group``, ``baseline`` (labels), ``quantity``, ``step``
    (NaN except for ``entropy_step``), ``n_pairs``, ``mean``, ``se``,
    ``ci_low``, ``ci_high``, ``n_pos``, ``n_neg``, ``reading``.
    """
    from clipctl.effects import paired_summary, reading

    spec = _baseline_spec(report, baseline)
    found = _pairs(report, spec)
    if not found:
        text = ",".join(f"{k}={v}" for k, v in spec.items())
        raise AnalysisError(
            f"no paired runs: no group has runs with the same seed (and the rest of its config) as the baseline "
            f"'{text}'; paired effects need runs of the same seeds in both settings"
        )
    end = dict(zip(report.per_run["path"], report.per_run["entropy_end"]))
    series = {path: rows.set_index("step")["entropy"] for path, rows in report.steps.groupby("run", sort=False)}
    out = []
    for g, base, pairs in found:
        head = {**{k: g[k] for k in report.keys}, "group": g["group"], "baseline": base["group"]}
        per_step: dict[int, list[float]] = {}
        window = []
        for mine, theirs in pairs:
            d = (series[mine] - series[theirs]).dropna().sort_index()  # steps both logged
            window.append(float(d.iloc[len(d) // 2:].mean()) if len(d) else math.nan)
            for step, v in d.items():
                per_step.setdefault(int(step), []).append(float(v))
        diffs = [("entropy_end", math.nan, [end[m] - end[t] for m, t in pairs]), ("entropy_last_half", math.nan, window)]
        diffs += [("entropy_step", float(step), v) for step, v in sorted(per_step.items())]
        for quantity, step, values in diffs:
            summary = paired_summary(values)
            out.append({**head, "quantity": quantity, "step": step, **summary,
                        "reading": reading(summary["mean"], summary["se"], summary["n_pairs"] - 1, "higher", "lower")})
    return pd.DataFrame(out)


# ---------------------------------------------------------------- per-step curves (for plots)


def step_metrics(runs: Sequence[Run]) -> list[str]:
    """Numeric steps columns of the runs, and the attributions derived from the replays where logged."""
    cols = set()
    for run in runs:
        cols.update(c for c in run.steps.columns if pd.api.types.is_numeric_dtype(run.steps[c]))
        if "entropy_post_noclip" in run.steps:
            cols.update((*ATTRIBUTED_COLUMNS, NOCLIP_CHANGE))
    return sorted(cols)


def check_metric(runs: Sequence[Run], metric: str) -> None:
    valid = step_metrics(runs)
    if metric not in valid:
        raise AnalysisError(f"unknown metric '{metric}'; valid step metrics: {', '.join(valid)}")


def curves(
    runs: Sequence[Run],
    metric: str,
    *,
    group_by: Optional[Sequence[str]] = None,
    x: str = "step",
    smooth: int = 1,
    normalize: bool = False,
    cumulative: bool = False,
) -> pd.DataFrame:
    """Long table of one step metric: ``group, run, step, x, value`` (one row per run and step).

    - ``x='tokens'``: cumulative ``n_tokens`` of the run at the end of each step.
    - ``normalize``: divide by the run's first value (paper Fig. 4, entropy / base entropy).
    - ``cumulative``: running sum over steps (NaN steps count as 0).
    - ``smooth``: trailing rolling mean over ``smooth`` steps, per run.
    """
    if x not in X_AXES:
        raise AnalysisError(f"unknown x axis '{x}'; valid: {', '.join(X_AXES)}")
    if smooth < 1:
        raise AnalysisError(f"--smooth must be at least 1, got {smooth}")
    check_metric(runs, metric)
    keys = parse_keys(group_by) or default_group_keys(runs)
    frames = []
    for run in runs:
        steps = run.steps.sort_values("step", kind="stable")
        if metric in (*ATTRIBUTED_COLUMNS, NOCLIP_CHANGE):  # recomputed from the replays, as everywhere
            value = pd.Series(attribution_columns(steps)[metric], index=steps.index)
        else:
            value = _col(steps, metric)
        if normalize:
            first = value[np.isfinite(value)]
            value = value / float(first.iloc[0]) if len(first) and first.iloc[0] != 0 else value * math.nan
        if cumulative:
            value = value.fillna(0.0).cumsum()
        if smooth > 1:
            value = value.rolling(smooth, min_periods=1).mean()
        if x == "tokens":
            xs = _col(steps, "n_tokens").fillna(0.0).cumsum()
        else:
            xs = steps["step"].astype(float)
        values = {k: config_value(run, k) for k in keys}
        frames.append(
            pd.DataFrame(
                {
                    "group": group_label(values, keys),
                    "run": run.name,
                    "step": steps["step"].to_numpy(),
                    "x": xs.to_numpy(),
                    "value": value.to_numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def aggregate_curves(long: pd.DataFrame) -> pd.DataFrame:
    """Per group and step across runs: ``x`` (mean), ``mean``, ``std``, ``min``, ``max``, ``n`` of ``value``."""
    ok = long[np.isfinite(long["value"].astype(float))]
    g = ok.groupby(["group", "step"], sort=False)
    out = g.agg(x=("x", "mean"), mean=("value", "mean"), std=("value", "std"),
                min=("value", "min"), max=("value", "max"), n=("value", "size")).reset_index()
    order = {label: i for i, label in enumerate(dict.fromkeys(long["group"]))}
    out["_order"] = out["group"].map(order)
    return out.sort_values(["_order", "step"]).drop(columns="_order").reset_index(drop=True)


def eval_curves(runs: Sequence[Run], *, group_by: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Long table of the eval summaries: ``group, run, step, dataset, k, pass_at_k, mean_at_n``."""
    keys = parse_keys(group_by) or default_group_keys(runs)
    frames = []
    for run in runs:
        ev = read_eval_summary(run)
        if ev.empty:
            continue
        ev = ev.copy()
        ev["group"] = group_label({k: config_value(run, k) for k in keys}, keys)
        ev["run"] = run.name
        frames.append(ev)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def aggregate_eval(ev: pd.DataFrame) -> pd.DataFrame:
    """Per group, dataset, k and step across runs: mean/std/min/max of ``pass_at_k`` and ``mean_at_n``."""
    if ev.empty:
        return ev
    g = ev.groupby(["group", "dataset", "k", "step"], sort=False)
    stats = {
        f"{col}_{fn}": (col, fn) for col in ("pass_at_k", "mean_at_n") for fn in ("mean", "std", "min", "max")
    }
    return g.agg(**stats).reset_index().sort_values(["dataset", "k", "step"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- writing tables

TABLE_FORMATS = ("table", "csv", "json", "parquet")


def _json_safe(value):
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def to_text(df: pd.DataFrame, fmt: str) -> str:
    """CSV or JSON (records; NaN as null, inf as the string "inf") text of a table."""
    import json

    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        records = [{k: _json_safe(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
        return json.dumps(records, indent=2) + "\n"
    raise AnalysisError(f"format '{fmt}' has no text form; valid: csv, json")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; an OS error becomes one ``AnalysisError`` line."""
    from clipctl.runlog import atomic_write_bytes

    try:
        atomic_write_bytes(Path(path), text.encode())
    except OSError as e:
        raise AnalysisError(f"cannot write {path}: {e.strerror or e}; choose a writable --out path") from None


def write_table(df: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write ``df`` to ``path`` atomically as csv, json or parquet."""
    from clipctl.runlog import atomic_write_bytes, write_parquet_atomic

    path = Path(path)
    try:
        if fmt == "parquet":
            # Parquet needs one type per column: a config value that is a
            # string in one run and NaN in another becomes a string column.
            df = df.copy()
            for c in df.columns:
                if df[c].dtype == object:
                    df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            write_parquet_atomic(df, path)
        else:
            atomic_write_bytes(path, to_text(df, fmt).encode())
    except OSError as e:
        raise AnalysisError(f"cannot write {path}: {e.strerror or e}; choose a writable --out path") from None


# ---------------------------------------------------------------- choosing what to show

# The few columns the default terminal table shows (all columns go to csv/json/parquet).
TABLE_METRICS = (
    "entropy_change",
    "entropy_change_rel",
    "avg_clip_low_frac",
    "avg_clip_high_frac",
    "thm2_low_pos_share",
    "thm2_high_pos_share",
    "thm2_vs_raw_sign_agree",
    "thm2_vs_attr_sign_agree",
    "thm2_vs_exact_sign_agree",  # simulated runs only
    "clip_low_attributed_dH_avg",
    "clip_high_attributed_dH_avg",
)


def metric_names(per_run: pd.DataFrame) -> list[str]:
    """Per-run numeric columns that are results, not identifiers or config values."""
    config = set(CONFIG_KEYS) | {c for c in per_run.columns if "." in c}
    return [
        c for c in per_run.columns
        if c not in ID_COLUMNS and c not in config and pd.api.types.is_numeric_dtype(per_run[c])
    ]


def check_metrics(per_run: pd.DataFrame, metrics: Sequence[str]) -> None:
    valid = metric_names(per_run)
    for m in metrics:
        if m not in valid:
            raise AnalysisError(f"unknown metric '{m}'; valid: {', '.join(valid)}")


def summary_frame(
    per_run: pd.DataFrame, per_group: pd.DataFrame, *, per_run_rows: bool = False, metrics: Optional[Sequence[str]] = None
) -> pd.DataFrame:
    """The table to output: per-run or per-group rows, restricted to ``metrics`` when given.

    ``metrics`` are per-run column names; for group rows each becomes its
    ``<metric>_mean`` and ``<metric>_std`` columns.
    """
    if metrics:
        check_metrics(per_run, metrics)
    if per_run_rows:
        if not metrics:
            return per_run
        keep = [c for c in per_run.columns if c in ID_COLUMNS or "." in c]
        return per_run[keep + list(metrics)]
    if not metrics:
        return per_group
    ids = [c for c in per_group.columns if "." in c] + ["group", "n_runs"]
    return per_group[ids + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]]
