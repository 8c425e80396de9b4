"""DTensor logits and LM heads: 2 and 3 gloo ranks spawned on the CPU build DTensors on a device
mesh (vocabulary-sharded, token-sharded, replicated; 1-D and 2-D meshes; vocabularies not divisible
by the world size, an empty shard) and call logitops.cross_entropy / linear_cross_entropy; the loss,
log-sum-exp and gradients must equal the single-process float64 reference on the full tensors."""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

import dtensor_worker
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import assert_close
from reference import cross_entropy_reference
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

import logitops
from logitops import _dispatch

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))  # the spawned ranks import it too
import tp_training  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable"),
    # Each case spawns a process group whose ranks run the single-device kernels, which the
    # emulated suite covers one process at a time; here the spawning, not the kernels, costs.
    pytest.mark.emulation_skip(
        "multi-process DTensor runs: the kernels per rank are the single-device ones"
    ),
]

WORLD_SIZES = [2, 3]


def ce_case(name, world, spec, *, vocab=7, rows=5, lead=None, dtype=torch.float64, mesh=None,
            target_spec="plain", weight_spec=None, probs=False, target_grad=False,
            reduction="mean", compare_torch=None, ignored=True, **kwargs):  # fmt: skip
    """Logits [rows, vocab] (or lead[0], vocab, *lead[1:]) with the placements ``spec``."""
    g = torch.Generator().manual_seed(sum(map(ord, name)) * 10 + world)
    lead = (rows,) if lead is None else lead
    shape = (lead[0], vocab, *lead[1:]) if lead else (vocab,)
    logits = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    if probs:
        target = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1).to(dtype)
        if not target_grad:  # exact zeros (the reference's gradient is 0 there)
            target.select(1, 0).zero_()
    else:
        target = torch.randint(0, vocab, lead, generator=g)
        if ignored:
            target.view(-1)[1::3] = kwargs.get("ignore_index", -100)
    row_shape = lead
    upstream = None
    if reduction == "none":
        upstream = torch.randn(row_shape, generator=g, dtype=torch.float64).to(dtype)
    case = {
        "name": name,
        "kind": "ce",
        "mesh": mesh or (world,),
        "spec": spec,
        "logits": logits,
        "target": target,
        "target_spec": target_spec,
        "target_grad": target_grad,
        "weight": None,
        "upstream": upstream,
        "lse_upstream": torch.randn(row_shape, generator=g, dtype=torch.float64),
        "kwargs": {"reduction": reduction, **kwargs},
        "dtype": dtype,
    }
    if weight_spec is not None:
        case["weight"] = torch.rand(vocab, generator=g, dtype=torch.float64).to(dtype) + 0.1
        case["weight_spec"] = weight_spec
    if compare_torch is not None:  # the target's placements for torch's loss_parallel()
        case["compare_torch"], case["torch_target_spec"] = True, compare_torch
    return case


def linear_case(name, world, spec, *, vocab=7, rows=6, hidden=5, lead=None, bias=True,
                input_spec="plain", target_spec="plain", dtype=torch.float64, mesh=None,
                weight_spec=None, probs=False, reduction="mean", **kwargs):  # fmt: skip
    g = torch.Generator().manual_seed(sum(map(ord, name)) * 10 + world)
    lead = (rows,) if lead is None else lead
    x = torch.randn((*lead, hidden), generator=g, dtype=torch.float64).to(dtype)
    head = (torch.randn(vocab, hidden, generator=g, dtype=torch.float64) / 2).to(dtype)
    if probs:
        target = torch.softmax(torch.randn((*lead, vocab), generator=g, dtype=torch.float64), -1)
    else:
        target = torch.randint(0, vocab, lead, generator=g)
        target.view(-1)[::4] = kwargs.get("ignore_index", -100)
    case = {
        "name": name,
        "kind": "linear",
        "mesh": mesh or (world,),
        "spec": spec,
        "input": x,
        "input_spec": input_spec,
        "head": head,
        "bias": torch.randn(vocab, generator=g, dtype=torch.float64).to(dtype) if bias else None,
        "target": target,
        "target_spec": target_spec,
        "weight": None,
        "upstream": torch.randn(lead, generator=g, dtype=torch.float64).to(dtype)
        if reduction == "none"
        else None,
        "kwargs": {"reduction": reduction, **kwargs},
        "dtype": dtype,
    }
    if weight_spec is not None:
        case["weight"] = torch.rand(vocab, generator=g, dtype=torch.float64) + 0.1
        case["weight_spec"] = weight_spec
    return case


