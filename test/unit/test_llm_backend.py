"""The LLM backend choice (vlm3r_ros.engine.llm_backend) without a real LLM server.

The robot's part (no LLM layers) is checked against the full tiny model; the HTTP client's
timeouts, retries and error codes against a real HTTP server on 127.0.0.1 (the standard
library's), which answers as told: 503s, an error, a stall, or token ids. The real vLLM
server is in test/integration/test_llm_serving.py.
"""
import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from vlm3r_ros.engine.llm_backend import (
    InputEmbeddingsOnly, LlmBackendError, LocalLlm, OpenAiLlm, OpenAiSettings, encode_prompt_embeds, make_llm,
    prompt_payload_bytes, strip_llm_layers)
from vlm3r_ros.models.vlm.modeling_vlm3r import IMAGE_TOKEN_INDEX
from vlm3r_ros.models.vlm.tiny import random_vlm3r

pytestmark = pytest.mark.usefixtures('torch_single_thread')

IDS = [11, 12, IMAGE_TOKEN_INDEX, 13, 14]
IM_END = 151645


@pytest.fixture(scope='module')
def full():
    return random_vlm3r(seed=0)


@pytest.fixture(scope='module')
def robot():
    return strip_llm_layers(random_vlm3r(seed=0))


def pooled(frames=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 196, 64, generator=g)


# ------------------------------------------------------------------ the robot's part
def test_robot_part_keeps_only_the_input_embeddings(full, robot):
    assert isinstance(robot.llm, InputEmbeddingsOnly)
    keys = set(robot.state_dict())
    assert 'llm.model.embed_tokens.weight' in keys
    assert not any(k.startswith(('llm.model.layers.', 'llm.lm_head', 'llm.model.norm')) for k in keys)
    assert set(full.state_dict()) - keys == {k for k in full.state_dict() if k.startswith('llm.') and
                                             k != 'llm.model.embed_tokens.weight'}
    # the same prompt embeddings as the whole model: what the server gets is what the local LLM gets
    p = pooled()
    got, visual = robot.prompt_embeds(IDS, p, 8)
    want, _ = full.prompt_embeds(IDS, p, 8)
    assert torch.equal(got, want) and visual == 2 * 210 and got.shape == (4 + 420, 64)
    with pytest.raises(RuntimeError, match='not loaded here'):
        robot.llm(inputs_embeds=got[None])
    with pytest.raises(LlmBackendError, match='LLM_NOT_LOADED'):
        LocalLlm().generate(robot, IDS, p, max_new_tokens=4)


def test_prompt_embeds_are_a_weights_only_torch_save():
    t = torch.randn(7, 64)
    data = base64.b64decode(encode_prompt_embeds(t))
    assert torch.equal(torch.load(io.BytesIO(data), weights_only=True), t)  # as vLLM loads it
    assert prompt_payload_bytes(6720, 3584, torch.float16) == 48_168_960  # 32 frames of the 7B model
    with pytest.raises(ValueError, match=r'\(L, H\)'):
        encode_prompt_embeds(torch.zeros(1, 7, 64))


def test_context_limit_is_checked_before_any_request(robot):
    llm = OpenAiLlm(OpenAiSettings('http://127.0.0.1:9/v1', 'm', timeout_s=1, retries=0))
    small = robot.config.max_context_tokens
    from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rInputError
    with pytest.raises(Vlm3rInputError, match='context'):
        llm.generate(robot, IDS, pooled(), max_new_tokens=small)
    assert llm.requests == 0


