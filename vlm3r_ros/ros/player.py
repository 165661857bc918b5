"""Publish a :class:`~vlm3r_ros.media.feed.FrameFeed` as sensor_msgs/Image (vlm3r-play's ROS side).

:func:`play` takes vlm3r-play's options (``vlm3r_ros.tools.play.build_parser``): topic, rate,
QoS, encoding, stamps, camera info, waiting for subscribers. Frames go out on a fixed
schedule; a frame more than one period late restarts the schedule instead of bursting.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

from vlm3r_ros.errors import UserError
from vlm3r_ros.media.feed import FrameFeed
from vlm3r_ros.ros import apply_transport_setting
from vlm3r_ros.ros.image_messages import (camera_info_topic, fill_camera_info, fill_image_from_rgb, pinhole_guess,
                                          stamp_from_seconds)

SUBSCRIBER_SETTLE_S = 0.5  # after --wait-for-subscribers: see the wait in play()


class NoSubscribers(UserError):
    """--wait-for-subscribers timed out: exit status 3."""


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


class Stopped(Exception):
    pass


def raise_stopped(signum, frame):
    raise Stopped()


def play(args, feed: FrameFeed, out=None, ros_args: list[str] | None = None) -> PlayStats:
    """Publish ``feed`` as described by ``args`` (see build_parser). Returns the counts.

    ``ros_args``: what followed ``--ros-args`` on the command line (remapping, namespace, ...).
    """
    out = out or sys.stdout
    transport = apply_transport_setting()  # the node's setting, before this process's participant exists
    # rclpy only after the transport setting: Fast DDS reads it when the first participant is made.
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

        wanted = [(image_pub, args.wait_for_subscribers)]
        if info_pub is not None:
            wanted.append((info_pub, args.wait_for_info_subscribers))
        wanted = [(pub, n) for pub, n in wanted if n]
        if wanted:
            start = time.monotonic()
            for pub, n in wanted:
                while pub.get_subscription_count() < n:
                    if time.monotonic() - start > args.wait_timeout:
                        raise NoSubscribers(f"only {pub.get_subscription_count()} of {n} subscriber(s) on "
                                            f"{pub.topic_name} after {args.wait_timeout:g} s")
                    time.sleep(0.05)
            # Our writer has matched; the reader's side of discovery may finish a moment later, and
            # a reader drops samples from a writer it has not matched yet (frame 0 lost, best effort).
            time.sleep(SUBSCRIBER_SETTLE_S)
            stats.waited_for_subscribers_s = time.monotonic() - start
        stats.subscribers = image_pub.get_subscription_count()

        try:
            _publish_loop(args, feed, node, image_pub, info_pub, period, stats, log)
            _drain(image_pub, info_pub, args.qos)
        except (KeyboardInterrupt, Stopped):
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
            fill_image_from_rgb(msg, frame.image, args.encoding)
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
            raise UserError(f"no readable frame in {feed.description}")
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
