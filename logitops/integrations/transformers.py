"""Hugging Face transformers: the causal-LM loss of a ``*ForCausalLM`` through logitops.

Two modes, both patching one model instance (never transformers itself, never a class), both
undone by the handle's ``remove()``:

- ``"fused"`` (default): with ``labels``, in training mode, the forward computes the loss with
  :func:`logitops.linear_cross_entropy` from the last hidden states and the LM head, and never
  forms the [tokens, vocab] logits; its output has ``logits=None``. The model's own forward still
  runs (the decoder, ``logits_to_keep``, the caches, every model-specific argument): only its
  ``lm_head`` is told, for that call, to record its input and answer a placeholder of stride 0
  (no memory) whose identity is checked afterwards, so a model that transforms its logits in a
  way this module does not reproduce raises instead of giving a wrong loss. Logit soft-capping
  (``config.final_logit_softcapping``, Gemma 2 / 3: ``cap * tanh(logits / cap)``) is the one
  transformation reproduced, by the fused loss's ``softcap``. Without ``labels``, or in eval
  mode (unless ``fused_in_eval=True``), the call is the original forward, untouched.
- ``"loss_function"``: sets ``model.loss_function`` (the route through which transformers looks up
  ``LOSS_MAPPING["ForCausalLM"]``) to :func:`causal_lm_loss`, transformers' ``ForCausalLMLoss``
  with :func:`logitops.cross_entropy`; the logits are computed and returned as usual.

The loss is transformers' ``ForCausalLMLoss``: labels shifted left by one with ``ignore_index``
(-100) appended, or ``shift_labels`` when given; the mean over the non-ignored tokens, or, when
``num_items_in_batch`` is given (the Trainer's gradient accumulation), their sum divided by it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import types
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.utils import ModelOutput

from .._validation import check_causal_lm_model, check_patch_options
from ..functional.cross_entropy import cross_entropy
from ..functional.linear_cross_entropy import linear_cross_entropy

__all__ = ["LossPatch", "apply", "causal_lm_loss"]

_HALF = (torch.bfloat16, torch.float16)
_MISSING = object()
# The handle of every patched model (weak: a patched model can still be garbage collected).
_PATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _shifted_targets(labels: Tensor, shift_labels: Tensor | None, ignore_index: int) -> Tensor:
    """ForCausalLMLoss's targets, flattened: position t predicts labels[t + 1], the last position
    of each sequence predicts nothing (ignore_index); or shift_labels as given."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return shift_labels.reshape(-1)


def _divide_by_items(loss: Tensor, num_items_in_batch) -> Tensor:
    if num_items_in_batch is None:
        return loss
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def causal_lm_loss(
    logits: Tensor,
    labels: Tensor,
    vocab_size: int,
    num_items_in_batch: Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    **kwargs,
) -> Tensor:
    """transformers' ``ForCausalLMLoss`` with :func:`logitops.cross_entropy`: the loss function
    ``apply(model, mode="loss_function")`` installs as ``model.loss_function``.

    As transformers: the logits are upcast to float32, the labels shifted left by one with
    ``ignore_index`` appended (or ``shift_labels`` used as given), and the loss is the mean over
    the non-ignored tokens, or their sum divided by ``num_items_in_batch`` when it is given.
    Other keyword arguments (those a model's forward passes on) are ignored, as there.

    Parameters
    ----------
    logits : Tensor
        [..., T, V] (any leading shape whose element count matches the labels').
    labels : Tensor
        Token ids [..., T]; ``ignore_index`` marks positions without a loss.
    vocab_size : int
        V.
    num_items_in_batch : Tensor or int, optional
        The divisor of the summed loss (the Trainer's count of target tokens over the
        accumulated micro-batches); None for the mean.
    ignore_index : int
        The label that contributes nothing (-100).
    shift_labels : Tensor, optional
        Targets already aligned with the logits; replaces the shift of ``labels``.
    label_smoothing, z_loss : float
        As in :func:`logitops.cross_entropy` (0 in transformers).

    Returns
    -------
    Tensor
        0-dim float32 loss (float32 also for float64 logits, as transformers' upcast).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.integrations.transformers import causal_lm_loss
    >>> from transformers.loss.loss_utils import ForCausalLMLoss
    >>> logits = torch.randn(2, 5, 11)
    >>> labels = torch.tensor([[1, 2, 3, -100, 4], [5, 6, 7, 8, 9]])
    >>> ours = causal_lm_loss(logits, labels, 11, num_items_in_batch=torch.tensor(7))
    >>> stock = ForCausalLMLoss(logits, labels, 11, num_items_in_batch=torch.tensor(7))
    >>> torch.allclose(ours, stock)
    True
    """
    logits = logits.float()
    target = _shifted_targets(labels, shift_labels, ignore_index).to(logits.device)
    loss = cross_entropy(
        logits.reshape(-1, vocab_size),
        target,
        ignore_index=ignore_index,
        reduction="sum" if num_items_in_batch is not None else "mean",
        label_smoothing=label_smoothing,
        z_loss=z_loss,
    )
    return _divide_by_items(loss, num_items_in_batch)


