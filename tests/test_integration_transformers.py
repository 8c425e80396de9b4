"""logitops.integrations.transformers against stock transformers: tiny models built from configs
(no download), the loss and every parameter's gradient, the float64 oracle, Trainer steps with
gradient accumulation, and the patch's undo."""

from __future__ import annotations

import copy
import functools
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from reference import causal_lm_loss_reference  # noqa: E402

from logitops.integrations.transformers import apply, causal_lm_loss  # noqa: E402

EMULATION_SKIP = pytest.mark.emulation_skip("Trainer runs and peak memory: real kernels only")

VOCAB = 131
HIDDEN = 32
COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2)
HEADS = dict(num_attention_heads=4, num_key_value_heads=2)
SOFTCAP = 2.5  # small, so that the cap changes the loss a lot

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, **HEADS),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, **HEADS),
    "mistral": lambda: transformers.MistralConfig(**COMMON, **HEADS),
    "phi": lambda: transformers.PhiConfig(  # lm_head with a bias
        **COMMON, num_attention_heads=4, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0
    ),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    ),  # fmt: skip
    "gemma2": lambda: transformers.Gemma2Config(
        **COMMON, **HEADS, head_dim=8, final_logit_softcapping=SOFTCAP
    ),
}

TOLERANCE = {torch.float32: dict(rtol=2e-5, atol=5e-6), torch.float64: dict(rtol=1e-9, atol=1e-12)}