def build_cases(world):
    v = [1]  # the vocabulary's mesh dimension shards the class dimension
    cases = [
        # Vocabulary-parallel: every option, vocabularies 7 (4+3, 3+3+1), 4 (2+2, 2+2+0) and 1.
        ce_case("vocab-mean", world, v, label_smoothing=0.1, z_loss=1e-3),
        ce_case("vocab-empty-shard", world, v, vocab=4, label_smoothing=0.2),
        ce_case("vocab-one-class", world, v, vocab=1, reduction="sum"),
        ce_case("vocab-weight-plain", world, v, weight_spec="plain", label_smoothing=0.2),
        ce_case(
            "vocab-weight-sharded-sum",
            world,
            v,
            weight_spec=[0],
            reduction="sum",
            z_loss=1e-2,
            ignore_index=2,
        ),
        ce_case(
            "vocab-none-lse",
            world,
            v,
            reduction="none",
            label_smoothing=0.1,
            return_lse=True,
            target_spec=["R"],
        ),
        ce_case("vocab-probs", world, v, probs=True, label_smoothing=0.1, target_spec=v),
        ce_case(
            "vocab-probs-weight-grad",
            world,
            v,
            probs=True,
            weight_spec="plain",
            target_grad=True,
            z_loss=1e-3,
            reduction="none",
        ),
        ce_case(
            "vocab-softcap-float32", world, v, dtype=torch.float32, softcap=4.0, label_smoothing=0.1
        ),
        ce_case(
            "vocab-bfloat16",
            world,
            v,
            dtype=torch.bfloat16,
            weight_spec="plain",
            label_smoothing=0.1,
        ),
        ce_case("vocab-target-token-sharded", world, v, rows=6, target_spec=[0]),
        ce_case("vocab-3d", world, v, lead=(2, 3), reduction="none", weight_spec="plain"),
        ce_case("vocab-1d-input", world, [0], lead=(), reduction="sum", label_smoothing=0.1),
        ce_case("vocab-all-ignored-mean", world, v, rows=2, ignore_index=-100),
        ce_case(
            "vs-torch-loss-parallel-mean",
            world,
            v,
            rows=6,
            weight_spec="plain",
            compare_torch=["R"],
            ignored=False,  # torch 2.13's loss_parallel backward fails on ignored + weight
        ),
        ce_case(
            "vs-torch-loss-parallel-none",
            world,
            v,
            vocab=11,
            reduction="none",
            ignore_index=3,
            compare_torch=["R"],
        ),
        # Token-parallel and replicated.
        ce_case(
            "tokens-mean",
            world,
            [0],
            rows=7,
            target_spec=[0],
            weight_spec="plain",
            label_smoothing=0.1,
            z_loss=1e-3,
        ),
        ce_case("tokens-none-uneven", world, [0], rows=4, reduction="none", return_lse=True),
        ce_case("tokens-probs-sum", world, [0], probs=True, reduction="sum", target_spec=[0]),
        ce_case("tokens-3d-spatial", world, [2], lead=(2, 5), label_smoothing=0.1),
        ce_case("replicated", world, ["R"], weight_spec=["R"], label_smoothing=0.1, z_loss=1e-3),
        ce_case("replicated-probs-none", world, ["R"], probs=True, reduction="none"),
        # 2-D meshes: tokens on one mesh dimension, the vocabulary on the other.
        ce_case(
            "mesh2d-tokens-vocab",
            world,
            [0, 1],
            mesh=(1, world),
            target_spec=[0, "R"],
            weight_spec="plain",
            label_smoothing=0.1,
        ),
        ce_case(
            "mesh2d-vocab-tokens",
            world,
            [1, 0],
            mesh=(world, 1),
            rows=7,
            reduction="none",
            z_loss=1e-3,
        ),
        ce_case("mesh2d-probs", world, [1, 0], mesh=(world, 1), probs=True, target_spec=[1, 0]),
        # Fused linear cross-entropy with a column-sharded head.
        linear_case("linear-colwise", world, [0], label_smoothing=0.1, z_loss=1e-3, chunk_size=4),
        linear_case(
            "linear-colwise-none-3d",
            world,
            [0],
            lead=(2, 3),
            bias=False,
            reduction="none",
            chunk_size=2,
        ),
        linear_case("linear-colwise-empty-shard", world, [0], vocab=4, reduction="sum"),
        linear_case(
            "linear-sequence-parallel-input", world, [0], rows=7, input_spec=[0], target_spec=[0]
        ),
        linear_case("linear-colwise-bfloat16", world, [0], dtype=torch.bfloat16),
        linear_case("linear-unfused-weight", world, [0], weight_spec="plain", label_smoothing=0.1),
        linear_case("linear-unfused-probs-softcap", world, [0], probs=True, softcap=3.0),
        linear_case(
            "linear-replicated-head-token-input",
            world,
            ["R"],
            rows=5,
            input_spec=[0],
            target_spec=[0],
            reduction="none",
        ),
        linear_case(
            "linear-mesh2d",
            world,
            ["R", 0],
            mesh=(1, world),
            input_spec=[0, "R"],
            label_smoothing=0.1,
        ),
    ]
    errors = [
        (ce_case("error-partial-logits", world, ["P"]), "ValueError: input has placement"),
        (
            ce_case("error-vocab-on-two-mesh-dims", world, [1, 1], mesh=(1, world)),
            "ValueError: input: the class dimension 1 is sharded over mesh dimensions 0 and 1",
        ),
        (
            ce_case("error-partial-target", world, v, probs=True, target_spec=["P"]),
            "ValueError: target has placement",
        ),
        (
            linear_case("error-rowwise-head", world, [1], bias=False),
            "ValueError: linear_weight has",
        ),
        (
            linear_case("error-hidden-sharded-input", world, [0], input_spec=[1]),
            "ValueError: input has placements",
        ),
        (
            ce_case("error-probs-ignore-index", world, v, probs=True, ignore_index=3),
            "ValueError: ignore_index",
        ),
        (
            ce_case("error-target-out-of-range", world, v, target_spec=["R"]),
            "IndexError: target[0]",
        ),
    ]
    all_ignored = [
        ce_case("tokens-all-ignored-mean", world, [0], rows=3, weight_spec="plain"),
        linear_case("linear-colwise-all-ignored-mean", world, [0], rows=3),
        linear_case("linear-replicated-all-ignored-mean", world, ["R"], rows=3, input_spec=[0]),
    ]
    for case in all_ignored:
        case["target"].fill_(-100)
    cases += all_ignored
    module = ce_case("module-criterion", world, v, weight_spec="plain", label_smoothing=0.1)
    module["module"] = True  # logitops.nn.CrossEntropyLoss on DTensors
    cases.append(module)
    for case, message in errors:
        case["expect_error"] = message
        cases.append(case)
    cases[-1]["target"][0] = 99
    return cases


