"""timebill_ros: time-budgeted LLM inference (TimeBill) for ROS 2.

Layers (imports point downward only): node, cli -> eval -> core. `core` has no ROS imports.
"""

import logging

__version__ = "0.1.0"

# transformers imports torchao (our int8 baseline) whenever it is installed; its optional
# GPU kernels fail to load on a CPU machine and say so, with torch adding deprecation
# notes. None of it concerns a CPU robot: keep it out of the node's log.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)
del _noisy
