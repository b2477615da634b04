"""CPU runtime shim: run megatron-core (and Megatron-Bridge training) on a machine without CUDA.

megatron-core assumes CUDA at a few hundred call sites: ``torch.cuda.current_device()`` as an
allocation device, literal ``device="cuda"`` tensors in schedules and MoE, CUDA streams/events,
``torch.cuda`` RNG state in the tensor-parallel RNG tracker, and ``Tensor.type()`` checks for
``torch.cuda.FloatTensor`` in the optimizers. Rather than patching those sites one by one, this shim

1. maps every CUDA device onto the CPU: a ``TorchFunctionMode`` rewrites ``device=`` arguments,
   ``Tensor.cuda()``, ``Tensor.to("cuda")`` and ``pin_memory`` so that code written for CUDA
   allocates on the CPU; ``Tensor.type()`` reports the ``torch.cuda.*`` name the optimizers expect;
2. replaces the ``torch.cuda`` runtime API (device selection, synchronize, streams, events, memory
   statistics, device properties) with CPU stand-ins; ``current_device()`` returns the CPU device,
   which also covers allocations made inside autograd backward (no torch-function mode is active
   while the engine runs a backward started from ``Tensor.backward``);
3. emulates the CUDA RNG with its own CPU generator: ``torch.cuda.manual_seed``/``get_rng_state``/
   ``set_rng_state`` and megatron's ``_get/_set_cuda_rng_state`` read and write it, and dropout (and
   random tensors that code asked to create on CUDA) draw from it. The CPU generator keeps serving
   CPU-side randomness (weight init with ``use_cpu_initialization``, data samplers), exactly as on a
   GPU machine, so a checkpoint that stores both RNG states resumes bit-exactly, dropout included;
4. runs megatron's batched pipeline p2p through its ordered, non-batched path (gloo pairs
   transfers in issue order, which the batched path breaks in interleaved schedules).

It is applied explicitly (``apply()``), never as an import side effect, and refuses to run where a
CUDA device is usable.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from nemo_vwn.patches import versions

REASON = (
    "megatron-core/Bridge call CUDA-only APIs (torch.cuda.*, literal device='cuda', CUDA RNG); "
    "map them onto the CPU so tests and CPU runs work with gloo"
)
# torch: the torch.cuda runtime API it replaces was checked up to 2.13
APPLIES_TO = {"megatron-core": ">=0.19,<0.20", "megatron-bridge": ">=0.6,<0.7",
              "torch": ">=2.9,<2.14"}

_CPU = torch.device("cpu")
_state: dict[str, Any] = {"applied": False, "mode": None, "cuda_gen": None}


# ----------------------------------------------------------------------------------------------
# 1. devices
# ----------------------------------------------------------------------------------------------
def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # An integer device ordinal means a CUDA device in torch's API.
    return isinstance(device, int) and not isinstance(device, bool)


def _cuda_generator() -> torch.Generator:
    return _state["cuda_gen"]


@contextlib.contextmanager
def _draw_from_emulated_cuda_rng():
    """Run the enclosed CPU op with the emulated CUDA generator as the default generator."""
    cpu_state = torch.get_rng_state()
    torch.set_rng_state(_cuda_generator().get_state())
    try:
        yield
    finally:
        _cuda_generator().set_state(torch.get_rng_state())
        torch.set_rng_state(cpu_state)


def _dropout_functions() -> set:
    F = torch.nn.functional
    return {
        F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
        F.feature_alpha_dropout, torch.dropout, torch.bernoulli, torch.Tensor.bernoulli_,
        torch.native_dropout,
    }


def _random_factories() -> set:
    return {torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal,
            torch.rand_like, torch.randn_like, torch.randint_like}


class CudaToCpuMode(TorchFunctionMode):
    """Maps CUDA placement onto the CPU.

    Device-side randomness is routed to the emulated CUDA RNG.
    """

    def __init__(self):
        super().__init__()
        self._dropout = _dropout_functions()
        self._random_factories = _random_factories()
        T = torch.Tensor
        self._identity_methods = {T.cuda, T.pin_memory, T.record_stream}

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        placed_on_cuda = False
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = _CPU
            placed_on_cuda = True
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False

        if func in self._identity_methods:
            return args[0] if func is not torch.Tensor.record_stream else None
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        elif func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            if name.startswith("torch.cuda."):
                return name
            return name.replace("torch.", "torch.cuda.", 1)
        elif func is torch.Tensor.is_pinned:
            return False

        if func in self._dropout or (placed_on_cuda and func in self._random_factories):
            with _draw_from_emulated_cuda_rng():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# 2. torch.cuda runtime API
# ----------------------------------------------------------------------------------------------
class _FakeStream:
    """Stands in for torch.cuda.Stream: CPU work is synchronous, so every wait is a no-op."""

    def __init__(self, *args, **kwargs):
        self.device = _CPU
        self.cuda_stream = 0

    def wait_stream(self, *a, **k):
        return None

    def wait_event(self, *a, **k):
        return None

    def record_event(self, event=None):
        return event if event is not None else _FakeEvent()

    def synchronize(self):
        return None

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _FakeEvent:
    """Stands in for torch.cuda.Event."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *a, **k):
        return None

    def wait(self, *a, **k):
        return None

    def synchronize(self):
        return None

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def _noop(name: str):
    """A distinct do-nothing function per name.

    torch._dynamo rejects one object under two names.
    """

    def fn(*args, **kwargs):
        return None

    fn.__name__ = fn.__qualname__ = name
    return fn


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    gen = _cuda_generator()

    def manual_seed(seed):
        gen.manual_seed(int(seed))

    def get_rng_state(device="cuda"):
        return gen.get_state()

    def set_rng_state(new_state, device="cuda"):
        gen.set_state(new_state.to("cpu") if isinstance(new_state, torch.Tensor) else new_state)

    rng_api = {
        "manual_seed": manual_seed,
        "manual_seed_all": manual_seed,
        "seed": lambda: gen.seed(),
        "seed_all": lambda: gen.seed(),
        "initial_seed": lambda: gen.initial_seed(),
        "get_rng_state": get_rng_state,
        "set_rng_state": set_rng_state,
        "get_rng_state_all": lambda: [gen.get_state()],
        "set_rng_state_all": lambda states: set_rng_state(states[0]),
    }
    for name, fn in rng_api.items():
        setattr(cuda, name, fn)
        setattr(cuda.random, name, fn)

    properties = types.SimpleNamespace(
        name="cpu (nemo_vwn cpu_runtime shim)", major=0, minor=0, total_memory=0,
        multi_processor_count=1, L2_cache_size=0,
    )
    runtime_api = {
        # The CPU device itself (not ordinal 0): megatron allocates with
        # device=torch.cuda.current_device() also inside autograd backward, where no
        # torch-function mode is active to map an ordinal.
        "current_device": lambda: _CPU,
        "device_count": lambda: 1,
        "set_device": _noop("set_device"),
        "synchronize": _noop("synchronize"),
        "empty_cache": _noop("empty_cache"),
        "is_initialized": lambda: True,
        "init": _noop("init"),
        "Stream": _FakeStream,
        "ExternalStream": _FakeStream,
        "Event": _FakeEvent,
        "current_stream": lambda *a, **k: _FakeStream(),
        "default_stream": lambda *a, **k: _FakeStream(),
        "set_stream": _noop("set_stream"),
        "stream": lambda *a, **k: contextlib.nullcontext(),
        "device": lambda *a, **k: contextlib.nullcontext(),
        "is_current_stream_capturing": lambda: False,
        "get_device_capability": lambda *a, **k: (0, 0),
        "get_device_properties": lambda *a, **k: properties,
        "get_device_name": lambda *a, **k: properties.name,
        "memory_allocated": lambda *a, **k: 0,
        "max_memory_allocated": lambda *a, **k: 0,
        "memory_reserved": lambda *a, **k: 0,
        "max_memory_reserved": lambda *a, **k: 0,
        "reset_peak_memory_stats": _noop("reset_peak_memory_stats"),
        "reset_max_memory_allocated": _noop("reset_max_memory_allocated"),
        "memory_stats": lambda *a, **k: {},
        "mem_get_info": lambda *a, **k: (0, 0),
    }
    for name, fn in runtime_api.items():
        setattr(cuda, name, fn)
    cuda.nvtx = types.SimpleNamespace(range_push=_noop("range_push"), range_pop=_noop("range_pop"),
                                      mark=_noop("mark"),
                                      range=lambda *a, **k: contextlib.nullcontext())