def build_cases_2x2():
    """A (2, 2) mesh of 4 ranks: tokens on one mesh dimension, the vocabulary on the other."""
    mesh = (2, 2)
    cases = [
        ce_case(
            "2x2-tokens-vocab",
            4,
            [0, 1],
            mesh=mesh,
            rows=7,
            target_spec=[0, "R"],
            weight_spec="plain",
            label_smoothing=0.1,
            z_loss=1e-3,
        ),
        ce_case(
            "2x2-vocab-tokens-none", 4, [1, 0], mesh=mesh, rows=5, reduction="none", return_lse=True
        ),
        ce_case(
            "2x2-probs", 4, [0, 1], mesh=mesh, probs=True, target_spec=[0, 1], label_smoothing=0.1
        ),
        ce_case("2x2-3d-seq-vocab", 4, [2, 1], mesh=mesh, lead=(2, 3), target_spec=[1, "R"]),
        ce_case(
            "2x2-vs-torch-loss-parallel",
            4,
            [0, 1],
            mesh=mesh,
            rows=6,
            target_spec=[0, "R"],
            compare_torch=[0, "R"],
            reduction="sum",  # torch 2.13: no mean on a 2-D mesh (ours has it: above)
        ),
        linear_case(
            "2x2-linear-colwise-token-input",
            4,
            ["R", 0],
            mesh=mesh,
            rows=7,
            input_spec=[0, "R"],
            target_spec=[0, "R"],
            label_smoothing=0.1,
            chunk_size=2,
        ),
        linear_case(
            "2x2-linear-unfused-weight",
            4,
            ["R", 0],
            mesh=mesh,
            input_spec=[0, "R"],
            weight_spec="plain",
            reduction="sum",
        ),
    ]
    error = ce_case("2x2-error-vocab-on-both-mesh-dims", 4, [1, 1], mesh=mesh)
    error["expect_error"] = "ValueError: input: the class dimension 1 is sharded"
    return cases + [error]


