"""The policy's training forward: log-probs and entropies of response tokens under the trainer's model.

``Policy`` is the module every update engine calls for a forward with
gradient: DeepSpeed must wrap it, since ZeRO's parameter gathering and
gradient bookkeeping hook into the wrapped module's forward.
"""

from __future__ import annotations

import torch

from clipctl import algo
from clipctl.config import Config


def policy_logp_entropy(
    model, cfg: Config, inputs: dict, targets: torch.Tensor, width: int, with_entropy: bool = True,
    with_expected_q: bool = False, entropy_grad: bool = False,
):
    """Log-probs and entropies ``[n, width]`` of ``targets``, the last ``width`` tokens of ``inputs``.

    ``with_expected_q`` adds a third ``[n, width]`` tensor, the per-state
    ``E_pi[Q | s_t]`` of the Theorem 1 statistics, from the same vocabulary pass.
    ``entropy_grad`` lets gradients flow through the entropy (entropy bonus; fused head only).
    """
    tau = cfg.rollout.temperature
    if cfg.train.lm_head == "fused":
        # Stop at the final hidden states; the LM head runs tiled (never [tokens x vocab]).
        hidden = model.base_model(**inputs).last_hidden_state[:, -width - 1 : -1]
        head = model.get_output_embeddings()
        return algo.fused_logprobs_entropy(
            hidden, head.weight, targets, bias=head.bias, temperature=tau,
            budget_bytes=cfg.train.lm_head_budget_mb * 2**20, with_expected_q=with_expected_q,
            entropy_grad=entropy_grad,
        )
    logits = model(**inputs, logits_to_keep=width + 1).logits[:, :-1]
    return algo.token_logprobs_and_entropy(
        logits, targets, temperature=tau, chunk_rows=cfg.train.logit_chunk_rows,
        with_entropy=with_entropy or with_expected_q, with_expected_q=with_expected_q,
    )


class Policy(torch.nn.Module):
    """The HF model plus the log-prob/entropy head: ``policy(inputs, targets, width, **head)``."""

    def __init__(self, model: torch.nn.Module, cfg: Config):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, inputs: dict, targets: torch.Tensor, width: int, **head):
        return policy_logp_entropy(self.model, self.cfg, inputs, targets, width, **head)
