"""``RecurrentState``: everything a SpikeGPT sequence carries from one token to the next.

Constant size per sequence whatever its length, batch first, so a batch of sequences is a stack of states and
a finished sequence leaves by ``select``. No module keeps any of this between calls.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .ops import FRESH_MAX


@dataclass
class RecurrentState:
    """Per-sequence recurrent state of every block; each field is ``[batch, n_layer, n_embd]``.

    att_shift, ffn_shift: the previous token's LayerNorm output entering the time mix (or layer 0's channel mix
        when ``ffn_pre``) and the channel mix (token shift); model dtype.
    wkv_num, wkv_den, wkv_max: WKV numerator and denominator scaled by exp(-wkv_max), and that running maximum
        exponent; fp32.
    att_v, ffn_v: membrane potentials of the LIF neurons after the time mix and after the channel mix; fp32.
    input_v: ``[batch, n_layer, input_width]`` fp32, the membranes of the LIF neurons that encode the projections'
        inputs (placement "inputs" with binary spikes: per block the time mix's K|V|R and O inputs, then the channel
        mix's K|R and V inputs, side by side); width 0 for every other model.
    """

    att_shift: torch.Tensor
    ffn_shift: torch.Tensor
    wkv_num: torch.Tensor
    wkv_den: torch.Tensor
    wkv_max: torch.Tensor
    att_v: torch.Tensor
    ffn_v: torch.Tensor
    input_v: torch.Tensor

    @classmethod
    def fresh(
        cls,
        batch: int,
        n_layer: int,
        n_embd: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        input_width: int = 0,
    ) -> RecurrentState:
        """The state of ``batch`` sequences that have seen no tokens (``input_width``: see ``input_v``)."""
        shape = (batch, n_layer, n_embd)
        fp32 = dict(device=device, dtype=torch.float32)
        return cls(
            att_shift=torch.zeros(shape, device=device, dtype=dtype),
            ffn_shift=torch.zeros(shape, device=device, dtype=dtype),
            wkv_num=torch.zeros(shape, **fp32),
            wkv_den=torch.zeros(shape, **fp32),
            wkv_max=torch.full(shape, FRESH_MAX, **fp32),
            att_v=torch.zeros(shape, **fp32),
            ffn_v=torch.zeros(shape, **fp32),
            input_v=torch.zeros(batch, n_layer, input_width, **fp32),
        )

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @property
    def batch_size(self) -> int:
        return self.att_shift.shape[0]

    def layer(self, i: int) -> tuple[torch.Tensor, ...]:
        """Block i's slice of every field, each ``[batch, n_embd]`` (``input_v``: ``[batch, input_width]``), in field
        order."""
        return tuple(t[:, i] for t in self.tensors())

    @classmethod
    def from_layers(cls, layers: list[tuple[torch.Tensor, ...]]) -> RecurrentState:
        """Inverse of ``layer``: one tuple of ``[batch, n_embd]`` tensors per block, in field order."""
        return cls(*(torch.stack(column, dim=1) for column in zip(*layers, strict=True)))

    def select(self, indices: torch.Tensor | list[int] | slice) -> RecurrentState:
        """The states of the given batch rows (a copy for index lists, a view for slices)."""
        if isinstance(indices, list):
            indices = torch.tensor(indices, dtype=torch.long, device=self.att_shift.device)
        return type(self)(*(t[indices] for t in self.tensors()))

    @classmethod
    def stack(cls, states: list[RecurrentState]) -> RecurrentState:
        """One batch holding the rows of every state in order."""
        if not states:
            raise ValueError("RecurrentState.stack needs at least one state")
        return cls(*(torch.cat(column, dim=0) for column in zip(*(s.tensors() for s in states), strict=True)))

    def clone(self) -> RecurrentState:
        return type(self)(*(t.clone() for t in self.tensors()))

    def detach(self) -> RecurrentState:
        """The same values cut from the autograd graph (truncated backpropagation through time)."""
        return type(self)(*(t.detach() for t in self.tensors()))

    def to(self, device: torch.device | str) -> RecurrentState:
        return type(self)(*(t.to(device) for t in self.tensors()))

    def write_rows(self, rows: torch.Tensor | list[int], other: RecurrentState) -> None:
        """Copy ``other``'s rows (in order) into rows ``rows`` of this state, in place."""
        if isinstance(rows, list):
            rows = torch.tensor(rows, dtype=torch.long, device=self.att_shift.device)
        for mine, theirs in zip(self.tensors(), other.tensors(), strict=True):
            mine[rows] = theirs.to(mine.dtype)
