"""Vocabulary-parallel cross-entropy: 1, 2 and 3 gloo ranks spawned on the CPU, each holding a slice
of the vocabulary (even, uneven, empty, out of rank order), against the single-process cross-entropy
on the whole vocabulary: the loss on every rank, and the gradients assembled from the slices."""

from __future__ import annotations

import contextlib
import multiprocessing
import time

import distributed_worker
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import DEVICES, TOLERANCES, assert_close
from reference import cross_entropy_reference

import logitops.distributed as lpd
from logitops.ops import vocab_parallel as vp_ops

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

WORLD_SIZES = [1, 2, 3]


def even_slices(world, per_rank):
    return [(r * per_rank, per_rank) for r in range(world)]


def rank_order_slices(sizes):
    return [(sum(sizes[:r]), s) for r, s in enumerate(sizes)]


# Unequal slices, some empty, some out of rank order; each tiles [0, V) for its world size.
UNEVEN_SHUFFLED = {1: [(0, 11)], 2: [(3, 8), (0, 3)], 3: [(7, 4), (0, 5), (5, 2)]}
UNEVEN_IN_ORDER = {1: [11], 2: [4, 7], 3: [2, 0, 9]}


def logits_case(
    name,
    world,
    slices,
    *,
    rows=13,
    dtype=torch.float64,
    reduction="mean",
    pass_vocab_start=False,
    lead=None,
    probs=False,
    class_weight=False,
    **kwargs,
):
    g = torch.Generator().manual_seed(len(name) * 1000 + world)
    vocab = sum(size for _, size in slices)
    shape = (lead if lead is not None else (rows,)) + (vocab,)
    logits = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    if probs:  # class probabilities, with exact zeros
        target = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), -1)
        target[..., 1] = 0.0
        target = target.to(dtype)
    else:
        target = torch.randint(0, vocab, shape[:-1], generator=g)
        target.view(-1)[::4] = kwargs.get("ignore_index", -100)
    weight = None
    if class_weight:
        weight = (torch.rand(vocab, generator=g, dtype=torch.float64) + 0.1).to(dtype)
    upstream = (
        torch.randn(shape[:-1], generator=g, dtype=torch.float64).to(dtype)
        if reduction == "none"
        else torch.tensor(0.7, dtype=dtype)
    )
    return {
        "name": name,
        "kind": "logits",
        "slices": slices,
        "pass_vocab_start": pass_vocab_start,
        "logits": logits,
        "target": target,
        "upstream": upstream,
        "kwargs": {"reduction": reduction, **kwargs},
        "dtype": dtype,
        "class_weight": weight,
    }


def linear_case(
    name,
    world,
    slices,
    *,
    rows=17,
    hidden=8,
    dtype=torch.float64,
    bias=True,
    reduction="mean",
    pass_vocab_start=False,
    **kwargs,
):
    g = torch.Generator().manual_seed(len(name) * 1000 + world)
    vocab = sum(size for _, size in slices)
    x = torch.randn(rows, hidden, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(vocab, hidden, generator=g, dtype=torch.float64) / 2).to(dtype)
    b = torch.randn(vocab, generator=g, dtype=torch.float64).to(dtype) if bias else None
    target = torch.randint(0, vocab, (rows,), generator=g)
    target[::5] = kwargs.get("ignore_index", -100)
    upstream = (
        torch.randn(rows, generator=g, dtype=torch.float64).to(dtype)
        if reduction == "none"
        else torch.tensor(1.3, dtype=dtype)
    )
    return {
        "name": name,
        "kind": "linear",
        "slices": slices,
        "pass_vocab_start": pass_vocab_start,
        "input": x,
        "weight": w,
        "bias": b,
        "target": target,
        "upstream": upstream,
        "kwargs": {"reduction": reduction, **kwargs},
        "dtype": dtype,
    }


