"""Per-token log-probabilities and entropies (the RL fine-tuning statistics): logitops vs the
unfused PyTorch computation (eager and torch.compile), same run, time and peak memory.

Two ops, every shape N x H x V:

- ``logprobs`` (token_logprobs): from logits [N, V] (H unused): ``log_softmax(logits / T)``
  gathered at the sampled tokens and the entropy ``-sum p log p``, both in float32 (the
  unfused form upcasts the logits, as TRL's and verl's helpers do). Minimal traffic: the
  forward reads the logits once (N*V*s bytes); forward+backward reads them twice and writes
  their gradient (3*N*V*s).
- ``linear_logprobs`` (linear_token_logprobs): from hidden states [N, H] and an LM head
  [V, H]. The unfused step holds the [N, V] logits (and float32 copies, and their gradients);
  logitops never does. Bound by the matmuls (2*N*H*V flops each: the forward's, the
  backward's recomputation, the input's and the weight's gradients).

Each provider computes ``sum(logprob) + 0.01 * sum(entropy)`` at T = 0.9 and, for fwd+bwd, the
gradients of logits (or of hidden states and head weight).

    python benchmarks/bench_token_logprobs.py --quick
    python benchmarks/bench_token_logprobs.py --device cuda
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

import logitops  # noqa: E402

TEMPERATURE = 0.9
ENTROPY_COEF = 0.01


def unfused_statistics(logits, target):
    """The usual PyTorch form: float32 log-softmax of logits / T, gathered, and its entropy."""
    log_p = torch.log_softmax(logits.float() / TEMPERATURE, dim=-1)
    logprob = log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return logprob, entropy


def objective(logprob, entropy):
    return logprob.sum() + ENTROPY_COEF * entropy.sum()


def torch_logits(logits, target):
    return objective(*unfused_statistics(logits, target))


def ours_logits(logits, target):
    return objective(
        *logitops.token_logprobs(logits, target, temperature=TEMPERATURE, return_entropy=True)
    )


def torch_linear(hidden, weight, target):
    return objective(*unfused_statistics(F.linear(hidden, weight), target))


def ours_linear(hidden, weight, target):
    return objective(
        *logitops.linear_token_logprobs(
            hidden, weight, target, temperature=TEMPERATURE, return_entropy=True
        )
    )


def shapes_for(args) -> list[tuple[int, int, int]]:
    """(tokens, hidden, vocab)."""
    if args.device == "cuda":
        return (
            [(8192, 4096, 128256)] if args.quick else [(4096, 4096, 128256), (8192, 4096, 151936)]
        )
    return [(2048, 256, 32000)] if args.quick else [(2048, 256, 32000), (1024, 256, 128256)]


def providers(device: str) -> dict[str, dict[str, object]]:
    return {
        "logprobs": {
            "logitops": ours_logits,
            "torch": torch_logits,
            "torch.compile": torch.compile(torch_logits, dynamic=False),
        },
        "linear_logprobs": {
            "logitops": ours_linear,
            "torch": torch_linear,
            "torch.compile": torch.compile(torch_linear, dynamic=False),
        },
    }


def inputs(op, shape, dtype, device) -> harness.Inputs:
    tokens, hidden, vocab = shape
    target = torch.randint(0, vocab, (tokens,), device=device)
    if op == "logprobs":
        nbytes = tokens * vocab * dtype.itemsize
        return harness.Inputs(
            functools.partial(torch.randn, tokens, vocab, device=device, dtype=dtype),
            (target,),
            bytes_by_mode={"fwd": nbytes, "fwd+bwd": 3 * nbytes},
        )
    weight = (torch.randn(vocab, hidden, device=device) / hidden**0.5).to(dtype)
    return harness.Inputs(
        functools.partial(torch.randn, tokens, hidden, device=device, dtype=dtype),
        (weight.requires_grad_(), target),
    )


FAMILY = harness.Family(
    "token_logprobs",
    __doc__,
    providers,
    inputs,
    shapes_for,
    dtypes="fp32,bf16",
    quick_dtypes="fp32",
    modes="fwd,fwd+bwd",
    shapes_help="NxHxV (H unused by token_logprobs), e.g. 2048x256x32000",
    cpu_reps=3,
    cuda_reps=20,
)


def main(argv=None) -> list[harness.Measurement]:
    return harness.run_family(FAMILY, argv)


if __name__ == "__main__":
    main()
