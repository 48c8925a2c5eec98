"""The GRPO step loop (docs/definitions.md section 1), single process: the reference trainer.

One step, top to bottom (``Trainer.run_step``):

1. take the step's ``P`` prompts (a pure function of seed and step) and sample
   ``G`` responses each with the rollout engine;
2. score them (``reward.kind``) and form group-relative advantages;
3. recompute log-probs and entropy under ``pi_old`` with the trainer's model
   (never the engine's), no gradient; ``entropy`` is paper Eq. 4;
4. ``ppo_epochs`` passes over the batch in minibatches of ``M`` prompts; each
   minibatch is one optimizer step, split into micro-batches whose losses use
   the minibatch's normalisers, so the split never changes the gradient;
   clip events and theory statistics are measured on each minibatch under the
   current policy before its optimizer step;
5. ``entropy_post``: Eq. 4 on the same batch after the last update.

Departures from the textbook, each deliberate:

1. The model runs in eval mode throughout (no dropout), so the first minibatch's
   ratio is exactly 1 and a replayed step is exact.
2. Old log-probs are computed with the same micro-batch boundaries as the first
   epoch's updates, so the ratio is 1 bit-for-bit, not to rounding.
3. The prompt at position ``j`` of step ``s`` is sampled with seed
   ``derived_seed(seed, s, 1) + j * G``: a resumed run samples the same
   responses without carrying a sampler state, and the samples do not depend
   on how many processes share the step (``comm.py``). Both
   engines seed each response of a call by its row (``PROMPT_SEEDED_ENGINES``),
   so a run of consecutive prompts shares one batched call.
4. The trainer is built from its parts (``run.build_trainer``): everything
   that depends on ranks goes through ``self.comm`` (in a single process its
   collectives are the identity, so this file reads as the single-process
   algorithm), and everything that steps the weights through ``self.engine``
   (``engine.py``: torch AdamW; ``deepspeed.py``: ZeRO).
5. The step's batch moves to the device once (``batch.StepBatch``); loss,
   clip-statistic sums and KL stay there and are read back once per optimizer
   step. Micro-batches are trimmed to their own longest prompt and response,
   or packed by length under a token budget (``train.micro_batch_tokens``).
6. A bfloat16 model is trained through float32 master weights, gradients and
   AdamW state (``precision.py``, ``TorchEngine``); generation and
   forward/backward run in bf16.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from clipctl import algo, schema
from clipctl.config import Config, config_to_dict, is_on_policy
from clipctl.data import RewardBatch, compute_rewards, is_verifiable, load_examples, step_prompt_indices
from clipctl.rollout import RolloutBatch, SamplingParams, make_engine
from clipctl.rollout.base import pad_to
from clipctl.errors import ConfigError, NonFiniteError
from clipctl.trainer.batch import (
    GlobalView,
    MicroBatch,
    StepBatch,
    to_host,
    k3_kl_sum,
)
from clipctl.trainer.checkpoint import (
    finish_checkpoint,
    load_trainer_state,
    new_checkpoint_folder,
    rng_states,
    set_rng_states,
)
from clipctl.trainer.comm import SingleProcessComm
from clipctl.trainer.control import EntropyControl, Knobs
from clipctl.trainer.engine import UpdateEngine
from clipctl.trainer.precision import checkpointed_layers

Log = Callable[[str], None]

# Columns of the steps table whose values depend on wall-clock time, not on the math.
TIMING_COLUMNS = ("rollout_seconds", "update_seconds", "probe_seconds", "step_seconds", "tokens_per_second")
# Engines whose generate() seeds prompt i of a call with params.seed + i * params.n
# (rollout/vllm.py, point 4), so any run of consecutive prompts can share a call.
PROMPT_SEEDED_ENGINES = ("hf", "vllm")


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _consecutive_runs(positions: list[int]) -> list[list[int]]:
    """Indices into ``positions`` grouped into runs of consecutive values."""
    runs: list[list[int]] = []
    for i, j in enumerate(positions):
        if runs and positions[runs[-1][-1]] == j - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def concat_batches(parts: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Stack rollout batches row-wise: prompts re-padded on the left, responses on the right."""
    if len(parts) == 1:
        return parts[0]
    tp = max(b.prompt_ids.shape[1] for b in parts)
    tr = max(b.response_ids.shape[1] for b in parts)
    with_logprobs = all(b.logprobs is not None for b in parts)
    return RolloutBatch(
        prompt_ids=torch.cat([pad_to(b.prompt_ids, tp, pad_id, True) for b in parts]),
        prompt_mask=torch.cat([pad_to(b.prompt_mask, tp, 0, True) for b in parts]),
        response_ids=torch.cat([pad_to(b.response_ids, tr, pad_id, False) for b in parts]),
        response_mask=torch.cat([pad_to(b.response_mask, tr, 0, False) for b in parts]),
        truncated=torch.cat([b.truncated for b in parts]),
        response_text=[t for b in parts for t in b.response_text],
        logprobs=torch.cat([pad_to(b.logprobs, tr, 0.0, False) for b in parts]) if with_logprobs else None,
    )


