"""Filtering and sampling: logitops vs transformers' warper chain (sort-based; where transformers
is not installed, the same warpers from tests/reference.py) and, on a GPU where installed,
FlashInfer; same run.

`decode` is a whole sampling step of a chat model's decoding loop: repetition penalty over a
history of HISTORY tokens per row, temperature, top-k, top-p and eta sampling, then the draw;
logitops does it in one `sample` call, transformers with its processors and `torch.multinomial`
(as its `generate()` does).

Bytes counted (minimal traffic): filter reads and writes B*V*s; sample and decode read B*V*s.

    python benchmarks/bench_sampling.py --quick
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402
import reference  # noqa: E402  (tests/reference.py, on the path through harness)

import logitops  # noqa: E402

TEMPERATURE, TOP_K, TOP_P = 0.8, 50, 0.9
REPETITION_PENALTY, ETA, HISTORY = 1.2, 1e-4, 512
HF = "hf_warpers" if importlib.util.find_spec("transformers") else "hf_restated"


def hf_chain():
    """transformers' warpers (temperature -> top-k -> top-p) if installed, else the same warpers
    from tests/reference.py."""
    if HF == "hf_restated":
        return lambda s: reference.hf_top_p(reference.hf_top_k(s / TEMPERATURE, TOP_K), TOP_P)
    tf = importlib.import_module("transformers")
    warpers = [
        tf.TemperatureLogitsWarper(TEMPERATURE),
        tf.TopKLogitsWarper(TOP_K),
        tf.TopPLogitsWarper(TOP_P),
    ]

    def chain(scores):
        for w in warpers:
            scores = w(None, scores)
        return scores

    return chain


def providers(device: str) -> dict[str, dict[str, object]]:
    chain = hf_chain()
    filters = {
        "logitops": lambda x: logitops.filter_logits(
            x, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P
        ),
        HF: chain,
    }
    samplers = {
        "logitops": lambda x: logitops.sample(x, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P),
        HF + "+multinomial": lambda x: torch.multinomial(torch.softmax(chain(x), -1), 1),
    }
    try:
        fi = importlib.import_module("flashinfer.sampling")
        if device == "cuda":
            samplers["flashinfer"] = lambda x: fi.top_k_top_p_sampling_from_logits(
                x / TEMPERATURE, TOP_K, TOP_P
            )
        else:
            samplers["flashinfer"] = "needs CUDA"
    except ImportError:
        samplers["flashinfer"] = "not installed"
    return {"filter": filters, "sample": samplers, "decode": decode_providers()}


@functools.lru_cache(maxsize=8)
def history(rows: int, vocab: int, device: str) -> torch.Tensor:
    """Each row's HISTORY previous tokens (prompt and output), [rows, HISTORY]."""
    gen = torch.Generator().manual_seed(rows)
    return torch.randint(0, vocab, (rows, HISTORY), generator=gen).to(device)


def decode_providers() -> dict[str, object]:
    def ours(x):
        return logitops.sample(
            x,
            temperature=TEMPERATURE,
            top_k=TOP_K,
            top_p=TOP_P,
            eta_cutoff=ETA,
            prompt_ids=history(*x.shape, str(x.device)),
            repetition_penalty=REPETITION_PENALTY,
        )

    found: dict[str, object] = {"logitops": ours}
    if HF == "hf_restated":
        found["hf_processors+multinomial"] = "transformers not installed"
        return found
    tf = importlib.import_module("transformers")
    chain = [
        tf.RepetitionPenaltyLogitsProcessor(REPETITION_PENALTY),
        tf.TemperatureLogitsWarper(TEMPERATURE),
        tf.TopKLogitsWarper(TOP_K),
        tf.TopPLogitsWarper(TOP_P),
        tf.EtaLogitsWarper(ETA, device="cpu"),
    ]

    def theirs(x):
        ids = history(*x.shape, str(x.device))
        scores = x.float()
        for processor in chain:
            scores = processor(ids, scores)
        return torch.multinomial(torch.softmax(scores, -1), 1)

    found["hf_processors+multinomial"] = theirs
    return found


def arguments(parser) -> None:
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--batches", default=None, help="e.g. 1,32,128,512")


def shapes_for(args) -> list[tuple[int, int]]:
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    elif args.device == "cuda":
        batches = [1, 32, 128, 512]
    else:
        batches = [1, 64] if args.quick else [1, 32, 64, 128]
    return [(batch, args.vocab) for batch in batches]


def inputs(op, shape, dtype, device) -> harness.Inputs:
    nbytes = shape[0] * shape[1] * dtype.itemsize
    return harness.Inputs(
        functools.partial(torch.randn, *shape, device=device, dtype=dtype),
        bytes_by_mode={"fwd": 2 * nbytes if op == "filter" else nbytes},
    )


FAMILY = harness.Family(
    "sampling",
    __doc__,
    providers,
    inputs,
    shapes_for,
    dtypes="fp32",
    modes="fwd",
    shapes_help="BxV, e.g. 32x128256 (instead of --batches / --vocab)",
    cpu_reps=7,
    baseline={
        "filter": HF,
        "sample": HF + "+multinomial",
        "decode": "hf_processors+multinomial",
    },
    arguments=arguments,
    note=lambda args: (
        f"; T={TEMPERATURE}, top_k={TOP_K}, top_p={TOP_P}; decode adds repetition penalty "
        f"{REPETITION_PENALTY} over {HISTORY} tokens and eta {ETA}"
    ),
)


def main(argv=None) -> list[harness.Measurement]:
    return harness.run_family(FAMILY, argv)


if __name__ == "__main__":
    main()
