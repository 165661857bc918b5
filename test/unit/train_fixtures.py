"""Tiny training data for the vlm3r-train tests: two rooms (frame folders) and 16 QA rows.

Each room is a folder of small images of its own colour and texture; each room has one question of
each of the eight VSI-Bench types (multiple choice: the answer is a letter; numeric: a number),
with answers that differ between the rooms, in the row format vlm3r-gen-qa writes.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image

FRAMES_PER_ROOM = 6
NUM_FRAMES = 4  # frames sampled per clip in the tests (32 in the official run)


def write_rooms(root: Path, rooms=('room_a', 'room_b'), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for room in rooms:
        folder = root / room
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (1, 1, 3))
        for i in range(FRAMES_PER_ROOM):
            img = np.clip(base + rng.integers(-60, 60, (48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f'{i:03d}.png')
    return root


# (question type, question, options or None, answer in room_a, answer in room_b); the answers are one
# token each (a letter, a digit), so that a tiny model can learn all of them in a few hundred steps
QUESTIONS = (
    ('object_counting', 'How many chair(s) are in this room?', None, 3, 5),
    ('object_abs_distance', 'Measuring from the closest point of each object, what is the distance between the '
                            'sofa and the table (in meters)?', None, 2, 4),
    ('object_size_estimation', 'What is the length of the longest dimension (length, width, or height) of the bed, '
                               'measured in centimeters?', None, 7, 9),
    ('room_size_estimation', 'What is the size of this room (in square meters)?', None, 6, 8),
    ('object_rel_distance', 'Measuring from the closest point of each object, which of these objects (chair, table, '
                            'sofa, lamp) is the closest to the tv?', ['A. chair', 'B. table', 'C. sofa', 'D. lamp'],
     'B', 'D'),
    ('object_rel_direction_easy', 'If I am standing by the sofa and facing the tv, is the lamp to my left or right?',
     ['A. left', 'B. right'], 'A', 'B'),
    ('route_planning', 'You are a robot beginning at the door facing the bed. You want to navigate to the desk. '
                       'Which turn comes first?', ['A. Turn Left', 'B. Turn Right', 'C. Go forward'], 'C', 'A'),
    ('obj_appearance_order', 'What will be the first-time appearance order of the following categories in the video: '
                             'chair, lamp, sofa, table?',
     ['A. chair, lamp, sofa, table', 'B. lamp, chair, table, sofa', 'C. sofa, table, chair, lamp',
      'D. table, sofa, lamp, chair'], 'D', 'C'),
)


def qa_rows(rooms=('room_a', 'room_b')) -> list[dict]:
    """Eight questions per room, one of each VSI-Bench type; the answers differ between rooms."""
    rows = []
    for r, room in enumerate(rooms):
        for qtype, question, options, *answers in QUESTIONS:
            row = dict(id=len(rows), dataset='sim', scene_name=room, video_path=room, question_type=qtype,
                       question=question, options=options, ground_truth=answers[r])
            if options is not None:
                row['mc_answer'] = answers[r]
            rows.append(row)
    return rows


def write_dataset(root: Path) -> Path:
    write_rooms(root)
    path = root / 'qa.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in qa_rows()))
    return path


def tiny_base(seed: int = 0, config=None):
    """The tiny random VLM-3R + CUT3R + the real Qwen2 tokenizer, as vlm3r-train --tiny-random builds them."""
    from vlm3r_ros.models.cut3r.tiny import random_cut3r
    from vlm3r_ros.models.vlm.tiny import TINY_VLM3R, random_vlm3r
    from vlm3r_ros.train.run import LoadedBase

    return LoadedBase(random_vlm3r(config or TINY_VLM3R, seed=seed), random_cut3r('tiny_dpt', seed), tokenizer(),
                      'tiny-random')


_TOKENIZER = []


def tokenizer():
    from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer

    if not _TOKENIZER:
        _TOKENIZER.append(build_qwen2_tokenizer())
    return _TOKENIZER[0]
