"""Launch the vlm3r_ros node (ROS 2 installs with launch_ros).

    ros2 launch vlm3r_ros vlm3r.launch.py image_topic:=/camera/color/image_raw \\
        params_file:=/path/to/my_vlm3r.yaml namespace:=robot1

Arguments:
    params_file   parameter YAML (default: the package's config/vlm3r.yaml, real weights:
                  fill in its weight paths; config/tiny.yaml runs on tiny random weights).
                  A file that does not exist stops the launch with an error.
    image_topic   sensor_msgs/Image topic the node reads: a remapping of the node's `image`
                  topic (the image_topic parameter's default), so it never overrides a
                  params file that names another topic
    namespace     namespace of the node, its topics and its spatial_query service
    use_sim_time  use /clock (true when playing a bag)

Fast DDS: FASTDDS_DEFAULT_PROFILES_FILE is set to the package's
config/fastdds_large_data.xml (a 16 MiB shared-memory segment) for everything this file
launches, unless it is already set; without it most large best-effort images are lost.
A camera driver started elsewhere needs the same variable, since the sender's setting
is the one that matters.

launch/sim.launch.py includes this file.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from vlm3r_ros.ros.launch_checks import require_existing_files


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare('vlm3r_ros'), 'config'])
    params_file = LaunchConfiguration('params_file')
    image_topic = LaunchConfiguration('image_topic')
    namespace = LaunchConfiguration('namespace')
    use_sim_time = LaunchConfiguration('use_sim_time')

    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file', default_value=PathJoinSubstitution([config, 'vlm3r.yaml']),
            description='Parameter YAML of the node (config/vlm3r.yaml: real weights; '
                        'config/tiny.yaml: tiny random weights)'),
        DeclareLaunchArgument(
            'image_topic', default_value='image',
            description='sensor_msgs/Image topic to subscribe to, remapped onto the node\'s "image" '
                        '(relative names follow the namespace)'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node, its topics and services'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false',
            description='Use simulation time from /clock'),
        SetEnvironmentVariable(
            'FASTDDS_DEFAULT_PROFILES_FILE',
            EnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                                default_value=PathJoinSubstitution([config, 'fastdds_large_data.xml']))),
        # launch_ros would only warn about a missing params file and start on defaults.
        OpaqueFunction(function=require_existing_files, args=['params_file']),
        LifecycleNode(
            package='vlm3r_ros',
            executable='vlm3r_node',
            name='vlm3r_node',
            namespace=namespace,
            output='screen',
            emulate_tty=True,
            parameters=[
                params_file,
                {'use_sim_time': ParameterValue(use_sim_time, value_type=bool)},
            ],
            remappings=[('image', image_topic)],
        ),
    ])
