"""`timebill bag make | replay` and `timebill eval`: workloads as rosbag2 bags, replayed
against a running node, and evaluated from the recorded results."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
from tqdm import tqdm

from timebill_ros.eval import bags, report, workload

# The longest a replay waits in one spin_once: results and due times end waits, not polls.
_POLL_S = 0.5


def make_workload(out: Path, storage: str, per_task: int, budgets: str, methods: str, k_sweep: bool,
                  policies: list[str], params_file: str, max_new_tokens: int = 384,
                  quantiles: tuple[float, ...] = workload.QUANTILES, task_names: tuple[str, ...] | None = None,
                  prompt_tokens: tuple[int, int] | None = None, answers: str = "any"):
    """Requests for every (policy, budget, method), written as a bag: prompts of the test split,
    or made from its sources at PROMPT_TOKENS with ANSWERS (tasks.evaluation_examples). Returns
    (requests, budgets, path)."""
    from timebill_ros.cli.calibrate import CalibrationTarget
    from timebill_ros.cli.traces import comparison_examples
    from timebill_ros.core.calibration import Calibration
    from timebill_ros.core.model import encode_prompt, load_tokenizer
    from timebill_ros.eval import tasks

    task_names = task_names or tasks.TASKS
    target = CalibrationTarget.from_sources(params_file, {})
    tokenizer = load_tokenizer(target.model_path)
    # The same prompts eval-traces measures (sized by the node's own token count).
    examples = comparison_examples(tokenizer, per_task, task_names, prompt_tokens, target.max_prompt_tokens, answers)
    distilled = workload.distilled_lengths(distill_folder(target) / "test.jsonl.gz")
    if budgets == "auto":
        timing = Calibration.load(target.path()).timing
        chosen = {}
        for task in task_names:
            mine = [e for e in examples if e.task == task]
            prompt_n = [len(encode_prompt(tokenizer, e.prompt)) for e in mine]
            # The target's own response lengths where distilled (what vanilla really has to
            # decode), else the reference answer's length.
            answer_n = [distilled.get(e.id, len(tokenizer(e.answer)["input_ids"]) + 1) for e in mine]
            chosen[task] = workload.choose_budgets(timing, prompt_n, answer_n, quantiles)
    elif budgets.endswith(".json"):  # the levels another bag was made with (--budgets-out)
        chosen = json.loads(Path(budgets).read_text())
    else:
        chosen = workload.fixed_budgets([float(b) for b in budgets.split(",")], list(task_names))
    known = {**workload.METHODS, **workload.QUANTIZED, **workload.K_SWEEP}
    unknown = [m for m in methods.split(",") if m not in known]
    if unknown:
        raise click.BadParameter(f"unknown method(s) {unknown}; known: {', '.join(known)}", param_hint="--methods")
    try:
        requests = workload.build(examples, chosen, {m: known[m] for m in methods.split(",")}, policies,
                                  max_new_tokens, true_lengths=distilled)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if k_sweep:  # k = 1..8 at the middle level (vanilla completes about half), under the first policy
        levels = list(next(iter(chosen.values())))
        middle = levels[len(levels) // 2]
        start = requests[-1].at + workload.GAP_S if requests else 0.0
        requests += workload.build(examples, {t: {middle: b[middle]} for t, b in chosen.items()}, workload.K_SWEEP,
                                   policies[:1], max_new_tokens, start)
    return requests, chosen, make_workload_bag(out, storage, requests)


def distill_folder(target) -> Path:
    """Where the target's distilled response lengths are: beside the node's predictor, else
    beside the model (the toy model keeps them in its rlp/ folder)."""
    from timebill_ros.core.model import resolve_model_path
    from timebill_ros.core.predictor import predictor_folder

    if target.predictor_path:
        return predictor_folder(target.predictor_path).parent / "distill"
    return resolve_model_path(target.model_path) / "rlp" / "distill"


def make_workload_bag(out: Path, storage: str, requests: list[workload.TimedRequest]) -> Path:
    """Write the timed requests as /timebill/requests messages (stamps = arrival times)."""
    start_ns = time.time_ns()
    records = [(start_ns + int(r.at * 1e9), r.fields) for r in requests]
    return bags.write_bag(out, bags.REQUEST_TOPIC, bags.REQUEST_TYPE, records, storage)


def replay(bag_in: Path, bag_out: Path, rate: float, storage: str, wait_s: float, skip_idle: bool = False) -> dict:
    """Publish the bag's requests at their (scaled) arrival times; record every result.

    Blocks of requests (one policy, budget level and method) never overlap: the first request
    of a block waits until every earlier one is answered, and the schedule moves later by the
    wait (a Skip-Next overrun would otherwise skip the next method's jobs and charge it them).

    SKIP_IDLE: while every request sent so far has its result (the node is idle), the wait for
    the next arrival is cut and the rest of the schedule moves earlier by as much. A job then
    meets the node exactly as it would have at its arrival time (idle, nothing queued), and
    overlapping arrivals (a Skip-Next overrun) keep their spacing; only idle time is saved."""
    import rclpy
    from builtin_interfaces.msg import Duration
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from timebill_msgs.msg import Request, ResultRecord

    requests = list(bags.read_bag([bag_in], bags.REQUEST_TOPIC))
    if not requests:
        raise click.ClickException(f"no {bags.REQUEST_TOPIC} messages in {bag_in}")
    rclpy.init()
    node = rclpy.create_node("timebill_bag_replay")
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Request, bags.REQUEST_TOPIC, qos)
    results: dict[str, tuple[int, ResultRecord]] = {}
    node.create_subscription(ResultRecord, bags.RESULT_TOPIC,
                             lambda m: results.setdefault(m.request_id, (time.time_ns(), m)), qos)
    try:
        _wait_for_node(node, pub)
        answered_by = _node_planning(node)
        t0_bag, t0, block = requests[0][0], time.monotonic(), None
        skipped = waited = 0.0  # idle time cut (skip_idle); time blocks waited for an overrun to end
        with tqdm(total=len(requests), desc=f"replaying {bag_in.name}", unit="request") as bar:
            for sent, (stamp, msg) in enumerate(requests):
                due = t0 + (stamp - t0_bag) / 1e9 / rate - skipped + waited
                goal = workload.GoalId.parse(msg.request_id)
                if (key := goal.block if goal else msg.request_id) != block:  # a new (policy, level, method) block
                    block = key
                    late = max(0.0, _wait_until_answered(node, results, sent, wait_s) - due)
                    waited, due = waited + late, due + late
                while time.monotonic() < due:
                    if skip_idle and len(results) >= sent:
                        skipped += due - time.monotonic()
                        break
                    # A result wakes spin_once at once, so the wait can run to the arrival: a
                    # 10 ms poll cost ~5 % of a core beside the node, on the cores it decodes on.
                    rclpy.spin_once(node, timeout_sec=min(_POLL_S, max(0.0, due - time.monotonic())))
                fields = bags.as_dict(msg)
                fields["budget"] = Duration(sec=msg.budget.sec, nanosec=msg.budget.nanosec)
                pub.publish(Request(**fields))
                bar.update(1)
                bar.set_postfix(results=len(results))
        deadline = time.monotonic() + wait_s
        while len(results) < len(requests) and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=_POLL_S)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    records = [(stamp, {f: getattr(m, f) for f in m.get_fields_and_field_types()}) for stamp, m in
               sorted(results.values(), key=lambda x: x[0])]
    bags.write_bag(bag_out, bags.RESULT_TOPIC, bags.RESULT_TYPE, records, storage,
                   custom={bags.NODE_KEY: json.dumps(answered_by)})
    summary = {"requests": len(requests), "results": len(results), "lost": len(requests) - len(results),
               "overrun_wait_s": round(waited, 1)}
    return {**summary, "idle_skipped_s": round(skipped, 1)} if skip_idle else summary


def _wait_until_answered(node, results: dict, sent: int, timeout: float) -> float:
    """Block barrier: wait until the node has answered all SENT requests, so a Skip-Next
    overrun of one block (the late job runs on, up to the token cap) cannot skip the next
    block's jobs. Returns the time it ends."""
    import rclpy

    end = time.monotonic() + timeout
    while len(results) < sent and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=_POLL_S)
    return time.monotonic()


