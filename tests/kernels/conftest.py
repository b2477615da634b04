"""Kernel tests: compiled on CUDA, else on CPU through Triton's interpreter (set up by
tests/conftest.py before triton is imported). Where neither can run, every test here fails or is
skipped with the reason spelled out: nothing is skipped silently."""

import pytest


@pytest.fixture(autouse=True)
def triton_mode(monkeypatch):
    from nemo_vwn.kernels import ghc_autograd, runtime

    if not runtime.triton_importable():
        pytest.skip("triton is not importable here, so the Triton GHC kernels cannot run at all")
    if runtime.interpreter_requested() and not runtime.interpreter_active():
        pytest.fail(runtime.interpreter_mismatch_message())
    if not runtime.interpreter_active() and not runtime.cuda_usable():
        pytest.fail("no CUDA device and Triton's interpreter is off: start pytest with "
                    "TRITON_INTERPRET=1 (tests/conftest.py sets it when triton is not yet "
                    "imported)")
    # Narrow d-tiles so the tiny test shapes cover several tiles plus a partial one.
    monkeypatch.setattr(ghc_autograd, "BLOCK_D_MAX", 16)
    yield runtime.describe()
