"""Per-token log-probabilities and entropies (token_logprobs, linear_token_logprobs) against the
unfused float64 reference: values and gradients, every dtype, odd shapes, ignored rows, -inf and
huge logits, temperature, chunking, autocast, gradcheck / gradgradcheck, torch.func,
torch.compile(fullgraph=True), autograd safety, the ops directly, and bad inputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import DEVICES, DTYPES, EMULATION, assert_close
from reference import token_logprobs_reference

import logitops

VOCABS = [1, 7, 259, 4099] if EMULATION else [1, 7, 259, 32000]


def make_logits(rows, vocab, dtype, device, scale=3.0):
    return (torch.randn(rows, vocab, dtype=torch.float64) * scale).to(dtype).to(device)


def make_target(rows, vocab, device, ignored=(1,)):
    target = torch.randint(0, vocab, (rows,), device=device)
    for i in ignored:
        if i < rows:
            target[i] = -100
    return target


def check_against_reference(logits, target, dtype, *, temperature, upstream_entropy=True):
    """Values and the gradient of a random combination of both outputs, against float64."""
    x = logits.detach().clone().requires_grad_()
    xr = logits.detach().double().requires_grad_()
    logprob, entropy = logitops.token_logprobs(
        x, target, temperature=temperature, return_entropy=True
    )
    ref_lp, ref_h = token_logprobs_reference(xr, target, temperature=temperature)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert logprob.dtype == entropy.dtype == expected_dtype
    assert logprob.shape == entropy.shape == target.shape
    # The outputs are float32 for every half-precision input: only the input's rounding is left,
    # and the reference starts from the same rounded logits.
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    scale = max(1.0, logits.shape[-1] / 1000)
    assert_close(logprob, ref_lp, out_dtype, scale=10 * scale, what="logprob")
    assert_close(entropy, ref_h, out_dtype, scale=10 * scale, what="entropy")
    a = torch.randn(target.shape, dtype=torch.float64, device=target.device)
    b = torch.randn(target.shape, dtype=torch.float64, device=target.device)
    if not upstream_entropy:
        b = torch.zeros_like(b)
    ((logprob.double() * a).sum() + (entropy.double() * b).sum()).backward()
    ((ref_lp * a).sum() + (ref_h * b).sum()).backward()
    assert x.grad.dtype == dtype
    assert_close(x.grad, xr.grad, dtype, scale=10, what="grad")
    return logprob, entropy, x.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_reference(device, dtype, vocab, temperature):
    rows = 3 if vocab > 1000 else 5
    logits = make_logits(rows, vocab, dtype, device)
    target = make_target(rows, vocab, device)
    _, _, grad = check_against_reference(logits, target, dtype, temperature=temperature)
    assert (grad[1] == 0).all()  # the ignored row


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows", [1, 3])
def test_logprob_alone_and_entropy_alone(device, rows):
    logits = make_logits(rows, 37, torch.float32, device)
    target = make_target(rows, 37, device, ignored=())
    x = logits.clone().requires_grad_()
    logprob = logitops.token_logprobs(x, target, temperature=1.3)
    assert isinstance(logprob, torch.Tensor)
    logprob.sum().backward()
    xr = logits.double().requires_grad_()
    ref_lp, ref_h = token_logprobs_reference(xr, target, temperature=1.3)
    ref_lp.sum().backward()
    assert_close(logprob, ref_lp, torch.float32, what="logprob")
    assert_close(x.grad, xr.grad, torch.float32, what="logprob grad")
    # Only the entropy reaches the loss: the logprob's upstream gradient is None.
    x2 = logits.clone().requires_grad_()
    _, entropy = logitops.token_logprobs(x2, target, temperature=1.3, return_entropy=True)
    entropy.sum().backward()
    xr2 = logits.double().requires_grad_()
    token_logprobs_reference(xr2, target, temperature=1.3)[1].sum().backward()
    assert_close(x2.grad, xr2.grad, torch.float32, what="entropy grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_minus_inf_and_huge_logits(device, dtype):
    logits = make_logits(5, 300, dtype, device, scale=1.0)
    logits[0, 10:] = -float("inf")  # most of the vocabulary masked out
    logits[1, :] = -float("inf")
    logits[1, 3] = 2.0  # one token left: logprob 0, entropy 0
    logits[2] *= 1e4  # huge logits: a one-hot distribution
    logits[3] -= 1e4  # a row of -1e4: lse next to the logits
    target = torch.tensor([3, 3, 5, 7, 9], device=device)
    # T = 1: logits / T rounds nothing, so even the row of -1e4 keeps every digit.
    logprob, entropy, grad = check_against_reference(logits, target, dtype, temperature=1.0)
    assert torch.isfinite(logprob).all() and torch.isfinite(entropy).all()
    assert torch.isfinite(grad).all()
    assert (grad[0, 10:] == 0).all()
    assert logprob[1] == 0 and entropy[1] == 0
    assert (entropy >= 0).all()
    # T != 1: logits / T is rounded to float32 first (as torch's log_softmax(logits / T) rounds
    # it), which costs a row of -1e4 about 1e-3 / 1e4 of its digits: within twice torch's error.
    if dtype == torch.float32:
        ours = logitops.token_logprobs(logits, target, temperature=0.9)
        torch_fp32 = torch.log_softmax(logits / 0.9, -1).gather(-1, target[:, None]).squeeze(-1)
        exact = token_logprobs_reference(logits, target, temperature=0.9)[0]
        bound = 2 * (torch_fp32.double() - exact).abs() + 1e-5 * exact.abs() + 1e-6
        assert ((ours.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab", [16, 5000])
def test_non_finite_rows_are_nan(device, vocab):
    logits = make_logits(5, vocab, torch.float32, device)
    logits[0, :] = -float("inf")
    logits[1, vocab - 4] = float("nan")
    logits[2, vocab - 3] = float("inf")  # not the target: NaN all the same, as log_softmax
    target = torch.tensor([1, 2, 3, 4, -100], device=device)
    x = logits.clone().requires_grad_()
    logprob, entropy = logitops.token_logprobs(x, target, return_entropy=True)
    assert torch.isnan(logprob[:3]).all() and torch.isnan(entropy[:3]).all()
    assert torch.isnan(logitops.token_logprobs(logits, target)[:3]).all()  # without the entropy
    assert torch.isfinite(logprob[3:]).all() and logprob[4] == 0 and entropy[4] == 0
    (logprob + entropy).sum().backward()
    assert torch.isnan(x.grad[:3]).all() and torch.isfinite(x.grad[3:]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_blocks_across_a_long_row(device, dtype):
    # -inf over whole blocks of the CPU kernel (2048 columns) and the max in the last one: the
    # one-pass entropy state starts empty, rescales, and merges blocks that add nothing.
    vocab = 5000
    logits = make_logits(3, vocab, dtype, device)
    logits[0, :4500] = -float("inf")
    logits[1, 2048:4096] = -float("inf")
    logits[2, -1] = 60.0  # a max far above the rest, found last
    target = torch.tensor([100, 3000, 7], device=device)  # row 0, 1: a -inf target
    x = logits.clone().requires_grad_()
    logprob, entropy = logitops.token_logprobs(x, target, temperature=0.8, return_entropy=True)
    ref_lp, ref_h = token_logprobs_reference(logits, target, temperature=0.8)
    assert (logprob[:2] == -float("inf")).all()
    assert_close(logprob[2], ref_lp[2], dtype, what="logprob")
    assert_close(entropy, ref_h, dtype, scale=10, what="entropy")
    entropy.sum().backward()
    xr = logits.double().requires_grad_()
    token_logprobs_reference(xr, target, temperature=0.8)[1].sum().backward()
    assert_close(x.grad, xr.grad, dtype, what="entropy grad")


@pytest.mark.parametrize("device", DEVICES)
def test_all_ignored_no_rows_and_leading_dims(device):
    logits = make_logits(6, 20, torch.float64, device)
    target = torch.full((6,), -7, device=device)
    x = logits.clone().requires_grad_()
    logprob, entropy = logitops.token_logprobs(x, target, ignore_index=-7, return_entropy=True)
    assert (logprob == 0).all() and (entropy == 0).all()
    (logprob + entropy).sum().backward()
    assert (x.grad == 0).all()
    empty = logitops.token_logprobs(logits[:0], target[:0], return_entropy=True)
    assert empty[0].shape == empty[1].shape == (0,)
    # [B, T, V] with [B, T] targets, and logits that are a non-contiguous view.
    wide = make_logits(2 * 3, 40, torch.float64, device).reshape(2, 3, 40)
    view = wide[..., ::2]
    y = torch.randint(0, 20, (2, 3), device=device)
    y[0, 1] = -100
    logprob, entropy = logitops.token_logprobs(view, y, temperature=2.0, return_entropy=True)
    ref_lp, ref_h = token_logprobs_reference(view, y, temperature=2.0)
    assert logprob.shape == (2, 3)
    assert_close(logprob, ref_lp, torch.float64, what="3-D logprob")
    assert_close(entropy, ref_h, torch.float64, what="3-D entropy")
    # int32 targets are accepted (converted).
    assert_close(
        logitops.token_logprobs(view, y.int(), temperature=2.0), ref_lp, torch.float64, what="i32"
    )


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    logits = make_logits(4, 9, torch.float64, device, scale=1.0)
    logits[2, 5] = -float("inf")
    target = torch.tensor([1, -100, 3, 8], device=device)
    x = logits.clone().requires_grad_()
    for temperature in (1.0, 0.6):

        def both(z, temperature=temperature):
            return logitops.token_logprobs(z, target, temperature=temperature, return_entropy=True)

        def logprob_only(z, temperature=temperature):
            return logitops.token_logprobs(z, target, temperature=temperature)

        def entropy_only(z, temperature=temperature):
            return both(z)[1]

        for fn in (both, logprob_only, entropy_only):
            # The -inf logit keeps finite differences away from column 5 of row 2.
            finite = x.detach().clone()
            finite[2, 5] = -1e30
            assert torch.autograd.gradcheck(fn, (finite.requires_grad_(),))
            assert torch.autograd.gradgradcheck(fn, (finite.detach().requires_grad_(),))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_func_transforms_and_forward_mode(device):
    logits = make_logits(3, 11, torch.float64, device, scale=1.0)
    target = torch.tensor([2, -100, 10], device=device)

    def ours(z):
        lp, h = logitops.token_logprobs(z, target, temperature=0.8, return_entropy=True)
        return lp + 0.3 * h

    def theirs(z):
        lp, h = token_logprobs_reference(z, target, temperature=0.8)
        return lp + 0.3 * h

    def check(a, b, what):
        assert_close(a, b, torch.float64, what=what)

    check(torch.func.jacrev(ours)(logits), torch.func.jacrev(theirs)(logits), "jacrev")
    v = torch.randn_like(logits)
    jvp = torch.func.jvp(ours, (logits,), (v,))[1]
    check(jvp, torch.func.jvp(theirs, (logits,), (v,))[1], "jvp")
    assert jvp.abs().max() > 0
    with fwAD.dual_level():
        dual = fwAD.make_dual(logits, v)
        check(fwAD.unpack_dual(ours(dual)).tangent, jvp, "forward-mode")
    batch = torch.randn(4, 3, 11, dtype=torch.float64, device=device)
    check(
        torch.vmap(torch.func.grad(lambda z: ours(z).sum()))(batch),
        torch.vmap(torch.func.grad(lambda z: theirs(z).sum()))(batch),
        "vmap(grad)",
    )


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def step(z, y):
        lp, h = logitops.token_logprobs(z, y, temperature=0.7, return_entropy=True)
        return (lp * 2.0).sum() + 0.01 * h.sum()

    compiled = torch.compile(step, fullgraph=True)
    logits = make_logits(6, 50, torch.float32, device)
    y = make_target(6, 50, device)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    eager, comp = step(x1, y), compiled(x2, y)
    torch.testing.assert_close(comp, eager)
    eager.backward()
    comp.backward()
    torch.testing.assert_close(x2.grad, x1.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_autograd_safety(device):
    logits = make_logits(4, 30, torch.float32, device)
    target = make_target(4, 30, device)
    saved = logits.clone()
    x = logits.clone().requires_grad_()
    # An upstream op that saved its output (exp saves it) stays correct.
    up = x.exp().log()
    lp, h = logitops.token_logprobs(up, target, return_entropy=True)
    loss = (lp + h).sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()  # a retained graph gives the same gradient again
    torch.testing.assert_close(x.grad, 2 * first)
    assert torch.equal(logits, saved)
    with torch.no_grad():
        out = logitops.token_logprobs(x, target)
    assert not out.requires_grad
    with torch.inference_mode():
        assert_close(
            logitops.token_logprobs(logits, target),
            token_logprobs_reference(logits, target)[0],
            torch.float32,
            what="inference mode",
        )


def test_properties_against_reference():
    """Bounded property test (hypothesis): random shapes, scales, temperatures, strides, masked
    columns and ignored rows, every dtype, against the float64 reference."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(
        rows=st.integers(0, 7),
        vocab=st.integers(1, 2600),
        dtype=st.sampled_from(DTYPES),
        scale=st.sampled_from([0.1, 3.0, 30.0]),
        temperature=st.sampled_from([0.3, 1.0, 2.5]),
        seed=st.integers(0, 2**31),
        transpose=st.booleans(),
        masked=st.floats(0.0, 0.9),
        ignored=st.floats(0.0, 1.0),
    )
    def check(rows, vocab, dtype, scale, temperature, seed, transpose, masked, ignored):
        g = torch.Generator().manual_seed(seed)
        shape = (vocab, rows) if transpose else (rows, vocab)
        base = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        base = base.t() if transpose else base
        drop = torch.rand(rows, vocab, generator=g) < masked
        drop[:, 0] = False  # every row keeps a finite logit
        logits = base.masked_fill(drop, -float("inf")).to(dtype)
        target = torch.randint(0, vocab, (rows,), generator=g)
        target[torch.rand(rows, generator=g) < ignored] = -100
        target = torch.where((target >= 0) & drop.gather(1, target.clamp(min=0)[:, None])[:, 0],
                             torch.zeros_like(target), target)  # fmt: skip
        check_against_reference(logits, target, dtype, temperature=temperature)

    check()


