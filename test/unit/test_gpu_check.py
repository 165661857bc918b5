"""benchmarks/gpu_check.py runs end to end: --tiny on the CPU exercises every section (the
same code the GPU machine runs at full size), on the smallest public CUT3R fixture."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'benchmarks'))

import gpu_check  # noqa: E402

pytestmark = pytest.mark.usefixtures('torch_single_thread')


def test_tiny_gpu_check_runs_every_section_on_cpu(cut3r_reference_dir, tmp_path, capsys):
    smallest = min(cut3r_reference_dir.glob('cut3r_*.safetensors'), key=lambda p: p.stat().st_size)
    fixtures = tmp_path / 'fixtures'
    fixtures.mkdir()
    for suffix in ('.safetensors', '.json'):
        (fixtures / smallest.with_suffix(suffix).name).symlink_to(smallest.with_suffix(suffix))
    out = tmp_path / 'result.json'
    code = gpu_check.main(['--tiny', '--device', 'cpu', '--frames', '1', '--fixtures', str(fixtures),
                           '--out', str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    assert result['tiny'] is True and result['parity_ok'] is True
    for dtype in ('float16', 'bfloat16'):
        assert set(result['cut3r'][dtype]) == {'tokens', 'pose', 'points'}
        assert all(r['steps_per_s'] > 0 for r in result['cut3r'][dtype].values())
        assert result['frame'][dtype]['median_ms'] > 0
    ttft = result['ttft']
    assert ttft['frames'] == 2 and ttft['visual_tokens'] == 2 * 210 and ttft['median_s'] > 0
    assert ttft['prompt_tokens'] > ttft['visual_tokens']
    [(name, row)] = result['parity'].items()
    assert name == smallest.stem and row['cpu'] and row['device'] and row['max_abs_cpu_vs_device'] == 0.0
    assert 'parity pass' in printed and 'ttft: 2 frames (420 visual tokens' in printed


def test_full_sizes_need_a_gpu(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(['--device', 'cpu'])
    assert exc.value.code == 2
    assert 'on a CPU use --tiny' in capsys.readouterr().err
