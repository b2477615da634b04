"""Loss records are on disk before the checkpoint they belong to is complete.

A run killed after a save's last file but before nemo-vwn's after-save callback (which writes the
manifest) leaves a complete checkpoint at iteration N; its rerun resumes from N and keeps the
earlier records up to N, so those must already be on disk (the SIGKILL campaign found two
iterations of records missing there). In-process, with a stand-in forward step: no training.
"""

import json
from types import SimpleNamespace

import torch

from nemo_vwn.bridge import progress

MICROBATCHES, ITERS, SAVE_INTERVAL = 2, 5, 2


def test_records_are_written_before_each_save(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(progress, "_microbatches", lambda: MICROBATCHES)
    monkeypatch.setattr(progress, "_parallel_ranks", lambda: {})

    def forward_step(state, data_iterator, model, return_schedule_plan=False):
        loss = float(state.train_state.step + 1)  # one value per iteration
        return torch.zeros(1), lambda output: (torch.tensor(loss), torch.tensor(4))

    recorder = progress.ProgressRecorder(forward_step, ITERS, record_dir=str(tmp_path),
                                         interval=100, flush_interval=SAVE_INTERVAL)
    state = SimpleNamespace(train_state=SimpleNamespace(step=0))
    model = SimpleNamespace(training=True)
    path = tmp_path / "losses.rank0.json"
    saved = [i for i in range(1, ITERS + 1) if i % SAVE_INTERVAL == 0 or i == ITERS]  # Bridge's
    for step in range(ITERS):
        state.train_state.step = step
        iteration = step + 1
        for microbatch in range(MICROBATCHES):
            output, loss_func = recorder.wrapped(state, None, model)
            loss_func(output)
            last = microbatch == MICROBATCHES - 1
            flushed = max([s for s in saved if s < iteration or (s == iteration and last)],
                          default=0)
            on_disk = json.loads(path.read_text())["train"] if path.exists() else []
            expected = [[i, float(i), 4] for i in range(1, flushed + 1)
                        for _ in range(MICROBATCHES)]
            assert on_disk == expected, (iteration, microbatch)
