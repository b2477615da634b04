"""Progress line with ETA and loss records for Megatron-Bridge training runs.

``ProgressRecorder`` wraps Bridge's forward-step function (same signature, so Bridge treats it as
its own) and, without touching the training loop:

* prints ``[nemo-vwn] iter 120/300 (40%) | loss 4.213 | 0.21 s/it | ETA 0:00:38`` on rank 0
  every ``interval`` iterations, on the console even when megatron's output goes to a log
  (``nemo_vwn.bridge.console``);
* records the raw (loss sum, token count) of every microbatch the loss function sees, separately
  for training and evaluation, and writes them per rank to ``<dir>/losses.rank<R>.json``
  (``nemo_vwn.results`` merges the ranks into loss curves).

Iteration boundaries are counted from the microbatch calculator megatron keeps
(``get_num_microbatches()`` training forward calls per iteration).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import time
from typing import Callable, Optional

from nemo_vwn.bridge.console import echo


class ProgressRecorder:
    def __init__(self, forward_step: Callable, train_iters: int, record_dir: Optional[str],
                 interval: int = 10, label: str = "nemo-vwn", start_iteration: int = 0,
                 flush_interval: Optional[int] = None):
        self.forward_step = forward_step
        self.train_iters = train_iters
        self.record_dir = record_dir
        self.interval = max(1, interval)
        self.label = label
        self.train_records: list = []  # (iteration, loss_sum, tokens) per training microbatch
        self.eval_records: list = []  # (iteration, loss_sum, tokens) per evaluation microbatch
        self._train_calls = 0
        self._start_iteration = start_iteration
        # write the records after the last microbatch of every iteration that is saved (a
        # multiple of checkpoint.save_interval, the last one): on disk before its checkpoint is
        # complete, so a run killed between the save and its callbacks loses no record
        self.flush_interval = flush_interval
        self._started = None
        self._window_loss = [0.0, 0]
        self._layout = None
        self._prior = None  # an earlier run's records up to start_iteration (read on first write)

        @functools.wraps(forward_step)
        def wrapped(state, data_iterator, model, return_schedule_plan=False):
            return self._step(state, data_iterator, model, return_schedule_plan)

        self.wrapped = wrapped

    # ------------------------------------------------------------------ the wrapped forward step
    def _iteration(self, state, training: bool) -> int:
        """Training: the iteration being computed (1-based); evaluation: the last one finished."""
        try:
            return int(state.train_state.step) + (1 if training else 0)
        except AttributeError:
            done = self._start_iteration + self._train_calls // max(1, _microbatches())
            return done + (1 if training else 0)

    def _step(self, state, data_iterator, model, return_schedule_plan):
        output, loss_func = self.forward_step(state, data_iterator, model, return_schedule_plan)
        training = model.training
        iteration = self._iteration(state, training)
        if self._layout is None:
            self._layout = _parallel_ranks()
        last = False
        if training:
            self._train_calls += 1
            last = self._train_calls % max(1, _microbatches()) == 0
            if self._started is None:
                self._started = (time.monotonic(), iteration)
        saved = bool(self.flush_interval) and (iteration % self.flush_interval == 0
                                               or iteration == self.train_iters)

        def recording_loss(*args, **kwargs):
            result = loss_func(*args, **kwargs)
            loss_sum, tokens = float(result[0].detach().float()), int(result[1].item())
            (self.train_records if training else self.eval_records).append(
                (iteration, loss_sum, tokens))
            if training:
                self._window_loss[0] += loss_sum
                self._window_loss[1] += tokens
                if last and saved:
                    self.write()
            return result

        if last:
            self._report(iteration)
        return output, recording_loss

    def _report(self, iteration: int) -> None:
        if iteration % self.interval and iteration != self.train_iters:
            return
        if _rank() == 0 and self._started is not None:
            started, first = self._started
            done = iteration - first + 1
            per_it = (time.monotonic() - started) / max(done, 1)
            eta = datetime.timedelta(seconds=int(per_it * max(self.train_iters - iteration, 0)))
            loss = (f" | loss {self._window_loss[0] / self._window_loss[1]:.4f}"
                    if self._window_loss[1] else "")
            echo(f"[{self.label}] iter {iteration}/{self.train_iters} "
                 f"({100 * iteration / self.train_iters:.0f}%){loss} | {per_it:.2f} s/it | "
                 f"ETA {eta}")
        self._window_loss = [0.0, 0]

    # ------------------------------------------------------------------ output
    def write(self) -> Optional[str]:
        """Write this rank's records; returns the path (None without a record_dir).

        A resumed run (``start_iteration`` > 0) keeps the records of the earlier run up to that
        iteration and appends its own. Written to a temporary file, then renamed (never torn).
        """
        if not self.record_dir:
            return None
        os.makedirs(self.record_dir, exist_ok=True)
        path = os.path.join(self.record_dir, f"losses.rank{_rank()}.json")
        if self._prior is None:
            self._prior = _earlier_records(path, self._start_iteration)
        with open(path + ".tmp", "w") as handle:
            json.dump({"rank": _rank(), "parallel": self._layout or _parallel_ranks(),
                       "train": self._prior["train"] + self.train_records,
                       "eval": self._prior["eval"] + self.eval_records}, handle)
        os.replace(path + ".tmp", path)
        return path


def _earlier_records(path: str, start_iteration: int) -> dict:
    """The records of iterations <= ``start_iteration`` in an earlier run's file (none if 0)."""
    if start_iteration <= 0 or not os.path.exists(path):
        return {"train": [], "eval": []}
    with open(path) as handle:
        data = json.load(handle)
    return {key: [r for r in data.get(key, []) if r[0] <= start_iteration]
            for key in ("train", "eval")}


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def _microbatches() -> int:
    try:
        from megatron.core.num_microbatches_calculator import get_num_microbatches

        return get_num_microbatches()
    except Exception:  # noqa: BLE001 - calculator not initialised yet
        return 1


def _parallel_ranks() -> dict:
    """This rank's place in the layout: which records are duplicates (TP) or partial (DP)."""
    try:
        from megatron.core import parallel_state as ps

        return {"tp": ps.get_tensor_model_parallel_rank(), "dp": ps.get_data_parallel_rank(),
                "pp_last": ps.is_pipeline_last_stage(ignore_virtual=True)}
    except Exception:  # noqa: BLE001 - process groups already destroyed
        return {"tp": 0, "dp": _rank(), "pp_last": True}