def _fused_loss(
    hidden: Tensor,
    head: torch.nn.Linear,
    labels: Tensor,
    loss_kwargs: dict,
    softcap: float | None,
    options: dict,
) -> Tensor:
    """ForCausalLMLoss of ``softcap(head(hidden))`` without the logits: the fused linear
    cross-entropy over the flattened positions the model kept."""
    ignore_index = loss_kwargs.get("ignore_index", -100)
    num_items_in_batch = loss_kwargs.get("num_items_in_batch")
    weight = head.weight
    x = hidden.reshape(-1, hidden.shape[-1]).to(weight.device)
    target = _shifted_targets(labels, loss_kwargs.get("shift_labels"), ignore_index)
    target = target.to(weight.device)
    if x.shape[0] != target.shape[0]:
        raise ValueError(
            f"labels give {target.shape[0]} targets after the shift but the model kept "
            f"{x.shape[0]} positions (logits_to_keep); pass shift_labels for the kept positions"
        )
    # transformers upcasts half-precision logits to float32 for the loss: autocast in the
    # model's dtype makes the fused op take the matmul in that dtype and the loss in float32.
    # (Under an autocast the caller opened, the op follows that one, as F.linear would.)
    upcast = x.dtype in _HALF and not torch.is_autocast_enabled(x.device.type)
    context = torch.autocast(x.device.type, dtype=x.dtype) if upcast else contextlib.nullcontext()
    with context:
        loss = linear_cross_entropy(
            x,
            weight,
            target,
            linear_bias=head.bias,
            reduction="sum" if num_items_in_batch is not None else "mean",
            ignore_index=ignore_index,
            softcap=softcap,
            **options,
        )
    return _divide_by_items(loss, num_items_in_batch)


class _Capture:
    """What the patched LM head does during a fused call: while ``active``, it records the
    hidden states it is given and answers a stride-0 view of the logits' shape (no memory);
    otherwise it is the head it was."""

    def __init__(self):
        self.active = False
        self.hidden: list[Tensor] = []
        self.returned: list[Tensor] = []


def _make_head_forward(head: torch.nn.Linear, capture: _Capture):
    """The LM head's instance forward (bound to the head; set once, by apply)."""
    previous = head.__dict__.get("forward", _MISSING)

    def head_forward(self, hidden: Tensor) -> Tensor:
        if capture.active:
            capture.hidden.append(hidden)
            out = hidden.new_zeros(()).expand(*hidden.shape[:-1], self.out_features)
            capture.returned.append(out)
            return out
        if previous is _MISSING:
            return type(self).forward(self, hidden)
        return previous(hidden)

    return head_forward


