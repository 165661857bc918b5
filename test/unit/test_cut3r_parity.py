"""Numerical parity of our CUT3R with the official code, on the shared fixture files.

Each fixture (test/fixtures/reference/cut3r/cut3r_*.safetensors + .json) holds a tiny random
model under the official key names, an input stream and every per-frame output the
official code produced. Our model must meet the README's robust rule on every output
name. A mutation (no fp16 rounding of q/k in the image encoder) must make it fail, which
shows the rule is sharp enough to catch a real deviation.
"""
import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import vlm3r_ros.engine.checkpoint as checkpoint
from vlm3r_ros.engine.parity import ROBUST_FRACTION, compare, run_cut3r_fixture
from vlm3r_ros.tools.parity import main

pytestmark = pytest.mark.usefixtures('torch_single_thread')

# The official RoPE rounding that the mutation removes: README "Facts" 1, and the
# per-case "no fp16 rounding of q/k in the encoder" row of the mutation table (9-16%).
MUTATION_MIN_FRACTION = 0.01


@lru_cache(maxsize=None)
def _run(path_str):
    """run_cut3r_fixture once per fixture per test session (the model is deterministic)."""
    return run_cut3r_fixture(Path(path_str))


def _expected_keys_from_json(doc):
    return {k for k in doc['tensors'] if k.startswith('expect/')}


def _stored_keys(path):
    with safe_open(str(path), framework='pt') as f:
        return set(f.keys())


def test_at_least_three_fixtures_found(cut3r_reference_dir):
    found = sorted(p.name for p in cut3r_reference_dir.glob('cut3r_*.safetensors'))
    assert len(found) >= 3, f'expected >= 3 CUT3R parity fixtures in {cut3r_reference_dir}, found {found}'
    for name in found:
        assert (cut3r_reference_dir / name).with_suffix('.json').is_file(), f'{name} has no .json beside it'


def test_robust_parity(cut3r_reference_dir, cut3r_fixture_file):
    assert cut3r_fixture_file is not None, f'no cut3r_*.safetensors fixture in {cut3r_reference_dir}'
    produced, expected, doc = _run(str(cut3r_fixture_file))
    reports = compare(produced, expected)
    failing = [(r.name, f'{r.frac_over_tol:.3%} over tol', f'robust ratio {r.worst_robust_ratio:.3g}')
               for r in reports if not r.robust_ok]
    assert not failing, f'{cut3r_fixture_file.name}: robust rule fails for {failing}'
    # every report compared a non-empty pool with finite errors
    for r in reports:
        assert r.elements > 0
        assert r.worst_norm_err == r.worst_norm_err and r.worst_norm_err != float('inf'), r
    # the initial state comes straight from the weights: no rounding path, so exact
    by_name = {r.name: r for r in reports}
    for name in ('init/state_pos',):
        assert by_name[name].worst_norm_err == 0.0, by_name[name]


def test_produced_names_cover_expected(cut3r_reference_dir, cut3r_fixture_file):
    assert cut3r_fixture_file is not None, f'no cut3r_*.safetensors fixture in {cut3r_reference_dir}'
    produced, expected, doc = _run(str(cut3r_fixture_file))
    # the fixture is self-consistent: its JSON lists exactly the expect/* tensors it stores
    stored = {k for k in _stored_keys(cut3r_fixture_file) if k.startswith('expect/')}
    assert stored == _expected_keys_from_json(doc) == set(expected)
    missing = sorted(set(expected) - set(produced))
    assert not missing, f'the runner produced no tensor for {missing}'
    for key in expected:
        assert tuple(produced[key].shape) == tuple(expected[key].shape), key
    # pooled names: every documented output plus the three initial-state tensors
    names = {r.name for r in compare(produced, expected)}
    assert names == set(doc['outputs']) | {'init/state_feat', 'init/mem', 'init/state_pos'}
    # every frame of the stream was compared (enc_feat is stored for t=0 only)
    frames = {int(m.group(1)) for k in expected if (m := re.match(r'expect/(\d+)/', k))}
    assert frames == set(range(doc['T']))


def _without_fp16_qk_rounding(monkeypatch):
    """Make build_cut3r return models whose image encoder skips the fp16 q/k rounding."""
    real_build = checkpoint.build_cut3r
    mutated = []

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        assert len(model.enc_blocks) > 0
        for blk in model.enc_blocks:
            assert blk.attn.round_qk_fp16 is True  # the official behaviour is on by default
            blk.attn.round_qk_fp16 = False
        mutated.append(model)
        return model

    # run_cut3r_fixture looks build_cut3r up on vlm3r_ros.engine.checkpoint at call time
    monkeypatch.setattr(checkpoint, 'build_cut3r', build)
    return mutated


