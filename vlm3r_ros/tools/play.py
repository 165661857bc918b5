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
  --generated N     N frames of the synthetic room of ``vlm3r_ros.tools.sample_data``, rendered
                    in memory at --size (nothing is downloaded or written).

Output: ``sensor_msgs/Image`` on --topic (default ``image``), encoding rgb8 by default
(--encoding bgr8/rgba8/bgra8/mono8 to exercise a consumer), ``header.frame_id`` =
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
before the first frame, so that a consumer started at the same time sees every frame.
Ctrl-C (or SIGTERM) stops cleanly; a summary is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from vlm3r_ros.media.frames import FrameSource, MediaError
from vlm3r_ros.ros.image_messages import (DEFAULT_HFOV_DEG, ENCODINGS, camera_info_topic, encode_pixels,
                                          fill_camera_info, fill_image, pinhole_guess, stamp_from_seconds)

from .cli import image_size

DEFAULT_TOPIC = "image"  # what vlm3r-node subscribes to by default
DEFAULT_FRAME_ID = "camera_optical_frame"
DEFAULT_GENERATED_SIZE = (640, 480)
LOOP_CACHE_BYTES = 1 << 30  # with --loop, a folder whose decoded frames fit is decoded once


class PlayError(Exception):
    """A user error: printed as one line, exit status 2."""


class NoSubscribers(PlayError):
    """--wait-for-subscribers timed out: exit status 3."""


# ---------------------------------------------------------------------- frames
@dataclass
class SourceFrame:
    index: int  # index in the source
    name: str  # file name, "frame N" or "generated N"
    image: np.ndarray  # (H, W, 3) uint8 RGB


class FrameFeed:
    """The frames of one source, iterable any number of times (one pass per iteration)."""

    def __init__(self, *, input_path: Path | None = None, generated: int = 0,
                 size: tuple[int, int] = DEFAULT_GENERATED_SIZE, seed: int = 0, fps: float | None = None,
                 cache_bytes: int = 0):
        """``cache_bytes`` > 0: keep the decoded frames of an image folder in memory after the
        first pass when they fit in that many bytes (later passes then decode nothing)."""
        from vlm3r_ros.media import sample_scene

        self.input_path = input_path
        self.cache_bytes = cache_bytes
        self._cache: list[SourceFrame] | None = None
        self.skipped: list[str] = []
        self.exact_intrinsics: tuple[float, float, float, float] | None = None  # (fx, fy, cx, cy)
        if input_path is None:
            if generated < 1:
                raise PlayError(f"--generated must be >= 1, got {generated}")
            try:
                self._frames = sample_scene.generate_sequence(generated, size, seed)
            except ValueError as exc:
                raise PlayError(str(exc)) from None
            self.fps = fps or 30.0
            self.total: int | None = generated
            self.exact_intrinsics = sample_scene.intrinsics(size)
            self.description = f"{generated} generated frames ({size[0]}x{size[1]}, sample_data seed {seed})"
            return
        self._frames = None
        try:
            source = FrameSource(input_path, fps)
        except MediaError as exc:
            raise PlayError(str(exc)) from None
        source.close()  # opened again for each pass
        self.fps = source.fps
        self.total = source.total
        self.is_video = source.is_video
        if not source.is_video and input_path.is_dir():
            doc = _read_sequence_json(input_path)
            if doc is not None:
                if fps is None and doc.get("fps"):
                    self.fps = float(doc["fps"])
                k = doc.get("intrinsics") or {}
                if all(isinstance(k.get(n), (int, float)) for n in ("fx", "fy", "cx", "cy")):
                    self.exact_intrinsics = (k["fx"], k["fy"], k["cx"], k["cy"])
                    self._intrinsics_size = tuple(doc.get("size") or ())
        kind = "video" if source.is_video else ("folder" if input_path.is_dir() else "image")
        count = f"{self.total} frames" if self.total is not None else "frames"
        self.description = f"{kind} {input_path} ({count}, {self.fps:g} fps)"

    def intrinsics_for(self, width: int, height: int) -> tuple[float, float, float, float] | None:
        """The exact intrinsics when known for an image of this size, else None."""
        if self.exact_intrinsics is None:
            return None
        size = getattr(self, "_intrinsics_size", None)
        if size and tuple(size) != (width, height):
            return None
        return self.exact_intrinsics

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._frames is not None:
            for i, image in enumerate(self._frames):
                yield SourceFrame(i, f"generated {i}", image)
            return
        if self._cache is not None:
            yield from self._cache
            return
        try:
            source = FrameSource(self.input_path, self.fps)
        except MediaError as exc:
            raise PlayError(str(exc)) from None
        caching = self.cache_bytes > 0 and not source.is_video
        kept: list[SourceFrame] = []
        kept_bytes = 0
        try:
            for frame in source.frames():
                if frame.image is None:
                    if frame.name not in self.skipped:
                        self.skipped.append(frame.name)
                        print(f"warning: skipped {frame.name}: {frame.error}", file=sys.stderr)
                    continue
                item = SourceFrame(frame.index, frame.name, frame.image)
                if caching:
                    kept.append(item)
                    kept_bytes += item.image.nbytes
                    caching = kept_bytes <= self.cache_bytes
                yield item
        except MediaError as exc:
            raise PlayError(str(exc)) from None
        finally:
            source.close()
        if caching and kept:  # a complete pass that fits
            self._cache = kept