# What decides a goal's plan besides the request: recorded with the results, so that a check
# against traces (eval-traces --agree) can refuse results planned by another model or predictor.
PLANNING_PARAMS = ("model_path", "predictor_path", "fixed_prediction_tokens", "k", "snapkv_window",
                   "max_new_tokens", "online_timing", "replan_steps")


def _node_planning(node, timeout: float = 10.0) -> dict:
    """The planning parameters of the node publishing the results, read through its parameter
    services, with its predictor's digest as found here ({} when the node does not answer)."""
    import rclpy
    from rclpy.parameter import parameter_value_to_python
    from rclpy.parameter_client import AsyncParameterClient

    for name in _result_publishers(node, timeout):
        client = AsyncParameterClient(node, name)
        if not client.wait_for_services(timeout_sec=timeout):
            continue
        future = client.get_parameters(list(PLANNING_PARAMS))
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        if not future.done() or future.result() is None:
            continue
        values = dict(zip(PLANNING_PARAMS, map(parameter_value_to_python, future.result().values)))
        return {"node": name, **values, "predictor_digest": _local_digest(values)}
    return {}


def _result_publishers(node, timeout: float) -> list[str]:
    """The full names of the nodes publishing the results. Discovery reports a topic's endpoints
    before their node's name (`_NODE_NAME_UNKNOWN_` until then): wait for the names."""
    import rclpy

    end = time.monotonic() + timeout
    while True:
        infos = node.get_publishers_info_by_topic(bags.RESULT_TOPIC)
        if (infos and all(i.node_name != "_NODE_NAME_UNKNOWN_" for i in infos)) or time.monotonic() > end:
            return [f"{i.node_namespace.rstrip('/')}/{i.node_name}" for i in infos
                    if i.node_name != "_NODE_NAME_UNKNOWN_"]
        rclpy.spin_once(node, timeout_sec=0.1)


