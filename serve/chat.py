"""Chat messages → prompt text: the tokenizer's chat template when it has one, else this server's default.

The default is plain text in the style RWKV chat models are trained on, one turn per paragraph, ending with the
assistant's header so the model writes the reply:

    System: You are a poet.

    User: Write about the sea.

    Assistant:

Roles print as System (also for "developer"), User, Assistant and Tool. Because a model continuing such a text
would go on to write the user's next turn, the default also stops generation at ``"\\n\\nUser:"`` (never returned).
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerFast

from .errors import invalid
from .protocol import ChatMessage

DEFAULT_ROLE_NAMES = {
    "system": "System",
    "developer": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool",
}
DEFAULT_STOP = ("\n\nUser:",)


def default_chat_prompt(messages: list[ChatMessage]) -> str:
    turns = [f"{DEFAULT_ROLE_NAMES[m.role]}: {m.text().strip()}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]  # stop strings the format implies
    add_special_tokens: bool  # False when a template already wrote them


def render_chat(tokenizer: PreTrainedTokenizerFast, messages: list[ChatMessage]) -> ChatPrompt:
    if not tokenizer.chat_template:
        return ChatPrompt(default_chat_prompt(messages), DEFAULT_STOP, add_special_tokens=True)
    conversation = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in messages]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    except TemplateError as e:
        raise invalid(f"the chat template cannot render these messages: {e}", "messages") from e
    return ChatPrompt(text, (), add_special_tokens=False)
