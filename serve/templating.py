"""``ChatTemplateRenderer``: chat templates rendered off the event loop, each render bounded in time and memory.

A chat template comes with the checkpoint (from the Hub: untrusted input), and Jinja compiles it to Python code.
Why worker processes, and not a thread or checks inside the render:

- a thread cannot be stopped: given a time limit, it leaves ``{% for %}{% for %}...`` running for ever, holding
  the GIL and blocking shutdown;
- checks inside a sandboxed render (a deadline in every call, a wrapped ``range``, an output budget) cannot reach
  the single operations that run or allocate without bound: ``'x' * 10**10``, ``9 ** (9 ** 9)``,
  ``'x'.ljust(10**10)``, ``[0] * 10**9`` are one opcode or one C call each, and there are always more of them;
  Jinja even evaluates constant expressions such as ``'x' * 10**10`` while it compiles a template, before any
  render-time check could run (so the workers compile too).

A process is bounded by the operating system instead: it is killed at the time limit (``--chat-template-timeout``)
and its address space is capped (on Linux) at its start-up size plus a budget derived from the output limit, so an
allocation past it raises MemoryError inside the render rather than taking the machine's memory; the worker checks
the output limit (``--chat-template-max-chars``) before it sends the text back. Workers start when a render first
needs one (a server that renders no chat starts none), serve the renders after it (a render costs a round trip on
a pipe), and a killed one is replaced by the next render that needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from .errors import server_error, shutting_down

logger = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("template_worker.py")
WORKERS = 2  # renders take milliseconds: two processes keep one slow template from queueing every chat behind it
START_TIMEOUT = 120.0  # a new worker imports transformers' renderer: seconds on a busy machine
BASE_MEMORY = 256 << 20  # a render's allowance beyond the worker's start-up size: Jinja, the compiled template
BYTES_PER_OUTPUT_CHAR = 32  # the output (up to 4 bytes a character), the pieces it is joined from, its JSON line
BYTES_PER_INPUT_BYTE = 16  # the messages, parsed from JSON into Python objects (twice: transformers copies them)
JSON_BYTES_PER_CHAR = 6  # a character's most bytes in a JSON line ("\u001f")


class TemplateRenderError(Exception):
    """The template failed to render these messages: ran too long, grew too large or raised. The message says how
    (it reads after the template's name)."""


def memory_allowance(max_chars: int, max_input_bytes: int) -> int:
    """Bytes a render may allocate beyond the worker's start-up size: enough for any output under ``max_chars``
    made from any request body under ``max_input_bytes``."""
    return BASE_MEMORY + BYTES_PER_OUTPUT_CHAR * max_chars + BYTES_PER_INPUT_BYTE * max_input_bytes


class ChatTemplateRenderer:
    """Renders one chat template (``template``, with ``variables``: the tokenizer's special tokens) for messages,
    in up to ``workers`` worker processes; ``name`` is how errors name the template."""

    def __init__(
        self,
        template: str,
        variables: dict,
        name: str,
        timeout: float,
        max_chars: int,
        max_input_bytes: int,
        workers: int = WORKERS,
    ):
        self.template = template
        self.name = name
        self.timeout = timeout
        self.max_chars = max_chars
        setup = {
            "template": template,
            "variables": variables,
            "max_chars": max_chars,
            "memory_bytes": memory_allowance(max_chars, max_input_bytes),
        }
        self._setup = (json.dumps(setup) + "\n").encode()
        self._line_limit = JSON_BYTES_PER_CHAR * max_chars + (64 << 10)
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[asyncio.subprocess.Process] = []
        self._processes: set[asyncio.subprocess.Process] = set()  # every worker alive, idle or busy
        self._closed = False

    async def render(self, messages: list[dict]) -> str:
        """The prompt ``messages`` render to. Raises TemplateRenderError when the template fails, and an APIError
        when the server cannot render (shutting down: 503; a worker that cannot start: 500)."""
        request = (json.dumps({"messages": messages}, ensure_ascii=False) + "\n").encode()
        async with self._slots:
            if self._closed:
                raise shutting_down()
            process = self._idle.pop() if self._idle else await self._start()
            reply = await self._ask(process, request)
            if process.returncode is not None or self._closed:
                self._kill(process)
            else:
                self._idle.append(process)
        if "text" not in reply:
            raise self._failure(reply)
        return reply["text"]

    async def _ask(self, process: asyncio.subprocess.Process, request: bytes) -> dict:
        """One render's reply, within the time limit. A worker that overruns it, fails, or whose request is
        cancelled (its render may be a runaway one) is killed, never reused; its reply then says why."""
        try:
            async with asyncio.timeout(self.timeout):
                process.stdin.write(request)
                await process.stdin.drain()
                line = await process.stdout.readline()
            if not line.endswith(b"\n"):
                raise EOFError("the worker is gone")
        except asyncio.CancelledError:
            self._kill(process)
            raise
        except (TimeoutError, ValueError, EOFError, ConnectionError) as e:
            self._kill(process)
            await process.wait()
            if self._closed:
                raise shutting_down() from None
            if isinstance(e, TimeoutError):
                return {"error": "time"}
            # ValueError: a reply line over the limit (readline's LimitOverrunError)
            return {"error": "output" if isinstance(e, ValueError) else "crash"}
        return json.loads(line)

    def _failure(self, reply: dict) -> TemplateRenderError:
        reasons = {
            "time": f"took longer than {self.timeout:g} s to render",
            "output": f"rendered more than {self.max_chars} characters, the most a prompt may have",
            "memory": "ran out of the memory a render may use",
            "crash": "ended its worker process (it crashed)",
        }
        return TemplateRenderError(reasons.get(reply["error"]) or f"cannot render these messages: {reply['detail']}")

    async def _start(self) -> asyncio.subprocess.Process:
        """A new worker, ready to render (the time limit does not count its start)."""
        process = None
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # the script's folder (this package's modules) stays off sys.path
                str(WORKER_SCRIPT),
                str(os.getpid()),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=self._line_limit,
            )
            self._processes.add(process)
            async with asyncio.timeout(START_TIMEOUT):
                process.stdin.write(self._setup)
                await process.stdin.drain()
                ready = await process.stdout.readline()
            if json.loads(ready or b"null") != {"ready": True}:
                raise EOFError("it exited while starting")
        except asyncio.CancelledError:
            if process is not None:
                self._kill(process)
            raise
        except (OSError, EOFError, TimeoutError, ValueError) as e:
            if process is not None:
                self._kill(process)
                await process.wait()
            if self._closed:
                raise shutting_down() from None
            logger.error("cannot start a chat template worker: %s: %s", type(e).__name__, e)
            raise server_error("the server could not render the chat template; see its log") from None
        if self._closed:  # closed while it started
            self._kill(process)
            raise shutting_down()
        return process

    def _kill(self, process: asyncio.subprocess.Process) -> None:
        """SIGKILL (the event loop reaps it): the one way to stop a render that runs in a C call."""
        self._processes.discard(process)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited already
                process.kill()

    def abort(self) -> None:
        """Stop rendering at once: every worker is killed (renders in flight answer 503), and no render starts."""
        self._closed = True
        for process in list(self._processes):
            self._kill(process)
        self._idle.clear()

    async def close(self) -> None:
        """``abort``, then wait for the workers to be gone."""
        processes = list(self._processes)
        self.abort()
        for process in processes:
            await process.wait()
