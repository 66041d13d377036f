"""The text of one generated sequence as it grows: incremental detokenization plus stop strings.

Text that could be the beginning of a stop string is held back until it is known not to be one, so a stop string
split across tokens is still found and never reaches the client; the text before it does.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from ..hub.tokenizer import IncrementalDetokenizer


class TextStream:
    def __init__(self, tokenizer: PreTrainedTokenizerFast, stop: tuple[str, ...] = ()):
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stop = stop
        self._pending = ""  # decoded text not yet released
        self.text = ""  # released text
        self.stopped = False

    def _release(self, final: bool) -> str:
        for s in self.stop:
            at = self._pending.find(s)
            if at >= 0:
                self.stopped = True
                out, self._pending = self._pending[:at], ""
                self.text += out
                return out
        keep = 0 if final else max((self._overlap(s) for s in self.stop), default=0)
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(out) :]
        self.text += out
        return out

    def _overlap(self, stop: str) -> int:
        """Length of the longest tail of the pending text that is a proper prefix of ``stop``."""
        for n in range(min(len(stop) - 1, len(self._pending)), 0, -1):
            if self._pending.endswith(stop[:n]):
                return n
        return 0

    def push(self, token_id: int) -> str:
        """Add a token; returns the text now safe to send (empty while held back). Sets ``stopped`` on a stop."""
        if self.stopped:
            return ""
        self._pending += self.detokenizer.push(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        """The held-back rest at the end of the sequence (unless a stop string ended it)."""
        if self.stopped:
            return ""
        self._pending += self.detokenizer.flush()
        return self._release(final=True)
