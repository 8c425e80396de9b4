"""One rank of tests/test_dtensor.py: builds each case's DTensors on a CPU device mesh, runs
logitops.cross_entropy / linear_cross_entropy on them, and saves the full loss, log-sum-exp and
gradients (and the result's placements) for the test process to check."""

from __future__ import annotations

import datetime
import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import loss_parallel
from torch.distributed.tensor.placement_types import Placement

import logitops


def placements(spec):
    made = []
    for item in spec:
        if isinstance(item, Placement):
            made.append(item)
        elif item == "R":
            made.append(Replicate())
        elif item == "P":
            made.append(Partial())
        else:
            made.append(Shard(item))
    return made


def place(tensor, mesh, spec, requires_grad=False):
    """A DTensor with the placements of ``spec`` ("plain": the tensor itself, "P": Partial, each
    rank holding an equal share of the value)."""
    if spec == "plain":
        out = tensor.clone()
    elif any(isinstance(item, str) and item == "P" for item in spec):
        share = tensor / mesh.size()
        out = DTensor.from_local(share, mesh, placements(spec), run_check=False)
        return out.detach().requires_grad_(requires_grad)
    else:
        out = distribute_tensor(tensor, mesh, placements(spec))
    return out.detach().requires_grad_(requires_grad)


def full(value):
    if value is None:
        return None
    value = value.full_tensor() if isinstance(value, DTensor) else value
    return value.detach().cpu()


def run_case(case, meshes):
    shape = tuple(case["mesh"])
    if shape not in meshes:
        meshes[shape] = init_device_mesh("cpu", shape)
    mesh = meshes[shape]
    kwargs = dict(case["kwargs"])
    leaves = {}
    target = place(case["target"], mesh, case["target_spec"], case.get("target_grad", False))
    if case.get("target_grad"):
        leaves["target"] = target
    if case.get("weight") is not None:
        kwargs["weight"] = place(case["weight"], mesh, case["weight_spec"])
    if case["kind"] == "ce":
        logits = place(case["logits"], mesh, case["spec"], requires_grad=True)
        leaves["logits"] = logits
        if case.get("module"):
            out = logitops.nn.CrossEntropyLoss(**kwargs)(logits, target)
        else:
            out = logitops.cross_entropy(logits, target, **kwargs)
    else:
        x = place(case["input"], mesh, case["input_spec"], requires_grad=True)
        head = place(case["head"], mesh, case["spec"], requires_grad=True)
        leaves.update(input=x, head=head)
        if case.get("bias") is not None:
            kwargs["linear_bias"] = place(case["bias"], mesh, case["spec"], requires_grad=True)
            leaves["bias"] = kwargs["linear_bias"]
        out = logitops.linear_cross_entropy(x, head, target, **kwargs)
    loss, lse = out if kwargs.get("return_lse") else (out, None)
    result = {
        "loss": full(loss),
        "lse": full(lse),
        "is_dtensor": isinstance(loss, DTensor),
        "placements": [repr(p) for p in loss.placements] if isinstance(loss, DTensor) else None,
    }
    if case["upstream"] is None:
        objective = loss * 0.7
    else:
        objective = (loss * place(case["upstream"], mesh, loss.placements)).sum()
    if lse is not None:
        objective = objective + (lse * place(case["lse_upstream"], mesh, lse.placements)).sum()
    objective.backward()
    result["grads"] = {name: full(leaf.grad) for name, leaf in leaves.items()}
    result["grad_types"] = {name: layout(leaf.grad) for name, leaf in leaves.items()}
    result["leaf_types"] = {name: layout(leaf) for name, leaf in leaves.items()}
    if case.get("compare_torch"):
        result["torch"] = run_torch_loss_parallel(case, mesh)
    return result


def layout(tensor):
    return [repr(p) for p in tensor.placements] if isinstance(tensor, DTensor) else None


def run_torch_loss_parallel(case, mesh):
    """The same loss by torch's own loss_parallel() (class-index targets, no label smoothing),
    with its backward inside the context, as it requires."""
    logits = place(case["logits"], mesh, case["spec"], requires_grad=True)
    target = place(case["target"], mesh, case["torch_target_spec"])
    kwargs = {k: v for k, v in case["kwargs"].items() if k in ("reduction", "ignore_index")}
    weight = None if case.get("weight") is None else case["weight"].clone()
    with loss_parallel():
        loss = F.cross_entropy(logits, target, weight=weight, **kwargs)
        if case["upstream"] is None:
            (loss * 0.7).backward()
        else:
            (loss * place(case["upstream"], mesh, loss.placements)).sum().backward()
    return {"loss": full(loss), "grad": full(logits.grad)}


def main(rank, world_size, init_file, cases, out_path):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=90),
    )
    results, meshes = {}, {}
    try:
        for case in cases:
            try:
                results[case["name"]] = run_case(case, meshes)
            except Exception as exc:  # reported per case by the test process
                results[case["name"]] = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
    finally:
        torch.save(results, out_path)
        dist.destroy_process_group()