def _make_fused_forward(model: torch.nn.Module, options: dict, fused_in_eval: bool):
    """(model forward, head forward): the instance forwards of the fused mode, bound to the
    model and to its LM head. Neither mutates a module while it runs (torch.compile traces the
    calls): the head's forward reads the capture flag the model's forward sets."""
    previous = model.__dict__.get("forward", _MISSING)
    if previous is _MISSING:
        original = type(model).forward  # called with self: a deep copy stays self-consistent

        def call_original(self, args, kwargs):
            return original(self, *args, **kwargs)
    else:  # an instance forward set before ours (e.g. an accelerate hook): already bound

        def call_original(self, args, kwargs):
            return previous(*args, **kwargs)

    signature = inspect.signature(model.forward)
    var_keyword = next(
        (p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None
    )
    if "labels" not in signature.parameters:
        raise TypeError(f"{type(model).__name__}.forward takes no labels argument")
    capture = _Capture()
    head_forward = _make_head_forward(model.lm_head, capture)

    def forward(self, *args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return call_original(self, args, kwargs)  # the model's own error
        labels = bound.arguments.get("labels")
        if labels is None or not (self.training or fused_in_eval):
            return call_original(self, args, kwargs)
        head = self.lm_head
        if getattr(head.forward, "__func__", None) is not head_forward:
            raise RuntimeError(
                f"{type(self).__name__}.lm_head was replaced after "
                "logitops.integrations.transformers.apply(); remove() the patch and apply again"
            )
        bound.arguments["labels"] = None
        extra = bound.arguments.setdefault(var_keyword, {}) if var_keyword else {}
        # Force a ModelOutput (to read and replace its logits); the caller's choice afterwards.
        if "return_dict" in signature.parameters:
            return_dict = bound.arguments.get("return_dict")
            bound.arguments["return_dict"] = True
        else:
            return_dict = extra.pop("return_dict", None)
            if var_keyword:
                extra["return_dict"] = True
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        softcap = getattr(self.config, "final_logit_softcapping", None)
        capture.active = True
        try:
            if softcap is not None:  # applied by the fused loss instead
                self.config.final_logit_softcapping = None
            output = call_original(self, bound.args, bound.kwargs)
        finally:
            capture.active = False
            if softcap is not None:
                self.config.final_logit_softcapping = softcap
        hidden, returned = list(capture.hidden), list(capture.returned)
        capture.hidden.clear()  # no reference to this call's graph survives it
        capture.returned.clear()
        if (
            len(hidden) != 1
            or not isinstance(output, ModelOutput)
            or getattr(output, "logits", None) is not returned[0]
        ):
            raise RuntimeError(
                f"{type(self).__name__}'s forward does not return lm_head(hidden_states) as its "
                "logits (it transforms them, or calls the head more than once), so the fused loss "
                "cannot reproduce its loss; use apply(model, mode='loss_function')"
            )
        loss = _fused_loss(hidden[0], head, labels, extra, softcap, options)
        output = dataclasses.replace(output, loss=loss, logits=None)
        return output if return_dict else output.to_tuple()

    forward.__name__ = "forward"
    forward.__qualname__ = f"{type(model).__qualname__}.forward"
    forward.__doc__ = getattr(model.forward, "__doc__", None)
    # inspect.signature(model.forward) (which the Trainer reads) shows the original's parameters.
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    forward.__signature__ = signature.replace(
        parameters=[self_parameter, *signature.parameters.values()]
    )
    return types.MethodType(forward, model), types.MethodType(head_forward, model.lm_head)


class LossPatch:
    """The handle :func:`apply` returns: ``remove()`` restores the model exactly (the instance
    attributes it set, the model's and its LM head's ``forward`` or the model's
    ``loss_function``, as they were before; nothing else was changed). Also a context manager
    that removes the patch on exit.

    Parameters
    ----------
    model : torch.nn.Module
        The patched model.
    mode : str
        ``"fused"`` or ``"loss_function"``.
    attributes : list of (torch.nn.Module, str, object)
        The instance attributes the patch sets: the model's and its LM head's ``forward``
        (fused), or the model's ``_loss_function`` (the ``loss_function`` setter's attribute).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> import transformers
    >>> from logitops.integrations.transformers import apply
    >>> config = transformers.LlamaConfig(
    ...     vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, num_key_value_heads=2)
    >>> model = transformers.LlamaForCausalLM(config)
    >>> with apply(model) as patch:
    ...     patch.active
    True
    >>> patch.active, "forward" in vars(model)
    (False, False)
    """

    def __init__(self, model: torch.nn.Module, mode: str, attributes: list[tuple]):
        self._model = weakref.ref(model)
        self.mode = mode
        # (weak reference to the module, attribute, value set, value it had or _MISSING)
        self._set = []
        for module, name, value in attributes:
            self._set.append(
                (weakref.ref(module), name, value, module.__dict__.get(name, _MISSING))
            )
            object.__setattr__(module, name, value)
        _PATCHES[model] = self

    @property
    def active(self) -> bool:
        """Whether the patch is still installed."""
        model = self._model()
        return model is not None and _PATCHES.get(model) is self

    def remove(self) -> None:
        """Undo the patch (a second call does nothing). RuntimeError if an attribute it set was
        replaced by someone else since: that patch must be removed first."""
        model = self._model()
        if model is None or _PATCHES.get(model) is not self:
            return
        for ref, name, value, _ in self._set:
            module = ref()
            if module is not None and module.__dict__.get(name, _MISSING) is not value:
                raise RuntimeError(
                    f"{type(module).__name__}.{name} was replaced after "
                    "logitops.integrations.transformers.apply(); undo that first"
                )
        for ref, name, _, saved in self._set:
            module = ref()
            if module is None:
                continue
            if saved is _MISSING:
                del module.__dict__[name]
            else:
                object.__setattr__(module, name, saved)
        del _PATCHES[model]

    def __enter__(self) -> LossPatch:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        model = self._model()
        name = type(model).__name__ if model is not None else "(collected)"
        return f"LossPatch({name}, mode={self.mode!r}, active={self.active})"


def apply(
    model: torch.nn.Module, *, mode: str = "fused", fused_in_eval: bool = False, **loss_options
) -> LossPatch:
    """Compute a transformers causal LM's training loss with logitops; returns the handle whose
    ``remove()`` undoes it.

    ``mode="fused"``: when ``labels`` are passed to a model in training mode (``model.train()``,
    or in any mode with ``fused_in_eval=True``), the forward computes transformers'
    ``ForCausalLMLoss`` with :func:`logitops.linear_cross_entropy` from the last hidden states
    and ``model.lm_head`` (weight and bias), chunk by chunk, without the [tokens, vocab] logits,
    and returns ``logits=None`` (as Liger-Kernel's patch does). Everything else of the model's
    forward runs as it is: ``logits_to_keep`` (with ``shift_labels`` for the kept positions),
    ``num_items_in_batch`` (sum, then divide), ``ignore_index``, ``return_dict``. A model whose
    forward transforms its logits is refused at its first call (RuntimeError), except for
    ``config.final_logit_softcapping``, which the fused loss applies (``softcap``); for the call
    the attribute is set to None on the model's config. Without ``labels``, and in eval mode
    unless ``fused_in_eval`` (so that evaluation loops that read the logits, such as the
    Trainer's ``evaluate``, get them, as with Liger-Kernel), the forward is the original one.

    ``mode="loss_function"``: ``model.loss_function`` becomes :func:`causal_lm_loss` (our
    cross-entropy on the logits the model computes and returns), in every mode.

    Dtypes: float32 and float64 models get their own dtype's loss (float64 stays float64, where
    transformers rounds the logits to float32 first); bfloat16 / float16 models a float32 loss
    from logits in the model's dtype, as transformers' upcast. The patch is on the instance
    (instance ``forward`` attributes of the model and its ``lm_head``, or the model's
    ``loss_function``), so ``Trainer``, ``generate`` and ``torch.compile`` see it, and
    ``inspect.signature(model.forward)`` is unchanged. Replacing ``lm_head`` after ``apply``
    (``resize_token_embeddings``) makes the next fused call raise: remove and apply again.
    Labels set by a Trainer with ``label_smoothing_factor`` never reach the model, so that
    Trainer computes its own loss from the logits: use the ``label_smoothing`` option instead.

    Parameters
    ----------
    model : torch.nn.Module
        A transformers ``*ForCausalLM`` (or ``GPT2LMHeadModel``...): a model with a ``config``
        and an ``lm_head`` that is a ``torch.nn.Linear``, whose forward takes ``labels``.
    mode : str
        ``"fused"`` (default) or ``"loss_function"``.
    fused_in_eval : bool
        Fused mode: also take the fused route (no logits) when the model is in eval mode.
    **loss_options
        ``label_smoothing`` and ``z_loss`` (as in :func:`logitops.cross_entropy`; default 0,
        transformers' loss) and, fused only, ``chunk_size`` (tokens per chunk).

    Returns
    -------
    LossPatch
        The handle; ``remove()`` restores the model, ``with apply(model): ...`` scopes it.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> import transformers
    >>> from logitops.integrations.transformers import apply
    >>> config = transformers.LlamaConfig(
    ...     vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2)
    >>> model = transformers.LlamaForCausalLM(config)
    >>> ids = torch.randint(0, 100, (2, 12))
    >>> stock = model(input_ids=ids, labels=ids)
    >>> patch = apply(model)
    >>> fused = model(input_ids=ids, labels=ids)
    >>> fused.logits is None, torch.allclose(fused.loss, stock.loss, atol=1e-5)
    (True, True)
    >>> fused.loss.backward()  # gradients for every parameter, lm_head included
    >>> patch.remove()
    >>> model(input_ids=ids, labels=ids).logits.shape
    torch.Size([2, 12, 100])
    """
    check_causal_lm_model(model)
    check_patch_options(mode, loss_options, fused_in_eval)
    if model in _PATCHES:
        raise RuntimeError(
            f"this {type(model).__name__} is already patched ({_PATCHES[model]!r}); call its "
            "remove() first"
        )
    if mode == "fused":
        forward, head_forward = _make_fused_forward(model, loss_options, fused_in_eval)
        attributes = [(model, "forward", forward), (model.lm_head, "forward", head_forward)]
        return LossPatch(model, mode, attributes)
    loss_function = functools.partial(causal_lm_loss, **loss_options)
    return LossPatch(model, mode, [(model, "_loss_function", loss_function)])
