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
import statistics
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


def dataset_tokens(data_dir) -> torch.Tensor:
    """The first 200k token ids of the dataset's training document file."""
    import numpy as np

    return torch.from_numpy(np.fromfile(os.path.join(data_dir, "text_document.bin"),
                                        dtype=np.uint16)[:200_000].astype(np.int64))


def trained(model, data_dir, steps: int = 40, lr: float = 3e-3):
    """``model`` (a transformers causal LM) trained ``steps`` Adam steps on the dataset."""
    tokens = dataset_tokens(data_dir)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - 65, (8,), generator=gen)
        batch = torch.stack([tokens[s:s + 65] for s in starts])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def trained_llama(data_dir, vocab_size: int, steps: int = 40):
    """A tiny Llama trained ``steps`` Adam steps on the first tokens of the dataset."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    return trained(model, data_dir, steps)


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


# --------------------------------------------------------------------------- an MoE family
MOE_N, MOE_M, MOE_EXPERTS = 4, 2, 4
MOE_LAYOUT = ["model.expert_model_parallel_size=2"]
MOE_ITERS = 16
MOE_TRAIN = [f"train.train_iters={MOE_ITERS}", "train.global_batch_size=32",
             "train.micro_batch_size=8", f"validation.eval_interval={MOE_ITERS}",
             "validation.eval_iters=1", "logger.log_interval=1",
             f"checkpoint.save_interval={MOE_ITERS}", "scheduler.lr_warmup_iters=2",
             f"scheduler.lr_decay_iters={MOE_ITERS}", "optimizer.lr=3e-3", "optimizer.min_lr=3e-4"]


def iteration_losses(run_dir):
    """({iteration: training loss per token of the global batch (every rank's microbatches)},
    the standard error of one iteration's loss from the spread of its microbatches' losses)."""
    totals, microbatches = {}, {}
    for name in sorted(os.listdir(os.path.join(run_dir, "records"))):
        records = json.load(open(os.path.join(run_dir, "records", name)))
        for step, total, tokens in records["train"]:
            loss, count = totals.get(step, (0.0, 0))
            totals[step] = (loss + total, count + tokens)
            microbatches.setdefault(step, []).append(total / tokens)
    variances = [statistics.variance(v) / len(v) for v in microbatches.values()]
    return ({step: loss / count for step, (loss, count) in sorted(totals.items())},
            math.sqrt(statistics.mean(variances)))


def test_qwen3_moe_continues_at_ep2_and_exports(work, dataset, megatron_cpu_session):
    """A Qwen3-MoE (4 experts, top-2, QK norms), briefly trained with transformers, upcycled at
    (n, m) = (4, 2), continued for 16 iterations by two processes at EP=2 (``pretrain
    --nproc-per-node 2``), then exported back to Hugging Face.

    EP=2 rather than TP=2 + sequence parallel: EP is the layout only an MoE family has (each rank
    holds 2 of the 4 experts, and the tokens are exchanged between the ranks by the MoE
    dispatcher, while the attention, GHC, collapse and embedding are data-parallel), and it is
    the one a continued MoE run has not trained in otherwise; TP=2 + SP of the tiny MoE recipe
    trains in tests/bridge/test_pretrain.py.

    The loss margin: an iteration's loss is its global batch's (32 x 64 tokens, both ranks);
    iteration 1 is before any update. Batches differ, so two iterations' losses differ by noise
    even without learning; its size is estimated from the spread of the microbatches' losses
    within each iteration (4 per iteration), and the fall from the mean of iterations 1-4 to
    that of the last 4 must exceed 4 standard errors of the difference of two such means. The
    HF model is trained only a few steps (far below a random model's loss, and still learning
    fast); trained longer, its further fall is within that noise."""
    import transformers as tf

    from nemo_vwn.bridge.checkpoints import read_saved_config
    from nemo_vwn.convert.upcycle_hf import upcycle_hf

    started = time.monotonic()
    torch.manual_seed(0)
    model = tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(
        vocab_size=dataset.vocab_size, hidden_size=HIDDEN, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=MOE_EXPERTS, num_experts_per_tok=2, moe_intermediate_size=32,
        max_position_embeddings=128))
    trained(model, dataset.output_dir, steps=6, lr=1e-2).save_pretrained(str(work / "moe_hf"))
    report = upcycle_hf(str(work / "moe_hf"), str(work / "moe_up"), n=MOE_N, m=MOE_M)
    assert report["model_type"] == "qwen3_moe" and report["virtual_width_n"] == MOE_N
    print(f"trained + upcycled in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    out, err = nemo_vwn(["pretrain", "--nproc-per-node", 2, "--recipe", "tiny_vwn_moe_cpu",
                         "--from", "moe_up", "--data", dataset.output_dir, "--output", "moe_cont",
                         *MOE_TRAIN, *MOE_LAYOUT], work)
    seconds = time.monotonic() - started
    assert "starting from the pretrained weights of" in out + err
    run = json.load(open(work / "moe_cont" / "run.json"))
    # the checkpoint's model (the recipe's is D = 64), at the layout asked for
    assert (run["hidden_size"], run["num_moe_experts"]) == (HIDDEN, MOE_EXPERTS)
    assert (run["vwn"]["virtual_width_n"], run["vwn"]["virtual_width_m"]) == (MOE_N, MOE_M)
    assert run["layout"]["expert_model_parallel_size"] == 2, run["layout"]
    assert run["layout"]["tensor_model_parallel_size"] == 1
    assert sorted(os.listdir(work / "moe_cont" / "records")) == ["losses.rank0.json",
                                                                 "losses.rank1.json"]
    losses, noise = iteration_losses(work / "moe_cont")
    assert list(losses) == list(range(1, MOE_ITERS + 1))
    uniform = math.log(dataset.vocab_size)
    print(f"EP=2 continued run ({seconds:.1f} s): losses "
          f"{' -> '.join(f'{x:.4f}' for x in losses.values())} (uniform {uniform:.4f}, "
          f"standard error of one iteration {noise:.4f})")
    print(f"mean of iterations 1-4 vs the last 4: "
          f"{statistics.mean(list(losses.values())[:4]):.4f} -> "
          f"{statistics.mean(list(losses.values())[-4:]):.4f}")
    assert losses[1] < uniform - 0.3  # the pretrained weights: far below a random model's
    first = statistics.mean(losses[i] for i in range(1, 5))  # iterations 1-4
    last = statistics.mean(losses[i] for i in range(MOE_ITERS - 3, MOE_ITERS + 1))  # the last 4
    # 4 standard errors of the difference of two means of 4 iterations' losses
    assert last < first - 4 * math.sqrt(2 / 4) * noise, losses
    assert losses[MOE_ITERS] < losses[1], losses
    saved = work / "moe_cont" / "checkpoints" / f"iter_{MOE_ITERS:07d}"
    assert saved.is_dir()
    assert read_saved_config(str(saved))["model"]["expert_model_parallel_size"] == 2
    # the upcycled and further-trained MoE goes back out (transformers vs Megatron verified)
    out, _ = nemo_vwn(["convert", "export-hf", "--checkpoint", "moe_cont/checkpoints",
                       "--output", "moe_cont_hf", "--n", MOE_N, "--m", MOE_M], work)
    exported = last_json(out)
    print(f"export-hf max rel logit diff {exported['max_rel_logit_diff']:.3g}")
    assert exported["checkpoint"].endswith(f"iter_{MOE_ITERS:07d}")
    assert exported["config"]["num_experts"] == MOE_EXPERTS
    assert exported["max_rel_logit_diff"] <= 1e-4
    config = json.load(open(work / "moe_cont_hf" / "config.json"))
    assert (config["virtual_width_n"], config["num_experts"]) == (MOE_N, MOE_EXPERTS)


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
