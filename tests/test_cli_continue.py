"""Start from a Hugging Face model (README "Start from a Hugging Face model"), end to end.

A tiny Llama is made and briefly trained here with transformers on the dataset's own tokens (so
that its loss is well below a random model's), upcycled to VWN (n, m = 3, 2), then, through the
installed ``nemo-vwn`` entry point in subprocesses: ``pretrain --from`` a few iterations with a
recipe whose model differs from the checkpoint's (the model must come from the checkpoint),
``convert export-hf`` of the continued checkpoint (its verification compares transformers' logits
with Megatron's), and one ``evaluate`` of all four models on the same validation samples:

* HF model == upcycled checkpoint (function-preserving upcycle; two frameworks),
* continued < upcycled (continued pretraining lowered the validation loss),
* exported HF directory == continued checkpoint (transformers vs Megatron).

The error paths of ``--from`` fail before megatron is imported (``-X importtime``).
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

BIN = os.path.dirname(sys.executable)
NEMO_VWN = os.path.join(BIN, "nemo-vwn")
N, M = 3, 2
TRAIN = ["train.train_iters=6", "train.global_batch_size=8", "train.micro_batch_size=4",
         "validation.eval_interval=6", "validation.eval_iters=1", "logger.log_interval=1",
         "checkpoint.save_interval=6", "scheduler.lr_warmup_iters=1",
         "scheduler.lr_decay_iters=6", "optimizer.lr=2e-3", "optimizer.min_lr=2e-4"]
RECIPE = "tiny_vwn_dense_cpu"  # D = 64, (n, m) = (4, 2): not the checkpoint's D = 32, (3, 2)
HIDDEN = 32
SAMPLES = 64


def clean_env(home) -> dict:
    return {"PATH": BIN + os.pathsep + "/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
            "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def nemo_vwn(args, cwd, expect=0, python_flags=()):
    command = [sys.executable, *python_flags, NEMO_VWN] if python_flags else [NEMO_VWN]
    started = time.monotonic()
    proc = subprocess.run(command + [str(a) for a in args], cwd=cwd, env=clean_env(cwd),
                          text=True, capture_output=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == expect, (
        f"nemo-vwn {' '.join(map(str, args))} exited {proc.returncode}\n--- stdout\n"
        f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    print(f"nemo-vwn {args[0]}: {time.monotonic() - started:.1f} s")
    return proc.stdout, proc.stderr


def last_json(out: str):
    """The JSON document a command prints last (lines before it are progress)."""
    starts = [m.start() for m in re.finditer(r"(?m)^[\[{]$", out)]
    return json.loads(out[starts[-1]:])


# --------------------------------------------------------------------------- the workflow
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("continue")


@pytest.fixture(scope="module")
def dataset(work):
    from nemo_vwn.data.build import build_dataset

    return build_dataset(work / "data", max_docs=40, vocab_size=400)


def trained_llama(data_dir, vocab_size: int, steps: int = 40):
    """A tiny Llama trained ``steps`` Adam steps on the first tokens of the dataset."""
    import numpy as np
    import transformers as tf

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    tokens = torch.from_numpy(np.fromfile(os.path.join(data_dir, "text_document.bin"),
                                          dtype=np.uint16)[:200_000].astype(np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - 65, (8,), generator=gen)
        batch = torch.stack([tokens[s:s + 65] for s in starts])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def upcycled(work, dataset, megatron_cpu_session):
    from nemo_vwn.convert.upcycle_hf import upcycle_hf

    trained_llama(dataset.output_dir, dataset.vocab_size).save_pretrained(str(work / "hf"))
    report = upcycle_hf(str(work / "hf"), str(work / "up"), n=N, m=M)
    return dict(dir=str(work / "up"), report=report)


@pytest.fixture(scope="module")
def continued(work, dataset, upcycled):
    out, err = nemo_vwn(["pretrain", "--recipe", RECIPE, "--from", upcycled["dir"], "--data",
                         dataset.output_dir, "--output", "cont", *TRAIN], work)
    return dict(dir=str(work / "cont"), out=out, err=err)


@pytest.fixture(scope="module")
def exported(work, continued):
    out, _ = nemo_vwn(["convert", "export-hf", "--checkpoint",
                       os.path.join(continued["dir"], "checkpoints"), "--output", "cont_hf",
                       "--n", N, "--m", M], work)
    return dict(dir=str(work / "cont_hf"), report=last_json(out))


@pytest.fixture(scope="module")
def losses(work, dataset, upcycled, continued, exported):
    """One ``nemo-vwn evaluate`` of the HF model, the upcycled, the continued and the exported
    model, on the same validation samples."""
    out, _ = nemo_vwn(["evaluate", "--hf-dir", "hf", "--checkpoint", "up", "--checkpoint",
                       "cont/checkpoints", "--hf-dir", "cont_hf", "--data", dataset.output_dir,
                       "--num-samples", SAMPLES], work)
    results = last_json(out)
    assert [r["kind"] for r in results] == ["hf", "checkpoint", "checkpoint", "hf"]
    # the continued run's seq_length (the recipe's 64), not the upcycled model's 128
    assert all(r["tokens"] == SAMPLES * 64 for r in results), results
    print("validation losses:", {name: round(r["next_token_loss"], 4) for name, r in
                                 zip(("hf", "upcycled", "continued", "exported"), results)})
    return dict(zip(("hf", "upcycled", "continued", "exported"), results))


def test_pretrain_from_starts_at_iteration_0_from_the_upcycled_weights(continued, losses,
                                                                       dataset):
    assert "starting from the pretrained weights of" in continued["out"] + continued["err"]
    run = json.load(open(os.path.join(continued["dir"], "run.json")))
    assert run["hidden_size"] == HIDDEN and run["vwn"]["virtual_width_n"] == N  # not the recipe's
    records = json.load(open(os.path.join(continued["dir"], "records", "losses.rank0.json")))
    steps = sorted({step for step, _, _ in records["train"]})
    assert steps == list(range(1, 7))
    first = [(total, tokens) for step, total, tokens in records["train"] if step == 1]
    first = sum(total for total, _ in first) / sum(tokens for _, tokens in first)
    uniform = math.log(dataset.vocab_size)
    # iteration 1's loss is the upcycled model's (before any update), far below a fresh model's
    print(f"iteration 1 train loss {first:.4f}, upcycled validation loss "
          f"{losses['upcycled']['next_token_loss']:.4f}, uniform {uniform:.4f}")
    assert losses["upcycled"]["next_token_loss"] < uniform - 0.8
    assert abs(first - losses["upcycled"]["next_token_loss"]) < 0.3
    assert os.path.isdir(os.path.join(continued["dir"], "checkpoints", "iter_0000006"))


def test_continued_pretraining_lowers_the_validation_loss(losses):
    before, after = losses["upcycled"]["next_token_loss"], losses["continued"]["next_token_loss"]
    print(f"validation loss before {before:.4f}, after 6 iterations {after:.4f}")
    assert after < before - 0.01


def test_upcycled_checkpoint_evaluates_as_the_hf_model(losses):
    """Megatron (upcycled VWN) and transformers (the original Llama) give the same loss."""
    assert losses["upcycled"]["next_token_loss"] == pytest.approx(
        losses["hf"]["next_token_loss"], rel=1e-5)


def test_export_hf_of_the_continued_checkpoint_matches(exported, losses):
    config = json.load(open(os.path.join(exported["dir"], "config.json")))
    assert (config["virtual_width_n"], config["virtual_width_m"]) == (N, M)
    assert config["hidden_size"] == HIDDEN
    assert losses["exported"]["next_token_loss"] == pytest.approx(
        losses["continued"]["next_token_loss"], rel=1e-5)


def test_continued_recipe_in_python_and_the_resume_precedence(work, dataset, upcycled,
                                                              continued):
    """``build_continued_recipe``: the checkpoint's model, the recipe's training settings, the
    TP override; the run's own checkpoint wins over ``--from``; a new output starts from it."""
    from nemo_vwn.bridge.resume import prepare_resume
    from nemo_vwn.recipes import build_recipe
    from nemo_vwn.recipes.continued import build_continued_recipe

    recipe = build_recipe(RECIPE)
    cfg = build_continued_recipe(RECIPE, upcycled["dir"], continued["dir"],
                                 ["model.tensor_model_parallel_size=2", *TRAIN],
                                 data_dir=dataset.output_dir)
    assert (cfg.model.hidden_size, cfg.model.virtual_width_n) == (HIDDEN, N)
    assert recipe.model.hidden_size != HIDDEN
    assert cfg.model.tensor_model_parallel_size == 2 and cfg.model.seq_length == 64
    assert cfg.optimizer.lr == 2e-3 and cfg.train.train_iters == 6
    assert cfg.checkpoint.pretrained_checkpoint == os.path.join(upcycled["dir"], "iter_0000000")
    assert not cfg.tokenizer.use_tokenizer_vocab_size
    plan = prepare_resume(cfg, continued["dir"])
    assert plan.finished and plan.iteration == 6
    assert any("own checkpoint is resumed, not the pretrained one" in m for m in plan.messages)
    fresh = build_continued_recipe(RECIPE, upcycled["dir"], str(work / "new"), TRAIN)
    plan = prepare_resume(fresh, str(work / "new"))
    assert plan.iteration == 0 and fresh.checkpoint.load is None
    assert any("starting from the pretrained weights" in m for m in plan.messages)