def _encoder_only_report(model, tensors):
    """The robust-rule report of enc_feat for frame 0 (the encoder does not depend on the stream)."""
    frames = tensors['input/frames'].float()
    with torch.inference_mode():
        enc_feat, _ = model.encode(frames[0:1])
    [report] = compare({'expect/0/enc_feat': enc_feat}, {'expect/0/enc_feat': tensors['expect/0/enc_feat']})
    assert report.name == 'enc_feat'
    return report


def test_mutation_without_fp16_qk_rounding_fails_robust_rule(
        cut3r_reference_dir, cut3r_fixture_file, monkeypatch):
    """A small local runner: build the fixture's model like run_cut3r_fixture, run the encoder only."""
    assert cut3r_fixture_file is not None, f'no cut3r_*.safetensors fixture in {cut3r_reference_dir}'
    doc = json.loads(cut3r_fixture_file.with_suffix('.json').read_text())
    tensors = load_file(str(cut3r_fixture_file))
    params = {k[len('param/'):]: v for k, v in tensors.items() if k.startswith('param/')}
    model = checkpoint.build_cut3r(checkpoint.config_from_json(doc), params)

    control = _encoder_only_report(model, tensors)
    assert control.robust_ok, f'the unmutated encoder misses the robust rule: {control}'

    assert len(model.enc_blocks) > 0
    for blk in model.enc_blocks:
        assert blk.attn.round_qk_fp16 is True  # the official behaviour is on by default
        monkeypatch.setattr(blk.attn, 'round_qk_fp16', False)
    mutated = _encoder_only_report(model, tensors)
    assert not mutated.robust_ok, (
        f'{cut3r_fixture_file.name}: the robust rule did not catch the missing fp16 rounding '
        f'({mutated.frac_over_tol:.3%} of enc_feat over tolerance)')
    assert mutated.frac_over_tol > max(MUTATION_MIN_FRACTION, ROBUST_FRACTION), mutated
    assert mutated.frac_over_tol > 10 * control.frac_over_tol


def _smallest_fixture(cut3r_reference_dir):
    files = sorted(cut3r_reference_dir.glob('cut3r_*.safetensors'), key=lambda p: p.stat().st_size)
    assert files, f'no cut3r_*.safetensors fixture in {cut3r_reference_dir}'
    return files[0]


def test_cli_exit_status_is_1_when_the_robust_rule_fails(cut3r_reference_dir, monkeypatch, capsys):
    """The whole runner with the mutated encoder: enc_feat fails and the CLI says so."""
    fixture = _smallest_fixture(cut3r_reference_dir)
    mutated = _without_fp16_qk_rounding(monkeypatch)
    assert main(['cut3r', str(fixture)]) == 1
    assert len(mutated) == 1, 'the runner did not build its model through build_cut3r'
    out = capsys.readouterr().out
    assert 'robust rule: FAIL' in out
    assert re.search(r'^enc_feat .* FAIL', out, re.MULTILINE), out


def test_cli_refuses_a_missing_fixture(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(['cut3r', str(tmp_path / 'nope.safetensors')])
    assert exc.value.code == 2
    assert 'nope.safetensors' in capsys.readouterr().err


@pytest.fixture(scope='module')
def cli_dump(tmp_path_factory, cut3r_reference_dir):
    """Run the CLI once on the smallest fixture with --dump; (fixture, exit code, dump, stdout)."""
    fixture = _smallest_fixture(cut3r_reference_dir)
    out = tmp_path_factory.mktemp('parity') / 'out.safetensors'
    code = main(['cut3r', str(fixture), '--dump', str(out)])
    assert out.is_file(), f'--dump wrote nothing to {out}'
    return fixture, code, load_file(str(out))


def test_cli_dump_holds_every_expected_tensor(cli_dump):
    fixture, code, dump = cli_dump
    assert code == 0
    doc = json.loads(fixture.with_suffix('.json').read_text())
    expected_keys = _expected_keys_from_json(doc)
    missing = sorted(expected_keys - set(dump))
    assert not missing, f'dump lacks {missing}'
    for key in expected_keys:
        assert list(dump[key].shape) == doc['tensors'][key]['shape'], key
    # the dump holds the model's real outputs: they meet the robust rule against the fixture
    expected = {k: v for k, v in load_file(str(fixture)).items() if k.startswith('expect/')}
    reports = compare({k: dump[k] for k in expected_keys}, expected)
    assert all(r.robust_ok for r in reports), [r for r in reports if not r.robust_ok]


def test_cli_dump_has_exactly_the_expected_names(cli_dump):
    fixture, code, dump = cli_dump
    doc = json.loads(fixture.with_suffix('.json').read_text())
    expected_keys = _expected_keys_from_json(doc)
    assert set(dump) == expected_keys, (
        f'extra: {sorted(set(dump) - expected_keys)[:8]}, missing: {sorted(expected_keys - set(dump))[:8]}')
    for key in expected_keys:
        assert list(dump[key].shape) == doc['tensors'][key]['shape'], key