CASES = {world: build_cases(world) for world in WORLD_SIZES}
CASES_2X2 = build_cases_2x2()
NAMES = [c["name"] for c in CASES[WORLD_SIZES[0]]]


def run_ranks(world, cases, tmp_path, timeout=240.0):
    context = multiprocessing.get_context("spawn")
    init_file = tmp_path / "store"
    outputs = [tmp_path / f"rank{r}.pt" for r in range(world)]
    procs = [
        context.Process(
            target=dtensor_worker.main,
            args=(r, world, str(init_file), cases, str(outputs[r])),
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} did not finish within {timeout} s"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(path, weights_only=False) for path in outputs]


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=lambda w: f"world{w}")
def ranks(request, tmp_path_factory):
    world = request.param
    return world, run_ranks(world, CASES[world], tmp_path_factory.mktemp(f"world{world}"))


def reference(case):
    """Loss, log-sum-exp and gradients of the single-process computation, float64."""
    kwargs = dict(case["kwargs"])
    kwargs.pop("chunk_size", None)
    kwargs.pop("return_lse", None)
    weight = None if case["weight"] is None else case["weight"].double()
    target = case["target"]
    leaves = {}
    if case.get("target_grad"):
        target = target.double().requires_grad_()
        leaves["target"] = target
    if case["kind"] == "ce":
        leaves["logits"] = case["logits"].double().requires_grad_()
        logits = leaves["logits"]
    else:
        leaves["input"] = case["input"].double().requires_grad_()
        leaves["head"] = case["head"].double().requires_grad_()
        bias = None
        if case["bias"] is not None:
            bias = leaves["bias"] = case["bias"].double().requires_grad_()
        logits = F.linear(leaves["input"], leaves["head"], bias)
        if logits.dim() > 2:  # the reference takes classes on dim 1
            logits = logits.movedim(-1, 1)
            if target.is_floating_point():
                target = target.movedim(-1, 1)
    if target.is_floating_point():
        target = target.double()
    loss, lse = cross_entropy_reference(logits, target, weight, **kwargs)
    if case["upstream"] is None:
        objective = loss * 0.7
    else:
        objective = (loss * case["upstream"].double()).sum()
    if case["kwargs"].get("return_lse"):
        objective = objective + (lse * case["lse_upstream"]).sum()
    objective.backward()
    return loss.detach(), lse.detach(), {name: leaf.grad for name, leaf in leaves.items()}


@pytest.mark.parametrize("name", NAMES)
def test_matches_single_process(ranks, name):
    world, results = ranks
    (case,) = [c for c in CASES[world] if c["name"] == name]
    check_case(case, [r[name] for r in results])


