"""ament_python package timebill_ros; the code lives under src/."""
import xml.etree.ElementTree as ET
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

# package.xml is the one place for name, version, maintainer and licence (colcon and rosdep
# read it too); setup.py takes them from there.
MANIFEST = ET.parse(Path(__file__).resolve().parent / "package.xml").getroot()
PACKAGE = MANIFEST.findtext("name")
MAINTAINER = MANIFEST.find("maintainer")

setup(
    name=PACKAGE,
    version=MANIFEST.findtext("version"),
    package_dir={"": "src"},
    packages=find_packages("src", include=["timebill_ros", "timebill_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    # The shipped task-suite splits and the embedded default model (weights + tokenizer).
    # Every shipped adapter (the v2-v8 ones are the next recipe's start), predictor and distillation.
    package_data={PACKAGE: ["data/tasks/*", "models/*/*", "models/*/rlp/*/*"]},
    zip_safe=False,
    maintainer=MAINTAINER.text,
    maintainer_email=MAINTAINER.get("email"),
    description=MANIFEST.findtext("description"),
    license=MANIFEST.findtext("license"),
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "timebill_node = timebill_ros.node.main:main",
            "timebill = timebill_ros.cli.main:main",
        ],
    },
)