def build_cases(world):
    even = even_slices(world, 6)
    shuffled = UNEVEN_SHUFFLED[world]
    in_order = rank_order_slices(UNEVEN_IN_ORDER[world])
    cases = [
        logits_case("even-mean", world, even),
        logits_case(
            "even-sum-smoothing-zloss",
            world,
            even,
            reduction="sum",
            label_smoothing=0.1,
            z_loss=1e-3,
        ),
        logits_case(
            "none-ignore-index-is-a-class",
            world,
            even,
            reduction="none",
            ignore_index=2,
            label_smoothing=0.2,
        ),
        logits_case(
            "uneven-vocab-start", world, shuffled, pass_vocab_start=True, label_smoothing=0.1
        ),
        logits_case("uneven-rank-order", world, in_order, reduction="sum", z_loss=1e-2),
        logits_case(
            "float32",
            world,
            shuffled,
            dtype=torch.float32,
            pass_vocab_start=True,
            label_smoothing=0.1,
        ),
        logits_case("bfloat16", world, even, dtype=torch.bfloat16, label_smoothing=0.1),
        logits_case("3d-none", world, even, lead=(2, 5), reduction="none"),
        logits_case("all-ignored-mean", world, even, rows=3, ignore_index=-100),
        linear_case(
            "linear-mean-chunked",
            world,
            shuffled,
            pass_vocab_start=True,
            label_smoothing=0.1,
            chunk_size=5,
        ),
        linear_case(
            "linear-none-chunked",
            world,
            in_order,
            bias=False,
            reduction="none",
            z_loss=1e-3,
            chunk_size=4,
        ),
        linear_case("linear-sum-bfloat16", world, even, dtype=torch.bfloat16, reduction="sum"),
    ]
    extreme = logits_case("inf-and-huge", world, even)
    extreme["logits"][0, :] = -float("inf")  # a fully masked row: NaN, as PyTorch
    extreme["target"][0] = 1
    # Rank 0's whole slice of this row is masked (half of it when rank 0 is alone).
    extreme["logits"][1, : 6 if world > 1 else 3] = -float("inf")
    extreme["target"][1] = 7 if world > 1 else 4
    extreme["logits"][2] += 1e4  # huge logits: only differences matter
    cases.append(extreme)
    all_ignored = cases[8]
    all_ignored["target"].fill_(-100)
    bad_target = logits_case("error-target-out-of-range", world, even)
    bad_target["target"][3] = 6 * world + 3
    bad_target["expect_error"] = {r: "IndexError: target[3]" for r in range(world)}
    cases.append(bad_target)
    bad_arg = logits_case("error-one-rank-bad-argument", world, even)
    bad_arg["bad_rank"] = world - 1
    bad_arg["bad_kwargs"] = {"label_smoothing": 2.0}
    bad_arg["expect_error"] = {
        r: "ValueError: label_smoothing" if r == world - 1 else "RuntimeError: logitops.distributed"
        for r in range(world)
    }
    cases.append(bad_arg)
    module = logits_case(
        "module", world, shuffled, pass_vocab_start=True, label_smoothing=0.05, z_loss=1e-3
    )
    module["module"] = True
    cases.append(module)
    linear_ignored = linear_case("linear-all-ignored-mean", world, even, rows=4)
    linear_ignored["target"].fill_(-100)
    cases.append(linear_ignored)
    # Class weights and probability targets (this rank's columns).
    cases += [
        logits_case(
            "weight-smoothing",
            world,
            shuffled,
            pass_vocab_start=True,
            label_smoothing=0.1,
            class_weight=True,
        ),
        logits_case(
            "weight-sum-ignore-index-is-a-class",
            world,
            even,
            reduction="sum",
            ignore_index=2,
            z_loss=1e-3,
            class_weight=True,
        ),
        logits_case("weight-bfloat16", world, even, dtype=torch.bfloat16, class_weight=True),
        logits_case("probs-mean", world, in_order, probs=True, label_smoothing=0.1),
        logits_case(
            "probs-weight-none-3d",
            world,
            shuffled,
            pass_vocab_start=True,
            lead=(2, 3),
            probs=True,
            class_weight=True,
            reduction="none",
            z_loss=1e-3,
        ),
    ]
    weighted_ignored = logits_case(
        "weight-all-ignored-mean", world, even, rows=3, class_weight=True
    )
    weighted_ignored["target"].fill_(-100)
    cases.append(weighted_ignored)
    if torch.cuda.is_available():
        # The CUDA kernels under the same collectives (gloo moves CUDA tensors too).
        cases += [dict(c, name=c["name"] + "-cuda", device="cuda") for c in list(cases)]
    inference = linear_case("linear-no-grad", world, shuffled, pass_vocab_start=True)
    inference["no_grad_ranks"] = "all"
    cases.append(inference)
    if world > 1:
        bad_dtype = logits_case("error-one-rank-other-dtype", world, even)
        bad_dtype["bad_rank"], bad_dtype["bad_dtype"] = world - 1, torch.float32
        bad_dtype["expect_error"] = {r: "ValueError: local_logits / input" for r in range(world)}
        cases.append(bad_dtype)
        bad_reduction = logits_case("error-one-rank-other-reduction", world, even)
        bad_reduction["bad_rank"], bad_reduction["bad_kwargs"] = 0, {"reduction": "sum"}
        bad_reduction["expect_error"] = {r: "ValueError: reduction" for r in range(world)}
        cases.append(bad_reduction)
        half_no_grad = linear_case("error-one-rank-no-grad", world, even)
        half_no_grad["no_grad_ranks"] = (0,)
        half_no_grad["expect_error"] = {r: "ValueError: requires_grad" for r in range(world)}
        cases.append(half_no_grad)
        overlap = logits_case(
            "error-overlapping-slices",
            world,
            [(0, 6)] + [(3, 6)] * (world - 1),
            pass_vocab_start=True,
        )
        overlap["expect_error"] = {r: "ValueError: vocab_start" for r in range(world)}
        cases.append(overlap)
        one_weight = logits_case("error-weight-on-one-rank", world, even, class_weight=True)
        one_weight["bad_rank"] = 0  # rank 0 passes no weight
        one_weight["expect_error"] = {
            r: "ValueError: target must be class ids" for r in range(world)
        }
        cases.append(one_weight)
    return cases