def check_case(case, per_rank):
    if "expect_error" in case:
        for rank, result in enumerate(per_rank):
            assert "error" in result, f"rank {rank} raised nothing"
            assert result["error"].startswith(case["expect_error"]), result["error"]
        return
    for rank, result in enumerate(per_rank):
        assert "error" not in result, f"rank {rank}: {result.get('traceback')}"
    expected_loss, expected_lse, expected_grads = reference(case)
    dtype = case["dtype"]
    scale = 16 if dtype == torch.bfloat16 else 4
    for rank, result in enumerate(per_rank):
        assert result["is_dtensor"], "the loss of DTensor inputs is a DTensor"
        if case["kwargs"]["reduction"] != "none":
            assert result["placements"] == ["Replicate()"] * len(case["mesh"])
        assert result["loss"].dtype == dtype
        assert_close(result["loss"], expected_loss, dtype, scale=scale, what=f"loss, rank {rank}")
        if case["kwargs"].get("return_lse"):
            assert_close(result["lse"], expected_lse, dtype, scale=scale, what="lse")
        for leaf, expected in expected_grads.items():
            got = result["grads"][leaf]
            assert got is not None, f"no gradient for {leaf}"
            assert got.dtype == (dtype if leaf != "target" else case["target"].dtype)
            assert_close(got, expected, dtype, scale=scale, what=f"{leaf} grad, rank {rank}")
        # The gradient of a DTensor leaf is a DTensor laid out like it.
        if case["kind"] == "ce":
            assert result["grad_types"]["logits"] == result["leaf_types"]["logits"]
        if "torch" in result:  # torch's loss_parallel() on the same DTensors
            theirs = result["torch"]
            assert_close(result["loss"], theirs["loss"], dtype, scale=scale, what="vs torch")
            assert_close(
                result["grads"]["logits"], theirs["grad"], dtype, scale=scale, what="vs torch"
            )


@pytest.fixture(scope="module")
def ranks_2x2(tmp_path_factory):
    return run_ranks(4, CASES_2X2, tmp_path_factory.mktemp("mesh2x2"))


@pytest.mark.parametrize("name", [c["name"] for c in CASES_2X2])
def test_2x2_mesh_matches_single_process(ranks_2x2, name):
    (case,) = [c for c in CASES_2X2 if c["name"] == name]
    check_case(case, [r[name] for r in ranks_2x2])


def test_cases_cover_every_option():
    """The cases above name every option of the issue on the vocabulary-sharded path."""
    vocab = [c for c in CASES[2] if c["name"].startswith("vocab") and "expect_error" not in c]
    used = set().union(*(c["kwargs"] for c in vocab))
    assert {"label_smoothing", "z_loss", "ignore_index", "softcap", "return_lse"} <= used
    assert any(c["weight"] is not None for c in vocab)
    assert any(c["target"].is_floating_point() for c in vocab)
    assert {c["kwargs"]["reduction"] for c in vocab} == {"none", "mean", "sum"}


def test_plain_tensors_do_not_route_to_dtensor():
    """Without a DTensor argument the public function never reaches logitops.dtensor."""
    x = torch.randn(3, 5)
    assert _dispatch.dtensor_handler("cross_entropy", x, torch.tensor([0, 1, 2]), None) is None


@pytest.mark.parametrize("world,kind", [(2, "logits"), (2, "fused"), (3, "logits"), (3, "fused")])
def test_tensor_parallel_training_matches_unsharded(world, kind):
    """examples/tp_training.py: a toy transformer under a TP plan (ColwiseParallel /
    RowwiseParallel, the LM head sharded on a vocabulary of 101), a few SGD steps; the loss of
    every step equals the unsharded model's, and the model learns."""
    curves = tp_training.run(world, steps=4, kind=kind)
    assert curves["loss_type"] == "DTensor"
    sharded, unsharded = torch.tensor(curves["tensor_parallel"]), torch.tensor(curves["unsharded"])
    torch.testing.assert_close(sharded, unsharded, rtol=1e-4, atol=1e-5)
    assert unsharded[-1] < unsharded[0] - 0.3


def test_plain_tensors_compile_with_dtensor_imported():
    """The dispatch check (a DTensor among the arguments?) traces under torch.compile once
    torch.distributed.tensor is imported (this module's worker imports it)."""
    assert "torch.distributed.tensor" in sys.modules
    x, t = torch.randn(6, 11), torch.tensor([0, 3, -100, 10, 2, 5])
    compiled = torch.compile(logitops.cross_entropy, fullgraph=True)
    torch.testing.assert_close(
        compiled(x, t, label_smoothing=0.1), F.cross_entropy(x, t, label_smoothing=0.1)
    )


