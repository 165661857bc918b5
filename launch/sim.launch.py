"""Launch the simulation bridge and the vlm3r_ros node on simulation time (ROS 2 installs).

    ros2 launch vlm3r_ros sim.launch.py
    ros2 launch vlm3r_ros sim.launch.py node_params_file:=/path/to/my_vlm3r.yaml num_frames:=120

vlm3r_sim_bridge renders a simulated room (config/sim_bridge.yaml) and publishes images,
camera info, /tf, /tf_static, odom, /clock and the ground-truth scene graph; the node is
started by including launch/vlm3r.launch.py (default config/tiny.yaml: TINY RANDOM WEIGHTS,
meaningless answers) with use_sim_time, and takes every frame: the bridge waits for it
(lockstep on its ~/state). Questions go to /spatial_query; the scored loop is
`vlm3r-sim-eval` (docs/sim.md).

Arguments:
    bridge_params_file  bridge parameters (default: the package's config/sim_bridge.yaml)
    node_params_file    node parameters (default: config/tiny.yaml; config/vlm3r.yaml with
                        weight paths filled in for real answers)
    num_frames          frames of the generated trajectory
    output_dir          where the bridge writes the ground truth ('' = no files)
    namespace           namespace of both nodes and their topics
A params file that does not exist stops the launch with an error.

Fast DDS: FASTDDS_DEFAULT_PROFILES_FILE is set to config/fastdds_large_data.xml for both
processes unless it is already set (large images over shared memory).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from vlm3r_ros.ros.launch_checks import require_existing_files


def generate_launch_description():
    share = FindPackageShare('vlm3r_ros')
    config = PathJoinSubstitution([share, 'config'])
    bridge_params_file = LaunchConfiguration('bridge_params_file')
    node_params_file = LaunchConfiguration('node_params_file')
    num_frames = LaunchConfiguration('num_frames')
    output_dir = LaunchConfiguration('output_dir')
    namespace = LaunchConfiguration('namespace')

    return LaunchDescription([
        DeclareLaunchArgument(
            'bridge_params_file', default_value=PathJoinSubstitution([config, 'sim_bridge.yaml']),
            description='Parameter YAML of vlm3r_sim_bridge'),
        DeclareLaunchArgument(
            'node_params_file', default_value=PathJoinSubstitution([config, 'tiny.yaml']),
            description='Parameter YAML of vlm3r_node (config/tiny.yaml: tiny random weights)'),
        DeclareLaunchArgument(
            'num_frames', default_value='60', description='Frames of the generated trajectory'),
        DeclareLaunchArgument(
            'output_dir', default_value='', description="Ground-truth output folder ('' = none)"),
        DeclareLaunchArgument(
            'namespace', default_value='', description='Namespace of both nodes and their topics'),
        SetEnvironmentVariable(
            'FASTDDS_DEFAULT_PROFILES_FILE',
            EnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                                default_value=PathJoinSubstitution([config, 'fastdds_large_data.xml']))),
        # launch_ros would only warn about a missing params file (the node's: vlm3r.launch.py).
        OpaqueFunction(function=require_existing_files, args=['bridge_params_file']),
        Node(
            package='vlm3r_ros',
            executable='vlm3r_sim_bridge',
            name='vlm3r_sim_bridge',
            namespace=namespace,
            output='screen',
            emulate_tty=True,
            parameters=[
                bridge_params_file,
                {
                    'num_frames': ParameterValue(num_frames, value_type=int),
                    'output_dir': ParameterValue(output_dir, value_type=str),
                    'lockstep_state_topic': 'vlm3r_node/state',
                },
            ],
        ),
        # The node exactly as vlm3r.launch.py starts it (name vlm3r_node: the lockstep topic above).
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([share, 'launch', 'vlm3r.launch.py'])),
            launch_arguments={
                'params_file': node_params_file,
                'namespace': namespace,
                'use_sim_time': 'true',
            }.items(),
        ),
    ])
