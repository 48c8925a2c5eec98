"""trainer/batch.py: micro-batch plans, device-resident sums, and splits that leave the update unchanged."""

from __future__ import annotations

import math
import random
import sys

import pytest
import torch

from clipctl.config import load_config
from clipctl.runlog import read_run
from clipctl import schema
from clipctl.clip import ClipSpec
from clipctl.trainer import build_trainer, train
from clipctl.schema import Totals
from clipctl.trainer.batch import StepBatch, k3_kl_sum, plan_micro_batches, to_host


# ---------------------------------------------------------------- plans


def test_row_plan_by_hand():
    p, r = [3, 1, 2, 5, 4], [2, 6, 1, 1, 3]
    plans = plan_micro_batches(p, r, 1, 5, rows_per_pass=2)
    # rows 1,2 then 3,4; widths are the max prompt and response lengths of each pass.
    assert plans == [([1, 2], 2, 6), ([3, 4], 5, 3)]


def test_token_plan_by_hand():
    p, r = [2, 2, 2, 2], [1, 6, 3, 2]
    # Totals 3, 8, 5, 4 -> order 1, 2, 3, 0. Budget 12: row 1 alone costs 8;
    # adding row 2 would cost 2 * (2 + 6) = 16 > 12. Rows 2, 3 cost 2 * 5 = 10;
    # adding row 0 costs 3 * 5 = 15 > 12.
    assert plan_micro_batches(p, r, 0, 4, rows_per_pass=1, tokens_per_pass=12) == [
        ([1], 2, 6),
        ([2, 3], 2, 3),
        ([0], 2, 1),
    ]
    # A row longer than the budget still gets a pass of its own.
    assert plan_micro_batches([10], [10], 0, 1, rows_per_pass=1, tokens_per_pass=4) == [([0], 10, 10)]


