"""Hugging Face model directories: reading, validating and writing them.

* ``read_hf_config_json(hf_dir)``: a directory that exists and holds a readable ``config.json``
  (clear errors for a missing path, a file, no config, corrupted JSON) -> the raw dict;
* ``read_vwn_hf_config(hf_dir)``: the same for a VWN directory (``model_type`` "vwn", as
  written by export-hf) -> ``VWNHFConfig`` (invalid field values named);
* ``hf_weight_shapes(hf_dir)``: name -> shape of every stored tensor (safetensors headers only;
  one file or an index of shards) and ``check_weight_set`` (missing / unexpected / mis-shaped
  tensors as one error); ``expected_hf_tensors(config)``: what a ``VWNForCausalLM`` loads;
* ``load_hf_model`` (fp32, eval, local files only), ``write_hf_directory`` (config, weights,
  the modeling files with an ``auto_map``, generation config), ``copy_tokenizer``.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import torch

from nemo_vwn.convert.checkpoint import CheckpointError

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"


def _hf_modules():
    import nemo_vwn.hf as hf  # registers the Auto* classes

    return hf


def read_hf_config_json(hf_dir: str) -> dict:
    """The raw ``config.json`` of a Hugging Face model directory (validated to exist and parse)."""
    if not os.path.exists(hf_dir):
        raise CheckpointError(f"HF model directory not found: {hf_dir}")
    if not os.path.isdir(hf_dir):
        raise CheckpointError(f"HF model path must be a directory, got a file: {hf_dir}")
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"corrupted HF config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"corrupted HF config {path}: not a JSON object")
    return raw


def read_vwn_hf_config(hf_dir: str):
    """The ``VWNHFConfig`` of a directory written by export-hf."""
    hf = _hf_modules()
    raw = read_hf_config_json(hf_dir)
    path = os.path.join(hf_dir, "config.json")
    if raw.get("model_type") != hf.VWNHFConfig.model_type:
        raise CheckpointError(f"{path} has model_type {raw.get('model_type')!r}; import-hf reads "
                              "VWN models (model_type 'vwn', as written by export-hf)")
    try:
        return hf.VWNHFConfig.from_pretrained(hf_dir, local_files_only=True)
    except Exception as exc:  # invalid field values: VWNHFConfig.validate_vwn names them
        raise CheckpointError(f"invalid HF config {path}: {exc}") from exc


def expected_hf_tensors(config) -> dict:
    """name -> shape of every tensor a VWNForCausalLM(config) loads (built on the meta device)."""
    hf = _hf_modules()
    with torch.device("meta"):
        model = hf.VWNForCausalLM(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def hf_weight_shapes(hf_dir: str) -> dict:
    """name -> shape of the tensors stored in the directory's safetensors file(s) (headers only)."""
    from safetensors import safe_open

    index = os.path.join(hf_dir, HF_INDEX)
    if os.path.exists(index):
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"corrupted weight index {index}: {exc}") from exc
    elif os.path.exists(os.path.join(hf_dir, HF_WEIGHTS)):
        files = [HF_WEIGHTS]
    else:
        raise CheckpointError(f"{hf_dir} has no weights ({HF_WEIGHTS} or {HF_INDEX})")
    shapes = {}
    for name in files:
        path = os.path.join(hf_dir, name)
        if not os.path.exists(path):
            raise CheckpointError(f"incomplete HF model: weight file {path} is missing")
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except Exception as exc:
            raise CheckpointError(f"corrupted weight file {path}: {exc}") from exc
    return shapes


def check_weight_set(found: dict, expected: dict, where: str) -> None:
    """Missing / unexpected / mis-shaped tensors, named, as one error."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(f"{k}: {found[k]} != {expected[k]}" for k in set(found) & set(expected)
                    if tuple(found[k]) != tuple(expected[k]))
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape (stored != config)", shapes)):
            if items:
                parts.append(f"{label}: {', '.join(items[:8])}"
                             + (f" (+{len(items) - 8} more)" if len(items) > 8 else ""))
        raise CheckpointError(f"{where}: weights do not match the config (n, m, hidden size, "
                              f"experts, layers ...): " + "; ".join(parts))


def load_hf_model(hf_dir: str, dtype=torch.float32):
    """A VWN directory's ``VWNForCausalLM`` (local files only), eval mode."""
    hf = _hf_modules()
    model = hf.VWNForCausalLM.from_pretrained(hf_dir, dtype=dtype, local_files_only=True)
    return model.eval()


def write_hf_directory(tmp: str, config, weights: dict) -> None:
    """config.json (+ ``auto_map``), model.safetensors, the modeling files, generation config."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    hf = _hf_modules()
    config.auto_map = dict(hf.AUTO_MAP)
    config.architectures = ["VWNForCausalLM"]
    config.save_pretrained(tmp)
    save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(tmp, HF_WEIGHTS),
              metadata={"format": "pt"})
    source = os.path.dirname(os.path.abspath(hf.__file__))
    for name in hf.MODELING_FILES:
        shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))
    GenerationConfig.from_model_config(config).save_pretrained(tmp)


def copy_tokenizer(iteration_dir: str, tmp: str) -> Optional[str]:
    """Copy the checkpoint's HF tokenizer (a local directory named by its run config), if any;
    returns that directory or None."""
    try:
        from megatron.bridge.training.checkpointing import read_run_config

        run_config = read_run_config(os.path.join(iteration_dir, "run_config.yaml")) or {}
        tok = run_config.get("tokenizer")
    except Exception:
        return None
    if not isinstance(tok, dict) or tok.get("tokenizer_type") != "HuggingFaceTokenizer":
        return None
    source = tok.get("tokenizer_model")
    if not source or not os.path.isdir(str(source)):
        return None
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(source), local_files_only=True).save_pretrained(tmp)
    except Exception:
        return None
    return str(source)
