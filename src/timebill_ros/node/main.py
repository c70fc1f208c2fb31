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
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    # autostart: configure and activate as a plain node starts, but beside the spinning
    # executor, so a goal sent during the model load (or the first-start calibration) is
    # answered at once with the reason. A model that cannot load ends the process (exit 2)
    # rather than leaving a node nobody will configure.
    exit_code = 0
    if node.params.autostart:
        node.startup.begin(f"loading the model {node.params.model_path}")  # before the first goal can come

        def start() -> None:
            nonlocal exit_code
            try:
                started = node.autostart()
            except Exception as exc:  # noqa: BLE001 - the node was shut down under the start-up
                started, node.configure_error = False, node.configure_error or f"{type(exc).__name__}: {exc}"
            if not started and not node._shutting_down:
                print(f"timebill_node: {node.configure_error}", file=sys.stderr)
                exit_code = 2
                rclpy.try_shutdown()

        threading.Thread(target=start, name="timebill-autostart", daemon=True).start()

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
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
