"""A node's first seconds: goals sent while it loads and calibrates are answered at once, the
first-start calibration is made and kept, and a cancel that overtakes the accepted callback
is honoured. Real nodes, real action clients."""
from __future__ import annotations

import contextlib
import subprocess
import threading
import time

import pytest
from conftest import BASE_PARAMS, REPO, start_node

from timebill_ros.node.client import Client


def R(client):
    return client.TimedGenerate.Result


def call_until_served(client, goal_args: dict, timeout: float = 240.0):
    """Send the goal again while the node answers that it is starting; the first other answer."""
    end = time.monotonic() + timeout
    while True:
        run = client.call(client.goal(**goal_args), timeout=60)
        if not run.result.status_reason.startswith("node is starting") or time.monotonic() > end:
            return run
        time.sleep(0.5)


@contextlib.contextmanager
def served_in_process(server_class, namespace: str, model_dir, calibration):
    """A SERVER_CLASS node started in this process on an executor of its own, and a client of
    its action; both are shut down on exit."""
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    params = {**BASE_PARAMS, "model_path": str(model_dir), "calibration_path": str(calibration)}
    node = server_class(namespace=namespace, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    assert node.autostart()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    client = Client(f"/{namespace}/timebill/generate")
    try:
        assert client.wait_for_server()
        yield client
    finally:
        client.close()
        node.shutdown()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()


def test_a_goal_sent_while_the_node_starts_is_answered_at_once_and_the_calibration_is_kept(
        slow_model_dir, tmp_path, rclpy_context):
    calibration = tmp_path / "first-start.json"  # none yet: the node makes it (calibrate_on_start)
    proc = start_node(slow_model_dir, calibration, tmp_path, name="starting", action="starting/generate", wait=False)
    client = Client("starting/generate")
    try:
        assert client.wait_for_server(), proc.log()
        sent = time.monotonic()  # the moment the server is seen, as a robot's client would
        run = client.call(client.goal("hello", budget=0.02, max_new_tokens=4), timeout=30)
        latency = time.monotonic() - sent
        assert run.result.status == R(client).REJECTED, run.result.status_reason
        assert run.result.status_reason.startswith("node is starting"), run.result.status_reason
        # Answered while the node still loads (the old node answered only after the load, 3-4 s
        # later). The 0.3 s is a host-speed figure: a clean-clone run on a busy host took
        # longer, so the test bounds what the behaviour changes, not the host's speed.
        assert latency < 2.0, f"answered {latency:.3f}s after sending; {proc.log()}"
        served = call_until_served(client, {"prompt": "hello", "budget": 30.0, "max_new_tokens": 4})
        assert served.result.status == R(client).SUCCEEDED, (served.result.status_reason, proc.log())
    finally:
        client.close()
        assert proc.stop() == 0, proc.log()
    log = proc.log()
    assert calibration.is_file() and "calibrating this machine now" in log
    assert "decode kernels chosen by measurement" in log  # the choice is logged
    # A restart loads what the first start made: no calibration, served at once.
    again = start_node(slow_model_dir, calibration, tmp_path, name="restarted", action="restarted/generate",
                       wait=False)
    client = Client("restarted/generate")
    try:
        assert client.wait_for_server(), again.log()
        run = call_until_served(client, {"prompt": "hello", "budget": 30.0, "max_new_tokens": 4})
        assert run.result.status == R(client).SUCCEEDED
    finally:
        client.close()
        assert again.stop() == 0
    assert "calibrating this machine now" not in again.log() and str(calibration) in again.log()


def test_a_cancel_that_overtakes_the_accepted_callback_ends_the_goal_canceled(
        slow_model_dir, calibration, rclpy_context):
    from timebill_ros.node.server import TimeBillServer

    class SlowAcceptServer(TimeBillServer):
        """rclpy sends the accept response before it calls the accepted callback; here that
        callback starts late, so the client's cancel (sent on acceptance) comes first."""

        def _on_accepted(self, handle):
            time.sleep(1.0)
            super()._on_accepted(handle)

    with served_in_process(SlowAcceptServer, "overtaken", slow_model_dir, calibration) as client:
        run = client.send(client.goal("tell a long story", budget=60.0, max_new_tokens=512, k=1.0))
        while run.accepted is None:
            time.sleep(0.005)
        assert run.accepted
        client.cancel(run)  # the accepted callback is still asleep
        client.wait(run, timeout=60)
        assert run.result.status == R(client).CANCELED, (run.result.status_name, run.result.status_reason)
        assert run.result.response_tokens == 0


def test_timebill_send_waits_while_the_shipped_node_calibrates_on_first_start(tmp_path):
    """The shipped config/timebill.yaml (SmolLM2) on a machine with no calibration: `timebill
    send --wait-ready` gets SUCCEEDED (the right answer, the plan in the feedback) with nothing
    else run; a restart loads the calibration. The suite's one SmolLM2 goal through the node."""
    import shutil
    import signal

    from timebill_ros.core.paths import timebill_home

    calibrations = timebill_home() / "calibration"
    assert not list(calibrations.glob("SmolLM2*")), "this test needs no SmolLM2 calibration on disk"
    # A budget far above the answer's ~1 s: the test is about start-up, not speed (5 s was killed
    # at its deadline once, on a host whose other core trained a model and whose calibration ran beside it).
    send = [shutil.which("timebill"), "send", "The vase is in the closet. Where is the vase?", "--budget", "30",
            "--max-new-tokens", "16", "--wait-ready", "600", "--server-timeout", "120", "--feedback"]
    for attempt in ("first_start", "restart"):
        log = tmp_path / f"{attempt}.log"
        with log.open("w") as out:
            node = subprocess.Popen([shutil.which("timebill_node"), "--ros-args", "--params-file",
                                     str(REPO / "config" / "timebill.yaml")], stdout=out, stderr=subprocess.STDOUT)
            try:
                sent = subprocess.run(send, capture_output=True, text=True, timeout=900)
            finally:
                node.send_signal(signal.SIGINT)
                assert node.wait(timeout=30) == 0, log.read_text()
        assert sent.returncode == 0, (sent.stdout, sent.stderr, log.read_text())
        # The real model answers through the node, with the plan in the feedback.
        assert "SUCCEEDED" in sent.stdout and "closet" in sent.stdout.lower(), sent.stdout
        assert "] planned " in sent.stdout and "WCET=" in sent.stdout
        assert len(list(calibrations.glob("SmolLM2*"))) == 1
        assert ("calibrating this machine now" in log.read_text()) == (attempt == "first_start"), log.read_text()
        if attempt == "first_start":
            assert "node is starting" in sent.stderr  # it was told, and asked again


def test_timebill_send_returns_when_the_node_stops_under_its_goal(slow_model_dir, calibration, tmp_path):
    import shutil
    import signal

    proc = start_node(slow_model_dir, calibration, tmp_path, name="stopping", action="stopping/generate")
    sender = subprocess.Popen([shutil.which("timebill"), "send", "tell a long story", "--budget", "60",
                               "--max-new-tokens", "512", "--action", "stopping/generate", "--feedback"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sender.stdout.readline()  # the goal runs (its first feedback line)
        assert proc.stop(signal.SIGTERM) == 0, proc.log()
        out, err = sender.communicate(timeout=60)
    finally:
        sender.kill()
    # Either the node's last word came through (REJECTED "node shutting down") or the client saw
    # the server go away; never a wait without end.
    assert (sender.returncode == 1 and "node shutting down" in out) or \
        (sender.returncode == 2 and "action server went away" in err), (sender.returncode, out, err)


def test_startup_counts_each_stage_once_and_describes_the_time_left(monkeypatch):
    from timebill_ros.node import startup as startup_module

    now = [100.0]
    monkeypatch.setattr(startup_module.time, "monotonic", lambda: now[0])
    s = startup_module.Startup()
    s.begin("loading the model")
    now[0] += 4.0
    s.begin("loading the model")  # configure re-enters the stage autostart began: one stage
    now[0] += 1.0
    s.begin("calibrating")
    s.expect(10)
    now[0] += 2.0
    s.tick()
    s.tick()
    assert s.describe().startswith("node is starting: calibrating (2 of 10 steps), about 8 s left")
    now[0] += 3.0
    s.end()
    assert not s.active and s.describe() == ""
    assert s.stages == [("loading the model", 5.0), ("calibrating", 5.0)]
    assert s.summary() == "loading the model 5.0 s, calibrating 5.0 s"


def test_torch_thread_runs_every_call_on_one_thread_and_raises_in_the_caller():
    from timebill_ros.core.torch_thread import TorchThread

    worker = TorchThread()
    try:
        idents = {worker.call(threading.get_ident) for _ in range(3)}
        other = threading.Thread(target=lambda: idents.add(worker.call(threading.get_ident)))
        other.start()
        other.join()
        assert len(idents) == 1 and threading.get_ident() not in idents
        with pytest.raises(ValueError, match="not a number"):  # raised in the caller
            worker.call(int, "not a number")
    finally:
        worker.close()


def test_the_node_runs_its_jobs_on_the_thread_that_loaded_the_model(
        slow_model_dir, calibration, rclpy_context, monkeypatch):
    """Torch work hopping between threads ran each decode step ~2.5x slower (core.torch_thread)."""
    from timebill_ros.core.engine import Engine
    from timebill_ros.node import server as server_module
    from timebill_ros.node.server import TimeBillServer

    threads = {"load": set(), "run": set()}
    load_model, run = server_module.load_model, Engine.run
    monkeypatch.setattr(server_module, "load_model",
                        lambda *a, **k: threads["load"].add(threading.get_ident()) or load_model(*a, **k))
    monkeypatch.setattr(Engine, "run", lambda self, *a, **k: threads["run"].add(threading.get_ident())
                        or run(self, *a, **k))
    with served_in_process(TimeBillServer, "one_thread", slow_model_dir, calibration) as client:
        for _ in range(2):
            run_ = client.call(client.goal("hello", budget=30.0, max_new_tokens=4), timeout=60)
            assert run_.result.status == R(client).SUCCEEDED, run_.result.status_reason
    assert len(threads["load"]) == 1 and threads["run"] == threads["load"], threads
