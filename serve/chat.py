"""Chat messages → prompt text, through the tokenizer's chat template (Jinja).

Checkpoints carry SpikeGPT's plain "User:/Assistant:" format as their template
(``spikegpt.hub.tokenizer.CHAT_TEMPLATE``, its one definition), so this server, ``apply_chat_template`` and Hugging
Face chat pipelines write the same prompt;
``--chat-template FILE`` replaces it. With that format the reply also stops at its first blank line (``CHAT_STOP``,
never returned): a turn is one paragraph, and the model would go on to write the next turn. Every render runs in a
``ChatTemplateRenderer``'s worker process, bounded in time and size (a template is untrusted input).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from spikegpt.hub.tokenizer import CHAT_STOP, CHAT_TEMPLATE

from .errors import invalid
from .protocol import ChatMessage
from .templating import ChatTemplateRenderer, TemplateRenderError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]  # stop strings the format implies


async def render_chat(renderer: ChatTemplateRenderer, messages: list[ChatMessage]) -> ChatPrompt:
    """The prompt for ``messages``; a template that fails (raises, runs too long, grows too large) is a 400 naming
    it, with one line in the log."""
    conversation = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in messages]
    try:
        text = await renderer.render(conversation)
    except TemplateRenderError as e:
        message = f"{renderer.name} {e}"
        logger.warning("chat request refused: %s", message)
        raise invalid(message, "messages") from None
    return ChatPrompt(text, CHAT_STOP if renderer.template == CHAT_TEMPLATE else ())
