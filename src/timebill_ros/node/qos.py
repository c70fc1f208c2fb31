"""QoS profiles the server and its clients must agree on (a light module: the CLI imports it)."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy


def feedback_qos() -> QoSProfile:
    """QoS of the action's feedback topic: the server keeps its last 100 messages for late joiners.

    A client's feedback reader can match the server's writer after a short goal has already
    ended (wait_for_server checks the services, not that the server has discovered the
    reader), and then every feedback message of that goal is lost. With transient-local
    history a reader that asks for it (`timebill send`) still gets them; default volatile
    readers (`ros2 action send_goal`) stay compatible and see what they see today.
    """
    return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
