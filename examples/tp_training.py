"""Tensor-parallel training of a toy transformer with logitops losses on DTensors.

A two-block decoder is sharded with ``parallelize_module`` (attention and MLP: ColwiseParallel /
RowwiseParallel; the LM head: ColwiseParallel with ``use_local_output=False``, so its logits stay
a DTensor sharded on the vocabulary) and trained for a few SGD steps, next to the same model
unsharded in one process. Two losses:

- ``logits``: ``logitops.cross_entropy`` on the vocabulary-sharded logits DTensor (the job of
  torch's ``loss_parallel()``, here with label smoothing and z-loss, and no context manager
  around ``backward()``);
- ``fused``: ``logitops.linear_cross_entropy`` on the hidden states and the sharded LM-head
  weight: no rank ever holds logits for more than a chunk of tokens of its slice.

Each step's loss of the tensor-parallel run must match the unsharded run's::

    python examples/tp_training.py --world-size 2 --steps 5 --loss fused

runs gloo ranks on the CPU (DTensor needs no GPU); with ``torchrun`` and NCCL the same
``train`` function runs on GPUs.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

import logitops

VOCAB = 101  # not divisible by 2 or 3: the last vocabulary shard is shorter
DIM, HEADS, HIDDEN, LAYERS = 48, 6, 96, 2
BATCH, SEQ = 3, 8


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.head_dim = DIM // HEADS
        self.attention_norm = nn.LayerNorm(DIM)
        self.wq = nn.Linear(DIM, DIM, bias=False)
        self.wk = nn.Linear(DIM, DIM, bias=False)
        self.wv = nn.Linear(DIM, DIM, bias=False)
        self.wo = nn.Linear(DIM, DIM, bias=False)
        self.mlp_norm = nn.LayerNorm(DIM)
        self.w1 = nn.Linear(DIM, HIDDEN)
        self.w2 = nn.Linear(HIDDEN, DIM)

    def forward(self, x):
        batch, seq, _ = x.shape
        h = self.attention_norm(x)
        # -1 heads: under tensor parallelism each rank holds HEADS / world of them.
        q, k, v = (
            w(h).view(batch, seq, -1, self.head_dim).transpose(1, 2)
            for w in (self.wq, self.wk, self.wv)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(a.transpose(1, 2).reshape(batch, seq, -1))
        return x + self.w2(F.gelu(self.w1(self.mlp_norm(x))))


class ToyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def hidden(self, tokens):
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, tokens):
        return self.lm_head(self.hidden(tokens))


def tensor_parallel(model: nn.Module, mesh) -> nn.Module:
    """Megatron-style sharding: heads and MLP columns per rank, the LM head on the vocabulary."""
    for layer in model.layers:
        plan = {name: ColwiseParallel() for name in ("wq", "wk", "wv", "w1")}
        plan.update(wo=RowwiseParallel(), w2=RowwiseParallel())
        parallelize_module(layer, mesh, plan)
    # The logits stay a DTensor sharded on the vocabulary: no all-gather of [tokens, vocab].
    return parallelize_module(model, mesh, {"lm_head": ColwiseParallel(use_local_output=False)})


def loss_fn(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor, kind: str):
    options = dict(label_smoothing=0.1, z_loss=1e-4)
    if kind == "logits":
        logits = model(tokens)  # a DTensor [B, S, V] sharded on V under tensor parallelism
        return logitops.cross_entropy(logits.flatten(0, 1), targets.flatten(), **options)
    # fused: the head's weight is a DTensor (Shard(0)) under tensor parallelism
    hidden = model.hidden(tokens)
    return logitops.linear_cross_entropy(
        hidden.flatten(0, 1), model.lm_head.weight, targets.flatten(), chunk_size=8, **options
    )


def batches(steps: int):
    """Random tokens whose next token is a fixed function of the current one (learnable)."""
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
        yield tokens, (7 * tokens + 3) % VOCAB


def train(model: nn.Module, steps: int, kind: str) -> list[float]:
    """SGD steps; the loss of each (a replicated DTensor under tensor parallelism)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for tokens, targets in batches(steps):
        loss = loss_fn(model, tokens, targets, kind)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        value = loss.full_tensor() if hasattr(loss, "full_tensor") else loss
        losses.append(float(value.detach()))
    return losses


def _rank_main(rank: int, world_size: int, init_file: str, steps: int, kind: str, out: str):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        torch.manual_seed(0)
        model = ToyLM()
        reference = copy.deepcopy(model)
        mesh = init_device_mesh("cpu", (world_size,))
        model = tensor_parallel(model, mesh)
        tokens, targets = next(batches(1))
        loss_type = type(loss_fn(model, tokens, targets, kind)).__name__  # DTensor
        sharded = train(model, steps, kind)
        if rank == 0:
            unsharded = train(reference, steps, kind)
            curves = {"tensor_parallel": sharded, "unsharded": unsharded, "loss_type": loss_type}
            torch.save(curves, out)
    finally:
        dist.destroy_process_group()


def run(world_size: int = 2, steps: int = 5, kind: str = "fused") -> dict:
    """Trains on ``world_size`` gloo ranks and, in rank 0, unsharded; returns both loss curves
    and the type of the tensor-parallel loss."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out = os.path.join(tmp, "store"), os.path.join(tmp, "losses.pt")
        mp.spawn(_rank_main, args=(world_size, init_file, steps, kind, out), nprocs=world_size)
        return torch.load(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--loss", choices=["logits", "fused"], default="fused")
    args = parser.parse_args(argv)
    curves = run(args.world_size, args.steps, args.loss)
    print(f"step  tensor-parallel ({args.world_size} ranks)  unsharded")
    for step, (a, b) in enumerate(zip(curves["tensor_parallel"], curves["unsharded"], strict=True)):
        print(f"{step:4d}  {a:24.6f}  {b:9.6f}")
    same = torch.allclose(
        torch.tensor(curves["tensor_parallel"]), torch.tensor(curves["unsharded"]), rtol=1e-4
    )
    print("match" if same else "MISMATCH")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