@dataclass
class StepOutput:
    metrics: dict
    updates: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    tokens: list[dict] = field(default_factory=list)


class Trainer:
    """One GRPO step over its parts: ``run_step(step)``; ``run.build_trainer`` builds one.

    ``comm`` answers the collectives (``comm.py``), ``engine`` owns the weights
    and steps them (``engine.py``); the trainer owns the data, the rollout
    engine, the entropy control and the algorithm. ``model_path`` is where the
    engine's model and ``tokenizer`` were loaded from.
    """

    def __init__(
        self, cfg: Config, comm: SingleProcessComm, engine: UpdateEngine, *, tokenizer, model_path: str,
        log: Optional[Log] = None,
    ):
        self.cfg, self.comm, self.engine = cfg, comm, engine
        self.log = log or (lambda msg: None)
        self.tokenizer, self.model_path = tokenizer, model_path
        self.model, self.device = engine.model, engine.device
        self.examples = load_examples(cfg.data, self.tokenizer, need_gold=is_verifiable(cfg.reward.kind))
        self.control = EntropyControl(cfg.algo)
        if cfg.log.clip_probe_every and cfg.log.probe_repeats == 0 and self.device.type != "cpu":
            raise ConfigError(
                f"log.probe_repeats = 0 lets the real step stand in for the probe's identity replay, which is exact "
                f"only on a CPU (this run is on {self.device.type}); use log.probe_repeats=1 or more"
            )
        self.rollout_engine = make_engine(cfg.rollout.engine, self.model, self.tokenizer, cfg.rollout)
        if is_on_policy(cfg):
            self.log(
                "warning: one minibatch and one epoch per step: every update is on-policy (ratio 1), "
                "so clipping cannot bite; lower train.minibatch_prompts or raise train.ppo_epochs"
            )

    @property
    def scheduler(self):
        """The engine's LR schedule (the step's ``lr`` column)."""
        return self.engine.scheduler

    # ------------------------------------------------------------ forward passes

    def _micro_logp_entropy(self, sb: StepBatch, mb: MicroBatch, **head):
        """Log-probs and entropies ``[n, response_width]`` of a micro-batch's response tokens (``head``: E[Q|s], entropy gradient)."""
        inputs, targets = sb.model_inputs(mb)
        with checkpointed_layers(self.model, self.cfg.train.gradient_checkpointing and torch.is_grad_enabled()):
            return self.engine.forward(inputs, targets, mb.response_width, **head)

    def _micro_batches(self, sb: StepBatch, lo: int, hi: int) -> list[MicroBatch]:
        t = self.cfg.train
        return sb.micro_batches(lo, hi, rows_per_pass=t.micro_batch_size, tokens_per_pass=t.micro_batch_tokens)

    def _minibatch_bounds(self, n_rows: int):
        # This process's rows of each minibatch (all of them in a single process).
        per = self.comm.share(self.cfg.train.minibatch_prompts) * self.cfg.rollout.n
        return [(s, min(s + per, n_rows)) for s in range(0, n_rows, per)]

    @torch.no_grad()
    def policy_stats(self, sb: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logp [N, Tr], entropy [N, Tr])`` of the batch under the current policy, on the device.

        Computed with the same micro-batches as the updates, so the first
        minibatch's ratio is 1 bit for bit; padded positions hold 0.
        """
        logp = torch.zeros(sb.response_ids.shape, dtype=torch.float32, device=self.device)
        ent = torch.zeros_like(logp)
        for lo, hi in self._minibatch_bounds(len(sb)):
            for mb in self._micro_batches(sb, lo, hi):
                lp, h = self._micro_logp_entropy(sb, mb)
                logp[mb.rows, : mb.response_width] = lp.float()
                ent[mb.rows, : mb.response_width] = h.float()
        return logp, ent


    # ------------------------------------------------------------ one step

    def rollout(self, step: int):
        """This process's prompts of the step, their ``G`` responses each, and rewards.

        A single process takes all ``P`` prompts; with several, each takes its
        share (``comm.positions``). Prompt ``j`` (global position) is sampled
        with seed ``base + j * G`` whichever process samples it (point 3 above).
        """
        cfg = self.cfg
        P, G = cfg.train.rollout_batch_prompts, cfg.rollout.n
        idx = step_prompt_indices(len(self.examples), P, step, cfg.train.seed)
        positions = list(self.comm.positions(P, cfg.train.minibatch_prompts))
        prompts = [self.examples[idx[j]] for j in positions]
        params = SamplingParams(
            n=G,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            max_new_tokens=cfg.rollout.max_new_tokens,
            seed=derived_seed(cfg.train.seed, step, 1),
        )
        if cfg.rollout.engine in PROMPT_SEEDED_ENGINES:
            calls = _consecutive_runs(positions)
        else:
            calls = [[i] for i in range(len(positions))]
        batch = concat_batches(
            [
                self.rollout_engine.generate(
                    [prompts[i].prompt_ids for i in call], replace(params, seed=params.seed + positions[call[0]] * G)
                )
                for call in calls
            ],
            self._pad_id(),
        )
        rewards = compute_rewards(
            cfg.reward.kind,
            RewardBatch(
                responses=batch.response_text,
                golds=[p.gold for p in prompts for _ in range(G)],
                seed=cfg.train.seed,
                step=step,
                prompt_indices=[j for j in positions for _ in range(G)],
                sample_indices=[g for _ in positions for g in range(G)],
                p=cfg.reward.p,
            ),
        )
        return prompts, batch, torch.tensor(rewards, dtype=torch.float32)

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def minibatch_gradient(
        self, sb: StepBatch, lo: int, hi: int, *, clip: algo.ClipSpec, entropy_coef=0.0, record=None,
        with_stats: bool = True,
    ):
        """The gradient of rows ``lo:hi``'s loss; returns (loss, kl sum, grad norm, stat sums) as host floats.

        Everything stays on the device until the gradient is complete; then one
        copy brings the loss, KL, gradient norm and statistic sums back. The
        caller applies the gradient, or drops it when it is not finite.
        ``record``: ``(logp, entropy)`` ``[N, Tr]`` buffers that receive the
        minibatch's ``log pi_k`` and ``H_t`` as the loss saw them (the tokens table).
        ``with_stats=False`` (a probe replay, whose statistics nobody reads) skips
        the entropy and ``E[Q|s]`` pass over the vocabulary unless the entropy
        bonus needs it; the statistic sums are then 0. The gradient is the same.
        """
        a = self.cfg.algo
        # Normalisers of the whole minibatch (over all processes), so that neither
        # the micro-batch split nor the process split changes the gradient.
        n_seqs = self.comm.sum(hi - lo)
        n_tokens = self.comm.sum(sb.n_tokens(lo, hi))
        self.engine.zero_grad()
        stats = schema.Totals()  # on the device until to_host
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        no_sums = None if with_stats else dict.fromkeys(schema.SUM_KEYS, zero)
        for mb in self._micro_batches(sb, lo, hi):
            if with_stats:
                logp, ent, expected_q = self._micro_logp_entropy(
                    sb, mb, with_expected_q=True, entropy_grad=entropy_coef != 0
                )
            else:
                logp, ent = self._micro_logp_entropy(
                    sb, mb, with_entropy=entropy_coef != 0, entropy_grad=entropy_coef != 0
                )[:2]
            old, adv, mask = sb.take(sb.old_logp, mb), sb.take(sb.advantages, mb), sb.take(sb.response_mask, mb)
            norms = dict(max_new_tokens=self.cfg.rollout.max_new_tokens, num_seqs=n_seqs, num_tokens=n_tokens)
            loss, out = algo.policy_loss(
                logp, old, adv, mask, clip, loss_mode=a.policy_loss, loss_agg=a.loss_agg, **norms
            )
            if entropy_coef != 0:  # entropy bonus (a penalty when negative), aggregated like the loss
                loss = loss - entropy_coef * algo.agg_loss(ent, mask, a.loss_agg, **norms)
            self.engine.backward(loss)
            if record is not None:
                record[0][mb.rows, : mb.response_width] = out.logp.float()
                record[1][mb.rows, : mb.response_width] = ent.detach().float()
            sums = algo.clip_stat_sums(out, mask, ent, expected_q) if with_stats else no_sums
            stats.add(loss.detach().double(), k3_kl_sum(logp, old, mask), sums)
        loss, kl_sum, sums, grad_norm = to_host(stats, self.engine.grad_norm())
        # Each process holds its share of the minibatch: add the shares up.
        loss, kl_sum = self.comm.sum(loss), self.comm.sum(kl_sum)
        sums = {k: float(v) for k, v in self.comm.sums(sums).items()}
        return loss, kl_sum, grad_norm, sums

    def _nonfinite_hint(self) -> str:
        return (
            f"Lower optim.lr (now {self.cfg.optim.lr:g}) and start a new run or resume from that checkpoint, "
            f"or set train.on_nonfinite=skip to drop such updates"
        )

    def update_epochs(
        self, step: int, sb: StepBatch, *, clip: algo.ClipSpec, entropy_coef=0.0,
        first_update: int = 0, after_first: Optional[Callable[[], None]] = None, record=None,
        with_stats: bool = True,
    ):
        """All optimizer steps of one step: ``ppo_epochs`` x minibatches, in a fixed order, with the policy loss's ``clip``.

        ``first_update = k`` starts at the ``k``-th optimizer step (a probe replay
        from the shared state after the first, ``clip_probe``); ``after_first``
        runs right after the first optimizer step; ``record``: per epoch, the
        ``(logp, entropy, update)`` buffers of ``_update_record``; ``with_stats``:
        see ``minibatch_gradient`` (rows and totals of a replay without them are not meaningful).
        """
        updates, totals = [], schema.Totals()
        bounds = self._minibatch_bounds(len(sb))
        for epoch in range(self.cfg.train.ppo_epochs):
            for mb, (lo, hi) in enumerate(bounds):
                k = epoch * len(bounds) + mb
                if k < first_update:
                    continue
                where = (epoch, mb, k, self.scheduler.get_last_lr()[0])
                if record is not None:
                    record[2][epoch, lo:hi] = k
                loss, kl_sum, grad_norm, sums = self.minibatch_gradient(
                    sb, lo, hi, clip=clip, entropy_coef=entropy_coef,
                    record=None if record is None else (record[0][epoch], record[1][epoch]), with_stats=with_stats,
                )
                # A non-finite loss or gradient is never applied (train.on_nonfinite): stop, or skip it.
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    what = f"loss {loss}, gradient norm {grad_norm}"
                    if self.cfg.train.on_nonfinite == "stop":
                        raise NonFiniteError(step, what, self._nonfinite_hint())
                    self.log(f"warning: step {step}: {what}; update skipped (train.on_nonfinite=skip)")
                    self.engine.skip()
                    totals.skipped += 1
                    updates.append({"step": step, **schema.skipped_update_row(*where)})
                else:
                    self.engine.step()
                    totals.add(loss, kl_sum, sums, grad_norm, on_policy=k == 0)
                    updates.append(
                        {"step": step, **schema.update_row(*where, loss=loss, kl_sum=kl_sum, grad_norm=grad_norm, sums=sums)}
                    )
                if k == 0 and after_first is not None:
                    after_first()
        return updates, totals

    # ------------------------------------------------------------ clip probe (docs/definitions.md section 8)

    # The probe's shortcuts (shared first update, replays that retrace the real step, no
    # statistics in replays); the tests and bench/probe_cost.py turn them off to compare
    # with full replays from the start.
    _share_probe_prefix = True

    def clip_probe(
        self, step: int, sb: StepBatch, start_state: dict, entropy_post: float, knobs: Knobs,
        *, first_update: int = 0, agreeing: frozenset = frozenset(),
    ) -> dict:
        """Replay the step's updates from ``start_state`` without clipping (docs/definitions.md section 8).

        Four replays on the same samples, advantages, minibatches and order:
        the run's own settings (the noise floor), the policy loss's mechanism
        off, its low side only, its high side only (``ClipSpec.sides``; dual
        clip only in the first). Eq. 4 entropy is measured
        on the step's batch after each; the real post-step state is restored at
        the end, so probing changes nothing else. ``start_state`` is the state
        before optimizer step ``first_update``: the step's start (0), or the
        state after its on-policy first update (1), which every replay shares
        (ratio exactly 1: no clip can act, so each setting takes the same
        gradient). Replays with the same settings, and those in ``agreeing``
        (``algo.agreeing_replays``: they retrace the real step), run once
        (``algo.clip_probe``); the identity replay runs ``log.probe_repeats`` times.
        """
        real_state = self.engine.snapshot()
        if math.isnan(entropy_post):  # log.entropy_post off: the probe needs it anyway
            entropy_post = self._eq4_entropy(sb)

        def replay(clip: algo.ClipSpec) -> float:
            self.engine.restore(start_state)
            self.update_epochs(
                step, sb, clip=clip, entropy_coef=knobs.entropy_coef,
                first_update=first_update, with_stats=not self._share_probe_prefix,
            )
            return self._eq4_entropy(sb)

        columns = algo.clip_probe(
            replay, self._clip(knobs), entropy_post, repeats=self.cfg.log.probe_repeats, agreeing=agreeing,
        )
        self.engine.restore(real_state)
        return columns

    def _clip(self, knobs: Knobs) -> algo.ClipSpec:
        """The policy loss's bounds (``AlgoConfig.clip``) with this step's knobs on its two sides."""
        return replace(self.cfg.algo.clip, eps_low=knobs.eps_low, eps_high=knobs.eps_high)

    def _probe_start(self, updates: list[dict], totals: schema.Totals) -> frozenset:
        """Check that the shared first update was event-free (the probe's premise) and name the replays that agree."""
        first = updates[0]
        if any(first[k] for k in ("n_below", "n_above", "n_clip_low", "n_clip_high", "n_dual_clip")):
            # log pi_old comes from the update's own micro-batches (departure 2), so this is a bug.
            raise RuntimeError(
                f"the first update's ratio is not 1 (clip events {first['n_clip_low']:g}/{first['n_clip_high']:g}); "
                "the probe cannot share it"
            )
        if totals.skipped:  # a skip may depend on the clip setting: replay everything
            return frozenset()
        return algo.agreeing_replays(totals.sums, self.cfg.algo.policy_loss)  # the step's sums, as the simulator's

    def _eq4_entropy(self, sb: StepBatch) -> float:
        """Eq. 4 entropy of the step's (global) batch under the current policy."""
        G = self.cfg.rollout.n
        _, ent = self.policy_stats(sb)
        return algo.sequence_mean_entropy(self.comm.rows(ent.cpu(), G), sb.view.mask).item()

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self, run_dir: Path, step: int, keep_last: int) -> Path:
        """``checkpoints/step-N``: the engine's model export and files, then ``trainer_state.pt`` (``checkpoint.py``)."""
        if not self.engine.weights_finite():  # never write a checkpoint a resume could not use
            raise NonFiniteError(step, "the weights are not finite", self._nonfinite_hint())
        tmp = Path(self.comm.on_main(new_checkpoint_folder, run_dir, step))
        try:
            state = {"step": step, **self.engine.save(tmp), "control": self.control.state_dict(), "rng": rng_states()}
            config = config_to_dict(self.cfg)
            return Path(self.comm.on_main(finish_checkpoint, run_dir, step, tmp, self.tokenizer, state, config, keep_last))
        except BaseException:  # Ctrl-C or a failed write: no half-made folder waits for the next resume
            if self.comm.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load_checkpoint(self, ckpt_dir: Path) -> None:
        """Engine state (optimizer, schedule, master weights), control and RNG states (the model was loaded from it)."""
        state = load_trainer_state(ckpt_dir)
        self.engine.load(ckpt_dir, state)
        self.control.load_state_dict(state.get("control", {}))
        set_rng_states(state["rng"])

    # ------------------------------------------------------------ the step

    def run_step(self, step: int) -> StepOutput:
        cfg, a, G = self.cfg, self.cfg.algo, self.cfg.rollout.n
        t0 = time.perf_counter()
        prompts, rollout, rewards = self.rollout(step)
        t_rollout = time.perf_counter() - t0

        # The batch moves to the device once; pi_old's log-probs and entropy are computed there.
        adv = algo.group_advantages(rewards, G, a.adv_norm)
        sb = StepBatch.from_rollout(rollout, rewards, adv, self.device)
        sb.old_logp, sb.old_entropy = self.policy_stats(sb)
        self._check_finite(step, sb.old_entropy, "entropy under pi_old (the policy was already broken)")
        sb.view = self._global_view(sb)
        pre = self._entropy_metrics(sb, sb.old_entropy)
        knobs = self.control.step(pre["entropy"], step)  # the config's bounds, or the entropy controller's
        probe = cfg.log.clip_probe_every and step % cfg.log.clip_probe_every == 0
        # Replays share the on-policy first update where nothing acts at ratio 1 (not the covariance families).
        share = probe and self._share_probe_prefix and algo.shares_first_update(cfg.algo.policy_loss)
        start: dict = {"state": self.engine.snapshot() if probe and not share else None}

        def after_first() -> None:  # the state every replay starts from (clip_probe)
            start["state"] = self.engine.snapshot()

        record = self._update_record(sb) if cfg.log.token_sample_rate > 0 else None
        t1 = time.perf_counter()
        updates, totals = self.update_epochs(
            step, sb, clip=self._clip(knobs), entropy_coef=knobs.entropy_coef,
            after_first=after_first if share else None, record=record,
        )
        # The rollout engine samples the next step from the updated weights (no-op
        # for hf, which shares the trainer's model).
        self.rollout_engine.sync_weights(self.model)
        t_update = time.perf_counter() - t1

        if cfg.log.entropy_post:
            post_ent = self.policy_stats(sb)[1]
            self._check_finite(step, post_ent, "entropy after the step's updates")
            post = self._entropy_metrics(sb, post_ent)
        else:
            post = {"entropy": math.nan, "entropy_token_mean": math.nan}
        t2 = time.perf_counter()
        attributed = (
            self.clip_probe(
                step, sb, start["state"], post["entropy"], knobs, first_update=1 if share else 0,
                agreeing=self._probe_start(updates, totals) if share else frozenset(),
            ) if probe
            else schema.unprobed_columns()
        )
        probe_seconds = time.perf_counter() - t2
        step_seconds = time.perf_counter() - t0

        batch = self._batch_metrics(sb)
        metrics = schema.steps_row(
            step,
            entropy=schema.entropy_columns(
                pre["entropy"], pre["entropy_token_mean"], post["entropy"], post["entropy_token_mean"]
            ),
            totals=totals,
            probe=attributed,
            batch=batch,
            lr=self.scheduler.get_last_lr()[0],
            n_updates=len(updates),
            knobs=self.control.columns(knobs),
            update_tokens=self.comm.sum(sum(sb.prompt_lengths) + sum(sb.response_lengths)) * cfg.train.ppo_epochs,
            timing=schema.timing_columns(
                rollout=t_rollout, update=t_update, probe=probe_seconds, step=step_seconds, n_tokens=batch["n_tokens"]
            ),
        )
        self.control.observe(metrics)  # the model step reads this step's Theorem 2 terms next step
        return self._step_output(step, prompts, sb, metrics, updates, record)

    def _check_finite(self, step: int, t: torch.Tensor, what: str) -> None:
        """Stop (whatever ``train.on_nonfinite``) when ``t`` holds NaN/inf: nothing of the step is written."""
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteError(step, f"{what} is not finite", self._nonfinite_hint())

    # ------------------------------------------------------------ the step's rows

    def _global_view(self, sb: StepBatch) -> GlobalView:
        """The step's rows of every process, gathered once (the identity in one process)."""
        G, g = self.cfg.rollout.n, self.comm
        return GlobalView(
            rollout=g.batch(sb.rollout, G),
            rewards=g.rows(sb.rewards.cpu(), G),
            advantages=g.rows(sb.advantages.cpu(), G),
            old_logp=g.rows(sb.old_logp.cpu(), G),
        )

    def _entropy_metrics(self, sb: StepBatch, ent: torch.Tensor) -> dict:
        """Eq. 4 (sequence-mean) and token-mean entropy of the step's global batch."""
        ent, mask = self.comm.rows(ent.cpu(), self.cfg.rollout.n), sb.view.mask
        return {
            "entropy": algo.sequence_mean_entropy(ent, mask).item(),
            "entropy_token_mean": algo.token_mean_entropy(ent, mask).item(),
        }

    def _batch_metrics(self, sb: StepBatch) -> dict:
        """Reward, length and engine metrics (``schema.BATCH_KEYS``) of the step's global batch (the view gathered once)."""
        v, G = sb.view, self.cfg.rollout.n
        rewards, adv = v.rewards, v.advantages
        lengths = v.mask.sum(-1).float()
        verifiable = is_verifiable(self.cfg.reward.kind)
        return {
            **self._engine_logprob_gap(v.rollout, v.old_logp),
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std(unbiased=False).item(),
            "accuracy": (rewards > 0.5).float().mean().item() if verifiable else math.nan,
            "zero_std_group_frac": algo.zero_std_group_frac(rewards, G).item(),
            "adv_abs_mean": adv.abs().mean().item(),
            "response_length_mean": lengths.mean().item(),
            "response_length_max": lengths.max().item(),
            "truncated_frac": v.rollout.truncated.float().mean().item(),
            "n_tokens": float(lengths.sum()),
        }

    def _update_record(self, sb: StepBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Buffers for the tokens table: per epoch, ``log pi_k`` and ``H_t`` at each token's update ``[E, N, Tr]``
        and each row's update index ``[E, N]``, filled by the real step's ``update_epochs`` (docs/metrics.md)."""
        E, (n, width) = self.cfg.train.ppo_epochs, sb.response_ids.shape
        logp = torch.zeros((E, n, width), dtype=torch.float32, device=self.device)
        return logp, torch.zeros_like(logp), torch.zeros((E, n), dtype=torch.int64)

    def _step_output(
        self, step: int, prompts, sb: StepBatch, metrics: dict, updates: list[dict], record=None
    ) -> StepOutput:
        cfg, G, g = self.cfg, self.cfg.rollout.n, self.comm
        out = StepOutput(metrics, updates)
        if not (cfg.log.samples_every and step % cfg.log.samples_every == 0) and not cfg.log.token_sample_rate > 0:
            return out
        v = sb.view
        if cfg.log.samples_every and step % cfg.log.samples_every == 0:
            out.samples = self._sample_rows(step, g.objects(prompts, 1), v.rollout, v.rewards, v.advantages)
        if cfg.log.token_sample_rate > 0:
            per_update = [
                tuple(g.rows(buf[e].cpu(), G) for buf in record) for e in range(cfg.train.ppo_epochs)
            ]
            out.tokens = self._token_rows(
                step, v.rollout, v.old_logp, g.rows(sb.old_entropy.cpu(), G), v.advantages, per_update
            )
        return out


    # ------------------------------------------------------------ optional logs

    @staticmethod
    def _engine_logprob_gap(batch: RolloutBatch, old_logp: torch.Tensor) -> dict:
        """|engine - trainer| log-prob of the sampled tokens (NaN when the engine reports none)."""
        if batch.logprobs is None:
            return {"rollout_logprob_diff_mean": math.nan, "rollout_logprob_diff_max": math.nan}
        m = batch.response_mask.bool()
        gap = (batch.logprobs.float() - old_logp)[m].abs()
        return {"rollout_logprob_diff_mean": gap.mean().item(), "rollout_logprob_diff_max": gap.max().item()}

    def _sample_rows(self, step, prompts, batch, rewards, adv) -> list[dict]:
        G = self.cfg.rollout.n
        rows = []
        for i, text in enumerate(batch.response_text):
            ex = prompts[i // G]
            rows.append(
                {
                    "step": step, "prompt_index": ex.index, "group": i // G, "sample": i % G,
                    "prompt": ex.prompt, "response": text, "gold": ex.gold,
                    "reward": float(rewards[i]), "advantage": float(adv[i]),
                    "length": int(batch.response_mask[i].sum()), "truncated": bool(batch.truncated[i]),
                }
            )
        return rows

    def _token_rows(self, step, batch, old_logp, old_ent, adv, per_update) -> list[dict]:
        """Sampled tokens, one row per token and epoch; ``per_update[e] = (logp, entropy, update)`` of epoch ``e``."""
        gen = torch.Generator().manual_seed(derived_seed(self.cfg.train.seed, step, 2))
        valid = batch.response_mask.bool()
        keep = valid & (torch.rand(valid.shape, generator=gen) < self.cfg.log.token_sample_rate)
        rows = []
        for i, t in keep.nonzero().tolist():
            for epoch, (logp, ent, update) in enumerate(per_update):
                rows.append(
                    {
                        "step": step, "row": i, "position": t, "token_id": int(batch.response_ids[i, t]),
                        "logp_old": float(old_logp[i, t]), "entropy": float(old_ent[i, t]),
                        "advantage": float(adv[i]), "epoch": epoch, "update": int(update[i]),
                        "logp_update": float(logp[i, t]), "entropy_update": float(ent[i, t]),
                    }
                )
        return rows
