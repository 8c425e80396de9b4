"""A transformers causal LM's training step (forward + backward, every parameter's gradient):
stock transformers against logitops.integrations.transformers.apply (the fused loss, and the
loss_function mode), same run: time and peak memory.

The model is built from a config (no download; Llama- or Gemma2-shaped, random weights): a small
decoder in front of a large vocabulary, the regime where the [tokens, vocab] logits dominate a
step's memory. Each provider runs in a fresh subprocess (its allocator and page cache untouched
by the others): one warm-up step (which allocates the parameters' .grad), then the measured
step, whose peak is the process's peak RSS over the RSS before it (reset through
/proc/self/clear_refs; on CUDA the allocator's peak over its allocation before it), then timed
steps. Every provider's loss is printed so the table can be checked to be one computation.

    python benchmarks/bench_transformers.py --quick      # about a minute on 2 cores
    python benchmarks/bench_transformers.py              # fp32 and bf16, two vocabularies
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

import logitops  # noqa: E402

try:  # optional: without transformers every provider is reported as skipped
    import transformers
except ImportError:
    transformers = None
if transformers is not None:
    from logitops.integrations import transformers as integration

PROVIDERS = ("stock", "logitops fused", "logitops loss_function")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def shapes_for(args) -> list[tuple[int, int, int, int]]:
    """(batch, sequence, hidden, vocab)."""
    if args.shapes:
        return [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.device == "cuda":
        return [(8, 2048, 1024, 128256)]
    if args.quick:
        return [(4, 512, 256, 32000)]
    return [(4, 512, 256, 32000), (2, 512, 256, 128256)]


def build(arch: str, hidden: int, vocab: int, seq: int):
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max(seq, 128),
    )
    if arch == "gemma2":
        config = transformers.Gemma2Config(
            **common, head_dim=hidden // 4, final_logit_softcapping=30.0
        )
    else:
        config = transformers.LlamaConfig(**common)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def child(args) -> None:
    """One provider, one shape, one dtype: prints a JSON line."""
    batch, seq, hidden, vocab = (int(v) for v in args.child_shape.split("x"))
    torch.manual_seed(0)
    model = build(args.arch, hidden, vocab, seq).to(args.device, DTYPES[args.child_dtype])
    model.train()
    if args.child_provider == "logitops fused":
        integration.apply(model)
    elif args.child_provider == "logitops loss_function":
        integration.apply(model, mode="loss_function")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(args.device)
    inputs = dict(input_ids=ids, labels=ids, use_cache=False)
    losses = []

    def step():
        model.zero_grad(set_to_none=False)  # the .grad buffers stay: a training loop's steady state
        out = model(**inputs)
        out.loss.backward()
        losses.append(float(out.loss.detach()))
        del out

    step()
    peak = harness.peak_extra_mb(step, args.device)
    median, p20, p80 = harness.time_fn(step, args.device, warmup=0, reps=args.reps)
    print(json.dumps(dict(median=median, p20=p20, p80=p80, peak=peak, loss=losses[0])))


def run_child(args, provider: str, shape, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--device", args.device, "--arch", args.arch]
    cmd += ["--reps", str(args.reps), "--child-provider", provider]
    cmd += ["--child-shape", "x".join(map(str, shape)), "--child-dtype", dtype]
    # the child imports the logitops this process imported (a source tree or the installed one)
    path = [str(Path(logitops.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{provider} {shape} {dtype} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[harness.Measurement]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="llama", choices=["llama", "gemma2"])
    parser.add_argument("--dtypes", default=None, help="comma list of fp32, bf16")
    parser.add_argument(
        "--shapes", default=None, help="BxTxHxV,... (batch, sequence, hidden, vocab)"
    )
    parser.add_argument("--providers", default=None, help="subset of: " + ", ".join(PROVIDERS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-provider", help=argparse.SUPPRESS)
    parser.add_argument("--child-shape", help=argparse.SUPPRESS)
    parser.add_argument("--child-dtype", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return []
    dtypes = (args.dtypes or ("fp32" if args.quick else "fp32,bf16")).split(",")
    providers = args.providers.split(",") if args.providers else list(PROVIDERS)
    copy_gbps = harness.announce(args.device, f", transformers {args.arch} training step")
    results = []
    for shape in shapes_for(args):
        batch, seq, hidden, vocab = shape
        for dtype in dtypes:
            for provider in providers:
                if transformers is None:
                    m = harness.Measurement("causal LM step", provider, "fwd+bwd", "", dtype, None)
                    m.skipped = "transformers not installed"
                    results.append(m)
                    continue
                r = run_child(args, provider, shape, dtype)
                results.append(
                    harness.Measurement(
                        op=f"{args.arch} step (2 layers, H={hidden})",
                        provider=provider,
                        mode="fwd+bwd",
                        shape=f"{batch}x{seq} tokens, V={vocab}",
                        dtype=dtype,
                        median_ms=r["median"],
                        p20_ms=r["p20"],
                        p80_ms=r["p80"],
                        extra={"peak_extra_mb": r["peak"], "loss": r["loss"]},
                    )
                )
                peak = "-" if r["peak"] is None else f"{r['peak']:.0f} MB"
                print(
                    f"{args.arch} {batch}x{seq} H={hidden} V={vocab} {dtype} {provider:<24}"
                    f" {r['median']:10.1f} ms  peak {peak:>8}  loss {r['loss']:.6f}",
                    flush=True,
                )
    path = harness.write_json("transformers", args.device, results, copy_gbps, args.out)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
