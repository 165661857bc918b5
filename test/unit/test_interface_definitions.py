"""The generated interfaces have the documented fields, and every field is documented.

No DDS here: this only imports the Python modules that CMake generated.
"""
import re
from pathlib import Path

import pytest

from vlm3r_ros.action import SpatialQuery as SpatialQueryAction
from vlm3r_ros.msg import SpatialState
from vlm3r_ros.srv import SpatialQuery

ROOT = Path(__file__).resolve().parents[2]

SPATIAL_STATE_FIELDS = {
    'header': 'std_msgs/Header',
    'frames_received': 'uint64',
    'frames_processed': 'uint64',
    'frames_dropped': 'uint64',
    'frames_rejected': 'uint64',
    'frames_lost': 'uint64',
    'window_size': 'uint32',
    'window_capacity': 'uint32',
    'last_step_latency_s': 'double',
    'camera_pose': 'geometry_msgs/Pose',
    'segment_id': 'uint32',
}
SPATIAL_QUERY_REQUEST_FIELDS = {
    'question': 'string',
    'options': 'sequence<string>',
    'answer_type': 'string',
    'max_frames': 'uint32',
    'window_seconds': 'double',
    'max_new_tokens': 'uint32',
}
SPATIAL_QUERY_RESPONSE_FIELDS = {
    'success': 'boolean',
    'error': 'string',
    'answer': 'string',
    'choice': 'string',
    'value': 'double',
    'unit': 'string',
    'frames_used': 'uint32',
    'window_start': 'builtin_interfaces/Time',
    'window_end': 'builtin_interfaces/Time',
    'latency_s': 'double',
}


@pytest.mark.parametrize('msg_type, expected', [
    (SpatialState, SPATIAL_STATE_FIELDS),
    (SpatialQuery.Request, SPATIAL_QUERY_REQUEST_FIELDS),
    (SpatialQuery.Response, SPATIAL_QUERY_RESPONSE_FIELDS),
], ids=['SpatialState', 'SpatialQuery.Request', 'SpatialQuery.Response'])
def test_generated_fields(msg_type, expected):
    assert msg_type.get_fields_and_field_types() == expected


def test_action_goal_and_result_are_the_service_request_and_response():
    assert SpatialQueryAction.Goal.get_fields_and_field_types() == SPATIAL_QUERY_REQUEST_FIELDS
    assert SpatialQueryAction.Result.get_fields_and_field_types() == SPATIAL_QUERY_RESPONSE_FIELDS
    assert SpatialQueryAction.Feedback.get_fields_and_field_types() == {'text': 'string',
                                                                        'tokens_generated': 'uint32'}
    text = (ROOT / 'action/SpatialQuery.action').read_text()
    for comment in ('# The reply text so far', '# Tokens generated so far', 'CANCELLED', 'BUSY'):
        assert comment in text


def test_defaults_are_empty():
    state = SpatialState()
    assert state.frames_received == 0 and state.segment_id == 0
    assert state.camera_pose.orientation.w == 1.0
    request = SpatialQuery.Request()
    assert request.question == '' and list(request.options) == []
    assert SpatialQuery.Response().success is False


FIELD_LINE = re.compile(r'^[A-Za-z][\w/]*(\[\d*\])?\s+[a-z]\w*(\s.*)?$')


@pytest.mark.parametrize('path', ['msg/SpatialState.msg', 'srv/SpatialQuery.srv'])
def test_every_field_has_a_comment_above(path):
    lines = (ROOT / path).read_text().splitlines()
    undocumented = [
        line for i, line in enumerate(lines)
        if FIELD_LINE.match(line) and (i == 0 or not lines[i - 1].startswith('#'))
    ]
    assert not undocumented, f'{path}: fields without a comment line above: {undocumented}'


@pytest.mark.parametrize('path', ['msg/SpatialState.msg', 'srv/SpatialQuery.srv'])
def test_released_not_draft(path):
    assert 'DRAFT' not in (ROOT / path).read_text()


def test_query_documents_the_engine_answer_types_and_error_format():
    from vlm3r_ros.engine.spatial_engine import ANSWER_TYPES

    text = (ROOT / 'srv/SpatialQuery.srv').read_text()
    for answer_type in ANSWER_TYPES:
        assert f'"{answer_type}"' in text, f'answer_type "{answer_type}" is not documented'
    assert '"NO_FRAMES: no frame received yet"' in text
    for code in ('NO_FRAMES', 'BUSY', 'EMPTY_QUESTION', 'QUESTION_TOO_LONG', 'NOT_ACTIVE'):
        assert code in text
