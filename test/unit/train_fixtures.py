"""Tiny training data for the vlm3r-train tests: two rooms (frame folders) and 16 QA rows.

Each room is a folder of small images of its own colour and texture; the rows mix multiple
choice (the answer is a letter) and counting (the answer is a number), eight per room, in the
row format vlm3r-gen-qa writes.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image

FRAMES_PER_ROOM = 6
NUM_FRAMES = 4  # frames sampled per clip in the tests (32 in the official run)
OPTIONS = ['A. chair', 'B. table', 'C. sofa', 'D. lamp']


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


def qa_rows(rooms=('room_a', 'room_b'), per_room: int = 8) -> list[dict]:
    rows = []
    for r, room in enumerate(rooms):
        for j in range(per_room):
            k = r * per_room + j
            if j % 2:
                rows.append(dict(id=k, dataset='sim', scene_name=room, video_path=room,
                                 question_type='object_counting', options=None, ground_truth=(k * 7) % 9 + 1,
                                 question=f'How many objects of kind {k} are in this room?'))
            else:
                rows.append(dict(id=k, dataset='sim', scene_name=room, video_path=room,
                                 question_type='object_rel_distance', options=OPTIONS, ground_truth='ABCD'[k % 4],
                                 mc_answer='ABCD'[k % 4], question=f'Which object is closest to marker {k}?'))
    return rows


def write_dataset(root: Path) -> Path:
    write_rooms(root)
    path = root / 'qa.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in qa_rows()))
    return path


def tiny_base(seed: int = 0):
    """The tiny random VLM-3R + CUT3R + the real Qwen2 tokenizer, as vlm3r-train --tiny-random builds them."""
    from vlm3r_ros.models.cut3r.tiny import random_cut3r
    from vlm3r_ros.models.vlm.tiny import random_vlm3r
    from vlm3r_ros.train.run import LoadedBase

    return LoadedBase(random_vlm3r(seed=seed), random_cut3r('tiny_dpt', seed), tokenizer(), 'tiny-random')


_TOKENIZER = []


def tokenizer():
    from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer

    if not _TOKENIZER:
        _TOKENIZER.append(build_qwen2_tokenizer())
    return _TOKENIZER[0]
