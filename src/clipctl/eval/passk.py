"""pass@k, mean@n and bootstrap intervals over problems (docs/definitions.md section 9).

Pure numpy: no model, no dataset, no torch, so the estimators can be imported
and tested anywhere.

1. ``pass_at_k`` is the unbiased estimator of Chen et al. 2021,
   ``1 - C(n-c, k) / C(n, k)``, computed in the stable product form
   ``1 - prod_{i=n-c+1..n} (1 - k/i)`` (no huge binomials); it is 1 when
   ``n - c < k`` and ``k > n`` is an error. ``pass_at_k_array`` is the same,
   vectorised over problems. ``mean_at_n`` is ``c / n``.
2. Dataset scores average over problems; ``bootstrap_ci`` resamples problems
   (not samples) to give a percentile interval of that average.

Example::

    pass_at_k_array(8, correct_counts, 1).mean()
"""

from __future__ import annotations

from typing import Union

import numpy as np

# ---------------------------------------------------------------------------
# pass@k and mean@n (docs/definitions.md section 9)
# ---------------------------------------------------------------------------


def _check_counts_scalar(n: int, c: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k ({k}) must be >= 1")
    if k > n:
        raise ValueError(f"k ({k}) must be <= n ({n}): pass@k needs at least k samples per problem")
    if c < 0 or c > n:
        raise ValueError(f"c ({c}) must satisfy 0 <= c <= n ({n}): c counts the correct samples")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (docs/definitions.md section 9; Chen et al. 2021, eq. 1).

    ``pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k/i)``;
    the product form avoids huge binomials. It is 1.0 when ``n - c < k``
    (every k-subset holds a correct sample).

    Args:
        n: samples drawn for the problem, ``n >= k``.
        c: correct samples, ``0 <= c <= n``.
        k: budget, ``1 <= k <= n``.

    Raises:
        ValueError: if ``k < 1``, ``k > n``, ``c < 0`` or ``c > n``.
    """
    n, c, k = int(n), int(c), int(k)
    _check_counts_scalar(n, c, k)
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_array(n: Union[np.ndarray, int], c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per problem, vectorised (docs/definitions.md section 9).

    Same formula and semantics as ``pass_at_k``. Each row multiplies the factors
    ``1 - k/i`` for ``i`` in ``(n-c, n]`` and 1 elsewhere, over a ``[P, W]`` grid
    where ``W`` spans the needed range of ``i``.

    Args:
        n: ``[P]`` integer samples per problem, or one int for all problems.
        c: ``[P]`` integer correct samples per problem.
        k: budget, ``1 <= k <= min(n)``.

    Returns:
        ``[P]`` float64 pass@k per problem.

    Raises:
        ValueError: if ``k < 1``, any ``k > n``, ``c < 0`` or ``c > n``.
    """
    k = int(k)
    c_arr = np.asarray(c)
    n_arr = np.asarray(n)
    if c_arr.ndim != 1:
        raise ValueError(f"c must be 1-D [P] (one count per problem), got shape {c_arr.shape}")
    if n_arr.ndim != 0 and n_arr.shape != c_arr.shape:
        raise ValueError(f"n must be one int or match c's shape {c_arr.shape}, got shape {n_arr.shape}")
    n_arr = np.broadcast_to(n_arr, c_arr.shape)
    for name, arr in (("n", n_arr), ("c", c_arr)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.asarray(arr, dtype=np.float64) == np.round(arr)):
                raise ValueError(f"{name} must hold integer counts, got dtype {arr.dtype}")
    n_arr = n_arr.astype(np.int64)
    c_arr = c_arr.astype(np.int64)
    if k < 1:
        raise ValueError(f"k ({k}) must be >= 1")
    if c_arr.size == 0:
        return np.zeros(0, dtype=np.float64)
    bad = np.flatnonzero(n_arr < k)
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"k ({k}) must be <= n for every problem: problem {j} has n={int(n_arr[j])}"
        )
    bad = np.flatnonzero((c_arr < 0) | (c_arr > n_arr))
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"c must satisfy 0 <= c <= n: problem {j} has c={int(c_arr[j])}, n={int(n_arr[j])}"
        )

    out = np.ones(c_arr.shape, dtype=np.float64)  # n - c < k -> 1.0
    rows = np.flatnonzero(n_arr - c_arr >= k)
    if rows.size:
        lo = n_arr[rows] - c_arr[rows] + 1  # first i of the product
        hi = n_arr[rows]  # last i
        i = np.arange(int(lo.min()), int(hi.max()) + 1, dtype=np.float64)
        inside = (i[None, :] >= lo[:, None]) & (i[None, :] <= hi[:, None])
        # i >= n - c + 1 > k inside the mask, so every factor lies in (0, 1).
        factors = np.where(inside, 1.0 - k / i[None, :], 1.0)
        out[rows] = 1.0 - np.prod(factors, axis=1)
    return out


def mean_at_n(n: Union[np.ndarray, int], c: Union[np.ndarray, int]) -> Union[np.ndarray, float]:
    """mean@n = ``c / n``, the average single-sample accuracy (docs/definitions.md section 9).

    Args:
        n: samples per problem (``[P]`` or one int), ``n >= 1``.
        c: correct samples per problem (``[P]`` or one int), ``0 <= c <= n``.

    Returns:
        ``[P]`` float64 array, or a float when both inputs are scalars.
    """
    n_arr = np.asarray(n, dtype=np.float64)
    c_arr = np.asarray(c, dtype=np.float64)
    if np.any(n_arr < 1):
        raise ValueError(f"n must be >= 1 for every problem, got min n={n_arr.min():g}")
    if np.any((c_arr < 0) | (c_arr > n_arr)):
        raise ValueError("c must satisfy 0 <= c <= n for every problem")
    out = c_arr / n_arr
    return float(out) if out.ndim == 0 else out


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over problems (docs/definitions.md section 9).

    Problems are resampled with replacement ``n_boot`` times; the interval is
    the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled means. The
    same ``seed`` gives the same interval.

    Args:
        values: ``[P]`` per-problem scores (e.g. pass@k or mean@n per problem).
        n_boot: bootstrap resamples, ``>= 1``.
        alpha: ``1 - `` coverage, in ``(0, 1)``.
        seed: seed of the resampling generator.

    Returns:
        ``(low, high)`` floats.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array [P], got shape {v.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot ({n_boot}) must be >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha ({alpha}) must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