def _read_sequence_json(folder: Path) -> dict | None:
    from vlm3r_ros.media import sample_scene

    try:
        doc = json.loads((folder / sample_scene.SEQUENCE_JSON).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("generator") == sample_scene.SEQUENCE_GENERATOR else None


# ---------------------------------------------------------------------- player
@dataclass
class PlayStats:
    published: int = 0
    passes: int = 0
    late: int = 0
    seconds: float = 0.0
    waited_for_subscribers_s: float = 0.0
    subscribers: int = 0
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM

    @property
    def rate_hz(self) -> float:
        return (self.published - 1) / self.seconds if self.published > 1 and self.seconds > 0 else math.nan


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
    parser.add_argument("--encoding", choices=ENCODINGS, default="rgb8", help="image encoding (default rgb8)")
    parser.add_argument("--qos", choices=("sensor", "reliable"), default="sensor",
                        help="sensor: best effort (default, as camera drivers); reliable")
    parser.add_argument("--depth", type=int, default=5, help="QoS history depth (default 5)")
    parser.add_argument("--camera-info", action="store_true",
                        help="also publish sensor_msgs/CameraInfo on the sibling camera_info topic")
    parser.add_argument("--hfov", type=float, default=DEFAULT_HFOV_DEG, metavar="DEG",
                        help="horizontal field of view of the GUESSED camera info (default 60)")
    parser.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                        help="wait until N subscribers have matched before publishing (default 0)")
    parser.add_argument("--wait-timeout", type=float, default=30.0, metavar="S",
                        help="give up waiting for subscribers after S seconds (exit 3; default 30)")
    parser.add_argument("--node-name", default="vlm3r_play", help="ROS node name (default vlm3r_play)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    return parser


def _check_args(args) -> None:
    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        raise PlayError(f"--rate must be a positive number of Hz, got {args.rate}")
    if args.source_fps is not None and not (math.isfinite(args.source_fps) and args.source_fps > 0):
        raise PlayError(f"--source-fps must be positive, got {args.source_fps}")
    if args.max_frames < 0:
        raise PlayError(f"--max-frames must be >= 0, got {args.max_frames}")
    if args.depth < 1:
        raise PlayError(f"--depth must be >= 1, got {args.depth}")
    if not (0 < args.hfov < 180):
        raise PlayError(f"--hfov must be in (0, 180) degrees, got {args.hfov}")
    if args.wait_for_subscribers < 0 or not args.wait_timeout > 0:
        raise PlayError("--wait-for-subscribers must be >= 0 and --wait-timeout > 0")
    if not args.topic.strip() or not args.frame_id.strip():
        raise PlayError("--topic and --frame-id must not be empty")


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def play(args, feed: FrameFeed, out=None, ros_args: list[str] | None = None) -> PlayStats:
    """Publish ``feed`` as described by ``args`` (see build_parser). Returns the counts.

    ``ros_args``: what followed ``--ros-args`` on the command line (remapping, namespace, ...).
    """
    out = out or sys.stdout
    from vlm3r_ros.ros import apply_transport_setting

    transport = apply_transport_setting()  # the node's setting, before this process's participant exists
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    if args.qos == "sensor":
        qos = QoSProfile(depth=args.depth, reliability=ReliabilityPolicy.BEST_EFFORT,
                         durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)
    else:
        qos = QoSProfile(depth=args.depth, reliability=ReliabilityPolicy.RELIABLE)

    rate = args.rate or feed.fps
    period = 1.0 / rate
    stats = PlayStats()
    context = rclpy.Context()
    rclpy.init(args=["vlm3r-play", "--ros-args", *ros_args] if ros_args else None, context=context)
    node = None
    try:
        node = rclpy.create_node(args.node_name, context=context)
        image_pub = node.create_publisher(Image, args.topic, qos)
        info_pub = node.create_publisher(CameraInfo, camera_info_topic(args.topic), qos) if args.camera_info else None
        log = (lambda text: None) if args.quiet else (lambda text: print(text, file=out, flush=True))
        log(f"vlm3r-play: {feed.description} -> {image_pub.topic_name} ({args.encoding}, {args.qos} QoS, "
            f"{rate:g} Hz{', loop' if args.loop else ''}, frame_id {args.frame_id}, stamps {args.stamps})")
        if info_pub is not None:
            log(f"vlm3r-play: camera info on {info_pub.topic_name}")
        log(f"vlm3r-play: {transport}")

        if args.wait_for_subscribers:
            start = time.monotonic()
            while image_pub.get_subscription_count() < args.wait_for_subscribers:
                if time.monotonic() - start > args.wait_timeout:
                    raise NoSubscribers(f"only {image_pub.get_subscription_count()} of "
                                        f"{args.wait_for_subscribers} subscriber(s) on {image_pub.topic_name} "
                                        f"after {args.wait_timeout:g} s")
                time.sleep(0.05)
            stats.waited_for_subscribers_s = time.monotonic() - start
        stats.subscribers = image_pub.get_subscription_count()

        try:
            _publish_loop(args, feed, node, image_pub, info_pub, period, stats, log)
            _drain(image_pub, info_pub, args.qos)
        except (KeyboardInterrupt, _Stop):
            stats.interrupted = True
        return stats
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


def _publish_loop(args, feed: FrameFeed, node, image_pub, info_pub, period: float, stats: PlayStats, log) -> None:
    from sensor_msgs.msg import CameraInfo, Image

    msg = Image()
    msg.header.frame_id = args.frame_id
    info = CameraInfo() if info_pub is not None else None
    info_size = None
    start = next_time = last_log = time.monotonic()
    loop_offset_s = 0.0  # added to source stamps on each pass, so they keep increasing
    while True:
        last_source_t = -1.0
        published_this_pass = 0
        for frame in feed:
            now = time.monotonic()
            if now < next_time:
                time.sleep(next_time - now)
            elif now - next_time > period and stats.published:
                stats.late += 1  # behind schedule (slow decoding): restart it rather than burst
                next_time = now
            next_time += period
            fill_image(msg, encode_pixels(frame.image, args.encoding), args.encoding)
            last_source_t = frame.index / feed.fps
            if args.stamps == "source":
                msg.header.stamp = stamp_from_seconds(loop_offset_s + last_source_t)
            else:
                msg.header.stamp = node.get_clock().now().to_msg()
            if info is not None:
                if info_size != (msg.width, msg.height):
                    info_size = (msg.width, msg.height)
                    intrinsics = feed.intrinsics_for(msg.width, msg.height)
                    if intrinsics is None:
                        intrinsics = pinhole_guess(msg.width, msg.height, args.hfov)
                        log(f"vlm3r-play: camera info for {msg.width}x{msg.height} is a GUESS "
                            f"(pinhole, {args.hfov:g} deg horizontal FOV, centred, no distortion)")
                    fill_camera_info(info, msg.width, msg.height, intrinsics)
                info.header = msg.header
                info_pub.publish(info)
            image_pub.publish(msg)
            stats.published += 1
            published_this_pass += 1
            stats.seconds = time.monotonic() - start
            if time.monotonic() - last_log >= 1.0:
                last_log = time.monotonic()
                log(f"vlm3r-play: {stats.published} frames published ({stats.rate_hz:.1f} Hz), "
                    f"{image_pub.get_subscription_count()} subscriber(s)")
            if args.max_frames and stats.published >= args.max_frames:
                return
        if published_this_pass == 0:
            raise PlayError(f"no readable frame in {feed.description}")
        stats.passes += 1
        if not args.loop:
            return
        loop_offset_s += last_source_t + 1.0 / feed.fps


def _drain(image_pub, info_pub, qos: str) -> None:
    """Let the last frames reach the subscribers before the participant goes away:
    reliable: until acknowledged (at most 2 s); best effort: a short grace period."""
    from rclpy.duration import Duration

    if qos == "reliable":
        for pub in (image_pub, info_pub):
            if pub is not None:
                pub.wait_for_all_acked(Duration(seconds=2.0))
    else:
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = []
    if "--ros-args" in argv:  # ROS arguments (remapping, namespace) go to rclpy
        cut = argv.index("--ros-args")
        argv, ros_args = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
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
    except PlayError as exc:
        print(f"vlm3r-play: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Stop):  # before publishing started
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
