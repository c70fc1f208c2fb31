"""Entry point of `timebill_node` (also `ros2 run timebill_ros timebill_node`)."""
from __future__ import annotations

import os
import signal
import sys
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    """Start the action server and spin until SIGINT/SIGTERM."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.signals import SignalHandlerOptions

    from timebill_ros.node.params import InvalidParameter
    from timebill_ros.node.server import TimeBillServer

    # Our own signal handling: held goals get their results before the context goes down.
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = TimeBillServer()
    except InvalidParameter as exc:
        print(f"timebill_node: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    # autostart: configure and activate now, as a plain node would start; a model that cannot
    # load then ends the process (exit 2) rather than leaving a node nobody will configure.
    if node.params.autostart:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            print(f"timebill_node: {node.configure_error}", file=sys.stderr)
            node.destroy_node()
            rclpy.try_shutdown()
            return 2
        node.trigger_activate()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)

    def drain_and_stop() -> None:
        node.shutdown()
        node.wait_idle(timeout=1.2)
        rclpy.try_shutdown()

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        node.get_logger().info(f"signal {signum}: aborting held goals and stopping")
        threading.Thread(target=drain_and_stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