# --------------------------------------------------------------------------- errors
def damaged_copy(work, upcycled):
    target = work / "damaged"
    if not target.exists():
        shutil.copytree(upcycled["dir"], target)
        shard = next((target / "iter_0000000").glob("*.distcp"))
        with open(shard, "r+b") as handle:
            handle.truncate(10)
    return target


ERRORS = [  # paths are shown absolute
    (["--from", "nowhere"], r"--from /\S+/nowhere: checkpoint not found: /\S+/nowhere$"),
    (["--from", "hf"], r"--from /\S+/hf is a Hugging Face model directory, not a Megatron-Bridge "
                       r"checkpoint; upcycle it first"),
    (["--from", "damaged"], r"--from /\S+/damaged: .*__0_0\.distcp: 10 bytes"),
    (["--from", "up", "model.hidden_size=64"],
     r"--from /\S+/up: the model comes from the checkpoint, and these overrides change its "
     r"shape: model\.hidden_size=64 \(the checkpoint's: 32\)"),
    (["--from", "up", "checkpoint.pretrained_checkpoint=cont"],
     r"--from and checkpoint\.pretrained_checkpoint name different checkpoints"),
]


@pytest.mark.parametrize("args,expected", ERRORS,
                         ids=["missing", "hf-dir", "damaged", "shape", "two-sources"])