def test_plain_logits_with_dtensor_target_raise(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        mesh = init_device_mesh("cpu", (1,))
        target = distribute_tensor(torch.tensor([0, 1]), mesh, [Replicate()])
        with pytest.raises(TypeError, match="input must be a DTensor"):
            logitops.cross_entropy(torch.randn(2, 3), target)
        # and a one-rank mesh gives the single-device loss
        x = torch.randn(2, 3)
        loss = logitops.cross_entropy(distribute_tensor(x, mesh, [Shard(1)]), target)
        torch.testing.assert_close(loss.full_tensor(), F.cross_entropy(x, target.full_tensor()))
    finally:
        dist.destroy_process_group()


def test_float32_weighted_and_probability_losses_as_accurate_as_torch(tmp_path):
    """The weighted sums of class weights and probability targets are taken relative to each
    shard's log-sum-exp and combined in float64: rows whose logits sit next to their lse (a row
    of -1e4, a row near 5e3) lose no digits to float32 cancellation."""
    from test_precision import _assert_not_worse_than_torch

    vocab = 65536
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, vocab, generator=g) * 30
    logits[1] = -1e4
    logits[2] = torch.randn(vocab, generator=g) * 1e-3 + 5e3
    weight = torch.rand(vocab, generator=g) + 0.5
    targets = {
        "precision-weighted": torch.randint(0, vocab, (4,), generator=g),
        "precision-probs": torch.softmax(torch.randn(4, vocab, generator=g), 1),
    }
    cases = []
    for name, target in targets.items():
        case = ce_case(name, 2, [1], rows=4, dtype=torch.float32, reduction="none",
                       weight_spec="plain", label_smoothing=0.1)  # fmt: skip
        case.update(logits=logits, target=target, weight=weight, upstream=torch.ones(4))
        cases.append(case)
    results = run_ranks(2, cases, tmp_path)
    for case in cases:
        kw = dict(reduction="none", label_smoothing=0.1)
        target = case["target"]
        exact = F.cross_entropy(logits.double(), target.double() if target.is_floating_point()
                                else target, weight=weight.double(), **kw)  # fmt: skip
        theirs = F.cross_entropy(logits, target, weight=weight, **kw)
        for rank in results:
            result = rank[case["name"]]
            assert "error" not in result, result.get("traceback")
            _assert_not_worse_than_torch(result["loss"], theirs, exact, case["name"])


@pytest.mark.cuda
@pytest.mark.skipif(not dist.is_nccl_available(), reason="torch without NCCL")
def test_cuda_mesh_of_one_rank(tmp_path):
    """The CUDA kernels and NCCL under the DTensor paths: a one-rank CUDA mesh in process,
    vocabulary-sharded logits with weights and probability targets, and the fused head."""
    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    dist.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        mesh = init_device_mesh("cuda", (1,))
        g = torch.Generator().manual_seed(3)
        x = torch.randn(6, 11, generator=g, dtype=torch.float64)
        t = torch.tensor([0, 3, -100, 10, 2, 5])
        w = torch.rand(11, generator=g, dtype=torch.float64) + 0.1
        p = torch.softmax(torch.randn(6, 11, generator=g, dtype=torch.float64), 1)
        for target, weight in [(t, None), (t, w), (p, w)]:
            logits = distribute_tensor(x.cuda(), mesh, [Shard(1)]).requires_grad_()
            weight_cuda = None if weight is None else weight.cuda()
            loss = logitops.cross_entropy(
                logits, target.cuda(), weight_cuda, label_smoothing=0.1, z_loss=1e-3
            )
            loss.backward()
            leaf = x.clone().requires_grad_()
            expected, _ = cross_entropy_reference(
                leaf, target, weight, label_smoothing=0.1, z_loss=1e-3
            )
            expected.backward()
            assert_close(loss.full_tensor(), expected, torch.float64, what="cuda loss")
            assert_close(logits.grad.full_tensor(), leaf.grad, torch.float64, what="cuda grad")
        hidden = torch.randn(6, 4, generator=g, dtype=torch.float64)
        head = torch.randn(11, 4, generator=g, dtype=torch.float64)
        sharded = distribute_tensor(head.cuda(), mesh, [Shard(0)]).requires_grad_()
        loss = logitops.linear_cross_entropy(hidden.cuda(), sharded, t.cuda(), chunk_size=2)
        loss.backward()
        leaf = head.clone().requires_grad_()
        expected, _ = cross_entropy_reference(hidden @ leaf.T, t)
        expected.backward()
        assert_close(loss.full_tensor(), expected, torch.float64, what="cuda fused loss")
        assert_close(sharded.grad.full_tensor(), leaf.grad, torch.float64, what="cuda head")
    finally:
        dist.destroy_process_group()
