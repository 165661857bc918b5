"""``vlm3r-play``: publish a video file, an image folder or generated frames as sensor_msgs/Image.

    vlm3r-play --input VIDEO_OR_FOLDER [--rate HZ] [--loop] [--topic image]
    vlm3r-play --generated 60 --rate 10 --loop --camera-info

A ``ros2 bag play`` for plain footage, so anyone can feed ``vlm3r-node`` (or any image
consumer) without a camera or a ROS installation. It publishes on ``image``, the topic
``vlm3r-node`` subscribes to by default (its ``image_topic`` parameter), so the two work
together as they are; ``--topic /camera/image_raw`` imitates a camera driver.

Input (one of):
  --input PATH      a video file (mp4, mov, mkv, avi, ...; decoded by imageio-ffmpeg), a folder
                    of images (png/jpg/jpeg/bmp, sorted by name with numbers compared
                    numerically; unreadable files are skipped with a warning) or one image.
  --generated N     N frames of the synthetic room of ``vlm3r_ros.media.sample_scene``, rendered
                    in memory at --size (nothing is downloaded or written).

Output: ``sensor_msgs/Image`` on --topic (default ``image``), encoding rgb8 by default
(--encoding: any the node reads, e.g. bgr8, mono16, yuyv, bayer_rggb8, to exercise a consumer), ``header.frame_id`` =
--frame-id (default ``camera_optical_frame``: REP 103 optical axes, z forward, x right,
y down). Stamps: ``now`` (default; the ROS clock when the frame is published) or
``source`` (the frame's time in the source, index / fps; with --loop each pass adds the
source's duration, so stamps never go backwards).

With --loop, an image folder whose decoded frames fit in 1 GiB is decoded only once.

Rate: --rate Hz (default: the source's frame rate; 30 for folders and generated frames
unless a sequence.json written by sample_data says otherwise). Frames are published on a
fixed schedule; a frame that is more than one period late (slow decoding) restarts the
schedule instead of bursting, and is counted as late.

QoS: --qos sensor (default: best effort, keep last --depth, what camera drivers and
``vlm3r-node`` use) or reliable. The Fast DDS setting that ``vlm3r-node`` ships
(config/fastdds_large_data.xml, a 16 MiB shared-memory segment; see
``vlm3r_ros.ros.apply_transport_setting``) is applied here too unless
FASTDDS_DEFAULT_PROFILES_FILE or FASTDDS_BUILTIN_TRANSPORTS is set: it matters most on the
sending side, and with Fast DDS's defaults most best-effort frames of 0.5 MB or more are lost.

--camera-info also publishes ``sensor_msgs/CameraInfo`` on the ``camera_info`` topic next to
the image topic (``image_raw`` -> ``camera_info``, ``/cam/image_raw`` -> ``/cam/camera_info``),
with the same header. For generated frames and for folders written by sample_data the
intrinsics are exact. Otherwise they are a GUESS: a pinhole camera with a horizontal field
of view of --hfov degrees (default 60), square pixels, principal point at the image centre,
no distortion. Use a real calibration for anything metric.

ROS arguments come last: ``vlm3r-play --generated 30 --ros-args -r __ns:=/robot1`` (the
topic is then /robot1/image).

--wait-for-subscribers N waits (at most --wait-timeout s) until N subscribers have matched
before the first frame (then 0.5 s more, for the subscribers' side of discovery), so that a
consumer started at the same time sees every frame; --wait-for-info-subscribers N does the same
for the camera_info topic (with --camera-info).
Ctrl-C (or SIGTERM) stops cleanly; a summary is printed at the end.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

from vlm3r_ros.errors import UserError
from vlm3r_ros.media.feed import FrameFeed
from vlm3r_ros.media.sample_scene import DEFAULT_SIZE as DEFAULT_GENERATED_SIZE
from vlm3r_ros.ros.image_messages import DEFAULT_HFOV_DEG, ENCODINGS
from vlm3r_ros.ros.player import NoSubscribers, Stopped, play, raise_stopped

from .cli import image_size

DEFAULT_TOPIC = "image"  # what vlm3r-node subscribes to by default
DEFAULT_FRAME_ID = "camera_optical_frame"
LOOP_CACHE_BYTES = 1 << 30  # with --loop, a folder whose decoded frames fit is decoded once


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm3r-play", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, metavar="PATH", help="video file, image folder or one image")
    src.add_argument("--generated", type=int, metavar="N", help="N generated frames of the synthetic room")
    parser.add_argument("--size", type=image_size, default=DEFAULT_GENERATED_SIZE, metavar="WxH",
                        help="size of generated frames (default 640x480)")
    parser.add_argument("--seed", type=int, default=0, help="texture seed of generated frames (default 0)")
    parser.add_argument("--rate", type=float, default=None, metavar="HZ",
                        help="frames per second to publish (default: the source's frame rate)")
    parser.add_argument("--source-fps", type=float, default=None, metavar="FPS",
                        help="frame rate of a folder of images (default 30, or its sequence.json); "
                             "sets source stamps and the default --rate")
    parser.add_argument("--loop", action="store_true", help="start again at the end")
    parser.add_argument("--max-frames", type=int, default=0, metavar="N",
                        help="stop after publishing N frames (0 = no limit; with --loop, runs until Ctrl-C)")
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help=f"image topic (default {DEFAULT_TOPIC})")
    parser.add_argument("--frame-id", default=DEFAULT_FRAME_ID, help=f"header.frame_id (default {DEFAULT_FRAME_ID})")
    parser.add_argument("--stamps", choices=("now", "source"), default="now",
                        help="now: ROS clock at publication (default); source: index / fps in the source")
    parser.add_argument("--encoding", choices=ENCODINGS, default="rgb8", help="image encoding (default rgb8; 16-bit ones little-endian)")
    parser.add_argument("--qos", choices=("sensor", "reliable"), default="sensor",
                        help="sensor: best effort (default, as camera drivers); reliable")
    parser.add_argument("--depth", type=int, default=5, help="QoS history depth (default 5)")
    parser.add_argument("--camera-info", action="store_true",
                        help="also publish sensor_msgs/CameraInfo on the sibling camera_info topic")
    parser.add_argument("--hfov", type=float, default=DEFAULT_HFOV_DEG, metavar="DEG",
                        help="horizontal field of view of the GUESSED camera info (default 60)")
    parser.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                        help="wait until N subscribers have matched before publishing (default 0)")
    parser.add_argument("--wait-for-info-subscribers", type=int, default=0, metavar="N",
                        help="with --camera-info: also wait until N camera_info subscribers have matched "
                             "(default 0)")
    parser.add_argument("--wait-timeout", type=float, default=30.0, metavar="S",
                        help="give up waiting for subscribers after S seconds (exit 3; default 30)")
    parser.add_argument("--node-name", default="vlm3r_play", help="ROS node name (default vlm3r_play)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    return parser


def _check_args(args) -> None:
    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        raise UserError(f"--rate must be a positive number of Hz, got {args.rate}")
    if args.source_fps is not None and not (math.isfinite(args.source_fps) and args.source_fps > 0):
        raise UserError(f"--source-fps must be positive, got {args.source_fps}")
    if args.max_frames < 0:
        raise UserError(f"--max-frames must be >= 0, got {args.max_frames}")
    if args.depth < 1:
        raise UserError(f"--depth must be >= 1, got {args.depth}")
    if not (0 < args.hfov < 180):
        raise UserError(f"--hfov must be in (0, 180) degrees, got {args.hfov}")
    if args.wait_for_subscribers < 0 or args.wait_for_info_subscribers < 0 or not args.wait_timeout > 0:
        raise UserError("--wait-for-subscribers and --wait-for-info-subscribers must be >= 0 and --wait-timeout > 0")
    if args.wait_for_info_subscribers and not args.camera_info:
        raise UserError("--wait-for-info-subscribers needs --camera-info")
    if not args.topic.strip() or not args.frame_id.strip():
        raise UserError("--topic and --frame-id must not be empty")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = []
    if "--ros-args" in argv:  # ROS arguments (remapping, namespace) go to rclpy
        cut = argv.index("--ros-args")
        argv, ros_args = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, raise_stopped)
    try:
        _check_args(args)
        if args.input is not None:
            feed = FrameFeed(input_path=args.input, fps=args.source_fps,
                             cache_bytes=LOOP_CACHE_BYTES if args.loop else 0)
        else:
            feed = FrameFeed(generated=args.generated, size=args.size, seed=args.seed, fps=args.source_fps)
        stats = play(args, feed, ros_args=ros_args)
    except NoSubscribers as exc:
        print(f"vlm3r-play: error: {exc}", file=sys.stderr)
        return 3
    except UserError as exc:
        print(f"vlm3r-play: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Stopped):  # before publishing started
        print("vlm3r-play: stopped before publishing", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    how = "stopped" if stats.interrupted else "done"
    print(f"vlm3r-play: {how}: {stats.published} frames in {stats.seconds:.1f} s "
          f"({stats.rate_hz:.1f} Hz), {stats.passes} full pass(es), {stats.late} late; "
          f"{stats.subscribers} subscriber(s) at start", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
