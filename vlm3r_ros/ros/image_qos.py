"""Which reliability the camera subscription uses: the ``image_qos_reliability`` parameter.

``auto`` (the default) subscribes with the reliability the topic's publishers offer, as the
image_pipeline nodes do (they read ``get_publishers_info_by_topic`` and subscribe reliably
when every publisher is reliable, with sensor-data QoS otherwise or when none is up yet).
Why it matters: a best-effort subscription turns a reliable camera's link best effort, and
with Fast DDS's default transports a sample larger than the sender's 512 KiB shared-memory
segment (640x480 rgb8 is 900 KiB) then goes over fragmented UDP and is mostly lost; matching
the publisher's reliable QoS delivers every frame (README, "QoS and transport").

The node re-runs :func:`choose` whenever the set of publishers changes while ``auto`` is set
(a camera that starts after the node, or restarts with another QoS) and re-creates the
subscription when the choice changes. ``reliable`` and ``best_effort`` are fixed choices.

:func:`choose` and the sentences are pure (tested without DDS); :class:`CameraSubscription`
holds one subscription of a node and re-creates it when the choice changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

CHOICES = ("auto", "reliable", "best_effort")


@dataclass(frozen=True)
class QosChoice:
    reliability: ReliabilityPolicy  # RELIABLE or BEST_EFFORT
    reason: str  # a sentence for the log and /diagnostics

    @property
    def label(self) -> str:
        return "reliable" if self.reliability == ReliabilityPolicy.RELIABLE else "best_effort"


def choose(setting: str, publishers: list[ReliabilityPolicy]) -> QosChoice:
    """The subscription reliability for ``setting`` given the publishers' offered reliabilities."""
    if setting == "reliable":
        return QosChoice(ReliabilityPolicy.RELIABLE, "image_qos_reliability is reliable")
    if setting == "best_effort":
        return QosChoice(ReliabilityPolicy.BEST_EFFORT, "image_qos_reliability is best_effort")
    if setting != "auto":
        raise ValueError(f"image_qos_reliability must be one of {', '.join(CHOICES)}; got {setting!r}")
    if not publishers:
        return QosChoice(ReliabilityPolicy.BEST_EFFORT, "auto: no publisher yet, sensor-data QoS until one appears")
    reliable = sum(1 for p in publishers if p == ReliabilityPolicy.RELIABLE)
    n = len(publishers)
    if reliable == n:
        who = "the publisher offers" if n == 1 else f"all {n} publishers offer"
        return QosChoice(ReliabilityPolicy.RELIABLE, f"auto: {who} reliable")
    who = "the publisher offers" if n == 1 else f"{n - reliable} of {n} publishers offer"
    return QosChoice(ReliabilityPolicy.BEST_EFFORT, f"auto: {who} best effort")


def subscription_qos(choice: QosChoice, depth: int) -> QoSProfile:
    """Keep-last ``depth``, volatile, with the chosen reliability (best effort = sensor-data QoS)."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=choice.reliability,
                      durability=DurabilityPolicy.VOLATILE)


def lost_frames_advice(lost: int, choice: QosChoice) -> str:
    """The warning for frames the middleware reports lost in transport (message_lost events)."""
    if choice.reliability == ReliabilityPolicy.RELIABLE:
        return f"{lost} image(s) lost in transport on a reliable subscription"
    return (f"{lost} image(s) lost in transport: the camera publishes best effort and large images do not fit Fast "
            f"DDS's default 512 KiB shared-memory segment. Fix it on the sender: publish reliably (most drivers "
            f"have a reliability / qos parameter) or start the camera driver with "
            f"FASTDDS_DEFAULT_PROFILES_FILE=<vlm3r_ros share>/config/fastdds_large_data.xml")


class CameraSubscription:
    """One camera subscription of ``node`` whose reliability follows ``setting`` (see the module
    docstring). ``on_lost(count, self)`` gets the frames the middleware reports lost in transport
    (rclpy's ``message_lost`` event). Call :meth:`recheck` periodically while ``auto``."""

    def __init__(self, node, msg_type, topic: str, callback, setting: str, depth: int, callback_group, on_lost):
        self._node, self._msg_type, self._callback = node, msg_type, callback
        self._setting, self._depth, self._group, self._on_lost = setting, depth, callback_group, on_lost
        self.topic_name = node.resolve_topic_name(topic)
        self._publishers = self._offered()
        self.choice = choose(setting, [reliability for _, reliability in self._publishers])
        self._subscription = self._create()

    def _offered(self) -> list[tuple[bytes, ReliabilityPolicy]]:
        infos = self._node.get_publishers_info_by_topic(self.topic_name)
        return sorted((bytes(i.endpoint_gid), i.qos_profile.reliability) for i in infos)

    def _create(self):
        events = SubscriptionEventCallbacks(message_lost=lambda info: self._on_lost(int(info.total_count_change), self))
        return self._node.create_subscription(self._msg_type, self.topic_name, self._callback,
                                              subscription_qos(self.choice, self._depth),
                                              callback_group=self._group, event_callbacks=events)

    def recheck(self) -> str | None:
        """Re-choose when the topic's publishers changed (auto only); re-create the subscription
        when the choice differs. Returns a sentence for the log when it changed, else None."""
        if self._setting != "auto" or self._subscription is None:
            return None
        publishers = self._offered()
        if publishers == self._publishers:
            return None
        self._publishers = publishers
        if not publishers:  # keep what works until a publisher appears again
            return None
        choice = choose(self._setting, [reliability for _, reliability in publishers])
        if choice.reliability == self.choice.reliability:
            self.choice = choice
            return None
        self._node.destroy_subscription(self._subscription)
        self.choice = choice
        self._subscription = self._create()
        return f"{self.topic_name}: now subscribed {choice.label} ({choice.reason})"

    def describe(self) -> str:
        return f"{self.topic_name} ({self.choice.label}: {self.choice.reason}, depth {self._depth})"

    def destroy(self) -> None:
        if self._subscription is not None:
            self._node.destroy_subscription(self._subscription)
            self._subscription = None
