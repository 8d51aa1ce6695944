"""The state of one explanation: module context, op records, and relevance bookkeeping.

A :class:`Session` is created per call of :func:`relprop.explain`. Its hooks and its
``TorchFunctionMode`` are installed only inside :meth:`Session.installed` and removed on the
way out, exceptions included. Hooks act only for the thread that owns the session, and
torch-function modes are thread-local, so two threads can explain the same model at once.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..rules.ops import seeded_grad
from .affine import AffineBatch
from .records import LedgerEntry, OpCall
from .saved import SavedTensors


class Session:
    """Everything one explanation records while the model runs forward and backward."""

    def __init__(self, model: nn.Module, x: Tensor, record: bool, modules: Any = None,
                 named: Sequence[tuple[str, nn.Module]] | None = None) -> None:
        """``modules``: the op families' module kinds (``kind(module)``, ``wrap(...)``; see
        :class:`relprop._engine.handlers.ModuleOps`), or ``None`` for no module taken as one
        op. The session knows no op family itself. ``named``: ``model.named_modules()``,
        where the caller has walked them already."""
        self.model = model
        self.modules = modules
        self.x = x
        #: what the model is given: a copy of the leaf ``x`` (float inputs), so that the
        #: model may write into its input in place; ``x_node`` is the copy's graph node
        self.x_model: Tensor = x
        self.x_node: Any = None
        self.saved = SavedTensors()
        #: tensors that are model parameters or buffers, or views of them (weights of a
        #: ``x @ W.t()`` layer): id -> weak reference
        self.constants: dict[int, weakref.ref[Tensor]] = {}
        self._buffer_ids: set[int] | None = None
        self._unvouched: set[Any] = set()
        self._marks: dict[str, dict[int, weakref.ref[Tensor]]] = {}
        self._notes: dict[str, dict[int, tuple[weakref.ref[Tensor], Any]]] = {}
        #: integer tensors made from the token ids by moving them (transpose, pad, cat…):
        #: id -> (the tensor, its map: for each element, the flat input position, or -1)
        self.id_maps: dict[int, tuple[weakref.ref[Tensor], Tensor]] = {}
        if not (x.is_floating_point() or x.is_complex()):
            self.id_maps[id(x)] = (weakref.ref(x), torch.arange(x.numel(),
                                                                device=x.device).view(x.shape))
        #: where a source's lookup read moved token ids: id(source leaf) -> position map
        self.source_positions: dict[int, Tensor] = {}
        #: modules the model makes while it runs (not in ``paths``), named by their caller
        self._unregistered: dict[nn.Module, str] = {}
        #: submodules with forward hooks of their own, hooked one by one (see ``installed``)
        self._own_hooks: set[nn.Module] = set()
        #: how often each (module path, module call, op) was seen: names stay unique
        self._op_counts: dict[tuple[str, int, str], int] = {}
        self.record = record
        #: called as ``on_tensor(name, module, tensor)`` for every tensor a module returns,
        #: named as in ``layers`` (``path#call[i]``), and for the first argument of a module
        #: call (``path#call:input``, before the module runs); set before the forward pass
        self.on_tensor: Callable[[str, nn.Module, Tensor], None] | None = None
        self.thread = threading.get_ident()
        # a compiled submodule wraps the eager one as ``_orig_mod``: name it as the eager one
        self.paths: dict[nn.Module, str] = {
            m: ".".join(p for p in name.split(".") if p != "_orig_mod")
            if "_orig_mod" in name else name
            for name, m in (model.named_modules() if named is None else named)}
        self.calls: list[OpCall] = []
        self.stack: list[tuple[str, nn.Module, int]] = []
        self.call_counts: dict[nn.Module, int] = {}
        self.node_info: dict[Any, tuple[str, str]] = {}
        self.approved: set[Any] = set()
        #: layer outputs a BatchNorm, ReLU or bias may join: id -> (the output, its call, its
        #: op, the layer's input, its LayerFunction node)
        self.producers: dict[int, tuple[weakref.ref[Tensor], OpCall, Any, Tensor, Any]] = {}
        #: the BatchNorms merged into layers, whose scales and shifts are made on first use
        self.affines = AffineBatch()
        self.gates: dict[int, weakref.ref[Tensor]] = {}
        #: tensors whose every value the forward pass knows to be >= 0 (a ReLU's output,
        #: pooled or reshaped): id -> (the tensor, its version then); an in-place write since
        #: (through any view: views share the version counter) voids the entry
        self._nonnegative: dict[int, tuple[weakref.ref[Tensor], int]] = {}
        #: False where no rule the composite may give a dense layer reads the layer's input
        #: values (and nothing is recorded): dense layers then keep no copy of their input
        #: (:class:`relprop._engine.apply.InputStandIn`)
        self.keeps_dense_inputs = True
        #: True where every rule the composite may give a product gives a gate factor no
        #: relevance (and nothing is recorded or watched): a product of a gate and a signal is
        #: then the plain product with the gate held constant, and the branch that made the
        #: gate (squeeze-and-excitation) leaves the backward graph
        self.gates_constant = False
        self.deposit: Tensor | None = None
        #: True during a backward pass that another one over the same graph follows (several
        #: targets; :mod:`relprop.concepts` runs one pass per concept): saved tensors and the
        #: rules' seed-independent terms are kept for it
        self.again = False
        self.ledger: list[LedgerEntry] = []
        self.layers: dict[str, Tensor] = {}
        #: recorded module outputs: id -> (the output, its names in ``layers``)
        self._kept: dict[int, list[tuple[weakref.ref[Tensor], str]]] = {}
        self.interceptor: Any = None  # the TorchFunctionMode routing this session's ops
        #: embedding outputs where relevance ends: (module path, output, looks up the input)
        self.sources: list[tuple[str, Tensor, bool]] = []
        self._source_ids: set[int] = set()
        self.weights: dict[int, tuple[weakref.ref[Tensor], OpCall]] = {}
        #: > 0 while a module treated as one op runs (its inner ops are not intercepted)
        self.opaque = 0
        self._grad_modes: list[bool] = []
        self._kinds: dict[nn.Module, str | None] = {}
        self._open: dict[int, LedgerEntry] = {}
        self._parameter_names: dict[int, str] | None = None
        #: parameters expanded to the batch (a class token): id(expanded) -> (it, parameter)
        self.expanded: dict[int, tuple[weakref.ref[Tensor], Tensor]] = {}

    def add_source(self, path: str, output: Tensor, reads_input: bool) -> None:
        self.sources.append((path, output, reads_input))
        self._source_ids.add(id(output))

    def parameter_name(self, parameter: Tensor) -> str:
        if self._parameter_names is None:
            self._parameter_names = {id(p): n for n, p in self.model.named_parameters()}
        return self._parameter_names.get(id(parameter), "<parameter>")

    def is_leaf_input(self, t: Tensor) -> bool:
        """Whether the leaf ``t`` is where relevance is collected (the input or a source)."""
        return t is self.x or (id(t) in self._source_ids
                               and any(s is t for _, s, _ in self.sources))

    def is_input_ids(self, ids: Any) -> bool:
        """Whether ``ids`` are the explained token ids (or a view of them)."""
        x = self.x
        if not isinstance(ids, Tensor) or x.is_floating_point():
            return False
        return ids is x or (ids.data_ptr() == x.data_ptr() and ids.numel() == x.numel())

    def id_map(self, t: Any) -> Tensor | None:
        """For an integer tensor made from the token ids by moving them, its position map."""
        entry = self.id_maps.get(id(t)) if isinstance(t, Tensor) else None
        return entry[1] if entry is not None and entry[0]() is t else None

    def model_input(self) -> Tensor:
        """The tensor to call the model with (see ``x_model``)."""
        if self.x.is_floating_point() or self.x.is_complex():
            self.x_model = self.x.clone()
            self.x_node = self.x_model.grad_fn
        return self.x_model

    def is_model_input(self, t: Tensor) -> bool:
        """Whether ``t`` is exactly what the model was given, unmodified."""
        return t is self.x or (t is self.x_model and t.grad_fn is self.x_node)

    def mark_constant(self, t: Tensor) -> None:
        """Remember ``t`` as a parameter or buffer of the model, or a view of one."""
        ref = self.constants.get(id(t))
        if ref is None or ref() is not t:  # a layer's weight is marked at its first call
            self.constants[id(t)] = weakref.ref(t)

    def unvouched(self, out: Any) -> Any:
        """``out`` of a handler's fallback to the plain op: its graph node is not approved by
        the handler having run (the graph check judges it as any other op)."""
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, Tensor) and t.grad_fn is not None:
                self._unvouched.add(t.grad_fn)
        return out

    def is_unvouched(self, node: Any) -> bool:
        return node in self._unvouched

    def written(self, t: Tensor) -> None:
        """``t`` (or the tensor it views) was written in place: it is no longer the output of
        the op that made it, nor a gate, attention weights or a constant. (Called before the
        write: a write into a tensor off the relevance path, which may be a BatchNorm's
        statistics, first makes the pending BatchNorm scales and shifts from what they are.)"""
        if self.affines.pending and not t.requires_grad:
            self.affines.make()
        for tensor in (t, t._base):
            if tensor is not None:
                key = id(tensor)
                for table in (self.producers, self.gates, self.weights, self.constants):
                    table.pop(key, None)

    def is_buffer(self, t: Tensor) -> bool:
        """Whether ``t`` is one of the model's buffers."""
        if self._buffer_ids is None:  # from the modules walked already
            self._buffer_ids = {id(b) for m in self.paths for b in m._buffers.values()
                                if b is not None}
        return id(t) in self._buffer_ids

    def is_constant(self, t: Any) -> bool:
        """Whether ``t`` is a parameter or buffer of the model that does not require grad
        (and was not written from the relevance path), or a tensor marked constant: the
        detached copy of one that does, a view of a constant."""
        ref = self.constants.get(id(t))
        if ref is not None and ref() is t:
            return True
        return (isinstance(t, Tensor) and t.grad_fn is None and not t.requires_grad
                and (is_parameter(t) or self.is_buffer(t)))

    def mark_weights(self, t: Tensor, call: OpCall) -> None:
        """Remember ``t`` as attention weights made by the softmax ``call``."""
        self.weights[id(t)] = (weakref.ref(t), call)

    def weights_call(self, t: Any) -> OpCall | None:
        entry = self.weights.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def mark_gate(self, t: Tensor) -> None:
        """Remember ``t`` as a gate (a sigmoid output, or a reshaped view of one)."""
        self.gates[id(t)] = weakref.ref(t)

    def mark(self, label: str, t: Tensor) -> None:
        """Remember ``t`` under ``label`` for an op family (e.g. router scores)."""
        self._marks.setdefault(label, {})[id(t)] = weakref.ref(t)

    def is_marked(self, label: str, t: Any) -> bool:
        ref = self._marks.get(label, {}).get(id(t))
        return ref is not None and ref() is t

    def note(self, label: str, t: Tensor, value: Any) -> None:
        """Remember ``value`` about ``t`` under ``label`` for an op family (a statistic)."""
        self._notes.setdefault(label, {})[id(t)] = (weakref.ref(t), value)

    def noted(self, label: str, t: Any) -> Any:
        """What :meth:`note` remembered about ``t`` under ``label``, or ``None``."""
        entry = self._notes.get(label, {}).get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def mark_nonnegative(self, t: Tensor) -> None:
        """Remember that every value of ``t`` (as it is now) is ``>= 0`` (or NaN)."""
        self._nonnegative[id(t)] = (weakref.ref(t), t._version)

    def is_nonnegative(self, t: Any) -> bool:
        """Whether the forward pass knows every value of ``t`` to be ``>= 0``: a rule then
        takes its cheaper maths without a pass over ``t`` (and, on a GPU, a wait for it)."""
        entry = self._nonnegative.get(id(t))
        return entry is not None and entry[0]() is t and isinstance(t, Tensor) \
            and t._version == entry[1]

    def is_gate(self, t: Any) -> bool:
        ref = self.gates.get(id(t))
        return ref is not None and ref() is t

    def forget_forward(self) -> None:
        """Drop the forward pass's bookkeeping, which holds graph nodes and activations."""
        self.node_info.clear()
        self.approved.clear()
        self.producers.clear()
        self.gates.clear()
        self._nonnegative.clear()
        self.weights.clear()
        self.constants.clear()
        self._unvouched.clear()
        self._notes.clear()
        self._kept.clear()

    def release(self) -> None:
        """Drop every record of the explanation, when it is done (``layers`` and the ledger,
        which the result keeps, stay): they go now, by reference counting, instead of
        piling up for the garbage collector (its first collection after the explanation
        would scan them all, ≈ 1 ms for EfficientNet-B0)."""
        self.forget_forward()
        self.interceptor = None  # the interceptor holds the session: a cycle
        self.calls = []
        self.saved = SavedTensors()
        self.affines = AffineBatch()
        for table in (self._op_counts, self.call_counts, self._kinds, self._open,
                      self._unregistered, self.expanded, self.id_maps, self.source_positions,
                      self._marks):
            table.clear()
        self.stack.clear()

    # -- module context ------------------------------------------------------------------
    def where(self) -> tuple[str, nn.Module | None, int]:
        """The innermost running module: (path, module, how often it ran before)."""
        if not self.stack:
            return "", self.model, 0
        return self.stack[-1]

    def new_call(self, kind: str, op_name: str, reads_input: bool = False) -> OpCall:
        path, module, count = self.where()
        key = (path, count, op_name)
        repeat = self._op_counts.get(key, 0)
        self._op_counts[key] = repeat + 1
        call = OpCall(len(self.calls), kind, op_name, path, module, count,
                      reads_input=reads_input, repeat=repeat)
        self.calls.append(call)
        return call

    def _kind_of(self, module: nn.Module) -> str | None:
        kinds = self._kinds
        if module in kinds:
            return kinds[module]
        kind = None if self.modules is None or type(module) in _TORCH_MODULES \
            else self.modules.kind(module)
        kinds[module] = kind
        return kind

    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        if threading.get_ident() != self.thread:
            return
        count = self.call_counts.get(module, 0)
        self.call_counts[module] = count + 1
        path = self.paths.get(module)
        if path is None:  # made during the forward pass: named inside its caller
            path = self._unregistered.get(module)
            if path is None:
                outer = self.stack[-1][0] if self.stack else ""
                path = self._unregistered[module] = (
                    f"{outer}.{type(module).__name__}" if outer else type(module).__name__)
        self.stack.append((path, module, count))
        first = args[0] if args else None
        if self.on_tensor is not None and not self.opaque and isinstance(first, Tensor) \
                and first.requires_grad:
            self.on_tensor((path or "<model>") + (f"#{count}" if count else "") + ":input",
                           module, first)
        if self.opaque or self._kind_of(module) is not None:
            # a module taken as one op: run its inner ops plainly, without a graph
            self.opaque += 1
            self._grad_modes.append(torch.is_grad_enabled())
            torch.set_grad_enabled(False)

    def _global_pre(self, module: nn.Module, args: Any) -> None:
        if module not in self._own_hooks:
            self._pre_hook(module, args)

    def _global_post(self, module: nn.Module, args: Any, *rest: Any) -> Any:
        if module in self._own_hooks:
            return None
        return self._post_hook(module, args, *rest)

    def _post_hook(self, module: nn.Module, args: Any, *rest: Any) -> Any:
        """After a module call: ``(module, args, kwargs, output)``. When the forward raised,
        torch calls a global hook of ``always_call=True`` as ``(module, args, output)``
        whatever its ``with_kwargs`` (torch 2.13): the module context is closed all the same."""
        *keywords, output = rest
        kwargs: dict[str, Any] = keywords[0] if keywords else {}
        if threading.get_ident() != self.thread or not self.stack:
            return None
        if self.opaque:
            self.opaque -= 1
            torch.set_grad_enabled(self._grad_modes.pop())
            kind = self._kind_of(module)
            if not self.opaque and kind is not None and output is not None:
                # (no output: the forward raised, and the context is only closed) a module
                # taken as one op is one function of its input: a call with keyword
                # arguments (which the op would not see again) runs its ops one by one
                wrapped = None if kwargs else self.modules.wrap(self, module, kind, args, output)
                if wrapped is None:  # taken for one op by its name, but it is not: again,
                    self._kinds[module] = None  # with its ops seen one by one
                    wrapped = module.forward(*args, **kwargs)
                self._post_hook(module, args, kwargs, wrapped)
                return wrapped
        path, _, count = self.stack.pop()
        # (torch.nn's own modules run intercepted ops only: their nodes are named already)
        if isinstance(output, Tensor) and type(module) not in _TORCH_MODULES:
            with torch._C.DisableTorchFunction():  # a metadata read: past the interceptor
                node = output.grad_fn
            if node is not None:
                # ops that bypass the interception mode (custom autograd Functions) get their
                # module named at least
                self.node_info.setdefault(node, (path or "<model>", "?"))
        if self.record or self.on_tensor is not None:
            name = (path or "<model>") + (f"#{count}" if count else "")
            for suffix, tensor in _tensors(output):
                if not tensor.requires_grad:
                    continue
                if self.on_tensor is not None:
                    self.on_tensor(name + suffix, module, tensor)
                if self.record:
                    self._keep_relevance(name + suffix, tensor)

    def _keep_relevance(self, name: str, output: Tensor) -> None:
        """Record under ``name`` the relevance flowing through ``output``, as the module returned
        it: the value is a held slot (copied only if the model writes into it later), and the
        hook sits on this version's graph node (a hook registered before an in-place write gets
        the gradient of the value before it). Several hooks of one name add up."""
        held = self.saved.hold(output)

        def keep(grad: Tensor | None) -> None:  # may fire more than once (reads_input)
            value = held.tensor
            assert value is not None
            part = torch.zeros_like(value) if grad is None else value * grad
            before = self.layers.get(name)
            self.layers[name] = part if before is None else before + part

        output.register_hook(keep)
        self._kept.setdefault(id(output), []).append((weakref.ref(output), name))

    def merged(self, x: Tensor, out: Tensor) -> None:
        """A ReLU was merged into the layer that made ``x`` (``out``: the merged node's output,
        ``x`` itself if in place): relevance that reached ``x`` now flows through ``out``; at
        ``x`` it is ``z · g · [z > 0] = relu(z) · g``, so names recorded at ``x`` also take
        ``out``'s (the relevance of other readers of ``x`` still arrives at ``x``)."""
        for ref, name in list(self._kept.get(id(x), ())):
            if ref() is x:
                self._keep_relevance(name, out)

    @contextmanager
    def installed(self, mode: Any) -> Iterator[None]:
        """Module hooks and the interception mode, for the block's duration.

        Global module hooks see every module call, also of modules the model makes while it
        runs (Hugging Face's ``ACT2FN[name](x)`` builds its activation module at the call);
        registering them is one step, where hooks on each submodule cost about 0.1 ms per
        module and call. A submodule with forward hooks of its own gets relprop's hooks on
        itself instead, after its own, so that its hooks run inside the module's context as
        they would without relprop."""
        with ExitStack() as stack:
            self._own_hooks = {m for m in self.paths
                               if m._forward_pre_hooks or m._forward_hooks}
            for module in self._own_hooks:
                stack.callback(module.register_forward_pre_hook(self._pre_hook).remove)
                handle = module.register_forward_hook(self._post_hook, always_call=True,
                                                      with_kwargs=True)
                stack.callback(handle.remove)
            hooks = torch.nn.modules.module
            # without submodules of their own hooks (most models) the global hooks are the
            # hooks themselves: one Python call less per module call and hook
            pre, post = (self._global_pre, self._global_post) if self._own_hooks \
                else (self._pre_hook, self._post_hook)
            stack.callback(hooks.register_module_forward_pre_hook(pre).remove)
            stack.callback(hooks.register_module_forward_hook(
                post, always_call=True, with_kwargs=True).remove)
            stack.enter_context(self.saved.hooks())
            stack.enter_context(mode)
            yield

    # -- relevance bookkeeping -----------------------------------------------------------
    def log(self, call: OpCall, relevance_in: Tensor, relevance_out: Tensor) -> None:
        """Record relevance arriving at a call's output and leaving through its input."""
        if not self.record:
            return
        self.ledger.append(LedgerEntry(
            call.name, repr(call.rule), _per_sample(relevance_in), _per_sample(relevance_out)
        ))

    def log_output(self, call: OpCall, out: Tensor) -> None:
        """Open a ledger entry for a call whose inputs report separately (:meth:`log_share`):
        the relevance arriving at ``out`` is recorded when its gradient is."""
        if not self.record or not out.requires_grad:
            return
        held = self.saved.hold(out)  # copied if the model writes into ``out`` later

        def open_entry(grad: Tensor | None) -> None:
            value = held.tensor
            assert value is not None
            arrived = torch.zeros_like(value) if grad is None else carried(value, grad)
            per_sample = _per_sample(arrived)
            self._open[call.index] = entry = LedgerEntry(
                call.name, repr(call.rule), per_sample, [0.0] * len(per_sample))
            self.ledger.append(entry)

        out.register_hook(open_entry)

    def log_share(self, call: OpCall, factor: Tensor, grad: Tensor | None) -> None:
        """Add the relevance leaving through one input of an open entry's call."""
        entry = self._open.get(call.index)
        if entry is None:
            return
        sums = [0.0] * len(entry.relevance_out) if grad is None \
            else _per_sample(carried(factor, grad))
        if len(sums) != len(entry.relevance_out):  # a factor shared by the batch
            sums = [float("nan")] * len(entry.relevance_out)
        entry.relevance_out = [a + b for a, b in zip(entry.relevance_out, sums)]

    def relevance_to_grad(self, call: OpCall, relevance: Tensor, a: Tensor,
                          relevance_in: Tensor) -> Tensor:
        """Turn a rule's input relevance into the signal ``G = R / a`` the engine carries.

        On the explained input itself the relevance is kept as is (so z^B, flat and w² give
        pixels of value 0 their share); elsewhere relevance on inputs that are exactly 0
        cannot be carried and is reported as absorbed in the ledger.
        """
        if call.reads_input:
            if self.is_model_input(a):  # the input itself
                on_input = relevance.reshape(self.x.shape)
            else:  # route back through the index-only ops that made ``a`` from the input
                (routed,) = seeded_grad(a, [self.x], relevance, retain_graph=True)
                assert routed is not None  # allow_unused=False: autograd raises instead
                on_input = routed
            self.deposit = on_input if self.deposit is None else self.deposit + on_input
            self.log(call, relevance_in, relevance)
            return torch.zeros_like(a)
        nonzero = a != 0
        grad = relevance / torch.where(nonzero, a, torch.ones_like(a)) * nonzero
        self.log(call, relevance_in, carried(a, grad))
        return grad


