"""The qwen_1_5 / VSI-Bench prompt (exact strings), its token ids with the -200 image marker,
prompt validation, and the greedy-generation helpers."""
import pytest

from vlm3r_ros.models.vlm.prompting import (
    DEFAULT_MAX_CHARS, DEMO_GENERATION, DO_SAMPLE, EVAL_GENERATION, EVAL_MAX_NEW_TOKENS, IM_END_ID,
    IM_START_ID, IMAGE_TOKEN, IMAGE_TOKEN_INDEX, PromptError, build_context, build_prompt, decode_reply,
    label_options, split_option_label, stop_token_ids, tokenize_with_image)
from vlm3r_ros.models.vlm.tokenizer import build_bpe_tokenizer, build_qwen2_tokenizer

HEADER = '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n'
FOOTER = '<|im_end|>\n<|im_start|>assistant\n'


@pytest.fixture(scope='session')
def qwen2():
    return build_qwen2_tokenizer()


# ------------------------------------------------------------------ exact strings
def test_multiple_choice_prompt_exact():
    prompt = build_prompt('Which object is closest to the door?', ['A. sofa', 'B. tv', 'C. table', 'D. stool'])
    assert prompt == (
        '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
        '<|im_start|>user\n<image>\n'
        'These are frames of a video.\n'
        'Which object is closest to the door?\n'
        'Options:\n'
        'A. sofa\nB. tv\nC. table\nD. stool\n'
        "Answer with the option's letter from the given choices directly."
        '<|im_end|>\n<|im_start|>assistant\n')


def test_numeric_prompt_exact():
    prompt = build_prompt('How many chairs are in this room?', None)
    assert prompt == (
        '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
        '<|im_start|>user\n<image>\n'
        'These are frames of a video.\n'
        'How many chairs are in this room?\n'
        'Please answer the question using a single word or phrase.'
        '<|im_end|>\n<|im_start|>assistant\n')


def test_unlabelled_options_get_letters():
    assert build_prompt('Q?', ['chair', 'sofa', '2.5']) == build_prompt('Q?', ['A. chair', 'B. sofa', 'C. 2.5'])
    assert label_options(['x'] * 26)[-1] == 'Z. x'


def test_labelled_options_are_used_as_given():
    options = ['A. 1.2', 'B. left side', 'C. C. weird but labelled']
    assert label_options(options) == options


def test_question_is_verbatim():
    question = '  Measure  this: the "bed", in cm?  '
    assert build_context(question) == f'These are frames of a video.\n{question}\n' \
                                      'Please answer the question using a single word or phrase.'


def test_num_videos_and_time_instruction():
    prompt = build_prompt('Q?', num_videos=2)
    assert prompt.startswith(HEADER + '<image><image>\nThese are frames')
    sentence = 'The video lasts for 10.00 seconds, and 32 frames are uniformly sampled from it.'
    prompt = build_prompt('Q?', time_instruction=sentence)
    assert prompt.startswith(HEADER + f'<image>\n{sentence}\nThese are frames of a video.\nQ?\n')
    assert prompt.endswith(FOOTER)


def test_split_option_label():
    assert split_option_label('B. sofa') == ('B', 'sofa')
    assert split_option_label('sofa') == ('', 'sofa')
    assert split_option_label('b. sofa') == ('', 'b. sofa')


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize('question, options, kwargs, code, message', [
    ('', None, {}, 'EMPTY_QUESTION', 'the question is empty'),
    ('   \n\t', None, {}, 'EMPTY_QUESTION', 'the question is empty'),
    (None, None, {}, 'EMPTY_QUESTION', 'the question is empty'),
    ('', ['A. x', 'B. y'], {}, 'OPTIONS_WITHOUT_QUESTION', 'options were given'),
    ('Q?', [f'opt {i}' for i in range(27)], {}, 'TOO_MANY_OPTIONS', 'at most 26 options'),
    ('Q?', ['chair', ''], {}, 'EMPTY_OPTION', 'option 2'),
    ('Q?', ['chair', '   '], {}, 'EMPTY_OPTION', 'option 2'),
    ('Q?', ['A. chair', 'B. '], {}, 'EMPTY_OPTION', 'option 2'),
    ('Q?', [], {}, 'BAD_OPTIONS', 'pass None'),
    ('Q?', 'A. chair', {}, 'BAD_OPTIONS', 'list of strings'),
    ('Q?', ['chair', 3], {}, 'BAD_OPTIONS', 'option 2 must be a string'),
    ('Q?', ['chair\nsofa', 'bed'], {}, 'BAD_OPTIONS', 'line break'),
    ('Q?', ['A. chair', 'sofa'], {}, 'MIXED_OPTION_LABELS', "labels \\['A', ''\\]"),
    ('Q?', ['B. chair', 'A. sofa'], {}, 'MIXED_OPTION_LABELS', 'in order'),
    ('x' * (DEFAULT_MAX_CHARS + 1), None, {}, 'QUESTION_TOO_LONG', 'the limit is 2000'),
    ('x' * 11, None, {'max_chars': 10}, 'QUESTION_TOO_LONG', 'has 11 characters, the limit is 10'),
    ('Q?', ['y' * 11], {'max_chars': 10}, 'OPTION_TOO_LONG', 'the limit is 10'),
    ('Q?', None, {'max_chars': 0}, 'BAD_LIMIT', 'max_chars'),
    ('What is in <image>?', None, {}, 'RESERVED_TOKEN', "'<image>'"),
    ('Q?<|im_end|>', None, {}, 'RESERVED_TOKEN', 'im_end'),
    ('Q?', ['A. <|im_start|>', 'B. x'], {}, 'RESERVED_TOKEN', 'option 1'),
    ('Q?', None, {'num_videos': 0}, 'BAD_NUM_VIDEOS', '>= 1'),
    ('Q?', None, {'num_videos': True}, 'BAD_NUM_VIDEOS', '>= 1'),
    ('Q?', None, {'time_instruction': ' '}, 'EMPTY_TIME_INSTRUCTION', 'pass None'),
    ('Q?', None, {'time_instruction': '<image>'}, 'RESERVED_TOKEN', 'time_instruction'),
    ('Q?', None, {'time_instruction': 't' * 11, 'max_chars': 10}, 'TIME_INSTRUCTION_TOO_LONG', 'limit is 10'),
])
def test_bad_prompts(question, options, kwargs, code, message):
    with pytest.raises(PromptError, match=message) as info:
        build_prompt(question, options, **kwargs)
    assert info.value.code == code
    assert str(info.value).startswith(code + ':')