@pytest.mark.parametrize('settings, message', [
    (dict(url='localhost:8000', model='m'), 'http'),
    (dict(url='http://h:1/v1', model=' '), 'model name'),
    (dict(url='http://h:1/v1', model='m', timeout_s=0), 'timeout'),
    (dict(url='http://h:1/v1', model='m', retries=-1), 'retries'),
    (dict(url='http://h:1/v1', model='m', backoff_s=float('nan')), 'back-off'),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        OpenAiSettings(**settings).validate()
    with pytest.raises(ValueError, match='llm_backend'):
        make_llm('remote')


# ------------------------------------------------------------------ a real HTTP server that answers as told
class Server:
    """ThreadingHTTPServer on 127.0.0.1; ``script`` is a list of (status, body, delay_s), one per request."""

    def __init__(self):
        self.script, self.bodies = [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
                outer.bodies.append((self.path, body, self.headers.get('Authorization')))
                status, doc, delay = outer.script.pop(0) if outer.script else (500, {}, 0)
                time.sleep(delay)
                data = json.dumps(doc).encode()
                try:
                    self.send_response(status)
                    self.send_header('Content-Type', 'application/json')
                    self.send_header('Content-Length', str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/v1'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def answer(ids, finish='stop'):
    return {'choices': [{'index': 0, 'text': '', 'token_ids': ids, 'finish_reason': finish}]}


def test_request_and_stop_token_handling(server, robot):
    server.script = [(200, answer([5, 6, IM_END]), 0), (200, answer([5, 6, 7], 'length'), 0)]
    llm = OpenAiLlm(OpenAiSettings(server.url, 'vlm3r', timeout_s=30, api_key='secret'))
    p = pooled()
    gen = llm.generate(robot, IDS, p, max_new_tokens=3, stop_token_ids=(IM_END,))
    assert (gen.token_ids, gen.stopped, gen.prompt_tokens, gen.visual_tokens) == ([5, 6], True, 424, 420)
    gen = llm.generate(robot, IDS, p, max_new_tokens=3, stop_token_ids=(IM_END,))
    assert (gen.token_ids, gen.stopped) == ([5, 6, 7], False)
    path, body, auth = server.bodies[0]
    assert path == '/v1/completions' and auth == 'Bearer secret'
    assert (body['model'], body['max_tokens'], body['temperature'], body['stop_token_ids']) == ('vlm3r', 3, 0.0,
                                                                                               [IM_END])
    assert body['ignore_eos'] is True and body['return_token_ids'] is True and 'prompt' not in body
    sent = torch.load(io.BytesIO(base64.b64decode(body['prompt_embeds'])), weights_only=True)
    assert torch.equal(sent, robot.prompt_embeds(IDS, p, 3)[0])


def test_5xx_is_retried_with_back_off_then_answered(server, robot):
    server.script = [(503, {'error': 'loading'}, 0), (502, {}, 0), (200, answer([9]), 0)]
    llm = OpenAiLlm(OpenAiSettings(server.url, 'm', timeout_s=30, retries=2, backoff_s=0.05))
    assert llm.generate(robot, IDS, pooled(), max_new_tokens=1).token_ids == [9]
    assert (llm.requests, llm.retried) == (3, 2)


def test_persistent_5xx_is_llm_unavailable(server, robot):
    server.script = [(503, {}, 0)] * 3
    llm = OpenAiLlm(OpenAiSettings(server.url, 'm', timeout_s=30, retries=2, backoff_s=0.01))
    with pytest.raises(LlmBackendError) as err:
        llm.generate(robot, IDS, pooled(), max_new_tokens=1)
    assert err.value.code == 'LLM_UNAVAILABLE' and 'HTTP 503' in err.value.message and '3 tries' in err.value.message


def test_4xx_is_llm_rejected_at_once(server, robot):
    server.script = [(404, {'error': {'message': 'The model `x` does not exist.'}}, 0)]
    llm = OpenAiLlm(OpenAiSettings(server.url, 'x', timeout_s=30, retries=3))
    with pytest.raises(LlmBackendError) as err:
        llm.generate(robot, IDS, pooled(), max_new_tokens=1)
    assert err.value.code == 'LLM_REJECTED' and 'does not exist' in err.value.message and llm.requests == 1


def test_answer_without_token_ids_is_llm_bad_response(server, robot):
    server.script = [(200, {'choices': [{'text': 'B'}]}, 0)]
    llm = OpenAiLlm(OpenAiSettings(server.url, 'm', timeout_s=30))
    with pytest.raises(LlmBackendError, match='LLM_BAD_RESPONSE'):
        llm.generate(robot, IDS, pooled(), max_new_tokens=1)


def test_a_stalled_server_is_llm_timeout(server, robot):
    server.script = [(200, answer([1]), 3.0)]
    llm = OpenAiLlm(OpenAiSettings(server.url, 'm', timeout_s=0.5, retries=2))
    with pytest.raises(LlmBackendError) as err:
        llm.generate(robot, IDS, pooled(), max_new_tokens=1)
    assert err.value.code == 'LLM_TIMEOUT' and '0.5 s' in err.value.message
    assert llm.requests == 1  # a timeout spends the question's deadline: no retry


def test_no_server_is_llm_unavailable_after_the_retries(robot):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    llm = OpenAiLlm(OpenAiSettings(f'http://127.0.0.1:{port}/v1', 'm', timeout_s=30, retries=2, backoff_s=0.01))
    with pytest.raises(LlmBackendError) as err:
        llm.generate(robot, IDS, pooled(), max_new_tokens=1)
    assert err.value.code == 'LLM_UNAVAILABLE' and 'ConnectionError' in err.value.message
    assert (llm.requests, llm.retried) == (3, 2)
    with pytest.raises(LlmBackendError, match='LLM_UNAVAILABLE'):
        llm.server_models()


# ------------------------------------------------------------------ tool options
def test_tool_options_and_node_parameters(tmp_path, capsys):
    import argparse

    from vlm3r_ros.ros.node_settings import check_parameter
    from vlm3r_ros.tools import ask, eval as eval_tool
    from vlm3r_ros.tools.llm_args import add_llm_arguments, node_llm_parameters, openai_settings

    p = argparse.ArgumentParser()
    add_llm_arguments(p)
    assert openai_settings(p.parse_args([])) is None and node_llm_parameters(p.parse_args([])) == []
    with pytest.raises(ValueError, match='--llm-model'):
        openai_settings(p.parse_args(['--llm-backend', 'openai']))
    args = p.parse_args(['--llm-backend', 'openai', '--llm-model', 'vlm3r', '--llm-url', 'http://10.0.0.5:8000/v1',
                         '--llm-timeout', '30'])
    assert node_llm_parameters(args) == ['-p', 'llm_backend:=openai', '-p', 'llm_url:=http://10.0.0.5:8000/v1',
                                         '-p', 'llm_model:=vlm3r', '-p', 'llm_timeout:=30.0', '-p', 'llm_retries:=2']
    assert check_parameter('llm_url', 'localhost:8000').startswith('llm_url must be http')
    assert check_parameter('llm_url', 'http://10.0.0.5:8000/v1') is None
    assert check_parameter('llm_backend', 'remote').startswith('llm_backend must be one of local, openai')
    # vlm3r-ask / vlm3r-eval: a missing model name is a one-line user error (exit 2)
    from vlm3r_ros.media import sample_scene

    sample_scene.write_sequence(tmp_path / 'frames', n_frames=2, size=(64, 48), seed=0)
    capsys.readouterr()
    assert ask.main(['--tiny-random', '--frames', str(tmp_path / 'frames'), '--question', 'q', '--no-progress',
                     '--llm-backend', 'openai']) == 2
    assert 'needs --llm-model' in capsys.readouterr().err
    assert eval_tool.main(['x.jsonl', '-o', 'r.jsonl', '--backend', 'live', '--llm-backend', 'openai']) == 2
    assert '--llm-backend is for --backend offline' in capsys.readouterr().err