# --- linear_token_logprobs --------------------------------------------------------------------


def linear_reference(x, w, b, target, temperature):
    logits = x.double() @ w.double().T
    if b is not None:
        logits = logits + b.double()
    return token_logprobs_reference(logits, target, temperature=temperature)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_linear_matches_reference(device, dtype, with_bias, chunk_size):
    rows, hidden, vocab = 7, 16, 259
    x0 = torch.randn(rows, hidden, dtype=torch.float64).to(dtype).to(device)
    w0 = (torch.randn(vocab, hidden, dtype=torch.float64) / 2).to(dtype).to(device)
    b0 = torch.randn(vocab, dtype=torch.float64).to(dtype).to(device) if with_bias else None
    target = make_target(rows, vocab, device, ignored=(2, 5))
    leaves = [t.clone().requires_grad_() for t in (x0, w0, b0) if t is not None]
    refs = [t.double().requires_grad_() for t in (x0, w0, b0) if t is not None]
    x, w, b = (leaves + [None])[:3]
    xr, wr, br = (refs + [None])[:3]
    logprob, entropy = logitops.linear_token_logprobs(
        x, w, target, linear_bias=b, temperature=0.8, return_entropy=True, chunk_size=chunk_size
    )
    ref_lp, ref_h = linear_reference(xr, wr, br, target, 0.8)
    # The logits are a matmul in the input's dtype: compare with the tolerance of that dtype.
    assert_close(logprob, ref_lp, dtype, scale=30, what="logprob")
    assert_close(entropy, ref_h, dtype, scale=30, what="entropy")
    a = torch.randn(rows, dtype=torch.float64, device=device)
    c = torch.randn(rows, dtype=torch.float64, device=device)
    ((logprob.double() * a).sum() + (entropy.double() * c).sum()).backward()
    ((ref_lp * a).sum() + (ref_h * c).sum()).backward()
    for mine, theirs, name in zip(leaves, refs, ("input", "weight", "bias"), strict=False):
        assert mine.grad.dtype == dtype
        assert_close(mine.grad, theirs.grad, dtype, scale=100, what=f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_linear_equals_token_logprobs_of_the_logits(device):
    x = torch.randn(2, 5, 8, device=device)  # [B, T, H]
    w = torch.randn(97, 8, device=device)
    y = torch.randint(0, 97, (2, 5), device=device)
    y[1, 0] = -100
    fused = logitops.linear_token_logprobs(x, w, y, temperature=1.5, chunk_size=4)
    assert fused.shape == (2, 5)
    assert_close(
        fused, logitops.token_logprobs(x @ w.T, y, temperature=1.5), torch.float32, what="fused"
    )
    # No tokens at all: empty outputs, and a zero weight gradient.
    x0 = torch.randn(0, 8, device=device, requires_grad=True)
    w0 = w.clone().requires_grad_()
    y0 = torch.zeros(0, dtype=torch.long, device=device)
    lp, h = logitops.linear_token_logprobs(x0, w0, y0, return_entropy=True)
    assert lp.shape == h.shape == (0,)
    (lp.sum() + h.sum()).backward()
    assert x0.grad.shape == (0, 8) and (w0.grad == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_linear_gradcheck_double_backward_and_frozen_head(device):
    x = torch.randn(5, 4, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(13, 4, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(13, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.tensor([0, 12, -100, 5, 7], device=device)

    def fn(x, w, b):
        return logitops.linear_token_logprobs(
            x, w, y, linear_bias=b, temperature=0.9, return_entropy=True, chunk_size=2
        )

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))
    # A frozen head (w, b without grad): only the input's gradient.
    xd = x.detach().clone().requires_grad_()
    lp = logitops.linear_token_logprobs(xd, w.detach(), y, linear_bias=b.detach(), chunk_size=2)
    lp.sum().backward()
    xr = x.detach().clone().requires_grad_()
    linear_reference(xr, w.detach(), b.detach(), y, 1.0)[0].sum().backward()
    assert_close(xd.grad, xr.grad, torch.float64, what="frozen head")


@pytest.mark.parametrize("device", DEVICES)
def test_linear_torch_func(device):
    x = torch.randn(3, 4, dtype=torch.float64, device=device)
    w = torch.randn(9, 4, dtype=torch.float64, device=device)
    y = torch.tensor([1, -100, 8], device=device)

    def ours(w):
        lp, h = logitops.linear_token_logprobs(x, w, y, return_entropy=True, chunk_size=2)
        return (lp + h).sum()

    def theirs(w):
        lp, h = linear_reference(x, w, None, y, 1.0)
        return (lp + h).sum()

    assert_close(torch.func.grad(ours)(w), torch.func.grad(theirs)(w), torch.float64, what="grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dynamic", [False, True])
def test_linear_compile_fullgraph(device, dynamic):
    torch._dynamo.reset()

    def step(x, w, y):
        lp, h = logitops.linear_token_logprobs(
            x, w, y, temperature=0.7, return_entropy=True, chunk_size=3
        )
        return lp.sum() + 0.01 * h.sum()

    compiled = torch.compile(step, fullgraph=True, dynamic=dynamic)
    for rows in (8, 11):  # a second token count: a recompile, or the dynamic graph again
        x0, w0 = torch.randn(rows, 16, device=device), torch.randn(50, 16, device=device)
        y = make_target(rows, 50, device)
        x1, w1 = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        x2, w2 = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        eager, comp = step(x1, w1, y), compiled(x2, w2, y)
        torch.testing.assert_close(comp, eager)
        eager.backward()
        comp.backward()
        torch.testing.assert_close(x2.grad, x1.grad)
        torch.testing.assert_close(w2.grad, w1.grad)


def test_linear_autocast_cpu():
    x = torch.randn(6, 16, requires_grad=True)
    w = torch.randn(40, 16, requires_grad=True)
    y = make_target(6, 40, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, h = logitops.linear_token_logprobs(x, w, y, return_entropy=True, chunk_size=4)
        logits = torch.nn.functional.linear(x, w)
    assert lp.dtype == torch.float32 and logits.dtype == torch.bfloat16
    ref_lp, ref_h = token_logprobs_reference(logits.float(), y)
    assert_close(lp, ref_lp, torch.float32, scale=10, what="autocast logprob")
    assert_close(h, ref_h, torch.float32, scale=10, what="autocast entropy")
    (lp.sum() + h.sum()).backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


def test_grpo_example_runs_and_learns(capsys):
    path = Path(__file__).parents[1] / "examples" / "grpo_step.py"
    spec = importlib.util.spec_from_file_location("grpo_step", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # Its first step checks the fused loss and gradients against the unfused computation.
    history = example.main(["--steps", "8", "--prompts", "2", "--group", "6"])
    assert "match the unfused" in capsys.readouterr().out
    assert history[-1]["reward"] > history[0]["reward"]
    assert max(h["clip_frac"] for h in history) > 0  # the clipping took effect


@pytest.mark.skipif(not EMULATION, reason="the traffic log needs LOGITOPS_CUDA_EMULATION=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("return_entropy", [False, True])
def test_cuda_traffic_one_read_forward_one_read_one_write_backward(dtype, return_entropy):
    rows, vocab = 4, 1000  # 16-byte aligned rows for every dtype
    x = torch.randn(rows, vocab, dtype=dtype, requires_grad=True)
    target = torch.randint(0, vocab, (rows,))
    unit = rows * vocab * x.element_size()

    def log(fn):
        torch.ops.logitops_emulation.start_traffic_log()
        try:
            fn()
        finally:
            names, *counts = torch.ops.logitops_emulation.stop_traffic_log()
        return {
            name: tuple(c / unit for c in row) for name, *row in zip(names, *counts, strict=True)
        }

    out = {}

    def step():
        out["stats"] = logitops.token_logprobs(x, target, return_entropy=return_entropy)

    forward = log(step)
    # The row once (the entropy in the same pass), plus each row's target logit.
    read, written, distinct_read, _ = forward.pop("token_logprobs_forward_kernel")
    assert read == pytest.approx(1 + 1 / vocab) and distinct_read == 1.0 and written == 0.0
    assert not forward
    stats = out["stats"]
    loss = sum(t.sum() for t in stats) if return_entropy else stats.sum()
    backward = log(loss.backward)
    assert backward.pop("token_logprobs_backward_kernel") == (1.0, 1.0, 1.0, 1.0)
    assert not backward
    # Ignored rows read nothing, forward or backward.
    target[:] = -100
    assert log(lambda: logitops.token_logprobs(x, target, return_entropy=return_entropy))[
        "token_logprobs_forward_kernel"
    ] == (0.0, 0.0, 0.0, 0.0)


# --- the ops directly --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_ops_reject_bad_operands(device):
    ops = torch.ops.logitops
    logits = torch.randn(3, 5, device=device)
    target = torch.tensor([0, 1, 2], device=device)
    with pytest.raises(ValueError, match="logits must be 2-D"):
        ops.token_logprobs_forward(logits[0], target[:1], 1.0, -100, False)
    with pytest.raises(TypeError, match="target must be int64"):
        ops.token_logprobs_forward(logits, target.int(), 1.0, -100, False)
    with pytest.raises(ValueError, match="target must have shape"):
        ops.token_logprobs_forward(logits, target[:2], 1.0, -100, False)
    with pytest.raises(ValueError, match="temperature"):
        ops.token_logprobs_forward(logits, target, 0.0, -100, False)
    lp, h, lse = ops.token_logprobs_forward(logits, target, 1.0, -100, True)
    with pytest.raises(ValueError, match="lse must have shape"):
        ops.token_logprobs_backward(lp, None, logits, target, lse[:2], h, 1.0, -100)
    with pytest.raises(TypeError, match="grad_entropy must be"):
        ops.token_logprobs_backward(None, h.double(), logits, target, lse, h, 1.0, -100)
    # Out-of-range targets: NaN rows, never an out-of-bounds read.
    bad = torch.tensor([0, 5, -1], device=device)
    lp, h, _ = ops.token_logprobs_forward(logits, bad, 1.0, -100, True)
    assert torch.isfinite(lp[0]) and torch.isnan(lp[1:]).all() and torch.isnan(h[1:]).all()


X, Y = torch.randn(4, 10), torch.tensor([1, 2, 3, -100])
W = torch.randn(6, 10)  # an LM head [V = 6, H = 10] for hidden states X

BAD_CALLS = [
    ("logits", TypeError, lambda: logitops.token_logprobs(X.long(), Y)),
    ("logits", ValueError, lambda: logitops.token_logprobs(X[:, :0], Y)),
    ("target", TypeError, lambda: logitops.token_logprobs(X, Y.float())),
    ("target", ValueError, lambda: logitops.token_logprobs(X, Y[:3])),
    ("target", IndexError, lambda: logitops.token_logprobs(X, torch.tensor([0, 1, 2, 10]))),
    ("temperature", ValueError, lambda: logitops.token_logprobs(X, Y, temperature=0.0)),
    ("temperature", ValueError, lambda: logitops.token_logprobs(X, Y, temperature=float("inf"))),
    ("temperature", TypeError, lambda: logitops.token_logprobs(X, Y, temperature=torch.ones(4))),
    ("linear_weight", ValueError, lambda: logitops.linear_token_logprobs(X, W[:, :5], Y)),
    ("linear_weight", TypeError, lambda: logitops.linear_token_logprobs(X, W.long(), Y)),
    (
        "linear_bias",
        ValueError,
        lambda: logitops.linear_token_logprobs(X, W, Y, linear_bias=torch.zeros(3)),
    ),
    ("target", ValueError, lambda: logitops.linear_token_logprobs(X, W, Y[:3])),
    (
        "target",
        IndexError,
        lambda: logitops.linear_token_logprobs(X, W, torch.tensor([0, 1, 6, 2])),
    ),
    ("chunk_size", ValueError, lambda: logitops.linear_token_logprobs(X, W, Y, chunk_size=0)),
    ("temperature", ValueError, lambda: logitops.linear_token_logprobs(X, W, Y, temperature=-1)),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()