@pytest.mark.parametrize("seed", range(20))
def test_token_plan_matches_a_naive_packer(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    p = [rng.randint(1, 20) for _ in range(n)]
    r = [rng.randint(0, 40) for _ in range(n)]
    lo, hi = rng.randint(0, n - 1), n
    budget = rng.choice([16, 64, 200, 10_000])
    plans = plan_micro_batches(p, r, lo, hi, rows_per_pass=1, tokens_per_pass=budget)
    # Naive: walk rows in (longest first, row) order and open a new pass when
    # the padded cost of the current one would exceed the budget.
    order = sorted(range(lo, hi), key=lambda i: (-(p[i] + r[i]), i))
    naive, cur = [], []
    for i in order:
        trial = cur + [i]
        cost = len(trial) * (max(p[j] for j in trial) + max(1, max(r[j] for j in trial)))
        if cur and cost > budget:
            naive.append(cur)
            cur = [i]
        else:
            cur = trial
    naive.append(cur)
    assert [rows for rows, _, _ in plans] == naive
    for rows, wp, wr in plans:
        assert wp == max(p[i] for i in rows) and wr == max(1, max(r[i] for i in rows))
        assert len(rows) == 1 or len(rows) * (wp + wr) <= budget
    assert sorted(i for rows, _, _ in plans for i in rows) == list(range(lo, hi))


# ---------------------------------------------------------------- sums


def test_k3_kl_sum_by_hand():
    logp = torch.tensor([[0.0, -1.0], [-2.0, 0.0]])
    old = torch.tensor([[0.0, -2.0], [-1.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # l = 0, 1, -1 on valid tokens: k3 = 0, e - 2, 1/e
    expected = 0.0 + (torch.e - 2.0) + torch.exp(torch.tensor(-1.0)).item()
    assert k3_kl_sum(logp, old, mask).item() == pytest.approx(expected, rel=1e-6)


def test_device_totals_and_step_totals_add_up():
    """One accumulator (schema.Totals) on the device for micro-batches and on the host for optimizer steps."""
    stats = Totals()
    a = {"n_tokens": torch.tensor(3.0, dtype=torch.float64), "n_below": torch.tensor(1.0, dtype=torch.float64)}
    b = {"n_tokens": torch.tensor(2.0, dtype=torch.float64), "n_below": torch.tensor(0.0, dtype=torch.float64)}
    full_a = {k: a.get(k, torch.tensor(0.0, dtype=torch.float64)) for k in schema.SUM_KEYS}
    full_b = {k: b.get(k, torch.tensor(0.0, dtype=torch.float64)) for k in schema.SUM_KEYS}
    stats.add(torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.25, dtype=torch.float64), full_a)
    stats.add(torch.tensor(1.5, dtype=torch.float64), torch.tensor(0.75, dtype=torch.float64), full_b)
    loss, kl, sums, norm = to_host(stats, torch.tensor(4.0))
    assert (loss, kl, sums["n_tokens"], sums["n_below"], norm) == (2.0, 1.0, 5.0, 1.0, 4.0)
    totals = Totals()
    totals.add(loss, kl, sums, 3.0)
    totals.add(1.0, 1.0, sums, 1.0)
    m = totals.metrics()
    assert m["loss"] == 1.5 and m["grad_norm"] == 2.0 and m["approx_kl"] == pytest.approx(2.0 / 10.0)
    assert totals.sums["n_tokens"] == 10.0 and totals.sums["n_below"] == 2.0 and totals.count == 2
    assert m["skipped_updates"] == 0
    # Nothing measured (every update skipped): NaN, never 0.
    none = Totals(skipped=2).metrics()
    assert math.isnan(none["loss"]) and math.isnan(none["clip_low_frac"]) and math.isnan(none["approx_kl"])
    assert none["skipped_updates"] == 2


# ---------------------------------------------------------------- the trainer


def test_token_budget_micro_batches_do_not_change_the_update(tmp_path, fast_overrides):
    base = [*fast_overrides, "train.steps=2"]
    rows = read_run(train(load_config("tiny-cpu", [*base, "train.micro_batch_size=8"]), out=tmp_path, name="rows").run_dir).steps
    toks = read_run(train(load_config("tiny-cpu", [*base, "train.micro_batch_tokens=40"]), out=tmp_path, name="tok").run_dir).steps
    for col in ("entropy", "entropy_post", "loss", "grad_norm", "approx_kl", "ratio_below_frac", "thm2_drift"):
        assert toks[col].tolist() == pytest.approx(rows[col].tolist(), rel=1e-5, abs=1e-6), col


def test_token_budget_packs_several_passes(fast_overrides):
    t = build_trainer(load_config("tiny-cpu", [*fast_overrides, "train.micro_batch_tokens=40"]))
    _, rollout, rewards = t.rollout(1)
    sb = StepBatch.from_rollout(rollout, rewards, rewards, t.device)
    passes = t._micro_batches(sb, 0, len(sb))
    assert len(passes) > 1
    for mb in passes:
        assert len(mb.rows) == 1 or len(mb.rows) * (mb.prompt_width + mb.response_width) <= 40


def test_host_reads_do_not_grow_with_micro_batches(fast_overrides, monkeypatch):
    """The update reads the device back once per optimizer step, whatever the split."""

    def reads(micro: int) -> int:
        t = build_trainer(load_config("tiny-cpu", [*fast_overrides, f"train.micro_batch_size={micro}"]))
        _, rollout, rewards = t.rollout(1)
        sb = StepBatch.from_rollout(rollout, rewards, rewards, t.device)
        sb.old_logp, sb.old_entropy = t.policy_stats(sb)
        count = {"n": 0}
        for name in ("item", "cpu", "tolist"):
            original = getattr(torch.Tensor, name)

            def counted(self, *a, _original=original, **k):
                # Reads made by clipctl's code (torch's AdamW reads its own host-side step counters).
                caller = sys._getframe(1).f_code.co_filename
                if "/clipctl/" in caller and "/tests/" not in caller:
                    count["n"] += 1
                return _original(self, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)
        t.minibatch_gradient(sb, 0, 8, clip=ClipSpec(0.2, 0.2))
        monkeypatch.undo()
        return count["n"]

    one, four = reads(8), reads(2)
    assert one == four
    assert one <= 3  # grad norm, and one copy of (loss, KL, sums)
