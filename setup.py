"""ament_python package timebill_ros; the code lives under src/."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "timebill_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    package_dir={"": "src"},
    packages=find_packages("src", include=["timebill_ros", "timebill_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    # The shipped task-suite splits and the embedded default model (weights + tokenizer).
    package_data={PACKAGE: ["data/tasks/*", "models/default/*", "models/default/rlp/buckets16/*",
                           "models/default/rlp/distill/*", "models/smollm2-tasks/*",
                           "models/smollm2-tasks/rlp/buckets16/*", "models/smollm2-tasks/rlp/distill/*"]},
    zip_safe=False,
    maintainer="timebill_ros maintainers",
    maintainer_email="maintainers@timebill-ros.org",
    description="Time-budgeted LLM inference as a ROS 2 action server",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "timebill_node = timebill_ros.node.main:main",
            "timebill = timebill_ros.cli.main:main",
        ],
    },
)
