"""GRPO-style policy-gradient steps on a tiny language model, with the per-token statistics from
:func:`logitops.linear_token_logprobs` (the [tokens, vocab] logits never exist).

One step, as TRL's GRPOTrainer / verl / OpenRLHF do it:

1. the current policy (frozen as the "old" policy for this step) samples a group of completions
   for each prompt (:func:`logitops.sample`, seeded);
2. a reward per completion (here a toy one: the fraction of completion tokens that are even ids,
   so the policy can visibly learn it), turned into group-relative advantages
   ``(r - mean(group)) / (std(group) + 1e-4)``;
3. per token: the log-probabilities of the sampled tokens under the old policy and under a
   frozen reference policy (no gradient), and under the policy being trained together with the
   entropy of its next-token distribution (with gradient), all at the sampling temperature;
   prompt positions are ``ignore_index`` (log-prob 0, entropy 0, no gradient);
4. the loss per completion token: the clipped surrogate
   ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`` with ``ratio = exp(logp - logp_old)``,
   plus ``beta`` times the KL penalty to the reference from log-prob differences (the k3
   estimator ``exp(d) - d - 1``, ``d = logp_ref - logp``, always >= 0), minus an entropy bonus;
   averaged over completion tokens; then ``--updates`` optimizer steps on the batch (the
   clipping matters from the second on, when the policy has moved away from the old one).

The first step also recomputes the loss from the materialized logits (``log_softmax``) and checks
that the loss and the gradients agree. No download, no optional dependency; a few seconds on a
CPU.

    python examples/grpo_step.py --steps 20
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import logitops

IGNORE = -100


class TinyLM(nn.Module):
    """Embedding -> GRU -> LM head: hidden states [B, T, H] and the head's weight [V, H]."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def hidden_states(self, tokens: torch.Tensor, state=None):
        out, state = self.rnn(self.embed(tokens), state)
        return out, state


@torch.no_grad()
def generate(model: TinyLM, prompts: torch.Tensor, new_tokens: int, temperature: float, seed: int):
    """Samples ``new_tokens`` tokens after each prompt (one token per row per step)."""
    hidden, state = model.hidden_states(prompts)
    last = hidden[:, -1]
    tokens = [prompts]
    rows = torch.arange(prompts.shape[0])
    for step in range(new_tokens):
        logits = model.lm_head(last)
        # Per-row seeds: each completion depends only on its own seed, not on the batch.
        nxt = logitops.sample(
            logits, temperature=temperature, seed=seed * 100003 + rows * 997 + step
        )
        tokens.append(nxt[:, None])
        out, state = model.hidden_states(nxt[:, None], state)
        last = out[:, -1]
    return torch.cat(tokens, dim=1)


