"""ament_python package cv_autolabel (also pip-installable for the workstation tools)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "cv_autolabel"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "benchmarks", "benchmarks.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="cv_autolabel developers",
    maintainer_email="cv-autolabel@example.com",
    description=(
        "Turn a picking robot's RGB-D stream into a continuously improving instance "
        "segmentation model: dedup, detector and active-learning nodes plus offline tools."
    ),
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "cv-autolabel = cv_autolabel.cli:main",
            "dedup_node = cv_autolabel.nodes.dedup_node:main",
            "detector_node = cv_autolabel.nodes.detector_node:main",
            "active_learning_node = cv_autolabel.nodes.active_learning_node:main",
        ],
    },
)
