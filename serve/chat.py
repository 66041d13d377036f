"""Chat messages → prompt text, through the tokenizer's chat template (Jinja).

Checkpoints carry SpikeGPT's plain "User:/Assistant:" format as their template
(``spikegpt.hub.tokenizer.CHAT_TEMPLATE``, its one definition), so this server, ``apply_chat_template`` and Hugging
Face chat pipelines write the same prompt;
``--chat-template FILE`` replaces it. With that format the reply also stops at its first blank line (``CHAT_STOP``,
never returned): a turn is one paragraph, and the model would go on to write the next turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerFast

from spikegpt.hub.tokenizer import CHAT_STOP, CHAT_TEMPLATE

from .errors import invalid
from .protocol import ChatMessage


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]  # stop strings the format implies


def render_chat(tokenizer: PreTrainedTokenizerFast, messages: list[ChatMessage]) -> ChatPrompt:
    template = tokenizer.chat_template or CHAT_TEMPLATE
    conversation = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in messages]
    try:
        text = tokenizer.apply_chat_template(
            conversation, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except TemplateError as e:
        raise invalid(f"the chat template cannot render these messages: {e}", "messages") from e
    return ChatPrompt(text, CHAT_STOP if template == CHAT_TEMPLATE else ())
