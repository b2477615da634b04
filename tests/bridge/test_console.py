"""nemo_vwn.bridge.console: megatron's output to the log, the run's report lines to the console."""

import os
import subprocess
import sys
import warnings

from nemo_vwn.bridge import console


def test_routing_splits_console_and_log(tmp_path, capfd):
    log = tmp_path / "logs" / "run.log"
    console.route_output(str(log), label="tiny")
    try:
        print("Configuration Summary (Non-Default Values vs Megatron Core)")
        print(" validation loss at iteration 4 on validation set | lm loss value: 5.2")
        # what the warnings module writes (pytest records real warnings itself)
        print(warnings.formatwarning("Transformer Engine and Apex are not installed.", UserWarning,
                                     "optimizer.py", 25), file=sys.stderr)
        os.write(1, b"a C-level line\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child stderr\\n')"])
        print("nemo-vwn convert: error: no checkpoint", file=sys.stderr)
        console.echo("[tiny] iter 4/4 (100%)")
        line = console.summary()
    finally:
        console.restore_output()
    out, err = capfd.readouterr()
    assert out.splitlines() == [
        "[tiny] validation loss at iteration 4 on validation set | lm loss value: 5.2",
        "[tiny] iter 4/4 (100%)"]
    assert err.splitlines() == ["nemo-vwn convert: error: no checkpoint"]
    text = log.read_text()
    for expected in ("Configuration Summary", "validation loss at", "UserWarning: Transformer",
                     "a C-level line", "child stderr", "nemo-vwn convert: error"):
        assert expected in text
    assert line.startswith("[nemo-vwn] upstream warnings: 1 about running without CUDA")
    assert not console.is_routed()
    print("after")  # restored: the console again
    assert capfd.readouterr().out == "after\n"


def test_warning_counts_by_kind():
    text = "\n".join([
        "/x/optimizer.py:25: UserWarning: Transformer Engine and Apex are not installed.",
        "W1201 21:39:15.744000 12102 torch/utils/cpp_extension.py:178] No CUDA runtime is found",
        "/x/wsgi.py:1: StarletteDeprecationWarning: starlette.middleware.wsgi is deprecated",
        "WARNING:megatron.core.foo:something else",
        "  warnings.warn(",
        "INFO:megatron.core.datasets:Let mock = True",
    ])
    assert console.warning_counts(text) == {"cpu_fallback": 2, "deprecation": 1, "other": 1}


def test_python_stdout_stays_on_the_console_children_go_to_the_log(tmp_path, capfd):
    log = tmp_path / "convert.log"
    console.route_output(str(log), python_stdout=False)
    try:
        print('{"report": 1}')
        subprocess.run([sys.executable, "-c", "print('INFO:megatron.core:loading')"])
    finally:
        console.restore_output()
    assert capfd.readouterr().out == '{"report": 1}\n'
    assert log.read_text() == "INFO:megatron.core:loading\n"
