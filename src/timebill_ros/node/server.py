"""timebill_node: the TimedGenerate action server, a lifecycle (managed) node.

Thin by design: it validates goals, keeps them in order, runs one at a time through
the core engine, turns engine events into feedback, and enforces deadlines: the running
job's cancel token is armed with its deadline (the engine stops itself at its next check)
and a timer at the control rate backs it up and expires queued goals. All timing,
planning and eviction live in the core.

Lifecycle: configure loads the model, calibration and predictor (a failure leaves the
node unconfigured, with the reason logged); activate serves goals; deactivate aborts the
held goals (REJECTED, "node deactivated") and rejects new ones with the reason; cleanup
and shutdown release the model. The action server and topics exist in every state, so a
goal sent to an inactive node gets REJECTED with the reason instead of no answer. With
`autostart` (default) the node configures and activates itself at start.

Goal life cycle:
  accepted -> (bad input | queue full | skip-next overrun) -> finished at once, REJECTED/SKIPPED
           -> queued -> running (engine) -> SUCCEEDED | KILLED_AT_DEADLINE | INFEASIBLE | CANCELED ...
  A Kill job stops at its deadline by its armed token (or the control timer's next tick,
  whichever comes first); the timer finishes queued goals whose deadline passed or that
  the client canceled.
ROS 2 goal responses cannot carry a reason, so a bad goal is accepted and immediately
aborted with status REJECTED and a status_reason; the server never stops serving.
"""
from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from unique_identifier_msgs.msg import UUID

from timebill_msgs.action import TimedGenerate
from timebill_msgs.msg import Request as RequestMsg
from timebill_msgs.msg import ResultRecord
from timebill_ros.core.calibration import (
    Calibration,
    CalibrationError,
    CalibrationKey,
    calibrate_and_save,
    default_calibration_path,
)
from timebill_ros.core.engine import PREFILL_PIECES_PER_LAYER, Engine
from timebill_ros.core.eviction import UnsupportedModelError
from timebill_ros.core.jobs import CancelToken, Event, OverrunPolicy, Request, Result, Status
from timebill_ros.core.kernels import apply as apply_kernels
from timebill_ros.core.model import ModelLoadError, encode_prompt, load_model, load_tokenizer
from timebill_ros.core.online import online_timing_from
from timebill_ros.core.policy import apply_overrun_policy
from timebill_ros.core.predictor import PredictorLoadError, check_target, load_predictor
from timebill_ros.core.structured import llguidance_tokenizer, structured_compiler
from timebill_ros.core.timing import TimingModel, prefill_kill_warning
from timebill_ros.core.torch_thread import TorchThread
from timebill_ros.core.validation import InvalidGoal, build_request
from timebill_ros.node.convert import feedback_msg, goal_from_msg, goal_from_request, record_msg, result_msg
from timebill_ros.node.diagnostics import publish_health
from timebill_ros.node.params import InvalidParameter, NodeParams
from timebill_ros.node.qos import feedback_qos
from timebill_ros.node.startup import Startup


def kill_reason(budget: float) -> str:
    """The status_reason of a job killed at its deadline."""
    return f"killed at the deadline ({budget:.3f}s budget)"


@dataclass
class GoalJob:
    """A goal the server holds, from acceptance to its result."""

    handle: ServerGoalHandle  # or a TopicGoalHandle
    accepted_at: float
    cancel: CancelToken = field(default_factory=CancelToken)
    request: Request | None = None
    policy: OverrunPolicy = OverrunPolicy.KILL
    early: Result | None = None  # set when the goal is finished without running

    @property
    def deadline(self) -> float:
        return self.request.deadline if self.request else self.accepted_at


