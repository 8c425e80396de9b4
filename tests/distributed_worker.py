"""One rank of tests/test_distributed.py: runs every case with logitops.distributed on this rank's
slice of the vocabulary and saves the loss and gradients for the test process to check."""

from __future__ import annotations

import contextlib
import datetime
import traceback

import torch
import torch.distributed as dist

import logitops
import logitops.distributed as lpd


def on_device(case: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.items()}


def run_case(case: dict, rank: int) -> dict:
    case = on_device(case, case.get("device", "cpu"))
    start, size = case["slices"][rank]
    kwargs = dict(case["kwargs"])
    if case["pass_vocab_start"]:
        kwargs["vocab_start"] = start
    if case.get("class_weight") is not None and case.get("bad_rank") != rank:
        kwargs["weight"] = case["class_weight"]
    if case.get("bad_rank") == rank:
        kwargs.update(case.get("bad_kwargs", {}))
    target = case["target"]
    if target.is_floating_point():  # probabilities: this rank's columns
        target = target[..., start : start + size].clone()
    if case["kind"] == "logits":
        local = case["logits"][..., start : start + size].clone()
        if case.get("bad_rank") == rank and "bad_dtype" in case:
            local = local.to(case["bad_dtype"])
        local.requires_grad_()
        if case.get("module"):
            loss = logitops.nn.VocabParallelCrossEntropyLoss(**kwargs)(local, target)
        else:
            loss = lpd.vocab_parallel_cross_entropy(local, target, **kwargs)
        loss.backward(case["upstream"])
        return {"loss": loss.detach().cpu(), "grads": {"logits": local.grad.cpu()}}
    x = case["input"].clone().requires_grad_()
    w = case["weight"][start : start + size].clone().requires_grad_()
    b = (
        None
        if case["bias"] is None
        else case["bias"][start : start + size].clone().requires_grad_()
    )
    no_grad = case.get("no_grad_ranks", ())
    off = no_grad == "all" or rank in no_grad
    with torch.no_grad() if off else contextlib.nullcontext():
        loss = lpd.vocab_parallel_linear_cross_entropy(x, w, target, linear_bias=b, **kwargs)
    if not loss.requires_grad:
        return {"loss": loss.detach().cpu(), "grads": {}}
    loss.backward(case["upstream"])
    grads = {"input": x.grad.cpu(), "weight": w.grad.cpu()}
    if b is not None:
        grads["bias"] = b.grad.cpu()
    return {"loss": loss.detach().cpu(), "grads": grads}


def main(
    rank: int, world_size: int, init_file: str, cases: list, out_path: str, backend: str = "gloo"
) -> None:
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend,
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=90),
    )
    results = {}
    try:
        for case in cases:
            try:
                results[case["name"]] = run_case(case, rank)
            except Exception as exc:  # reported per case by the test process
                results[case["name"]] = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
    finally:
        torch.save(results, out_path)
        dist.destroy_process_group()
