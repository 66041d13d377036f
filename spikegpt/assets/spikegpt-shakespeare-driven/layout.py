"""The model's spike layout: where its spikes are and what each of its matrix products reads.

One description, derived from the configuration, that everything naming a spiking site or a product reads: the
model (which modules it builds, the names in its ``SpikeStats``), the decoding products (which may run
event-driven), the energy accounting (what each product costs), the server's model card and its playground.

The placement (``config.spike_placement``) is decided here and nowhere else:

- ``residual`` (the published SpikeGPT): a LIF after each mix, whose spikes enter the real-valued residual stream;
  every product reads a real value (a LayerNorm output, the gated WKV output, or the channel mix's relu(k)², whose
  zeros make its value product the one that may run event-driven).
- ``inputs`` (spike-driven, with ``spiking``): every block product reads spikes (binary or counts), so every one of
  them may run event-driven; no LIF on the residual stream.

The head reads ``ln_out``'s real output in both placements and is never event-driven.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import SpikeGPTConfig

EMBEDDING_SITE = "embedding"
TIME_MIX_PRODUCTS = ("key", "value", "receptance", "output")  # forward order
CHANNEL_MIX_PRODUCTS = ("key", "receptance", "value")  # forward order


@dataclass(frozen=True)
class Product:
    """One matrix product (a bias-free ``nn.Linear``).

    name: its module path under ``SpikeGPTModel`` (``blocks.0.att.key``; ``head`` for the head, which is
        ``SpikeGPTForCausalLM.head``), as ``SpikeStats.projections`` names it.
    fan_in, fan_out: input and output width.
    reads_spikes: its input is whole numbers (binary spikes or spike counts), so a product costs accumulates.
    event_driven: its input may be mostly zero, so it may read only the weight rows of its nonzero inputs.
    """

    name: str
    fan_in: int
    fan_out: int
    reads_spikes: bool
    event_driven: bool

    @property
    def role(self) -> str:
        """Its part in its mix: ``key``, ``value``, ``receptance`` or ``output`` (``head`` for the head)."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Mix:
    """A block's time mix or channel mix (layer 0's first mix is a channel mix with ``ffn_pre``).

    name: its module path (``blocks.0.att``, ``blocks.0.ffn_pre``, ``blocks.0.ffn``); kind: ``time`` or
    ``channel``; products: in forward order; site: its LIF on the residual stream (placement ``residual``:
    ``blocks.0.att.lif``), or None.
    """

    name: str
    layer: int
    kind: str
    products: tuple[Product, ...]
    site: str | None

    @property
    def attribute(self) -> str:
        """The attribute of its ``Block`` that holds it: ``att``, ``ffn_pre`` or ``ffn``."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class SpikeLayout:
    """Where a model's spikes are and what its products read (see the module docstring).

    placement: ``config.spike_placement``; spiking: ``config.spiking`` (or an override, for the baseline with
        spikes off).
    lif_on_residual: a LIF after each mix adds its spikes to the residual stream (placement ``residual``; the
        identity when spiking is off, still a site of the statistics).
    spiking_inputs: every block product reads spikes (placement ``inputs`` with spiking on).
    site_width: values each site emits per token (``n_embd``).
    mixes: per block its first mix and its channel mix, in forward order; head: the head's product.
    """

    placement: str
    spiking: bool
    lif_on_residual: bool
    spiking_inputs: bool
    site_width: int
    mixes: tuple[Mix, ...]
    head: Product

    @property
    def n_layer(self) -> int:
        return len(self.mixes) // 2

    @property
    def sites(self) -> tuple[str, ...]:
        """The spiking sites whose spikes enter the residual stream, in forward order (``SpikeStats.sites``): the
        embedding, then each mix's LIF (placement ``residual``). Spikes at the products' inputs are reads."""
        return (EMBEDDING_SITE, *(mix.site for mix in self.mixes if mix.site is not None))

    @property
    def products(self) -> tuple[Product, ...]:
        """The blocks' products in forward order (``SpikeStats.projections``); the head is ``head``."""
        return tuple(product for mix in self.mixes for product in mix.products)

    @property
    def product_names(self) -> tuple[str, ...]:
        return tuple(product.name for product in self.products)

    def block(self, layer: int) -> tuple[Mix, Mix]:
        """Block ``layer``'s two mixes: its time mix (or ``ffn_pre``'s channel mix) and its channel mix."""
        return self.mixes[2 * layer], self.mixes[2 * layer + 1]


def spike_layout(config: SpikeGPTConfig, spiking: bool | None = None) -> SpikeLayout:
    """The layout of a model with ``config``; ``spiking`` overrides ``config.spiking`` (the same model with its
    spike functions off, as the energy report's baseline counts it)."""
    spiking = config.spiking if spiking is None else spiking
    lif_on_residual = config.spike_placement == "residual"
    spiking_inputs = spiking and config.spike_placement == "inputs"
    mixes = []
    for layer in range(config.n_layer):
        first = "ffn_pre" if config.ffn_pre and layer == 0 else "att"  # the original's "RWKV-ffnPre"
        for attribute in (first, "ffn"):
            name = f"blocks.{layer}.{attribute}"
            kind = "time" if attribute == "att" else "channel"
            products = _mix_products(name, kind, config, spiking_inputs)
            site = f"{name}.lif" if lif_on_residual else None
            mixes.append(Mix(name, layer, kind, products, site))
    head = Product("head", config.n_embd, config.vocab_size, reads_spikes=False, event_driven=False)
    return SpikeLayout(
        config.spike_placement, spiking, lif_on_residual, spiking_inputs, config.n_embd, tuple(mixes), head
    )


def _mix_products(name: str, kind: str, config: SpikeGPTConfig, spiking_inputs: bool) -> tuple[Product, ...]:
    d, hidden = config.n_embd, config.ffn_hidden
    roles = TIME_MIX_PRODUCTS if kind == "time" else CHANNEL_MIX_PRODUCTS
    shapes = {"key": (d, hidden), "value": (hidden, d)} if kind == "channel" else {}  # every other product: d → d
    products = []
    for role in roles:
        fan_in, fan_out = shapes.get(role, (d, d))
        # relu(k)², the channel mix's value input, is mostly zero whatever the placement
        sparse = spiking_inputs or (kind == "channel" and role == "value")
        products.append(Product(f"{name}.{role}", fan_in, fan_out, spiking_inputs, sparse))
    return tuple(products)