def test_question_at_the_limit_is_kept_whole():
    question = 'q' * DEFAULT_MAX_CHARS
    assert question in build_prompt(question)


def test_prompt_error_is_a_value_error():
    assert issubclass(PromptError, ValueError)


# ------------------------------------------------------------------ token ids
def test_token_ids_of_a_real_prompt(qwen2):
    prompt = build_prompt('How many chairs are in this room?', None)
    ids = tokenize_with_image(prompt, qwen2)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    at = ids.index(IMAGE_TOKEN_INDEX)
    # The system turn and "<|im_start|>user\n" come first, with their Qwen2 ids.
    assert ids[:at] == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
    assert ids[at + 1] == 198  # the "\n" after <image>
    assert ids[-3:] == [151644, 77091, 198]  # "<|im_start|>assistant\n"
    assert ids.count(IM_START_ID) == 3 and ids.count(IM_END_ID) == 2
    before, after = prompt.split(IMAGE_TOKEN)
    assert ids == qwen2.encode(before).ids + [IMAGE_TOKEN_INDEX] + qwen2.encode(after).ids
    assert all(i >= 0 for i in ids[:at] + ids[at + 1:])


def test_token_ids_multiple_choice_and_two_videos(qwen2):
    prompt = build_prompt('Which is closer?', ['chair', 'sofa'], num_videos=2)
    ids = tokenize_with_image(prompt, qwen2)
    first = ids.index(IMAGE_TOKEN_INDEX)
    assert ids.count(IMAGE_TOKEN_INDEX) == 2 and ids[first + 1] == IMAGE_TOKEN_INDEX  # adjacent, no text between
    assert qwen2.decode([i for i in ids if i >= 0], skip_special_tokens=False) == prompt.replace(IMAGE_TOKEN, '')


def test_image_at_the_edges(qwen2):
    assert tokenize_with_image('<image>', qwen2) == [IMAGE_TOKEN_INDEX]
    assert tokenize_with_image('<image>hi<image>', qwen2) == [IMAGE_TOKEN_INDEX] + qwen2.encode('hi').ids + [
        IMAGE_TOKEN_INDEX]
    assert tokenize_with_image('no image', qwen2) == qwen2.encode('no image').ids


def test_transformers_tokenizer_gives_the_same_ids(qwen2):
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=qwen2)
    prompt = build_prompt('Which is closer?', ['chair', 'sofa'])
    assert tokenize_with_image(prompt, wrapped) == tokenize_with_image(prompt, qwen2)
    assert stop_token_ids(wrapped) == (IM_END_ID,)


def test_tokenizer_without_chatml_tokens_is_refused():
    # A plain byte-level tokenizer (256 byte tokens, no added tokens) splits "<|im_start|>" into bytes.
    plain = build_bpe_tokenizer({bytes([b]): b for b in range(256)}, special_tokens={})
    with pytest.raises(ValueError, match="does not encode '<\\|im_start\\|>' as one special token"):
        tokenize_with_image(build_prompt('Q?'), plain)
    with pytest.raises(ValueError, match='has no'):
        stop_token_ids(plain)


# ------------------------------------------------------------------ generation helpers
def test_generation_defaults():
    assert EVAL_MAX_NEW_TOKENS == 16 and DO_SAMPLE is False
    assert EVAL_GENERATION.num_beams == 1 and EVAL_GENERATION.top_p == 1.0 and EVAL_GENERATION.temperature == 0.0
    assert EVAL_GENERATION.stop_token_id == IM_END_ID == 151645
    assert DEMO_GENERATION.max_new_tokens == 1024 and DEMO_GENERATION.do_sample is False


def test_stop_token_ids(qwen2):
    assert stop_token_ids() == (151645,)
    assert stop_token_ids(qwen2) == (151645,)


def test_decode_reply(qwen2):
    ids = qwen2.encode(' B. sofa <|im_end|>junk after the stop').ids
    assert decode_reply(ids, qwen2) == 'B. sofa'
    assert decode_reply(qwen2.encode('2.5 meters').ids, qwen2) == '2.5 meters'  # no stop within 16 tokens
    assert decode_reply([], qwen2) == ''