CASES = {world: build_cases(world) for world in WORLD_SIZES}


def run_ranks(world, cases, tmp_path, timeout=240.0, backend="gloo"):
    context = multiprocessing.get_context("spawn")
    init_file = tmp_path / "store"
    outputs = [tmp_path / f"rank{r}.pt" for r in range(world)]
    procs = [
        context.Process(
            target=distributed_worker.main,
            args=(r, world, str(init_file), cases, str(outputs[r]), backend),
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
    """Loss and gradients of the single-process computation on the whole vocabulary, float64."""
    kwargs = dict(case["kwargs"])
    kwargs.pop("chunk_size", None)
    target = case["target"]
    if case.get("class_weight") is not None:
        kwargs["weight"] = case["class_weight"].double()
    if case["kind"] == "logits":
        leaves = {"logits": case["logits"].double().requires_grad_()}
        logits = leaves["logits"]
        if target.is_floating_point():
            target = target.double()
        if logits.dim() > 2:  # the reference takes classes on dim 1
            logits = logits.movedim(-1, 1)
            if target.is_floating_point():
                target = target.movedim(-1, 1)
    else:
        leaves = {
            "input": case["input"].double().requires_grad_(),
            "weight": case["weight"].double().requires_grad_(),
        }
        if case["bias"] is not None:
            leaves["bias"] = case["bias"].double().requires_grad_()
        logits = F.linear(leaves["input"], leaves["weight"], leaves.get("bias"))
    loss, _ = cross_entropy_reference(logits, target, **kwargs)
    loss.backward(case["upstream"].double())
    return loss.detach(), {name: leaf.grad for name, leaf in leaves.items()}


def assemble(case, results, name):
    """The full gradient of a sharded leaf from every rank's slice, in vocabulary order."""
    order = sorted(range(len(results)), key=lambda r: case["slices"][r][0])
    dim = -1 if name == "logits" else 0
    return torch.cat([results[r]["grads"][name] for r in order], dim=dim)


@pytest.mark.parametrize("name", [c["name"] for c in CASES[3]])
def test_matches_single_process_cross_entropy(ranks, name):
    world, results = ranks
    cases = [c for c in CASES[world] if c["name"] == name]
    if not cases:
        pytest.skip(f"no {name} case for {world} rank(s)")
    check_case(cases[0], [r[name] for r in results])


@pytest.mark.cuda
@pytest.mark.skipif(not dist.is_nccl_available(), reason="torch without NCCL")
def test_nccl_single_rank(tmp_path):
    """The NCCL path (layout exchanged on the GPU) with one rank, every CUDA case."""
    cases = [c for c in CASES[1] if c.get("device") == "cuda"]
    (results,) = run_ranks(1, cases, tmp_path, backend="nccl")
    for case in cases:
        check_case(case, [results[case["name"]]])


def check_case(case, per_rank):
    if "expect_error" in case:
        for rank, result in enumerate(per_rank):
            assert "error" in result, f"rank {rank} raised nothing"
            assert result["error"].startswith(case["expect_error"][rank]), result["error"]
        return
    for rank, result in enumerate(per_rank):
        assert "error" not in result, f"rank {rank}: {result.get('traceback')}"
    expected_loss, expected_grads = reference(case)
    if case.get("no_grad_ranks") == "all":
        expected_grads = {}
    dtype = case["dtype"]
    rtol, atol = TOLERANCES[dtype]
    for rank, result in enumerate(per_rank):
        assert result["loss"].dtype == dtype
        assert_close(result["loss"], expected_loss, dtype, what=f"loss on rank {rank}")
    for leaf, expected in expected_grads.items():
        if leaf == "input":  # replicated: every rank must hold the whole gradient
            for rank, result in enumerate(per_rank):
                assert_close(
                    result["grads"]["input"],
                    expected,
                    dtype,
                    scale=4,
                    what=f"input grad on rank {rank}",
                )
        else:
            got = assemble(case, per_rank, leaf)
            assert got.dtype == dtype
            # bf16 logits of a bf16 matmul round once more than the oracle's.
            scale = 16 if case["kind"] == "linear" and dtype == torch.bfloat16 else 4
            assert_close(got, expected, dtype, scale=scale, what=f"{leaf} grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_ops_match_reference_statistics(device, dtype):
    """The two ops on one slice, without any process group: statistics and gradient."""
    g = torch.Generator().manual_seed(1)
    full = (4 * torch.randn(9, 40, generator=g, dtype=torch.float64)).to(dtype).to(device)
    target = torch.randint(0, 40, (9,), generator=g).to(device)
    target[2] = -100
    start, size = 25, 11
    local = full[:, start : start + size]
    stats = vp_ops.vocab_parallel_cross_entropy_stats(local, target, start)
    ld = local.double()
    in_slice = (target >= start) & (target < start + size)
    picked = ld.gather(1, (target - start).clamp(0, size - 1)[:, None])[:, 0]
    expected = torch.stack([torch.logsumexp(ld, 1), torch.where(in_slice, picked, 0.0), ld.sum(1)])
    assert stats.dtype == torch.float64  # combined across ranks without losing digits
    torch.testing.assert_close(stats, expected, rtol=1e-5, atol=1e-5)

    acc = torch.float64 if dtype == torch.float64 else torch.float32
    lse = torch.logsumexp(full.double(), 1)
    upstream = torch.rand(9, generator=g, dtype=torch.float64).to(device)
    grad = vp_ops.vocab_parallel_cross_entropy_backward(
        upstream.to(acc), local, target, lse.to(acc), start, 40, -100, 0.1, 1e-3
    )
    leaf = full.double().requires_grad_()
    loss, _ = cross_entropy_reference(
        leaf, target, reduction="none", label_smoothing=0.1, z_loss=1e-3
    )
    loss.backward(upstream)
    assert grad.dtype == dtype
    assert_close(grad, leaf.grad[:, start : start + size], dtype, scale=4, what="slice grad")


def test_empty_slice_and_empty_batch_ops():
    stats = vp_ops.vocab_parallel_cross_entropy_stats(
        torch.randn(4, 0), torch.tensor([0, 1, 2, 3]), 0
    )
    assert torch.equal(stats[0], torch.full((4,), -float("inf")))
    assert torch.equal(stats[1:], torch.zeros(2, 4))
    assert vp_ops.vocab_parallel_cross_entropy_stats(
        torch.randn(0, 5), torch.zeros(0, dtype=torch.long), 0
    ).shape == (3, 0)


@contextlib.contextmanager
def single_rank_group(tmp_path):
    """A gloo group of one rank in this process, for the checks that run after the layout
    exchange; torn down afterwards so that no other test sees it."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


L, T = torch.randn(4, 6), torch.tensor([0, 5, -100, 2])
X, W = torch.randn(4, 3), torch.randn(6, 3)
vpce = lpd.vocab_parallel_cross_entropy
vplce = lpd.vocab_parallel_linear_cross_entropy

BAD_CALLS = [
    ("group", RuntimeError, lambda: vpce(L, T)),  # no process group initialized
    ("local_logits", TypeError, lambda: vpce(L.long(), T)),
    ("local_logits", ValueError, lambda: vpce(torch.tensor(1.0), T)),
    ("target", TypeError, lambda: vpce(L, T.bool())),
    ("target", ValueError, lambda: vpce(L, T.float())),  # probabilities of the wrong shape
    ("ignore_index", ValueError, lambda: vpce(L, torch.rand(4, 6), ignore_index=1)),
    ("weight", TypeError, lambda: vpce(L, T, weight=torch.ones(6, dtype=torch.long))),
    ("weight", ValueError, lambda: vpce(L, T, weight=torch.ones(2, 3))),
    ("weight", ValueError, lambda: vpce(L, T, weight=torch.ones(5))),  # V is 6
    ("target", ValueError, lambda: vpce(L, T[:3])),
    ("target", IndexError, lambda: vpce(L, torch.tensor([0, 6, 1, 2]))),
    ("vocab_start", ValueError, lambda: vpce(L, T, vocab_start=-2)),
    ("vocab_start", ValueError, lambda: vpce(L, T, vocab_start=3)),  # leaves [0, 3) uncovered
    ("label_smoothing", ValueError, lambda: vpce(L, T, label_smoothing=1.5)),
    ("z_loss", ValueError, lambda: vpce(L, T, z_loss=-1.0)),
    ("reduction", ValueError, lambda: vpce(L, T, reduction="avg")),
    ("linear_weight", ValueError, lambda: vplce(X, W[:, :2], T)),
    ("linear_bias", ValueError, lambda: vplce(X, W, T, linear_bias=torch.zeros(5))),
    ("chunk_size", ValueError, lambda: vplce(X, W, T, chunk_size=0)),
    ("input", TypeError, lambda: vplce(X.long(), W, T)),
    ("vocab_start", ValueError, lambda: vp_ops.vocab_parallel_cross_entropy_stats(L, T, -1)),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call, tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    with contextlib.nullcontext() if argument == "group" else single_rank_group(tmp_path):
        with pytest.raises(exc, match=argument):
            call()


BAD_OP_CALLS = [
    (
        "vocab_start",
        lambda: vp_ops.vocab_parallel_cross_entropy_stats(
            torch.randn(2, 3), torch.tensor([0, 1]), -1
        ),
    ),
    (
        "target",
        lambda: vp_ops.vocab_parallel_cross_entropy_stats(
            torch.randn(2, 3), torch.tensor([0, 1, 2]), 0
        ),
    ),
    (
        "num_classes",
        lambda: vp_ops.vocab_parallel_cross_entropy_backward(
            torch.ones(2),
            torch.randn(2, 3),
            torch.tensor([0, 1]),
            torch.zeros(2),
            2,
            4,
            -100,
            0.0,
            0.0,
        ),
    ),
    (
        "lse",
        lambda: vp_ops.vocab_parallel_cross_entropy_backward(
            torch.ones(2),
            torch.randn(2, 3),
            torch.tensor([0, 1]),
            torch.zeros(3),
            0,
            4,
            -100,
            0.0,
            0.0,
        ),
    ),
]


@pytest.mark.parametrize("argument,call", BAD_OP_CALLS, ids=[a for a, _ in BAD_OP_CALLS])
def test_ops_reject_bad_arguments(argument, call):
    with pytest.raises((ValueError, TypeError), match=argument):
        call()


def test_targets_on_no_rank_give_nan_rows_when_unchecked():
    """The combine and backward steps on their own (one rank, so no collective): a target outside
    [0, V) that was not checked (traced, or LOGITOPS_VALIDATE_TARGETS=0 on CUDA) gives a NaN loss
    and gradient row, as the single-device kernels do; the other rows are unaffected."""
    logits = torch.randn(3, 5, dtype=torch.float64)
    target = torch.tensor([1, 9, -100])
    layout = lpd.VocabLayout(0, 5, 5, 5, 1)
    options = lpd._make_options(-100, "none", 0.0, 0.0)
    stats = vp_ops.vocab_parallel_cross_entropy_stats(logits, target, 0)
    lse, loss = lpd._combine(stats, target, layout, None, options, torch.float64)
    assert torch.isnan(loss[1]) and loss[2] == 0
    torch.testing.assert_close(loss[0], F.cross_entropy(logits[:1], target[:1]))
    grad = lpd._slice_grad(torch.ones(3, dtype=torch.float64), logits, target, lse, layout, options)
    assert torch.isnan(grad[1]).all() and (grad[2] == 0).all() and torch.isfinite(grad[0]).all()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_float32_loss_as_accurate_as_torch(tmp_path, label_smoothing):
    """The ranks' statistics are combined in float64: rows whose logits sit next to their lse
    lose no digits to lse - z_target (a float32 lse of a row of -1e4 is only good to 1e-3)."""
    from test_precision import _assert_not_worse_than_torch

    vocab = 65536
    case = logits_case(
        "precision",
        2,
        even_slices(2, vocab // 2),
        rows=4,
        dtype=torch.float32,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, vocab, generator=g) * 30
    logits[1] = -1e4
    logits[2] = torch.randn(vocab, generator=g) * 1e-3 + 5e3
    target = torch.randint(0, vocab, (4,), generator=g)
    case.update(logits=logits, target=target, upstream=torch.ones(4))
    results = run_ranks(2, [case], tmp_path)
    kw = dict(reduction="none", label_smoothing=label_smoothing)
    exact = F.cross_entropy(logits.double(), target, **kw)
    for rank in results:
        assert "error" not in rank["precision"], rank["precision"].get("traceback")
        _assert_not_worse_than_torch(
            rank["precision"]["loss"],
            F.cross_entropy(logits, target, **kw),
            exact,
            "vocab-parallel",
        )