class TopicGoalHandle:
    """A request that came in on `timebill/requests`. It goes through the same queue,
    deadline timer and engine as an action goal; its result is published as a
    ResultRecord on `timebill/results` (so `ros2 bag play` / `ros2 bag record` drive the node)."""

    def __init__(self, server: "TimeBillServer", msg: RequestMsg) -> None:
        self.server, self.source = server, msg
        self.request = goal_from_request(msg)
        self.goal_id = UUID(uuid=list(uuid.uuid4().bytes))
        self.is_cancel_requested = False

    def execute(self) -> None:
        """Run on a thread of its own, as the executor runs an action goal."""
        threading.Thread(target=self.server._execute_topic, args=(self,), daemon=True).start()

    def publish_feedback(self, feedback: TimedGenerate.Feedback) -> None:
        """Topic requests get no feedback stream."""

    def succeed(self) -> None:
        """The result is published instead."""

    abort = canceled = succeed


# What configure may fail with; the message names the cause and the fix.
CONFIGURE_ERRORS = (ModelLoadError, PredictorLoadError, UnsupportedModelError)
# Fixed relative names, meant for remapping and namespaces (`-r timebill/generate:=arm/llm`,
# `__ns:=/robot1`), like every ROS interface name; no parameter duplicates that.
ACTION_NAME, REQUEST_TOPIC, RESULT_TOPIC = "timebill/generate", "timebill/requests", "timebill/results"
NOT_CONFIGURED = "node not configured: no model loaded (ros2 lifecycle set <node> configure)"
# The first-start calibration profiles FIRST_START_POINTS prompt lengths once each
# (`timebill calibrate`: 24 lengths, 3 rounds); its held-out error is logged and the online
# bound corrects it goal by goal.
FIRST_START_POINTS, FIRST_START_ROUNDS = 8, 1


