"""Run a recipe with Megatron-Bridge's own ``pretrain()`` (GPU, or CPU through the patches)."""

from __future__ import annotations

from typing import Optional, Sequence

from nemo_vwn.runtime import ensure_process_env, prepare_runtime  # noqa: F401  (re-exported)


class OverrideError(ValueError):
    """A command-line override names a field that does not exist or has a bad value."""


def apply_overrides(cfg, overrides: Sequence[str]):
    """Hydra-style ``section.field=value`` overrides, as Megatron-Bridge's CLI applies them."""
    if not overrides:
        return cfg
    from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides

    for item in overrides:
        if "=" not in item:
            raise OverrideError(f"override {item!r} is not of the form section.field=value")
        key = item.split("=", 1)[0].lstrip("+~")
        _check_override_key(cfg, key)
    try:
        return process_config_with_overrides(cfg, cli_overrides=list(overrides))
    except Exception as exc:  # Hydra/OmegaConf raise several types; name the overrides
        raise OverrideError(f"could not apply overrides {list(overrides)}: {exc}") from exc


def _check_override_key(cfg, key: str) -> None:
    import dataclasses
    import difflib

    node, path = cfg, []
    for part in key.split("."):
        if not dataclasses.is_dataclass(node):
            return  # below a dict/list: leave it to OmegaConf
        names = sorted(f.name for f in dataclasses.fields(node) if not f.name.startswith("_"))
        if part not in names:
            where = ".".join(path) or "the config"
            close = difflib.get_close_matches(part, names, n=6, cutoff=0.5)
            choices = names if len(names) <= 40 else close
            hint = ("valid fields: " if len(names) <= 40 else
                    f"{len(names)} valid fields, closest: ") + (", ".join(choices) or "none")
            raise OverrideError(
                f"unknown override key {key!r}: {where} has no field {part!r}; {hint}"
            )
        node, path = getattr(node, part), path + [part]


def run_pretrain(cfg, forward_step=None) -> None:
    """Train ``cfg`` with Bridge's ``pretrain()`` and its GPT forward step."""
    from megatron.bridge.training.gpt_step import forward_step as gpt_forward_step
    from megatron.bridge.training.pretrain import pretrain

    pretrain(cfg, forward_step or gpt_forward_step)


def build_recipe(name: str, output_dir: Optional[str] = None, overrides: Sequence[str] = ()):
    """The ConfigContainer of recipe ``name`` with overrides applied."""
    from nemo_vwn.recipes import get_recipe

    recipe = get_recipe(name)
    cfg = recipe(output_dir=output_dir) if output_dir else recipe()
    return apply_overrides(cfg, overrides)
