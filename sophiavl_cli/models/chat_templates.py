"""Chat templates of the Qwen3 built-in models, written to render what the released ones render.

For the conversations sophiavl builds (an optional system turn, user turns of images and text,
earlier assistant turns, the generation prompt) these give the same text as the templates that
ship with the released checkpoints; tool calls and video timestamps are left out.

- Qwen3-VL (Instruct, dense and MoE): no default system turn (unlike Qwen2-VL's "You are a
  helpful assistant."); images as `<|vision_start|><|image_pad|><|vision_end|>`; the generation
  prompt is `<|im_start|>assistant\\n`.
- Qwen3.5: the same turns, but the generation prompt opens a thinking block,
  `<|im_start|>assistant\\n<think>\\n`, or, with `enable_thinking=False`, closes an empty one,
  `<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n`. Assistant turns after the last user turn
  carry their `<think>` block; earlier ones drop it, as Qwen3.5's template does.

How sophiavl prompts a model whose template opens `<think>` is decided in `models/processing.py`
(`VLProcessor.apply_chat_template`).
"""

from __future__ import annotations

USER_PARTS = (
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
)

_COUNTERS = "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"

QWEN3_VL_CHAT_TEMPLATE = (
    _COUNTERS + "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n" + USER_PARTS + "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# Assistant turns: `reasoning_content`, else the part of `content` before `</think>`, is the
# reasoning; it is rendered (as `<think>\n...\n</think>\n\n`) only after the last user turn.
QWEN3_5_CHAT_TEMPLATE = (
    _COUNTERS + "{% set last = namespace(user=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set last.user = loop.index0 %}"
    "{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and message['content'] is string %}"
    "{% set content = message['content'] %}"
    "{% set reasoning = message.get('reasoning_content') or '' %}"
    "{% if not reasoning and '</think>' in content %}"
    "{% set reasoning = content.split('</think>')[0].split('<think>')[-1] %}"
    "{% set content = content.split('</think>')[-1] %}"
    "{% endif %}"
    "<|im_start|>assistant\n"
    "{% if loop.index0 > last.user %}"
    "<think>\n{{ reasoning.strip('\n') }}\n</think>\n\n"
    "{% endif %}"
    "{{ content.lstrip('\n') }}<|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n" + USER_PARTS + "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n"
    "{% else %}"
    "<think>\n"
    "{% endif %}"
    "{% endif %}"
)