def make_model(arch: str, dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # logits of a few units (init gives ~0.1), so the softcap matters
        model.lm_head.weight.mul_(40.0)
    return model.to(dtype)


def make_batch(batch=3, seq=10, seed=1, pad=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    labels = ids.clone()
    labels[torch.rand(batch, seq, generator=g) < 0.25] = -100
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad:  # right padding on the last row, its labels ignored
        mask[-1, seq - 3 :] = 0
        labels[-1, seq - 3 :] = -100
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def grads(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def loss_and_grads(model, **inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    return out, grads(model)


def assert_grads_close(ours, stock, rtol, atol):
    """Each gradient within rtol, and atol relative to that gradient's largest element (two sums
    in different orders differ by rounding of the largest terms, not of each element)."""
    assert ours.keys() == stock.keys()
    for name in stock:
        scale = max(stock[name].abs().max().item(), 1.0)
        torch.testing.assert_close(
            ours[name], stock[name], rtol=rtol, atol=atol * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


def float64_stock_loss(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100,
                       shift_labels=None, **kwargs):  # fmt: skip
    """The oracle as a transformers loss function: stock's forward, the loss in float64."""
    return causal_lm_loss_reference(logits, labels, num_items_in_batch, ignore_index, shift_labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_fused_loss_and_every_gradient_match_stock(arch, dtype):
    stock = make_model(arch, dtype)
    model = copy.deepcopy(stock)
    inputs = make_batch()
    apply(model)
    ours, ours_grads = loss_and_grads(model, **inputs)
    assert ours.logits is None
    assert ours.loss.dtype == dtype
    if dtype == torch.float32:
        expected, expected_grads = loss_and_grads(stock, **inputs)
        assert expected.loss.dtype == torch.float32
    else:  # stock rounds float64 logits to float32 for its loss; the oracle does not
        stock.loss_function = float64_stock_loss
        expected, expected_grads = loss_and_grads(stock, **inputs)
        assert expected.loss.dtype == torch.float64
    torch.testing.assert_close(ours.loss, expected.loss, **TOLERANCE[dtype])
    assert_grads_close(ours_grads, expected_grads, **TOLERANCE[dtype])
    assert len(ours_grads) > 10 and all(g.abs().sum() > 0 for g in ours_grads.values())


@pytest.mark.parametrize("arch", ["llama", "phi", "gemma2"])
def test_float64_matches_stock_to_its_float32_loss(arch):
    """Against stock itself in float64 (whose loss is float32: its logits are upcast by
    .float()), within float32 rounding."""
    stock = make_model(arch, torch.float64)
    model = copy.deepcopy(stock)
    apply(model)
    inputs = make_batch()
    ours, ours_grads = loss_and_grads(model, **inputs)
    expected, expected_grads = loss_and_grads(stock, **inputs)
    torch.testing.assert_close(ours.loss.float(), expected.loss, rtol=1e-5, atol=1e-6)
    assert_grads_close(ours_grads, expected_grads, rtol=1e-4, atol=1e-6)


def test_softcapping_is_applied():
    """Gemma 2's cap changes the loss, and the fused loss follows it (not the uncapped one)."""
    stock = make_model("gemma2")
    model = copy.deepcopy(stock)
    apply(model)
    inputs = make_batch()
    capped = model(**inputs).loss
    stock.config.final_logit_softcapping = None
    uncapped = stock(**inputs).loss
    stock.config.final_logit_softcapping = SOFTCAP
    assert not torch.allclose(capped, uncapped, rtol=1e-3)
    torch.testing.assert_close(capped, stock(**inputs).loss, **TOLERANCE[torch.float32])
    assert model.config.final_logit_softcapping == SOFTCAP  # restored after each call


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_several_chunks(arch):
    stock = make_model(arch)
    model = copy.deepcopy(stock)
    apply(model, chunk_size=7)  # 30 tokens: 5 chunks, the last one short
    inputs = make_batch()
    ours, ours_grads = loss_and_grads(model, **inputs)
    expected, expected_grads = loss_and_grads(stock, **inputs)
    torch.testing.assert_close(ours.loss, expected.loss, **TOLERANCE[torch.float32])
    assert_grads_close(ours_grads, expected_grads, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("mode", ["fused", "loss_function"])
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_num_items_in_batch_sums_then_divides(arch, mode):
    stock = make_model(arch)
    model = copy.deepcopy(stock)
    apply(model, mode=mode)
    inputs = make_batch()
    for items in (torch.tensor(37), 11):
        ours, ours_grads = loss_and_grads(model, **inputs, num_items_in_batch=items)
        expected, expected_grads = loss_and_grads(stock, **inputs, num_items_in_batch=items)
        torch.testing.assert_close(ours.loss, expected.loss, **TOLERANCE[torch.float32])
        assert_grads_close(ours_grads, expected_grads, **TOLERANCE[torch.float32])
    mean = model(**inputs).loss
    assert not torch.allclose(mean, ours.loss)


@pytest.mark.parametrize("mode", ["fused", "loss_function"])
def test_logits_to_keep_with_shift_labels(mode):
    stock = make_model("qwen2")
    model = copy.deepcopy(stock)
    apply(model, mode=mode)
    inputs = make_batch()
    labels = inputs.pop("labels")
    keep = 4
    shift = labels[:, -keep:].clone()
    kwargs = dict(labels=labels, logits_to_keep=keep, shift_labels=shift)
    ours, ours_grads = loss_and_grads(model, **inputs, **kwargs)
    expected, expected_grads = loss_and_grads(stock, **inputs, **kwargs)
    torch.testing.assert_close(ours.loss, expected.loss, **TOLERANCE[torch.float32])
    assert_grads_close(ours_grads, expected_grads, **TOLERANCE[torch.float32])
    # Without shift_labels the positions do not match the labels: stock fails, so do we.
    with pytest.raises(ValueError):
        stock(**inputs, labels=labels, logits_to_keep=keep)
    with pytest.raises(ValueError, match="logits_to_keep" if mode == "fused" else "target"):
        model(**inputs, labels=labels, logits_to_keep=keep)


def test_ignore_index_and_every_label_ignored():
    stock = make_model("mistral")
    model = copy.deepcopy(stock)
    apply(model)
    inputs = make_batch()
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    assert torch.isnan(model(**inputs).loss) and torch.isnan(stock(**inputs).loss)
    inputs = make_batch()
    labels = inputs["labels"].masked_fill(inputs["labels"] == -100, 7)
    inputs["labels"] = labels
    kwargs = dict(ignore_index=7)
    torch.testing.assert_close(
        model(**inputs, **kwargs).loss, stock(**inputs, **kwargs).loss, **TOLERANCE[torch.float32]
    )


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_without_labels_the_model_is_unchanged(arch):
    stock = make_model(arch)
    model = copy.deepcopy(stock)
    apply(model)
    inputs = make_batch()
    del inputs["labels"]
    ours, expected = model(**inputs), stock(**inputs)
    assert ours.loss is None and torch.equal(ours.logits, expected.logits)
    ids = inputs["input_ids"][:1, :4]
    kwargs = dict(max_new_tokens=3, do_sample=False)
    assert torch.equal(model.generate(ids, **kwargs), stock.generate(ids, **kwargs))


@pytest.mark.parametrize("fused_in_eval", [False, True])
def test_eval_mode(fused_in_eval):
    """In eval mode the forward is the original one (logits and stock's loss), unless
    fused_in_eval; back in training mode, fused again."""
    stock = make_model("gemma2")
    model = copy.deepcopy(stock)
    apply(model, fused_in_eval=fused_in_eval)
    model.eval(), stock.eval()
    inputs = make_batch()
    with torch.no_grad():
        ours, expected = model(**inputs), stock(**inputs)
    torch.testing.assert_close(ours.loss, expected.loss, **TOLERANCE[torch.float32])
    if fused_in_eval:
        assert ours.logits is None
    else:
        assert torch.equal(ours.logits, expected.logits) and torch.equal(ours.loss, expected.loss)
    model.train()
    assert model(**inputs).logits is None


def test_return_dict_false_gives_the_tuple_without_logits():
    stock = make_model("llama")
    model = copy.deepcopy(stock)
    apply(model)
    inputs = make_batch()
    ours = model(**inputs, return_dict=False, use_cache=False)
    expected = stock(**inputs, return_dict=False, use_cache=False)
    assert isinstance(ours, tuple) and len(ours) == len(expected) - 1  # no logits
    torch.testing.assert_close(ours[0], expected[0], **TOLERANCE[torch.float32])
    labels = inputs.pop("labels")
    ours = model(inputs["input_ids"], inputs["attention_mask"], None, None, None, labels)
    torch.testing.assert_close(ours.loss, expected[0], **TOLERANCE[torch.float32])


@pytest.mark.parametrize("arch", ["llama", "phi", "gemma2"])
def test_loss_function_mode_keeps_the_logits(arch):
    stock = make_model(arch)
    model = copy.deepcopy(stock)
    patch = apply(model, mode="loss_function")
    inputs = make_batch()
    ours, ours_grads = loss_and_grads(model, **inputs)
    expected, expected_grads = loss_and_grads(stock, **inputs)
    assert model.loss_function.func is causal_lm_loss
    torch.testing.assert_close(ours.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(ours.loss, expected.loss, **TOLERANCE[torch.float32])
    assert_grads_close(ours_grads, expected_grads, **TOLERANCE[torch.float32])
    patch.remove()
    assert "_loss_function" not in vars(model)
    assert model.loss_function is stock.loss_function


@pytest.mark.parametrize("mode", ["fused", "loss_function"])
def test_label_smoothing_and_z_loss_options(mode):
    """The options reach the loss: against the float64 oracle on stock's (capped) logits."""
    stock = make_model("gemma2", torch.float64)
    model = copy.deepcopy(stock)
    apply(model, mode=mode, label_smoothing=0.1, z_loss=1e-3)
    inputs = make_batch()
    ours = model(**inputs).loss
    logits = stock(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    expected = causal_lm_loss_reference(logits, inputs["labels"], label_smoothing=0.1, z_loss=1e-3)
    tol = TOLERANCE[torch.float64] if mode == "fused" else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.double(), expected, **tol)


def test_bfloat16_model_gets_a_float32_loss_close_to_stock():
    stock = make_model("llama", torch.bfloat16)
    model = copy.deepcopy(stock)
    apply(model)
    inputs = make_batch()
    ours, ours_grads = loss_and_grads(model, **inputs)
    expected, expected_grads = loss_and_grads(stock, **inputs)
    assert ours.loss.dtype == expected.loss.dtype == torch.float32
    torch.testing.assert_close(ours.loss, expected.loss, rtol=1e-3, atol=1e-3)
    head = "lm_head.weight"
    torch.testing.assert_close(
        ours_grads[head].float(), expected_grads[head].float(), rtol=2e-2, atol=2e-3
    )


def test_remove_restores_the_model_exactly():
    model = make_model("llama")
    before = dict(vars(model))
    head_before = dict(vars(model.lm_head))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = make_batch()
    expected = model(**inputs)
    patch = apply(model)
    assert patch.active and "forward" in vars(model)
    assert model(**inputs).logits is None
    with pytest.raises(RuntimeError, match="already patched"):
        apply(model, mode="loss_function")
    patch.remove()
    patch.remove()  # a second call does nothing
    assert not patch.active
    assert vars(model).keys() == before.keys()
    assert all(vars(model)[k] is v for k, v in before.items())
    assert vars(model.lm_head).keys() == head_before.keys()
    assert all(vars(model.lm_head)[k] is v for k, v in head_before.items())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    out = model(**inputs)
    assert torch.equal(out.logits, expected.logits) and torch.equal(out.loss, expected.loss)
    with apply(model, mode="loss_function") as scoped:
        assert scoped.active
    assert vars(model).keys() == before.keys()


def test_remove_refuses_when_forward_was_replaced_since():
    model = make_model("llama")
    patch = apply(model)
    ours = model.forward
    model.forward = lambda *a, **k: None
    with pytest.raises(RuntimeError, match="replaced"):
        patch.remove()
    model.forward = ours
    patch.remove()
    assert "forward" not in vars(model)


def test_a_model_that_transforms_its_logits_is_refused():
    """The fused loss cannot reproduce a transformation of the logits it does not know: refused
    instead of a wrong loss."""
    model = make_model("llama")
    model.lm_head.register_forward_hook(lambda module, args, out: out * 2.0)
    apply(model)
    with pytest.raises(RuntimeError, match="mode='loss_function'"):
        model(**make_batch())


def test_signature_is_the_original_one():
    stock = make_model("gpt2")
    model = copy.deepcopy(stock)
    apply(model)
    assert inspect.signature(model.forward) == inspect.signature(stock.forward)


def _trainer_run(model, tmp_path, name):
    """3 optimizer steps, 2 micro-batches of 2 sequences each, sequences with different numbers of
    ignored labels (so num_items_in_batch matters)."""
    data = []
    for i in range(12):
        batch = make_batch(batch=1, seq=12, seed=100 + i, pad=False)
        batch["labels"][0, : i % 5 * 2] = -100
        data.append({k: v[0] for k, v in batch.items()})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        optim="sgd",  # Adam's normalization would amplify rounding in near-zero gradients
        learning_rate=0.05,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=data[:5]
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    losses.append(trainer.evaluate()["eval_loss"])
    return trainer, losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


@EMULATION_SKIP
@pytest.mark.parametrize("mode", ["fused", "loss_function"])
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_trainer_steps_with_gradient_accumulation_match_stock(arch, mode, tmp_path):
    pytest.importorskip("accelerate")  # the Trainer needs it
    stock = make_model(arch)
    model = copy.deepcopy(stock)
    initial = {k: v.clone() for k, v in stock.state_dict().items()}
    apply(model, mode=mode)
    trainer, losses, params = _trainer_run(model, tmp_path, "ours")
    assert trainer.model_accepts_loss_kwargs  # so the Trainer passed num_items_in_batch
    _, expected_losses, expected_params = _trainer_run(stock, tmp_path, "stock")
    assert len(losses) == len(expected_losses) == 4  # 3 steps, then evaluate()
    torch.testing.assert_close(
        torch.tensor(losses), torch.tensor(expected_losses), rtol=1e-5, atol=1e-5
    )
    assert params.keys() == expected_params.keys()
    for name in params:
        torch.testing.assert_close(params[name], expected_params[name], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(params[k], initial[k]) for k in params)  # it trained


def _not_a_causal_lm():
    return torch.nn.Linear(3, 4)


BAD_CALLS = [
    ("model", TypeError, lambda: apply("llama")),
    ("model", TypeError, lambda: apply(_not_a_causal_lm())),
    ("lm_head", TypeError, lambda: apply(transformers.GPT2Model(CONFIGS["gpt2"]()))),
    ("mode", ValueError, lambda: apply(make_model("llama"), mode="liger")),
    ("loss option", TypeError, lambda: apply(make_model("llama"), ignore_index=0)),
    ("chunk_size", ValueError, lambda: apply(make_model("llama"), chunk_size=0)),
    (
        "chunk_size",
        ValueError,
        lambda: apply(make_model("llama"), mode="loss_function", chunk_size=8),
    ),
    ("z_loss", ValueError, lambda: apply(make_model("llama"), z_loss=-1.0)),
    ("label_smoothing", ValueError, lambda: apply(make_model("llama"), label_smoothing=2.0)),
    ("fused_in_eval", TypeError, lambda: apply(make_model("llama"), fused_in_eval=1)),
    (
        "fused_in_eval",
        ValueError,
        lambda: apply(make_model("llama"), mode="loss_function", fused_in_eval=True),
    ),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_arguments_raise_clear_errors(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()


def _bench_peak_mb(provider: str, tmp_path: Path) -> float:
    """The benchmark's peak memory of one training step, this provider alone in a fresh process
    (peak RSS over the step)."""
    out = tmp_path / provider.replace(" ", "_")
    root = Path(__file__).parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_transformers.py"), "--device", "cpu",
         "--shapes", "2x512x64x32000", "--dtypes", "fp32", "--reps", "1",
         "--providers", provider, "--out", str(out)],
        check=True, capture_output=True, timeout=600, env=env,
    )  # fmt: skip
    (result,) = json.loads(next(out.glob("*.json")).read_text())["results"]
    return result["extra"]["peak_extra_mb"]


@EMULATION_SKIP
@pytest.mark.slow
def test_fused_step_peaks_lower_than_stock(tmp_path):
    """A training step's peak memory, as the benchmark measures it: 1024 tokens x V = 32000
    fp32, 131 MB of logits that stock holds more than once (logits, log-softmax, their
    gradients) and the fused step never as a whole."""
    stock = _bench_peak_mb("transformers", tmp_path)
    fused = _bench_peak_mb("logitops", tmp_path)
    assert stock > 2 * 131, stock  # the logits and their gradient, at least
    assert fused < stock / 2, (fused, stock)


def test_torch_compile_of_a_patched_model():
    stock = make_model("gemma2")
    model = copy.deepcopy(stock)
    apply(model)
    compiled = torch.compile(model, backend="eager")
    inputs = make_batch()
    ours, ours_grads = loss_and_grads(compiled, **inputs)
    expected, expected_grads = loss_and_grads(stock, **inputs)
    assert ours.logits is None
    torch.testing.assert_close(ours.loss, expected.loss, **TOLERANCE[torch.float32])
    assert_grads_close(
        {k.removeprefix("_orig_mod."): v for k, v in ours_grads.items()},
        expected_grads,
        **TOLERANCE[torch.float32],
    )


def test_an_instance_forward_set_before_apply_is_kept():
    """A forward already on the instance (as accelerate's hooks set one) is called, and
    restored by remove()."""
    stock = make_model("llama")
    model = copy.deepcopy(stock)
    calls = []

    def hooked(*args, **kwargs):
        calls.append(1)
        return type(model).forward(model, *args, **kwargs)

    model.forward = functools.update_wrapper(hooked, model.forward)  # as accelerate's hooks
    patch = apply(model)
    inputs = make_batch()
    out = model(**inputs)
    assert calls and out.logits is None
    torch.testing.assert_close(out.loss, stock(**inputs).loss, **TOLERANCE[torch.float32])
    patch.remove()
    assert model.forward is hooked


def test_a_replaced_lm_head_is_refused():
    model = make_model("llama")
    apply(model)
    model.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    with pytest.raises(RuntimeError, match="lm_head was replaced"):
        model(**make_batch())