# ----------------------------------------------------------------------------------------------
# 3. megatron-core's private CUDA RNG accessors
# ----------------------------------------------------------------------------------------------
def _patch_megatron_rng() -> None:
    try:
        from megatron.core.tensor_parallel import random as mrandom
    except ImportError:  # megatron-core not installed: nothing to patch
        return
    gen = _cuda_generator()

    def _get_cuda_rng_state(device="cuda", clone=False, graph_safe=False):
        return gen.get_state()

    def _set_cuda_rng_state(new_state, device=-1, graph_safe=False):
        gen.set_state(new_state.to("cpu"))

    mrandom._get_cuda_rng_state = _get_cuda_rng_state
    mrandom._set_cuda_rng_state = _set_cuda_rng_state


# ----------------------------------------------------------------------------------------------
# 4. pipeline p2p on gloo
# ----------------------------------------------------------------------------------------------
def _patch_megatron_p2p() -> None:
    """gloo pairs transfers between two ranks in issue order. megatron's batched p2p issues
    send_prev/recv_prev/send_next/recv_next in one group; when prev and next are the same peer
    (a 2-stage interleaved ring) a backward send meets a forward receive and tensors get swapped.
    megatron's non-batched path orders even/odd ranks and splits the two directions across two
    groups, which gloo matches correctly, so batched p2p runs that path on CPU."""
    try:
        from megatron.core.pipeline_parallel import p2p_communication as p2p
    except ImportError:
        return

    def batched_p2p_ops_on_gloo(**kwargs):
        return list(p2p._p2p_ops(**kwargs).values())

    p2p._batched_p2p_ops = batched_p2p_ops_on_gloo


# ----------------------------------------------------------------------------------------------
def check_no_cuda(cuda_available: bool) -> None:
    """The shim must never run where a real GPU is usable."""
    if cuda_available:
        raise RuntimeError(
            "nemo_vwn.patches.cpu_runtime maps CUDA onto the CPU and must not be applied where a "
            "CUDA device is usable; run without it on GPU machines."
        )


def apply() -> None:
    """Install the shim in this process (idempotent). Call before building any megatron object."""
    if _state["applied"]:
        return
    check_no_cuda(torch.cuda.is_available())
    versions.check_installed("cpu_runtime", APPLIES_TO)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(0)
    _state["cuda_gen"] = gen
    _patch_torch_cuda()
    _patch_megatron_rng()
    _patch_megatron_p2p()
    mode = CudaToCpuMode()
    mode.__enter__()  # stays on the torch-function mode stack of this thread for the process' life
    _state["mode"] = mode
    _state["applied"] = True


def is_applied() -> bool:
    return bool(_state["applied"])