def next_token_targets(sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """target[:, t] = sequences[:, t + 1] for completion tokens, ignore_index for the prompt."""
    target = sequences[:, 1:].clone()
    target[:, : prompt_len - 1] = IGNORE
    return target


def token_statistics(model: TinyLM, sequences: torch.Tensor, target: torch.Tensor, temperature,
                     with_entropy: bool, chunk_size: int | None = None):  # fmt: skip
    hidden, _ = model.hidden_states(sequences[:, :-1])
    return logitops.linear_token_logprobs(
        hidden,
        model.lm_head.weight,
        target,
        temperature=temperature,
        return_entropy=with_entropy,
        ignore_index=IGNORE,
        chunk_size=chunk_size,
    )


def unfused_statistics(model: TinyLM, sequences, target, temperature):
    """The same statistics from the materialized logits, for the first step's check."""
    hidden, _ = model.hidden_states(sequences[:, :-1])
    log_p = torch.log_softmax(model.lm_head(hidden).double() / temperature, dim=-1)
    mask = target != IGNORE
    logp = log_p.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return torch.where(mask, logp, 0.0), torch.where(mask, entropy, 0.0)


def grpo_loss(logp, entropy, logp_old, logp_ref, advantages, mask, *, clip_eps, beta, ent_coef):
    """The per-token GRPO objective averaged over completion tokens, and diagnostics."""
    ratio = torch.exp(logp - logp_old)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    d = logp_ref - logp
    kl = torch.exp(d) - d - 1  # k3: an unbiased, non-negative estimate of KL(policy || ref)
    per_token = -surrogate + beta * kl - ent_coef * entropy
    count = mask.sum()
    loss = (per_token * mask).sum() / count
    clipped = ((ratio - 1).abs() > clip_eps) & mask
    with torch.no_grad():
        stats = {
            "kl": float((kl * mask).sum() / count),
            "clip_frac": float(clipped.sum() / count),
            "entropy": float((entropy * mask).sum() / count),
        }
    return loss, stats


def reward(sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Toy reward: the fraction of completion tokens with an even id."""
    return (sequences[:, prompt_len:] % 2 == 0).double().mean(dim=1)


def main(argv=None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=257)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--prompt-len", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--updates", type=int, default=2, help="optimizer steps per batch")
    parser.add_argument("--lr", type=float, default=2e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    clip_eps, beta, ent_coef = 0.2, 0.04, 1e-3

    torch.manual_seed(args.seed)
    policy = TinyLM(args.vocab, args.hidden)
    reference = copy.deepcopy(policy).requires_grad_(False)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    prompts = torch.randint(0, args.vocab, (args.prompts, args.prompt_len))
    history = []
    for step in range(args.steps):
        # 1. the old policy samples a group per prompt
        batch = prompts.repeat_interleave(args.group, dim=0)
        sequences = generate(policy, batch, args.new_tokens, args.temperature, seed=step)
        # 2. group-relative advantages
        rewards = reward(sequences, args.prompt_len)
        grouped = rewards.view(args.prompts, args.group)
        advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True)
                      + 1e-4)).reshape(-1).float()  # fmt: skip
        # 3. per-token statistics (old and reference without gradient)
        target = next_token_targets(sequences, args.prompt_len)
        mask = target != IGNORE
        with torch.no_grad():
            logp_old = token_statistics(policy, sequences, target, args.temperature, False)
            logp_ref = token_statistics(reference, sequences, target, args.temperature, False)
        # 4. the loss and `--updates` optimizer steps on this batch: after the first, the policy
        # has moved away from the old one, the ratios leave 1 and the clipping takes effect.
        for update in range(args.updates):
            logp, entropy = token_statistics(
                policy, sequences, target, args.temperature, True, chunk_size=64
            )
            loss, stats = grpo_loss(
                logp, entropy, logp_old, logp_ref, advantages, mask,
                clip_eps=clip_eps, beta=beta, ent_coef=ent_coef,
            )  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            if step == 0 and update == 0:
                check_against_unfused(
                    policy, sequences, target, args, logp_old, logp_ref, advantages, mask, loss,
                    (clip_eps, beta, ent_coef),
                )  # fmt: skip
            optimizer.step()
        stats.update(step=step, loss=float(loss.detach()), reward=float(rewards.mean()))
        history.append(stats)
        print(
            f"step {step:3d}  reward {stats['reward']:.3f}  loss {stats['loss']:+.4f}  "
            f"kl {stats['kl']:.4f}  clip {stats['clip_frac']:.3f}  entropy {stats['entropy']:.3f}"
        )
    return history


def check_against_unfused(policy, sequences, target, args, logp_old, logp_ref, advantages, mask,
                          loss, coefs):  # fmt: skip
    """The fused statistics give the loss and the gradients of the materialized logits."""
    clip_eps, beta, ent_coef = coefs
    fused_grads = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    logp, entropy = unfused_statistics(policy, sequences, target, args.temperature)
    unfused_loss, _ = grpo_loss(
        logp, entropy, logp_old.double(), logp_ref.double(), advantages.double(), mask,
        clip_eps=clip_eps, beta=beta, ent_coef=ent_coef,
    )  # fmt: skip
    unfused_loss.backward()
    torch.testing.assert_close(loss.double(), unfused_loss, rtol=1e-5, atol=1e-6)
    for fused, p in zip(fused_grads, policy.parameters(), strict=True):
        torch.testing.assert_close(fused, p.grad, rtol=1e-4, atol=1e-6)
        p.grad = fused
    print("step 0: fused loss and gradients match the unfused log_softmax computation")


if __name__ == "__main__":
    main()
