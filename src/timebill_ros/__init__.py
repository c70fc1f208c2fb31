"""timebill_ros: time-budgeted LLM inference (TimeBill) for ROS 2.

Layers (imports point downward only): node, cli -> eval -> core. `core` has no ROS imports.
"""

__version__ = "0.1.0"
