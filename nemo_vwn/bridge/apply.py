"""``apply_vwn``: the VWN variant of any Megatron-Bridge GPT / GPT-MoE recipe, in one call.

    from megatron.bridge.recipes.olmoe.h100.olmoe_7b import olmoe_7b_pretrain_8gpu_h100_bf16_config
    from nemo_vwn.bridge import apply_vwn

    cfg = apply_vwn(olmoe_7b_pretrain_8gpu_h100_bf16_config(), n=3, m=2, vwn_collapse="linear")

What changes (and nothing else: parallel layout, optimizer, scheduler, data, checkpointing, logging
and every model field keep the recipe's values):

1. ``cfg.model`` becomes an instance of ``vwn_provider_class(type(cfg.model))``: the recipe's own
   provider class (e.g. ``OlMoEModelProvider``) with ``VWNProviderMixin`` (VWN validation in
   ``finalize()``, ``VWNGPTModel`` from ``provide()``) and the ``VWNConfigMixin`` fields mixed in.
   For the plain ``GPTModelProvider`` that class is ``VWNModelProvider``. Every attribute of the
   recipe's provider is carried over as is; the VWN fields are set from the arguments.
2. ``transformer_layer_spec`` is wrapped in ``VWNSpecAdapter``: whatever the recipe's spec yields
   (a layer ``ModuleSpec``, a ``TransformerBlockSubmodules`` block spec, or a ``ModuleSpec`` of a
   ``TransformerBlock``; from a callable or a fixed spec) is converted with
   ``nemo_vwn.layer_specs.to_vwn_layer_spec``, which keeps every attention/MLP/MoE/norm module
   (TE or local) and only adds the GHC slots; a block spec gets ``VWNOutputNorm`` (collapse + final
   norm) in its final-norm slot (a layer spec gets it when ``VWNGPTModel`` fans it out).
3. ``optimizer_config_override_provider`` becomes ``VWNOptimizerConfigOverrideProvider`` (the VWN
   no-weight-decay group); a recipe's own custom override provider is kept as its ``base``.
4. Tied embeddings: a D'-wide table cannot be the D-wide LM head. **[choice]** When the recipe
   ties them (``share_embeddings_and_output_weights=True``) and the VWN table would be wide
   (``vwn_embedding="wide"`` and D' > D), ``apply_vwn`` unties them and logs a WARNING saying so
   (the baseline twin keeps its tied head: the two then differ by one vocab x D matrix). Pass
   ``vwn_embedding="factorized"`` to keep the tie (the D-wide table stays the head's weight), or
   ``untie_embeddings=False`` to get a ``VWNConfigError`` instead of the silent-ish change.

The input ``cfg`` is not modified: ``apply_vwn`` works on a deep copy and returns it.

Errors (before anything is built): a model that is not a ``GPTModelProvider`` (Mamba/hybrid, T5,
...) raises ``UnsupportedRecipeError``; invalid VWN values raise ``VWNConfigError`` naming the field
and the allowed values (the full check also runs again in ``cfg.model.finalize()``, after CLI
overrides). Specs whose layers are not megatron's ``TransformerLayer`` (e.g. the full-TE-layer
spec) fail when the spec is resolved, naming the layer class.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import sys
from typing import Any, Callable, Optional, Union

from megatron.bridge.models.gpt_provider import GPTModelProvider
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules

from nemo_vwn.collapse import VWNOutputNorm
from nemo_vwn.config import VWNConfigError, VWNConfigMixin
from nemo_vwn.layer import VWNLayerMixin
from nemo_vwn.layer_specs import to_vwn_layer_spec

logger = logging.getLogger(__name__)

VWN_FIELDS = tuple(f.name for f in dataclasses.fields(VWNConfigMixin))
_VWN_CLASS_PREFIX = "VWN"


class UnsupportedRecipeError(TypeError):
    """``apply_vwn`` was given a config whose model VWN cannot wrap."""


# --------------------------------------------------------------------------- provider classes
_CLASS_CACHE: dict[type, type] = {}


def vwn_provider_class(base: type) -> type:
    """The VWN variant of a ``GPTModelProvider`` subclass (cached; ``VWNModelProvider`` for the
    plain ``GPTModelProvider``; a class that already has the VWN fields is returned as is).

    The class is ``VWNProviderMixin + base + VWNConfigMixin``, named ``"VWN" + base.__name__`` and
    reachable as ``nemo_vwn.bridge.apply.<name>`` (for pickling and config serialisation).
    """
    from nemo_vwn.bridge.provider import VWNModelProvider, VWNProviderMixin

    if not isinstance(base, type) or not issubclass(base, GPTModelProvider):
        name = getattr(base, "__name__", type(base).__name__)
        raise UnsupportedRecipeError(
            f"apply_vwn needs a GPT model provider (megatron.bridge GPTModelProvider or a subclass "
            f"such as OlMoEModelProvider / MLAModelProvider); got {name}. VWN wraps GPT and "
            "GPT-MoE "
            "transformer layers; Mamba/hybrid, T5 and other model families are not supported"
        )
    if issubclass(base, VWNConfigMixin):
        return base
    if base is GPTModelProvider or _is_local_twin_provider(base):
        return VWNModelProvider
    if base in _CLASS_CACHE:
        return _CLASS_CACHE[base]
    name = _VWN_CLASS_PREFIX + base.__name__
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": (f"{base.__module__}.{base.__qualname__} with the VWN fields and behaviour "
                    "(built by nemo_vwn.bridge.apply.vwn_provider_class)."),
    }
    cls = dataclasses.dataclass(type(name, (VWNProviderMixin, base, VWNConfigMixin), namespace))
    _CLASS_CACHE[base] = cls
    setattr(sys.modules[__name__], name, cls)
    return cls


def _is_local_twin_provider(base: type) -> bool:
    """The CPU baseline twins' provider differs from GPTModelProvider only in how it builds the
    upstream MTP block, which a VWN model replaces: its VWN variant is VWNModelProvider."""
    from nemo_vwn.bridge.baseline import LocalGPTModelProvider

    return base is LocalGPTModelProvider


def __getattr__(name: str):
    """Resolve ``VWN<Provider>`` for a provider exported by ``megatron.bridge.models`` (so a class
    made by ``vwn_provider_class`` can be found by name in a fresh process)."""
    if name.startswith(_VWN_CLASS_PREFIX) and not name.startswith("__"):
        import megatron.bridge.models as bridge_models

        base = getattr(bridge_models, name[len(_VWN_CLASS_PREFIX):], None)
        if isinstance(base, type) and issubclass(base, GPTModelProvider):
            return vwn_provider_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- layer specs
def to_vwn_spec(spec: Any) -> Union[ModuleSpec, TransformerBlockSubmodules]:
    """Convert a resolved upstream GPT spec into its VWN counterpart.

    layer ``ModuleSpec`` (TransformerLayer)       -> VWN layer ``ModuleSpec``
    ``TransformerBlockSubmodules``                -> same layers converted, ``VWNOutputNorm`` final
    ``ModuleSpec`` of ``TransformerBlock``        -> its converted ``TransformerBlockSubmodules``
    an already-VWN spec                           -> unchanged
    """
    if isinstance(spec, ModuleSpec) and isinstance(spec.module, type):
        if issubclass(spec.module, TransformerBlock):
            return to_vwn_spec(spec.submodules)
        return to_vwn_layer_spec(spec)  # VWN layers pass through; other modules raise TypeError
    if isinstance(spec, TransformerBlockSubmodules):
        converted: dict[int, ModuleSpec] = {}
        layer_specs = []
        for layer_spec in spec.layer_specs:
            if id(layer_spec) not in converted:  # keep shared specs shared
                converted[id(layer_spec)] = to_vwn_layer_spec(layer_spec)
            layer_specs.append(converted[id(layer_spec)])
        return dataclasses.replace(spec, layer_specs=layer_specs, layer_norm=VWNOutputNorm)
    raise TypeError(
        "cannot convert transformer_layer_spec to VWN: expected a TransformerLayer ModuleSpec, a "
        f"TransformerBlockSubmodules or a TransformerBlock ModuleSpec, got {type(spec).__name__}"
    )


def _resolve_spec(spec, config, vp_stage):
    if isinstance(spec, (ModuleSpec, TransformerBlockSubmodules)) or not callable(spec):
        return spec
    if "vp_stage" in inspect.signature(spec).parameters:
        return spec(config, vp_stage=vp_stage)
    return spec(config)


@dataclasses.dataclass
class VWNSpecAdapter:
    """A ``transformer_layer_spec`` that yields the VWN version of a recipe's own spec.

    ``base`` is what the recipe had: a spec or a callable ``(provider[, vp_stage]) -> spec``. It is
    resolved lazily (it depends on the final layer count, pipeline stage, TE/local choice ...), then
    converted with ``to_vwn_spec``. Bridge calls this with ``(provider, vp_stage=...)``.

    Not frozen: Bridge's HF export strips a model config of unpicklable callables with
    ``remove_non_pickleables``, which copies every attribute object it reaches and assigns its
    cleaned fields (here ``base``) on the copy; a frozen adapter made that raise.
    """

    base: Union[ModuleSpec, TransformerBlockSubmodules, Callable]

    def __call__(self, config, vp_stage: Optional[int] = None):
        return to_vwn_spec(_resolve_spec(self.base, config, vp_stage))


def is_vwn_spec(spec) -> bool:
    """True for a spec ``VWNGPTModel`` accepts as is (VWN layer spec or VWN block spec)."""
    if isinstance(spec, ModuleSpec) and isinstance(spec.module, type):
        return issubclass(spec.module, VWNLayerMixin)
    return isinstance(spec, TransformerBlockSubmodules) and spec.layer_norm is VWNOutputNorm


# --------------------------------------------------------------------------- the provider
def to_vwn_provider(provider, n: int, m: int, dynamic: bool = True,
                    untie_embeddings: bool = True, **vwn_fields):
    """A VWN copy of a Bridge GPT provider (see the module docstring); ``provider`` is unchanged."""
    unknown = sorted(set(vwn_fields) - set(VWN_FIELDS))
    if unknown:
        raise VWNConfigError(
            f"apply_vwn got unknown VWN field(s) {unknown}; VWN fields are: "
            f"{', '.join(VWN_FIELDS)} "
            "(other model fields: set them on the recipe before or after apply_vwn)"
        )
    for name in ("virtual_width_n", "virtual_width_m", "ghc_dynamic"):
        if name in vwn_fields:
            raise VWNConfigError(f"pass {name} as the n / m / dynamic argument of apply_vwn")
    cls = vwn_provider_class(type(provider))
    if getattr(provider, "use_transformer_engine_full_layer_spec", False):
        raise UnsupportedRecipeError(
            "use_transformer_engine_full_layer_spec=True builds TE's fused TransformerLayer, which "
            "VWN cannot wrap (it needs megatron's TransformerLayer); set it to False"
        )
    new = cls.__new__(cls)
    new.__dict__.update(copy.deepcopy(provider).__dict__)  # every attribute, as the recipe set it
    for field in dataclasses.fields(VWNConfigMixin):
        if field.name not in new.__dict__:
            new.__dict__[field.name] = field.default
    new.virtual_width_n, new.virtual_width_m, new.ghc_dynamic = n, m, dynamic
    for name, value in vwn_fields.items():
        setattr(new, name, value)
    new.validate_vwn()  # early, clear errors (finalize() checks again after overrides)

    if not is_vwn_spec(new.transformer_layer_spec) and not isinstance(
            new.transformer_layer_spec, VWNSpecAdapter):
        new.transformer_layer_spec = VWNSpecAdapter(new.transformer_layer_spec)

    wide_table = new.vwn_embedding == "wide" and new.virtual_hidden_size != new.hidden_size
    if new.share_embeddings_and_output_weights and wide_table:
        if not untie_embeddings:
            raise VWNConfigError(
                "the recipe ties the embedding table to the LM head "
                "(share_embeddings_and_output_weights=True), which is impossible with "
                f"vwn_embedding='wide' (table width D'={new.virtual_hidden_size} != D="
                f"{new.hidden_size}); use vwn_embedding='factorized' or untie_embeddings=True"
            )
        new.share_embeddings_and_output_weights = False
        logger.warning(
            "apply_vwn: %s ties its embedding table to the LM head, but the VWN table is "
            "D'=%d wide (vwn_embedding='wide') while the head is D=%d wide: untying them "
            "(share_embeddings_and_output_weights=False; the model gets a separate vocab x %d "
            "output layer). Use vwn_embedding='factorized' to keep the tie.",
            type(provider).__name__, new.virtual_hidden_size, new.hidden_size, new.hidden_size,
        )
    return new


def apply_vwn(cfg, n: int, m: int, dynamic: bool = True, untie_embeddings: bool = True,
              **vwn_fields):
    """The VWN variant of a Megatron-Bridge GPT / GPT-MoE recipe's ``ConfigContainer``.

    Args:
        cfg: a ``ConfigContainer`` whose ``model`` is a ``GPTModelProvider`` (or subclass).
        n, m: ``virtual_width_n`` / ``virtual_width_m`` (r = n/m; e.g. (3, 2) is 1.5x).
        dynamic: ``ghc_dynamic`` (DGHC, the paper's default).
        untie_embeddings: untie a tied wide table from the LM head (logged); False raises instead.
        **vwn_fields: any other VWN field (``vwn_embedding``, ``vwn_collapse``, ``ghc_recompute``,
            ``vwn_collapse_init``, ``ghc_fp32_coefficients``, ``ghc_scale_weight_decay``, ...).

    Returns a new ``ConfigContainer`` (``cfg`` is left unchanged); see the module docstring for
    exactly what differs from ``cfg``.
    """
    from nemo_vwn.bridge.optim import VWNOptimizerConfigOverrideProvider

    model = getattr(cfg, "model", None)
    if model is None or not hasattr(cfg, "optimizer_config_override_provider"):
        raise UnsupportedRecipeError(
            f"apply_vwn needs a Megatron-Bridge ConfigContainer with a model provider, got "
            f"{type(cfg).__name__}" + ("" if model is not None else " without a model")
        )
    vwn_model = to_vwn_provider(model, n, m, dynamic=dynamic, untie_embeddings=untie_embeddings,
                                **vwn_fields)
    shell = copy.copy(cfg)
    shell.model = None  # deep-copy everything but the model (already copied)
    new_cfg = copy.deepcopy(shell)
    new_cfg.model = vwn_model
    current = cfg.optimizer_config_override_provider
    if not isinstance(current, VWNOptimizerConfigOverrideProvider):
        from megatron.bridge.training.config import OptimizerConfigOverrideProvider

        base = None
        if current is not None and type(current) is not OptimizerConfigOverrideProvider:
            base = copy.deepcopy(current)  # a recipe's custom overrides: keep them
        new_cfg.optimizer_config_override_provider = VWNOptimizerConfigOverrideProvider(base=base)
    return new_cfg