class TimeBillServer(LifecycleNode):
    """The action server node."""

    def __init__(self, **kwargs) -> None:
        super().__init__("timebill_node", **kwargs)
        self.params = NodeParams.declare(self)
        self.params.validate()  # before the model loads: a bad value costs no loading time
        self.loaded = self.engine = self.calibration = self.calibration_file = self.compiler = None
        self.limits = self.params.limits(0)
        self.not_ready, self.configure_error, self._active = NOT_CONFIGURED, "", False
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._queue: deque[GoalJob] = deque()
        self._jobs: dict[bytes, GoalJob] = {}
        self._running: GoalJob | None = None
        # Goals a cancel reached before their accepted callback registered them (rclpy sends
        # the accept response first, so a fast client's cancel can come in between).
        self._canceled_early: set[bytes] = set()
        self._shutting_down = False
        self.startup = Startup()  # while loading and calibrating, goals are told so at once
        self.torch = TorchThread()  # every torch call of the node: load, calibration, warm-up, jobs
        self._autostarting = False
        self.stats = {"killed": 0, "deadline_misses": 0, "succeeded": 0, "last_alpha": 0.0, "last_wcet": 0.0}
        self._tokenizer, self._ll_tokenizer = self._preload_tokenizer()
        self._server = ActionServer(
            self,
            TimedGenerate,
            ACTION_NAME,
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            handle_accepted_callback=self._on_accepted,
            cancel_callback=self._on_cancel,
            callback_group=ReentrantCallbackGroup(),
            feedback_pub_qos_profile=feedback_qos(),
        )
        # Deadlines are wall-clock facts: the control timer runs on the steady clock whatever
        # use_sim_time says (a paused or slow /clock must not stop kills). Budgets are
        # measured with time.monotonic() in the core, the same clock.
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._timer = self.create_timer(
            1.0 / self.params.control_rate_hz, self._on_control_tick, callback_group=MutuallyExclusiveCallbackGroup(),
            clock=self._steady,
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._results = self.create_publisher(ResultRecord, RESULT_TOPIC, 100)
        self.create_subscription(RequestMsg, REQUEST_TOPIC, self._on_request, 100,
                                 callback_group=ReentrantCallbackGroup())
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(
            1.0 / self.params.diagnostics_rate_hz, lambda: publish_health(self, self._diagnostics),
            callback_group=MutuallyExclusiveCallbackGroup(), clock=self._steady,
        )

    def _preload_tokenizer(self) -> tuple:
        """The model's tokenizer and its llguidance form, made before the action server exists.
        Each is one native call that holds the GIL 0.1-0.3 s (measured with a 1 ms ticker
        beside every load step; all others stay under 30 ms), so made during configure they
        would hold a goal's "node is starting" answer that long; before the server exists, no
        goal can wait on them. (None, None) when the model folder is not built yet (a first
        start converts it during configure, with the server up: tens of seconds no client
        should wait to see the server) or does not load (configure then fails with the reason)."""
        try:
            tokenizer = self.torch.call(lambda: load_tokenizer(self.params.model_path, build=False))
        except ModelLoadError:
            return None, None
        try:
            return tokenizer, llguidance_tokenizer(tokenizer)
        except (ImportError, ValueError):  # structured goals will be refused with the reason
            return tokenizer, None

    # ------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model, calibration and predictor; a failure leaves the node unconfigured."""
        try:
            self.torch.call(self._load)  # the thread every later job runs on (core.torch_thread)
        except CONFIGURE_ERRORS as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        finally:
            if not self._autostarting:  # a lifecycle manager's configure: its stages end here
                self.startup.end()
        self.configure_error = ""
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Serve goals."""
        self._active = True
        self.get_logger().info(
            f"serving '{self.resolve_topic_name(ACTION_NAME)}' with model {self.loaded.name} ({self.loaded.dtype}, "
            f"{self.loaded.threads} threads), control rate {self.params.control_rate_hz} Hz"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop serving: held goals end REJECTED with the reason, new ones are rejected."""
        self._active = False
        self._abort_held("node deactivated")
        self.wait_idle(timeout=5.0)
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model (back to unconfigured)."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Abort held goals and release the model."""
        self.shutdown()
        self.wait_idle(timeout=2.0)
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def lifecycle_state(self) -> str:
        """The current lifecycle state's label (unconfigured, inactive, active, finalized)."""
        return self._state_machine.current_state[1]

    def autostart(self) -> bool:
        """Configure and activate, as a plain node starts. Meant to run beside a spinning
        executor: goals that arrive meanwhile are answered at once (REJECTED, with the stage and
        the time left) instead of waiting for the model to load. False when configure failed."""
        self.startup.begin(f"loading the model {self.params.model_path}")
        self._autostarting = True
        try:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return False
            self.trigger_activate()
            return True
        finally:
            self._autostarting = False
            self.startup.end()
            self.get_logger().info(f"start-up took {self.startup.summary()}")

    def _load(self) -> None:
        self.startup.begin(f"loading the model {self.params.model_path}")
        self.loaded = load_model(self.params.model_path, dtype=self.params.dtype, threads=self.params.threads,
                                 quantization=self.params.quantization, device=self.params.device,
                                 tokenizer=self._tokenizer)
        self.calibration, self.not_ready = self._load_calibration()
        if self.loaded.lean_step is not None:  # which kernels run the decode step is worth a line
            self.get_logger().info(f"decode step ({self.params.quantization}) weights: "
                                   f"{self.loaded.lean_step.describe()}")
        timing = self.calibration.planning_timing() if self.calibration else TimingModel(0.0, 0.0, 0.0, 0.0, 0.0)
        predictor = load_predictor(self.params.predictor_path, timing.prefill, self.params.fixed_prediction_tokens)
        check_target(predictor, self.loaded.name)
        self.engine = Engine(self.loaded, timing, predictor, self.params.engine_config())
        if self.calibration:
            self.engine.online = online_timing_from(self.calibration, window=self.params.online_window,
                                                    enabled=self.params.online_timing,
                                                    estimator=self.params.timing_estimator,
                                                    miss_rate=self.params.timing_miss_rate, watch_load=True)
        self.compiler = structured_compiler(self.loaded, self._ll_tokenizer)
        self.startup.begin("warming up")
        self.engine.warm_up(lambda text: self._encode([{"role": "user", "content": text}]))
        self.limits = self.params.limits(self.loaded.context_limit, self._predictor_k())

    def _predictor_k(self) -> float:
        """The length predictor's own pessimistic factor (0 when it has none)."""
        return float(getattr(self.engine.predictor, "pessimism_k", 0.0)) if self.engine else 0.0

    def _release(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.loaded = self.engine = self.calibration = self.compiler = None
        self.not_ready = NOT_CONFIGURED

    # ------------------------------------------------------------ start-up
    def _load_calibration(self) -> tuple[Calibration | None, str]:
        key = CalibrationKey.for_model(self.loaded)
        path = Path(self.params.calibration_path) if self.params.calibration_path else default_calibration_path(key)
        self.calibration_file = path
        try:
            calibration = Calibration.load(path)
            if mismatch := calibration.kernel_mismatch(self.params.quantization, self.params.kv_cache_dtype):
                raise CalibrationError(f"the calibration at '{path}' does not fit: {mismatch}")
        except CalibrationError as exc:
            if not self.params.calibrate_on_start:
                return None, self._refuse_uncalibrated(exc)
            self.get_logger().info(f"{exc}: calibrating this machine now (first start; calibrate_on_start)")
            calibration = self._calibrate_now(key, path)
        if choice := calibration.kernel_choice():
            apply_kernels(self.loaded, choice.chosen, self.params.quantization)
            self.get_logger().info(choice.summary())
        self.get_logger().info(
            f"calibration {path}: prefill MAPE {calibration.prefill_mape:.1f}%, "
            f"decode MAPE {calibration.decode_mape:.1f}%, WCET margins +{100 * calibration.prefill_margin:.1f}% "
            f"+ {1000 * calibration.prefill_margin_s:.1f} ms prefill / +{100 * calibration.decode_margin:.1f}% "
            f"+ {1000 * calibration.decode_margin_s:.2f} ms per decode step"
        )
        measured_with = calibration.settings.get("predictor_path", "")
        if measured_with != self.params.predictor_path:
            self.get_logger().warning(
                f"the calibration measured prefill beside predictor_path '{measured_with}', this node runs "
                f"'{self.params.predictor_path}': plans may misjudge how much the predictor slows prefill; "
                "calibrate with --params-file <this node's params file>")
        longest_prompt = min(self.loaded.context_limit, self.params.max_prompt_tokens)
        longest = min(self.loaded.context_limit, longest_prompt + self.params.max_new_tokens)
        mismatches = calibration.mismatches(key, longest)
        if chunk := calibration.chunk_mismatch(self.params.prefill_chunk):
            mismatches.append(chunk)
        for mismatch in mismatches:
            self.get_logger().warning(
                f"the calibration does not fit this node: {mismatch}; plans may be off; "
                "calibrate with --params-file <this node's params file>")
        if poor := calibration.poor_fit_warning():
            self.get_logger().warning(f"{poor} (`timebill calibrate --params-file <this node's params file>`)")
        warning = prefill_kill_warning(calibration.planning_timing(), self.params.prefill_chunk, longest_prompt,
                                       1.0 / self.params.control_rate_hz, self.loaded.model.config.num_hidden_layers,
                                       PREFILL_PIECES_PER_LAYER, calibration.prefill_piece_share)
        if warning:
            self.get_logger().warning(warning)
        return calibration, ""

    def _refuse_uncalibrated(self, exc: Exception) -> str:
        command = (
            f"timebill calibrate --model {self.params.model_path} --dtype {self.params.dtype} "
            f"--device {self.params.device} "
            f"--quantization '{self.params.quantization}' --kv-cache-dtype {self.params.kv_cache_dtype} "
            f"--threads {self.loaded.threads} --prefill-chunk {self.params.prefill_chunk} "
            f"--predictor '{self.params.predictor_path}'"
            " (or: timebill calibrate --params-file <this node's params file>)"
        )
        reason = f"node not ready: {exc}. Calibrate with: {command}, or set calibrate_on_start"
        self.get_logger().error(reason)
        return reason

    def _calibrate_now(self, key: CalibrationKey, path: Path) -> Calibration:
        """The first-start calibration: quick (FIRST_START_POINTS lengths, one round) and sized to
        what this node takes; saved where `timebill calibrate` saves it, so the next start loads it."""
        longest = min(self.loaded.context_limit, self.params.max_prompt_tokens + self.params.max_new_tokens)

        def progress(total: int):
            self.startup.expect(total)
            return self.startup.tick

        def predictor_for(fit: TimingModel):
            return load_predictor(self.params.predictor_path, fit.prefill, self.params.fixed_prediction_tokens)

        calibration = calibrate_and_save(
            self.loaded, key, path, self.params.engine_config(), predictor_path=self.params.predictor_path,
            predictor_for=predictor_for,
            warn=lambda busy: self.get_logger().warning(f"first-start calibration: {busy}"),
            quantization=self.params.quantization, kv_dtype_pin=self.params.kv_cache_dtype,
            encode=lambda text: self._encode([{"role": "user", "content": text}]), stage=self.startup.begin,
            progress=progress, points=FIRST_START_POINTS, repeats=FIRST_START_ROUNDS, max_length=longest,
            settings={"first_start": True})
        self.get_logger().info(
            f"saved the first-start calibration {path} (quick: {FIRST_START_POINTS} lengths; prefill held-out "
            f"error {calibration.prefill_mape:.1f}%, decode {calibration.decode_mape:.1f}%; online timing corrects "
            "it goal by goal; `timebill calibrate --params-file <params file>` makes a full one)")
        return calibration

    def _on_set_parameters(self, changed: list) -> SetParametersResult:
        """`ros2 param set` on a run-time parameter: validated like at start-up, then in force
        for the next goals (the running one keeps its plan). Read-only ones rclpy refuses."""
        updates = {p.name: p.value for p in changed if p.name in NodeParams.runtime_names()}
        if not updates:
            return SetParametersResult(successful=True)
        candidate = replace(self.params, **updates)
        try:
            candidate.validate()
        except InvalidParameter as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self._lock:
            self.params = candidate
            if self.engine is not None:
                self.limits = candidate.limits(self.loaded.context_limit, self._predictor_k())
                self.engine.config.event_period = 1.0 / candidate.control_rate_hz
                if self.engine.online is not None:
                    self.engine.online.enabled = candidate.online_timing
            if "control_rate_hz" in updates:
                self._timer.timer_period_ns = int(1e9 / candidate.control_rate_hz)
                self._timer.reset()
        self.get_logger().info(f"parameters changed: {updates}")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------- action callbacks
    def _on_goal(self, goal_request: TimedGenerate.Goal) -> GoalResponse:
        # Everything is accepted so that a rejection can carry its reason in the result.
        return GoalResponse.REJECT if self._shutting_down else GoalResponse.ACCEPT

    def _on_accepted(self, handle: ServerGoalHandle) -> None:
        job = GoalJob(handle, accepted_at=time.monotonic())
        goal_id = bytes(handle.goal_id.uuid)
        with self._lock:
            # Registered before the (possibly slow) tokenization, so a cancel that comes in
            # meanwhile finds the job and is honoured; one that came before is taken over.
            self._jobs[goal_id] = job
            if goal_id in self._canceled_early:
                self._canceled_early.discard(goal_id)
                job.cancel.cancel(Status.CANCELED, "canceled by the client")
        self._prepare(job)
        if job.request is not None and job.policy is OverrunPolicy.KILL:
            # Armed at once, so a goal whose deadline passes in the queue is stopped at the
            # engine's first check if it starts late (the control timer expires it otherwise).
            job.cancel.arm_deadline(job.deadline, kill_reason(job.request.budget))
        with self._lock:
            if job.early is None and job.cancel.is_set:
                job.early = self._early(job, job.cancel.status, job.cancel.reason)
            if job.early is None and self._overrunning():
                job.early = self._early(job, Status.SKIPPED, "skipped: an earlier job is overrunning its deadline")
            if job.early is None and len(self._queue) >= self.params.max_queue:
                job.early = self._early(job, Status.REJECTED, f"queue full ({self.params.max_queue} goals waiting)")
            if job.early is None:
                self._queue.append(job)
        if job.early is not None:
            handle.execute()
        self._start_next()

    def _on_request(self, msg: RequestMsg) -> None:
        self._on_accepted(TopicGoalHandle(self, msg))

    def _execute_topic(self, handle: TopicGoalHandle) -> None:
        self._results.publish(record_msg(handle.source, self._execute(handle)))

    def _prepare(self, job: GoalJob) -> None:
        """Validate and tokenize; on failure the job gets its early REJECTED result."""
        refusal = self.refusal()
        if refusal:
            job.early = self._early(job, Status.REJECTED, refusal)
            return
        try:
            job.request, job.policy = build_request(
                goal_from_msg(job.handle.request), self.limits, self._encode, job.accepted_at,
                self.compiler.compile if self.compiler else None,
            )
        except InvalidGoal as exc:
            job.early = self._early(job, Status.REJECTED, f"invalid goal: {exc}")
        except Exception as exc:  # noqa: BLE001 - e.g. a chat template that raises: this goal only
            job.early = self._early(job, Status.REJECTED, f"could not prepare the goal: {type(exc).__name__}: {exc}")
        if job.early is not None:
            self.get_logger().warning(job.early.reason)

    def refusal(self) -> str:
        """Why no goal can be served now ("" when goals are served)."""
        if self._shutting_down:
            return "node shutting down"
        if self.startup.active:
            return self.startup.describe()
        if self.engine is None:
            return self.configure_error and f"node not configured: {self.configure_error}" or NOT_CONFIGURED
        if not self._active:
            return (f"node is {self.lifecycle_state()}, not active: goals are not served "
                    f"(ros2 lifecycle set {self.get_fully_qualified_name()} activate)")
        return self.not_ready

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        with self._tokenizer_lock:  # HF fast tokenizers are not safe to share across threads
            return encode_prompt(self.loaded.tokenizer, messages=messages)

    def _on_cancel(self, handle: ServerGoalHandle) -> CancelResponse:
        goal_id = bytes(handle.goal_id.uuid)
        with self._lock:
            job = self._jobs.get(goal_id)
            if job is None:  # accepted, but its accepted callback has not registered it yet
                self._canceled_early.add(goal_id)
        if job is not None:
            job.cancel.cancel(Status.CANCELED, "canceled by the client")
        return CancelResponse.ACCEPT

    def _execute(self, handle: ServerGoalHandle) -> TimedGenerate.Result:
        job = self._jobs[bytes(handle.goal_id.uuid)]
        try:
            result = job.early or self._run(job)
        except Exception as exc:  # a bug must not take the server down with it
            self.get_logger().error(f"job failed: {exc}\n{traceback.format_exc()}")
            result = self._early(job, Status.REJECTED, f"internal error: {exc}")
        try:
            return self._finish(job, result)
        finally:
            with self._lock:
                self._jobs.pop(bytes(handle.goal_id.uuid), None)
                if self._running is job:
                    self._running = None
            self._start_next()

    # ---------------------------------------------------------------- running
    def _start_next(self) -> None:
        with self._lock:
            if self._running is not None or not self._queue:
                return
            self._running = self._queue.popleft()
            handle = self._running.handle
        handle.execute()

    def _run(self, job: GoalJob) -> Result:
        tokenizer = self.loaded.tokenizer

        def publish(event: Event) -> None:
            with self._tokenizer_lock:
                text = tokenizer.decode(event.tokens, skip_special_tokens=True)
            job.handle.publish_feedback(feedback_msg(event, text))

        # A Kill job's token was armed with its deadline at acceptance: the engine stops itself
        # there, and the control timer backs it up.
        return apply_overrun_policy(self.torch.call(self.engine.run, job.request, job.cancel, publish), job.policy)

    def _finish(self, job: GoalJob, result: Result) -> TimedGenerate.Result:
        self._count(result)
        handle = job.handle
        if result.status is Status.SUCCEEDED:
            handle.succeed()
        elif result.status is Status.CANCELED and handle.is_cancel_requested:
            handle.canceled()
        else:
            handle.abort()
        line = f"goal {result.status.name} in {result.timings.total:.3f}s {result.reason}".rstrip()
        if result.status is Status.SUCCEEDED:  # rclpy wants one severity per call site
            self.get_logger().info(line)
        else:
            self.get_logger().warning(line)
        return result_msg(result)

    def _count(self, result: Result) -> None:
        with self._lock:
            if result.status is Status.SUCCEEDED:
                self.stats["succeeded"] += 1
            if result.status is Status.KILLED_AT_DEADLINE:
                self.stats["killed"] += 1
            if result.status in (Status.KILLED_AT_DEADLINE, Status.COMPLETED_LATE):
                self.stats["deadline_misses"] += 1
            if result.plan is not None:
                self.stats["last_alpha"], self.stats["last_wcet"] = result.plan.alpha, result.plan.wcet

    def _early(self, job: GoalJob, status: Status, reason: str) -> Result:
        now = time.monotonic()
        result = Result(status=status, reason=reason)
        result.timings.total = result.timings.queue = now - job.accepted_at
        if job.request is not None:
            result.prompt_tokens = len(job.request.prompt_ids)
            result.deadline_margin = now - job.deadline
        return result

    # ------------------------------------------------------------ the control loop
    def _overrunning(self) -> bool:
        """True while a skip_next job runs past its deadline (a kill job is stopped instead)."""
        job = self._running
        return (job is not None and job.request is not None and job.policy is OverrunPolicy.SKIP_NEXT
                and time.monotonic() > job.deadline)

    def _on_control_tick(self) -> None:
        """Deadline enforcement at control_rate_hz: queued goals, and the running job's kill
        when its engine is somewhere its token is not checked (e.g. a long eviction)."""
        now = time.monotonic()
        finish_now: list[GoalJob] = []
        with self._lock:
            job = self._running
            if job is not None and job.policy is OverrunPolicy.KILL and now >= job.deadline:
                job.cancel.cancel(Status.KILLED_AT_DEADLINE, kill_reason(job.request.budget))
            for queued in list(self._queue):
                if queued.cancel.was_set:
                    queued.early = self._early(queued, queued.cancel.status, queued.cancel.reason)
                elif now >= queued.deadline:
                    status = Status.KILLED_AT_DEADLINE if queued.policy is OverrunPolicy.KILL else Status.SKIPPED
                    queued.early = self._early(queued, status, "the deadline passed while the goal waited in the queue")
                else:
                    continue
                self._queue.remove(queued)
                finish_now.append(queued)
        for queued in finish_now:
            queued.handle.execute()

    # --------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        """Stop taking goals and stop every held job; their results say why."""
        self._shutting_down = True
        self._abort_held("node shutting down")

    def destroy_node(self) -> None:
        """Let the torch thread end, then destroy the node (also one whose parameters failed
        validation in __init__, before the thread was made)."""
        if (torch_thread := getattr(self, "torch", None)) is not None:
            torch_thread.close()
        super().destroy_node()

    def _abort_held(self, reason: str) -> None:
        with self._lock:
            held = ([self._running] if self._running else []) + list(self._queue)
        for job in held:
            job.cancel.cancel(Status.REJECTED, reason)
        self._on_control_tick()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no goal is held (results sent), at most TIMEOUT seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._jobs:
                    break
            time.sleep(0.02)
        time.sleep(0.1)  # let the executor send the last results
        with self._lock:
            return not self._jobs
