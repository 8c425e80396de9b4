"""A transformers causal LM's training step (forward + backward, every parameter's gradient):
stock transformers against logitops.integrations.transformers.apply, the fused loss
("logitops") and the loss_function mode, same run: time and peak memory.

The model is built from a config (no download; Llama-shaped, 2 layers, random weights): a small
decoder in front of a large vocabulary, the regime where the [tokens, vocab] logits dominate a
step's memory. The differentiated input is the token embeddings (``inputs_embeds``, so that
the harness can time it as any loss), the labels are the token ids; the loss's backward
reaches every parameter. Shapes are BxTxHxV (batch, sequence, hidden, vocabulary). Peak memory
is the harness's (peak RSS over the step on a CPU, the allocator's peak on CUDA); for figures
free of the other providers' allocations, run one provider per process (--providers).

    python benchmarks/bench_transformers.py --quick                       # a minute on 2 cores
    python benchmarks/bench_transformers.py --providers logitops          # one provider
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

try:  # optional: without transformers every provider is reported as skipped
    import transformers
except ImportError:
    transformers = None
if transformers is not None:
    from logitops.integrations import transformers as integration


PROVIDERS = ("transformers", "logitops", "logitops loss_function")


def shapes_for(args) -> list[tuple[int, int, int, int]]:
    """(batch, sequence, hidden, vocab)."""
    if args.device == "cuda":
        return [(8, 2048, 1024, 128256)]
    if args.quick:
        return [(4, 512, 256, 32000)]
    return [(4, 512, 256, 32000), (2, 512, 256, 128256)]


def build_model(hidden: int, vocab: int, seq: int, dtype: torch.dtype, device: str):
    """A Llama-shaped causal LM from a config, seeded, in training mode."""
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max(seq, 128),
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.to(device, dtype).train()


# model -> (mode, handle) of the patch now on it: each provider switches the shared model to its
# mode once (apply is not part of what is timed), stock removes any patch.
_PATCHED: dict[int, tuple[str, object]] = {}


def _use_mode(model, mode: str | None) -> None:
    current = _PATCHED.get(id(model))
    if current is not None and current[0] == mode:
        return
    if current is not None:
        current[1].remove()
        del _PATCHED[id(model)]
    if mode is not None:
        _PATCHED[id(model)] = (mode, integration.apply(model, mode=mode))


def step_for(mode: str | None):
    def step(embeds, labels, model):
        _use_mode(model, mode)
        return model(inputs_embeds=embeds, labels=labels, use_cache=False).loss

    return step


def providers(device: str) -> dict[str, dict[str, object]]:
    if transformers is None:
        why = "transformers not installed"
        return {"causal_lm_step": dict.fromkeys(PROVIDERS, why)}
    return {
        "causal_lm_step": {
            "transformers": step_for(None),
            "logitops": step_for("fused"),
            "logitops loss_function": step_for("loss_function"),
        }
    }


def inputs(op, shape, dtype, device) -> harness.Inputs:
    batch, seq, hidden, vocab = shape
    model = build_model(hidden, vocab, seq, dtype, device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    return harness.Inputs(embeds.clone, (ids, model))


FAMILY = harness.Family(
    "transformers",
    __doc__,
    providers,
    inputs,
    shapes_for,
    dtypes="fp32,bf16",
    quick_dtypes="fp32",
    modes="fwd+bwd",
    shapes_help="BxTxHxV, e.g. 4x512x256x32000",
    cpu_reps=3,
    cuda_reps=20,
    baseline="transformers",
)


def main(argv=None) -> list[harness.Measurement]:
    return harness.run_family(FAMILY, argv)


if __name__ == "__main__":
    main()
