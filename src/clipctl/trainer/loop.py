"""The GRPO step loop (SPEC section 1), single process: the reference trainer.

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
   on how many processes share the step (``trainer/distributed.py``). Both
   engines seed each response of a call by its row (``PROMPT_SEEDED_ENGINES``),
   so a run of consecutive prompts shares one batched call.
4. Everything that depends on ranks goes through ``self.comm``: in a single
   process its collectives are the identity, so this file reads as the
   single-process algorithm; ``distributed.py`` supplies the multi-process one.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from clipctl import algo
from clipctl.config import Config, is_on_policy
from clipctl.data import load_examples, step_prompt_indices
from clipctl.models import load_model, load_tokenizer, resolve_device, resolve_model_path
from clipctl.rewards import RewardBatch, compute_rewards, is_verifiable
from clipctl.rollout import RolloutBatch, SamplingParams, make_engine
from clipctl.runlog import write_part
from clipctl.trainer.checkpoint import load_trainer_state, save_checkpoint, set_rng_states

Log = Callable[[str], None]

PROBE_COLUMNS = algo.PROBE_KEYS  # SPEC 7b; NaN on steps that are not probed
# Columns of the steps table whose values depend on wall-clock time, not on the math.
TIMING_COLUMNS = ("rollout_seconds", "update_seconds", "probe_seconds", "step_seconds", "tokens_per_second")
# Engines whose generate() seeds prompt i of a call with params.seed + i * params.n
# (rollout/vllm.py, point 4), so any run of consecutive prompts can share a call.
PROMPT_SEEDED_ENGINES = ("hf", "vllm")


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def policy_logp_entropy(model, cfg: Config, inputs: dict, targets: torch.Tensor, width: int, with_entropy: bool = True):
    """Log-probs and entropies ``[n, width]`` of ``targets``, the last ``width`` tokens of ``inputs``."""
    tau = cfg.rollout.temperature
    if cfg.train.lm_head == "fused":
        # Stop at the final hidden states; the LM head runs tiled (never [tokens x vocab]).
        hidden = model.base_model(**inputs).last_hidden_state[:, -width - 1 : -1]
        head = model.get_output_embeddings()
        return algo.fused_logprobs_entropy(
            hidden, head.weight, targets, bias=head.bias, temperature=tau,
            budget_bytes=cfg.train.lm_head_budget_mb * 2**20,
        )
    logits = model(**inputs, logits_to_keep=width + 1).logits[:, :-1]
    return algo.token_logprobs_and_entropy(
        logits, targets, temperature=tau, chunk_rows=cfg.train.logit_chunk_rows, with_entropy=with_entropy
    )


def _consecutive_runs(positions: list[int]) -> list[list[int]]:
    """Indices into ``positions`` grouped into runs of consecutive values."""
    runs: list[list[int]] = []
    for i, j in enumerate(positions):
        if runs and positions[runs[-1][-1]] == j - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _pad_to(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    extra = width - t.shape[1]
    if extra == 0:
        return t
    fill = torch.full((t.shape[0], extra), value, dtype=t.dtype)
    return torch.cat([fill, t] if left else [t, fill], dim=1)


def concat_batches(parts: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Stack rollout batches row-wise: prompts re-padded on the left, responses on the right."""
    if len(parts) == 1:
        return parts[0]
    tp = max(b.prompt_ids.shape[1] for b in parts)
    tr = max(b.response_ids.shape[1] for b in parts)
    with_logprobs = all(b.logprobs is not None for b in parts)
    return RolloutBatch(
        prompt_ids=torch.cat([_pad_to(b.prompt_ids, tp, pad_id, True) for b in parts]),
        prompt_mask=torch.cat([_pad_to(b.prompt_mask, tp, 0, True) for b in parts]),
        response_ids=torch.cat([_pad_to(b.response_ids, tr, pad_id, False) for b in parts]),
        response_mask=torch.cat([_pad_to(b.response_mask, tr, 0, False) for b in parts]),
        truncated=torch.cat([b.truncated for b in parts]),
        response_text=[t for b in parts for t in b.response_text],
        logprobs=torch.cat([_pad_to(b.logprobs, tr, 0.0, False) for b in parts]) if with_logprobs else None,
    )


@dataclass
class StepOutput:
    metrics: dict
    updates: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    tokens: list[dict] = field(default_factory=list)


