"""Multi-process test launcher (the implementation lives in ``nemo_vwn.distributed``)."""

from nemo_vwn.distributed import DistributedRunError, run_distributed  # noqa: F401
