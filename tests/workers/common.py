"""What the parallel workers share: seed, forward/backward, gradient comparison, model builds."""

from __future__ import annotations

from nemo_vwn.testing.models import (
    build_stock_gpt,
    build_stock_hybrid,
    build_vwn_gpt,
    build_vwn_hybrid,
    causal_mask,
    stock_config,
    vwn_config,
)

SEED = 4321


def forward_backward(model, batch):
    """Per-token loss of one batch (detached) after backpropagating its sum."""
    input_ids, position_ids, labels = batch
    loss = model(input_ids, position_ids, causal_mask(input_ids.shape[1]), labels=labels)
    loss.sum().backward()
    return loss.detach()


def compare(grads, ref_grads):
    """(worst absolute diff, worst relative diff, name of the worst parameter) over all grads."""
    worst_abs, worst_rel, worst_name = 0.0, 0.0, None
    for name, grad in grads.items():
        ref = ref_grads[name]
        if grad.shape != ref.shape:
            raise AssertionError(
                f"{name}: shape {tuple(grad.shape)} vs reference {tuple(ref.shape)}")
        diff = (grad - ref).abs().max().item()
        rel = diff / max(ref.abs().max().item(), 1e-12)
        if diff > worst_abs:
            worst_abs, worst_name = diff, name
        worst_rel = max(worst_rel, rel)
    return worst_abs, worst_rel, worst_name


def case_config(case, **parallel):
    """The config of a test case dict (n, m, moe, stock, overrides) with the parallel sizes."""
    kwargs = dict(case)
    kwargs.pop("name", None)
    moe = kwargs.pop("moe", False)
    if kwargs.pop("stock", False):  # control case: megatron's own GPTModel
        return stock_config(moe=moe, **kwargs, **parallel)
    n, m = kwargs.pop("n"), kwargs.pop("m")
    return vwn_config(n=n, m=m, moe=moe, **kwargs, **parallel)


def build(config, pattern=None, **kwargs):
    """A VWN or stock GPT model; a hybrid model when a layer ``pattern`` is given."""
    vwn = hasattr(config, "virtual_width_n")
    if pattern:
        kwargs.pop("vp_stage", None)
        return (build_vwn_hybrid if vwn else build_stock_hybrid)(config, pattern, **kwargs)
    return (build_vwn_gpt if vwn else build_stock_gpt)(config, **kwargs)


def pipeline_forward_step(mask):
    """A megatron forward_step_func: model loss and its mean as "lm loss"."""
    def forward_step(data_iterator, model):
        input_ids, position_ids, labels = next(data_iterator)
        output = model(input_ids, position_ids, mask, labels=labels)

        def loss_func(output_tensor):
            loss = output_tensor.float().mean()
            return loss, {"lm loss": loss.detach().clone()}  # the schedule divides loss in place

        return output, loss_func

    return forward_step