#: module classes of PyTorch's own (``torch.nn``): no op family takes one whole (they call
#: functional ops, which have handlers), so their kind needs no asking
_TORCH_MODULES: frozenset[type] = frozenset(
    cls for cls in vars(nn).values()
    if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__.startswith("torch."))

#: tensor types by whether they are ``nn.Parameter`` types
_PARAMETER_TYPES: dict[type, bool] = {}


def is_parameter(t: Tensor) -> bool:
    """``isinstance(t, nn.Parameter)`` without the Python ``__instancecheck__`` of
    Parameter's metaclass (run for tensor arguments of many ops)."""
    kind = type(t)
    found = _PARAMETER_TYPES.get(kind)
    if found is None:
        found = _PARAMETER_TYPES[kind] = issubclass(kind, nn.Parameter)
    return found or getattr(t, "_is_param", False) is True


def _tensors(output: Any, suffix: str = "") -> Iterator[tuple[str, Tensor]]:
    """The tensors of a module's output, named ``""`` or by position (``"[0]"``, ``"[1][0]"``)."""
    if isinstance(output, Tensor):
        yield suffix, output
    elif isinstance(output, tuple | list):
        for i, item in enumerate(output):
            yield from _tensors(item, f"{suffix}[{i}]")


def carried(value: Tensor, signal: Tensor) -> Tensor:
    """The relevance ``value ⊙ signal`` a signal carries at a tensor, for the ledger: 0 where
    the signal is 0, also where the value is not finite (a softmax row whose inputs are all
    ``-inf`` is NaN; LED and Longformer overwrite such rows, and no signal reaches them)."""
    return torch.where(signal == 0, torch.zeros_like(signal), value * signal)


def _per_sample(t: Tensor) -> list[float]:
    if t.dim() == 0:
        return [float(t)]
    return t.detach().reshape(t.shape[0], -1).sum(dim=1).double().tolist()