def test_pretrain_from_errors_are_one_line_before_megatron_is_imported(work, upcycled, args,
                                                                      expected):
    """(torch itself may be: the integrity check reads DCP's ``.metadata`` index with it.)"""
    if "damaged" in args:
        damaged_copy(work, upcycled)
    out, err = nemo_vwn(["pretrain", "--recipe", RECIPE, "--output", "never", *args], work,
                        expect=2, python_flags=("-X", "importtime"))
    heavy = {line.split("|")[-1].strip().split(".")[0] for line in err.splitlines()
             if line.startswith("import time:")} & {"megatron", "transformer_engine"}
    lines = [line for line in (out + err).splitlines() if line.startswith("nemo-vwn")]
    assert len(lines) == 1 and re.match(r"nemo-vwn: error: " + expected, lines[0]), lines
    assert not heavy, f"imported {sorted(heavy)} before the error"
    assert not (work / "never").exists()


def test_evaluate_errors_are_one_line(work, dataset):
    for args, expected in ((["--checkpoint", "nowhere"], r"checkpoint not found: nowhere"),
                           ([], r"nothing to evaluate"),
                           (["--hf-dir", "data"], r"--hf-dir data is not a Hugging Face model")):
        out, err = nemo_vwn(["evaluate", *args, "--data", dataset.output_dir], work, expect=2)
        lines = [line for line in (out + err).splitlines() if line.startswith("nemo-vwn")]
        assert len(lines) == 1 and re.match(r"nemo-vwn: error: " + expected, lines[0]), lines