def _local_digest(values: dict) -> str | None:
    """The digest of the node's predictor as this machine has it (None when it has not: the
    node may run elsewhere)."""
    from timebill_ros.core.predictor import PredictorLoadError, predictor_digest, predictor_folder

    spec, fixed = values.get("predictor_path") or "", int(values.get("fixed_prediction_tokens") or 0)
    try:
        return predictor_digest(spec, fixed) if not spec or predictor_folder(spec).is_dir() else None
    except PredictorLoadError:
        return None


def _wait_for_node(node, pub, timeout: float = 60.0) -> None:
    import rclpy

    end = time.monotonic() + timeout
    while pub.get_subscription_count() == 0 or node.count_publishers(bags.RESULT_TOPIC) == 0:
        if time.monotonic() > end:
            raise click.ClickException("no timebill_node subscribed to /timebill/requests (same ROS_DOMAIN_ID?)")
        rclpy.spin_once(node, timeout_sec=0.1)


def evaluate_bags(paths: list[Path], out: Path, main_methods: list[str]) -> dict:
    """Summaries, claims and plots from result bags (bags.result_records: the last run of a request counts)."""
    records = bags.result_records(paths)
    if not records:
        raise click.ClickException("no results in the given bags")
    table = report.summarise(records)
    claims = report.check_claims(table, main_methods)
    out.mkdir(parents=True, exist_ok=True)
    plots = report.plot(table, out, main_methods)
    data = {"results": len(records), "table": table, "claims": claims, "mechanism": report.mechanism(records),
            "plots": [str(p) for p in plots]}
    if (out / "run.json").is_file():  # what make eval ran: model, predictor, size, minutes
        data["run"] = json.loads((out / "run.json").read_text())
    (out / "eval.json").write_text(json.dumps(data, indent=2))
    return data
