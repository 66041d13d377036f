"""A chat-template worker: one process that renders a model's Jinja chat template, started and killed by
``spikegpt.serve.templating.ChatTemplateRenderer``.

It is run by its file path with ``python -P`` (not as ``-m spikegpt.serve...``), so that it imports neither the
``spikegpt`` package (nor torch with it) nor the modules beside this file: only the standard library, and Jinja
through transformers' own chat-template renderer, the one ``tokenizer.apply_chat_template`` uses.

Protocol, one JSON document per line: the server writes the set-up (``template``, the template's ``variables`` —
the tokenizer's special tokens, as ``apply_chat_template`` passes them —, ``max_chars`` and ``memory_bytes``), the
worker answers ``{"ready": true}``; then per render the server writes ``{"messages": [...]}`` and the worker
answers ``{"text": ...}`` or ``{"error": "raised" | "output" | "memory", "detail": ...}``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
DETAIL_CHARS = 300  # an exception's message can hold anything the template built: a client sees this much of it


def _die_with(parent: int) -> None:
    """On Linux, be killed when the server dies, even in the middle of a runaway render (an orphan would spin on
    forever); elsewhere the closed input ends the worker once it is idle."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the server died before the request took effect
        os._exit(0)


def _limit_memory(extra: int) -> None:
    """Cap this process's address space at what it uses now plus ``extra`` bytes (Linux): an allocation past it
    raises MemoryError inside the render instead of taking the machine's memory (``'x' * 10**10``)."""
    try:
        with open("/proc/self/status") as status:
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = used + extra
    resource.setrlimit(resource.RLIMIT_AS, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))


def _render(render_jinja_template, setup: dict, messages: list) -> dict:
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=setup["template"], add_generation_prompt=True, **setup["variables"]
        )
    except MemoryError:
        return {"error": "memory"}
    except Exception as e:  # whatever the template raised (the sandbox's refusals, raise_exception, OverflowError...)
        detail = f"{type(e).__name__}: {e}"
        return {"error": "raised", "detail": detail[:DETAIL_CHARS] + ("..." if len(detail) > DETAIL_CHARS else "")}
    text = rendered[0]
    if len(text) > setup["max_chars"]:
        return {"error": "output"}
    return {"text": text}


def _answer(reply: dict) -> None:
    sys.stdout.write(json.dumps(reply, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server stops us
    _die_with(int(sys.argv[1]))
    from transformers.utils.chat_template_utils import render_jinja_template

    setup = json.loads(sys.stdin.readline())
    _limit_memory(setup["memory_bytes"])
    _answer({"ready": True})
    for line in sys.stdin:
        try:
            _answer(_render(render_jinja_template, setup, json.loads(line)["messages"]))
        except MemoryError:  # the messages or the reply did not fit
            try:
                _answer({"error": "memory"})
            except MemoryError:
                os._exit(1)  # the server sees the worker gone, and starts another


if __name__ == "__main__":
    main()