class Trainer:
    """Holds the model, optimizer, data and engine; ``run_step(step)`` does one step."""

    def __init__(self, cfg: Config, *, init_path: Optional[str] = None, log: Optional[Log] = None, comm=None):
        from clipctl.trainer.distributed import SingleProcess

        self.cfg = cfg
        self.log = log or (lambda msg: None)
        self.comm = comm if comm is not None else SingleProcess()
        torch.manual_seed(cfg.train.seed)
        path = init_path or resolve_model_path(cfg.model.path, self.log)
        self.model_path = path
        self.tokenizer = load_tokenizer(path)
        # Under DeepSpeed with GPUs the launcher has made this rank's GPU current.
        self.model = load_model(path, cfg.model.dtype).to(resolve_device(cfg.model.device))
        self.model.eval()
        self.examples = load_examples(cfg.data, self.tokenizer, need_gold=is_verifiable(cfg.reward.kind))
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        warmup = o.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup > 0 else 1.0
        )
        self.engine = make_engine(cfg.rollout.engine, self.model, self.tokenizer, cfg.rollout)
        if is_on_policy(cfg):
            self.log(
                "warning: one minibatch and one epoch per step: every update is on-policy (ratio 1), "
                "so clipping cannot bite; lower train.minibatch_prompts or raise train.ppo_epochs"
            )

    # ------------------------------------------------------------ forward passes

    def _model_inputs(self, batch: RolloutBatch, rows: slice) -> dict:
        ids = torch.cat([batch.prompt_ids[rows], batch.response_ids[rows]], dim=1)
        attn = torch.cat([batch.prompt_mask[rows], batch.response_mask[rows]], dim=1)
        # Positions as generate() assigns them with left padding.
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        device = next(self.model.parameters()).device
        return {
            "input_ids": ids.to(device),
            "attention_mask": attn.to(device),
            "position_ids": positions.to(device),
            "use_cache": False,
        }

    def _logp_entropy(self, batch: RolloutBatch, rows: slice, with_entropy: bool = True):
        """Log-probs ``[n, Tr]`` (with gradient) and entropies of the response tokens of ``rows``."""
        width = batch.response_ids.shape[1]
        inputs = self._model_inputs(batch, rows)
        targets = batch.response_ids[rows].to(inputs["input_ids"].device)
        return self._forward(inputs, targets, width, with_entropy)

    def _forward(self, inputs: dict, targets: torch.Tensor, width: int, with_entropy: bool):
        return policy_logp_entropy(self.model, self.cfg, inputs, targets, width, with_entropy)

    def _micro_slices(self, start: int, stop: int):
        size = self.cfg.train.micro_batch_size
        for s in range(start, stop, size):
            yield slice(s, min(s + size, stop))

    def _minibatch_bounds(self, n_rows: int):
        # This process's rows of each minibatch (all of them in a single process).
        per = self.comm.share(self.cfg.train.minibatch_prompts) * self.cfg.rollout.n
        return [(s, min(s + per, n_rows)) for s in range(0, n_rows, per)]

    @torch.no_grad()
    def policy_stats(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logp [N, Tr], entropy [N, Tr])`` of the batch under the current policy."""
        logps, ents = [], []
        for lo, hi in self._minibatch_bounds(len(batch)):
            for rows in self._micro_slices(lo, hi):
                logp, ent = self._logp_entropy(batch, rows)
                logps.append(logp.cpu())
                ents.append(ent.cpu())
        return torch.cat(logps), torch.cat(ents)

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
                self.engine.generate(
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

    def update_minibatch(self, batch, lo, hi, old_logp, adv, *, eps_low, eps_high, dual_clip_c):
        """One optimizer step on rows ``lo:hi``; returns (stat sums, loss, kl sum, grad norm)."""
        a, mask = self.cfg.algo, batch.response_mask
        # Normalisers of the whole minibatch (over all processes), so that neither
        # the micro-batch split nor the process split changes the gradient.
        n_seqs = self.comm.sum(hi - lo)
        n_tokens = self.comm.sum(mask[lo:hi].sum().item())
        self._zero_grad()
        sums = None
        loss_total = 0.0
        kl_sum = 0.0
        for rows in self._micro_slices(lo, hi):
            logp, ent = self._logp_entropy(batch, rows)
            logp = logp.cpu() if logp.device.type != "cpu" else logp
            m = mask[rows]
            loss = algo.policy_loss(
                logp,
                old_logp[rows],
                adv[rows],
                m,
                eps_low=eps_low,
                eps_high=eps_high,
                loss_agg=a.loss_agg,
                dual_clip_c=dual_clip_c,
                max_new_tokens=self.cfg.rollout.max_new_tokens,
                num_seqs=n_seqs,
                num_tokens=n_tokens,
            )
            self._backward(loss)
            loss_total += loss.item()
            part = algo.clip_stat_sums(
                logp, old_logp[rows], adv[rows], m, ent.cpu(),
                eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c,
            )
            sums = part if sums is None else algo.add_sums(sums, part)
            with torch.no_grad():
                lr_ = algo.log_ratio(logp.detach(), old_logp[rows])
                k3 = torch.exp(lr_) - 1.0 - lr_  # unbiased estimator of KL(pi_old || pi_theta)
                kl_sum += torch.where(m.bool(), k3, torch.zeros_like(k3)).sum().item()
        grad_norm = self._optimizer_step()
        # Each process holds its share of the minibatch: add the shares up.
        sums, loss_total, kl_sum = self.comm.sums(sums), self.comm.sum(loss_total), self.comm.sum(kl_sum)
        return sums, loss_total, kl_sum, grad_norm

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _optimizer_step(self) -> float:
        """Clip, step optimizer and scheduler; returns the gradient norm before clipping."""
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item()
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm

    def update_epochs(self, step, batch, old_logp, adv, *, eps_low, eps_high, dual_clip_c):
        """All optimizer steps of one step: ``ppo_epochs`` x minibatches, in a fixed order."""
        updates, step_sums = [], None
        losses, kls, norms = [], 0.0, []
        for epoch in range(self.cfg.train.ppo_epochs):
            for mb, (lo, hi) in enumerate(self._minibatch_bounds(len(batch))):
                lr = self.scheduler.get_last_lr()[0]
                sums, loss, kl_sum, grad_norm = self.update_minibatch(
                    batch, lo, hi, old_logp, adv, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c
                )
                step_sums = sums if step_sums is None else algo.add_sums(step_sums, sums)
                n_tok = float(sums["n_tokens"])
                updates.append(
                    {
                        "step": step, "epoch": epoch, "minibatch": mb, "update": len(updates),
                        "loss": loss, "approx_kl": kl_sum / n_tok if n_tok else math.nan,
                        "grad_norm": grad_norm, "lr": lr,
                        **algo.finalize_clip_stats(sums),
                        **{k: float(v) for k, v in sums.items()},
                    }
                )
                losses.append(loss)
                kls += kl_sum
                norms.append(grad_norm)
        return updates, step_sums, losses, kls, norms

    # ------------------------------------------------------------ clip probe (SPEC 7b)

    def _snapshot(self) -> dict:
        """Host copies of weights, optimizer and scheduler state (deep: AdamW updates in place)."""
        return {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
        }

    def _restore(self, snap: dict) -> None:
        self.model.load_state_dict(snap["model"])
        # load_state_dict keeps references to the given tensors: hand it a copy so
        # the snapshot survives the replay's in-place optimizer updates.
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        self.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))

    def clip_probe(self, step, batch, old_logp, adv, start_state, entropy_post) -> dict:
        """Replay the step's updates from ``start_state`` without clipping (SPEC 7b).

        Three replays on the same samples, advantages, minibatches and order:
        no clipping; clip-low only; clip-high only (dual clip off in all three).
        Eq. 4 entropy is measured on the step's batch after each; the real
        post-step state is restored at the end, so probing changes nothing else.
        """
        a = self.cfg.algo
        real_state = self._snapshot()
        replays = algo.probe_replays(a.eps_low, a.eps_high)
        post = {}
        for label, (eps_low, eps_high) in replays.items():
            self._restore(start_state)
            self.update_epochs(step, batch, old_logp, adv, eps_low=eps_low, eps_high=eps_high, dual_clip_c=None)
            post[label] = self._eq4_entropy(batch)
        self._restore(real_state)
        if math.isnan(entropy_post):  # log.entropy_post off: the probe needs it anyway
            entropy_post = self._eq4_entropy(batch)
        return algo.attributed_entropy_changes(entropy_post, post)

    def _eq4_entropy(self, batch: RolloutBatch) -> float:
        """Eq. 4 entropy of the step's (global) batch under the current policy."""
        G = self.cfg.rollout.n
        _, ent = self.policy_stats(batch)
        return algo.sequence_mean_entropy(self.comm.rows(ent, G), self.comm.rows(batch.response_mask, G)).item()

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self, run_dir: Path, step: int, keep_last: int) -> Path:
        return save_checkpoint(run_dir, step, self.model, self.tokenizer, self.optimizer, self.scheduler, keep_last)

    def load_checkpoint(self, ckpt_dir: Path) -> None:
        """Optimizer, scheduler and RNG states of a checkpoint (the weights were loaded at init)."""
        state = load_trainer_state(ckpt_dir)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])

    # ------------------------------------------------------------ the step

    def run_step(self, step: int) -> StepOutput:
        cfg = self.cfg
        a, G = cfg.algo, cfg.rollout.n
        t0 = time.perf_counter()
        prompts, batch, rewards = self.rollout(step)
        t_rollout = time.perf_counter() - t0

        adv = algo.group_advantages(rewards, G, a.adv_norm)
        mask = batch.response_mask
        old_logp, old_ent = self.policy_stats(batch)

        probe = self.cfg.log.clip_probe_every and step % self.cfg.log.clip_probe_every == 0
        if probe:
            start_state = self._snapshot()

        t1 = time.perf_counter()
        updates, step_sums, losses, kls, norms = self.update_epochs(
            step, batch, old_logp, adv, eps_low=a.eps_low, eps_high=a.eps_high, dual_clip_c=a.dual_clip_c
        )
        opt_index = len(updates)
        # The engine samples the next step from the updated weights (no-op for hf,
        # which shares the trainer's model).
        self.engine.sync_weights(self.model)
        t_update = time.perf_counter() - t1

        # Step metrics see the whole step: in a single process the comm calls
        # below return their argument; with several processes they gather
        # every process's rows in global order.
        g = self.comm
        gbatch, gmask = g.batch(batch, G), g.rows(mask, G)
        g_rewards, g_adv, g_old_logp, g_old_ent = (g.rows(t, G) for t in (rewards, adv, old_logp, old_ent))
        if cfg.log.entropy_post:
            _, post_ent = self.policy_stats(batch)
            post_ent = g.rows(post_ent, G)
            entropy_post = algo.sequence_mean_entropy(post_ent, gmask).item()
            entropy_post_token_mean = algo.token_mean_entropy(post_ent, gmask).item()
        else:
            entropy_post = entropy_post_token_mean = math.nan
        t2 = time.perf_counter()
        attributed = self.clip_probe(step, batch, old_logp, adv, start_state, entropy_post) if probe else {
            k: math.nan for k in PROBE_COLUMNS
        }
        probe_seconds = time.perf_counter() - t2
        step_seconds = time.perf_counter() - t0

        lengths = gmask.sum(-1).float()
        n_tokens = float(lengths.sum())
        verifiable = is_verifiable(cfg.reward.kind)
        rewards, adv = g_rewards, g_adv
        metrics = {
            "step": step,
            "entropy": algo.sequence_mean_entropy(g_old_ent, gmask).item(),
            "entropy_token_mean": algo.token_mean_entropy(g_old_ent, gmask).item(),
            "entropy_post": entropy_post,
            "entropy_post_token_mean": entropy_post_token_mean,
            **algo.finalize_clip_stats(step_sums),
            **attributed,
            **self._engine_logprob_gap(gbatch, g_old_logp),
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std(unbiased=False).item(),
            "accuracy": (rewards > 0.5).float().mean().item() if verifiable else math.nan,
            "zero_std_group_frac": algo.zero_std_group_frac(rewards, G).item(),
            "adv_abs_mean": adv.abs().mean().item(),
            "response_length_mean": lengths.mean().item(),
            "response_length_max": lengths.max().item(),
            "truncated_frac": gbatch.truncated.float().mean().item(),
            "loss": float(np.mean(losses)),
            "approx_kl": kls / float(step_sums["n_tokens"]) if float(step_sums["n_tokens"]) else math.nan,
            "grad_norm": float(np.mean(norms)),
            "lr": self.scheduler.get_last_lr()[0],
            "n_updates": opt_index,
            "probe_seconds": probe_seconds,
            "n_tokens": n_tokens,
            "rollout_seconds": t_rollout,
            "update_seconds": t_update,
            "step_seconds": step_seconds,
            "tokens_per_second": n_tokens / step_seconds if step_seconds > 0 else math.nan,
        }
        out = StepOutput(metrics, updates)
        if cfg.log.samples_every and step % cfg.log.samples_every == 0:
            out.samples = self._sample_rows(step, g.objects(prompts, 1), gbatch, rewards, adv)
        if cfg.log.token_sample_rate > 0:
            out.tokens = self._token_rows(step, gbatch, g_old_logp, g_old_ent, adv)
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

    def _token_rows(self, step, batch, old_logp, old_ent, adv) -> list[dict]:
        gen = torch.Generator().manual_seed(derived_seed(self.cfg.train.seed, step, 2))
        valid = batch.response_mask.bool()
        keep = valid & (torch.rand(valid.shape, generator=gen) < self.cfg.log.token_sample_rate)
        rows = []
        for i, t in keep.nonzero().tolist():
            rows.append(
                {
                    "step": step, "row": i, "position": t, "token_id": int(batch.response_ids[i, t]),
                    "logp_old": float(old_logp[i, t]), "entropy": float(old_ent[i, t]),
                    "advantage": float(adv[i]),
                }
            )
        return rows


def write_step(run_dir: Path, out: StepOutput) -> None:
    """Write the step's parts; the steps part last, so a step row implies its other parts."""
    step = out.metrics["step"]
    for table, rows in (("updates", out.updates), ("samples", out.samples), ("tokens", out.tokens)):
        if rows:
            write_part(run_dir, table, step, rows)
    write_part(run_dir, "steps", step, [out.metrics])
