"""vlm3r-gen-qa on metadata files written by save_scene_graphs: the JSONL rows, filters, determinism."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlm3r_ros.data.metadata import save_scene_graphs
from vlm3r_ros.data.qa.registry import question_types
from vlm3r_ros.data.scene_graph import FrameAnnotation, ObjectInstance, OrientedBox, SceneGraph
from vlm3r_ros.eval.benchmark import load_benchmark
from vlm3r_ros.tools.gen_qa import main

VSI = question_types("vsibench")


def cube(iid, category, x, y, side=0.4):
    h = side / 2
    return ObjectInstance(iid, category, OrientedBox.axis_aligned([x - h, y - h, 0], [x + h, y + h, side]))


def camera_at(x, y, yaw_deg):
    """Camera-to-world pose: camera at (x, y, 1.5) looking level along yaw (OpenCV axes)."""
    yaw = np.radians(yaw_deg)
    forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    right = np.cross(down, forward)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = [x, y, 1.5]
    return pose


def room(name, shift=0.0):
    objects = [cube(0, "sofa", 0 + shift, 0), cube(1, "tv", 0, 3), cube(2, "lamp", -2, 2 + shift),
               cube(3, "chair", 2, 1), cube(4, "chair", 3, 1), cube(5, "bed", 2, -2),
               cube(6, "desk", -2, -2), cube(7, "plant", 3.5, 3)]
    frames = [FrameAnnotation(fid, camera_at(0.1 * k, -3, 90 + 5 * k), visible={iid: None for iid in seen})
              for k, (fid, seen) in enumerate([(0, [0]), (60, [1]), (120, [2, 3]), (180, [5]), (240, [6, 7]),
                                               (300, [4, 0]), (360, [1])])]
    return SceneGraph(name, objects, frames, room_size=25.0 + shift, dataset="scannet",
                      video_path=f"scannet/{name}.mp4", fps=30.0)


@pytest.fixture()
def metadata(tmp_path):
    save_scene_graphs([room("scene_b", 0.3), room("scene_a")], tmp_path, "scannet", "val")
    return tmp_path


def run_cli(*args):
    code = main([str(a) for a in args])
    assert code == 0
    return code


def read_rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_all_vsi_types_from_a_metadata_folder(metadata, tmp_path, capsys):
    out = tmp_path / "qa.jsonl"
    run_cli("--root", metadata, "--dataset", "scannet", "--split", "val", "--types", "vsibench",
            "--max-per-scene", "all", "--out", out)
    rows = read_rows(out)
    assert [r["id"] for r in rows] == list(range(len(rows)))
    # every VSI type found something to ask, but route planning: the official metadata has no free space
    assert {r["question_type"] for r in rows} == set(VSI) - {"route_planning"}
    # types in registry order, scenes sorted within each type
    order = [(VSI.index(r["question_type"]), r["scene_name"]) for r in rows]
    assert order == sorted(order)
    for r in rows:
        # VSI rows have no frame_indices, as the official rows
        assert list(r)[:9] == ["id", "dataset", "scene_name", "video_path", "question_type",
                               "question", "options", "ground_truth", "mc_answer"]
        assert r["dataset"] == "scannet" and r["video_path"] == f"scannet/{r['scene_name']}.mp4"
        letter = r["mc_answer"]
        assert r["options"]["ABCD".index(letter)] == f"{letter}. {r['ground_truth']}"
    counting = [r for r in rows if r["question_type"] == "object_counting"]
    assert [(r["scene_name"], r["category"], r["ground_truth"]) for r in counting] == \
        [("scene_a", "chair", 2), ("scene_b", "chair", 2)]
    room_sizes = {r["scene_name"]: r["ground_truth"] for r in rows if r["question_type"] == "room_size_estimation"}
    assert room_sizes == {"scene_a": 25.0, "scene_b": 25.3}
    summary = capsys.readouterr().err
    assert f"{len(rows)} questions from 2 scenes" in summary and "object_counting 2" in summary
    # our evaluation reads the file as a VSI-Bench benchmark
    assert len(load_benchmark(out, "vsibench").rows) == len(rows)


def test_same_seed_same_file_other_seed_other_draws(metadata, tmp_path):
    args = ["--metadata", metadata / "scannet_metadata_val.json",
            "--frame-metadata", metadata / "scannet_frame_metadata_val.json", "--types", "vsibench"]
    run_cli(*args, "--seed", "3", "--out", tmp_path / "a.jsonl")
    run_cli(*args, "--seed", "3", "--out", tmp_path / "b.jsonl")
    run_cli(*args, "--seed", "4", "--out", tmp_path / "c.jsonl")
    a, b, c = ((tmp_path / f"{n}.jsonl").read_bytes() for n in "abc")
    assert a == b and a != c
    # the answers do not depend on the seed, only the draws (options, subsamples) do
    def key(r):
        return r["scene_name"], r["question_type"], r["question"]

    truths = {key(r): r["ground_truth"] for r in read_rows(tmp_path / "a.jsonl")}
    common = [r for r in read_rows(tmp_path / "c.jsonl") if key(r) in truths]
    assert len(common) > 10
    for r in common:
        assert truths[key(r)] == r["ground_truth"], key(r)


def test_filters_caps_and_benchmark_format(metadata, tmp_path):
    out = tmp_path / "qa.jsonl"
    run_cli("--root", metadata, "--dataset", "scannet", "--split", "val", "--scenes", "scene_b",
            "--types", "object_counting,obj_appearance_order,room_size_estimation", "--max-per-scene", "1",
            "--format", "benchmark", "--out", out)
    rows = read_rows(out)
    assert {r["scene_name"] for r in rows} == {"scene_b"}
    assert [r["question_type"] for r in rows] == ["object_counting", "obj_appearance_order",
                                                  "room_size_estimation"]
    count, order, size = rows
    assert count["options"] is None and count["ground_truth"] == 2 and "mc_answer" not in count
    assert order["ground_truth"] in "ABCD" and order["options"][0].startswith("A. ")
    assert order["options"]["ABCD".index(order["ground_truth"])] == f"{order['ground_truth']}. {order['answer']}"
    assert size["options"] is None and size["ground_truth"] == 25.3
    assert len(load_benchmark(out, "vsibench").rows) == 3


def test_parquet_output_or_a_clear_error(metadata, tmp_path, capsys):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    args = ["--root", metadata, "--dataset", "scannet", "--split", "val", "--types", "object_counting",
            "--out", tmp_path / "qa.jsonl", "--parquet", tmp_path / "qa.parquet"]
    if pq is None:
        assert main([str(a) for a in args]) == 2
        assert "--parquet needs pyarrow" in capsys.readouterr().err
    else:
        run_cli(*args)
        table = pq.read_table(tmp_path / "qa.parquet").to_pylist()
        assert [r["ground_truth"] for r in table] == ["2", "2"]
        assert [r["id"] for r in table] == [r["id"] for r in read_rows(tmp_path / "qa.jsonl")]


@pytest.mark.parametrize("args, message", [
    (["--types", "object_counting,route_plan"], "unknown question type 'route_plan'"),
    (["--sim-rooms", "0-x"], "--sim-rooms: expected seeds such as 0-19"),
    (["--sim-rooms", "0"], "give either --sim-rooms or metadata files, not both"),
    (["--max-per-scene", "0"], "expected a positive integer or 'all'"),
    (["--scenes", "scene_z"], "not in the metadata: scene_z"),
])
def test_user_errors(metadata, tmp_path, capsys, args, message):
    code = main(["--root", str(metadata), "--dataset", "scannet", "--split", "val", "--out",
                 str(tmp_path / "x.jsonl"), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("vlm3r-gen-qa: error:") and message in err
    assert not (tmp_path / "x.jsonl").exists()


def test_missing_input_is_explained(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no input: give --metadata FILE" in capsys.readouterr().err
    assert main(["--root", str(tmp_path), "--dataset", "scannet", "--split", "val", "--out", "-"]) == 2
    assert "scene metadata file not found" in capsys.readouterr().err


def test_console_script_writes_to_stdout(metadata):
    script = Path(sys.executable).with_name("vlm3r-gen-qa")
    done = subprocess.run([str(script), "--root", str(metadata), "--dataset", "scannet", "--split", "val",
                           "--types", "object_size_estimation", "--out", "-"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows and {r["question_type"] for r in rows} == {"object_size_estimation"}
    assert {r["ground_truth"] for r in rows} == {40}  # every unique object is a 0.4 m cube


def test_every_generated_type_is_scored_by_its_benchmark():
    # The registry and the metrics name the types separately: a generated row must be scorable.
    from vlm3r_ros.data.qa.registry import SPECS
    from vlm3r_ros.eval.metrics import BENCHMARKS

    for spec in SPECS:
        assert spec.question_type in BENCHMARKS[spec.benchmark].question_types, spec


def test_route_planning_from_sim_rooms(tmp_path):
    out = tmp_path / "rp.jsonl"
    assert main(["--sim-rooms", "0-1", "--types", "route_planning", "--format", "benchmark", "--out", str(out)]) == 0
    rows = read_rows(out)
    assert len(rows) == 6 and {r["scene_name"] for r in rows} == {"sim_0000", "sim_0001"}  # 3 per room
    for r in rows:  # the published shape: the letter as ground truth, the turns kept as "answer"
        assert r["question_type"] == "route_planning" and r["ground_truth"] in "ABCD"
        assert r["options"]["ABCD".index(r["ground_truth"])] == f"{r['ground_truth']}. {r['answer']}"
    # --compat exact changes nothing here (no official generator to follow)
    exact = tmp_path / "exact.jsonl"
    assert main(["--sim-rooms", "0-1", "--types", "route_planning", "--format", "benchmark", "--compat", "exact",
                 "--out", str(exact)]) == 0
    assert read_rows(exact) == rows
