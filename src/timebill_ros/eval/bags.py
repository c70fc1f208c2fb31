"""Workload and result bags: real rosbag2 files (MCAP or sqlite3) written and read with
the pure-Python `rosbags` library, using the timebill_msgs message definitions."""
from __future__ import annotations

from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Iterable, Iterator

from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

SOURCE_MSG_DIR = Path(__file__).resolve().parents[2] / "timebill_msgs" / "msg"
REQUEST_TYPE = "timebill_msgs/msg/Request"
RESULT_TYPE = "timebill_msgs/msg/ResultRecord"
REQUEST_TOPIC = "/timebill/requests"
RESULT_TOPIC = "/timebill/results"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


def msg_dir() -> Path:
    """The installed timebill_msgs/msg definitions (the source tree's when not installed)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("timebill_msgs")) / "msg"
    except (ImportError, LookupError, ValueError):
        return SOURCE_MSG_DIR


def typestore():
    """A ROS 2 typestore that knows the timebill_msgs messages."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name in ("Request", "ResultRecord"):
        types.update(get_types_from_msg((msg_dir() / f"{name}.msg").read_text(), f"timebill_msgs/msg/{name}"))
    store.register(types)
    return store


# The custom-data key (rosbag2 metadata) under which a result bag names the node that answered it.
NODE_KEY = "timebill.node"


def write_bag(path: Path, topic: str, msgtype: str, records: Iterable[tuple[int, dict]], storage: str = "mcap",
              custom: dict[str, str] | None = None) -> Path:
    """Write (timestamp_ns, fields) records as MSGTYPE on TOPIC; PATH must not exist yet. CUSTOM
    goes into the bag's metadata.yaml (custom_data: `ros2 bag info` and any rosbag2 reader keep it)."""
    store = typestore()
    cls = store.types[msgtype]
    duration = store.types["builtin_interfaces/msg/Duration"]
    defaults = msg_defaults(msgtype)  # parsed once, not per record
    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as writer:
        for key, value in (custom or {}).items():
            writer.set_custom_data(key, value)
        conn = writer.add_connection(topic, msgtype, typestore=store)
        for stamp, values in records:
            values = dict(values)
            if "budget" in values and isinstance(values["budget"], float) and msgtype == REQUEST_TYPE:
                sec = int(values["budget"])
                values["budget"] = duration(sec=sec, nanosec=int(round((values["budget"] - sec) * 1e9)))
            msg = cls(**{**defaults, **values})
            writer.write(conn, stamp, store.serialize_cdr(msg, msgtype))
    return path


def msg_defaults(msgtype: str) -> dict:
    """The plain fields of a timebill_msgs message with their .msg defaults (zero when it has
    none): fields added to a message later may be absent from older records."""
    kinds = {"string": str, "bool": lambda v: v.lower() == "true", "float32": float, "float64": float}
    out = {}
    for line in (msg_dir() / f"{msgtype.rsplit('/', 1)[-1]}.msg").read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2 or "=" in line.split("#", 1)[0] or "/" in words[0] or "[" in words[0]:
            continue  # a comment, a constant, a nested message or an array
        kind = kinds.get(words[0], int)
        out[words[1]] = kind(words[2]) if len(words) > 2 else kind() if kind is not kinds["bool"] else False
    return out


def read_bag(paths: list[Path], topic: str) -> Iterator[tuple[int, object]]:
    """(timestamp_ns, message) of TOPIC from one or more bags, in time order."""
    store = typestore()
    with AnyReader([Path(p) for p in paths], default_typestore=store) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, stamp, raw in reader.messages(connections=conns):
            yield stamp, reader.deserialize(raw, conn.msgtype)


def as_dict(msg: object) -> dict:
    """A rosbags message as plain fields (nested messages kept as objects)."""
    return {f.name: getattr(msg, f.name) for f in dc_fields(msg)}


def custom_data(path: Path) -> dict[str, str]:
    """The custom_data of a rosbag2 bag's metadata.yaml ({} for bags written without it)."""
    import yaml

    meta = yaml.safe_load((Path(path) / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return dict(meta.get("custom_data") or {})


def result_records(paths: list[Path]) -> list[dict]:
    """The result records of result bags, one per request: a request found in several bags
    counts once, as the last bag given has it (a block replayed again replaces the earlier run)."""
    latest = {}
    for path in paths:
        latest.update({m.request_id: as_dict(m) for _, m in read_bag([Path(path)], RESULT_TOPIC)})
    return list(latest.values())
