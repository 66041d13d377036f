"""Hardware profiles: what one operation of each kind costs, in picojoules, and where the figure comes from.

A profile prices the four kinds of operation the accounting counts (see ``spikegpt.energy.accounting``):

    mac          a multiply-accumulate of two real numbers (the work of a dense matrix product)
    ac           an accumulate: adding a weight because a binary input is 1 (or adding a spike into a sum)
    neuron       one LIF neuron update: leak-and-integrate, threshold test, reset
    elementwise  one arithmetic step outside a matrix product (add, multiply, fused multiply-add, max, exp,
                 division), counted as one operation each

A profile may also price the products that read a weight matrix by the width of those weights
(``mac_pj_by_weight_bits``, ``ac_pj_by_weight_bits``: tables from a width in bits to picojoules), for models whose
weights are quantized (``config.weight_bits``). A width the table lacks is priced at the next listed width above
it (a datapath at least that wide runs it), else at the plain ``mac_pj`` / ``ac_pj``; float weights always use
the plain figures. Every other operation is priced the same whatever the weights.

A profile also prices data movement: reading the products' weights (see ``spikegpt.energy.accounting`` for which
rows each product reads), per byte, from on-chip SRAM or from DRAM:

    sram_pj_per_byte, dram_pj_per_byte   energy per byte of weights read from each memory
    sram_bytes                           the on-chip memory that can hold weights, in bytes
    weight_memory                        where the weights are: "auto" (the rule: in SRAM when ALL the weight
                                         matrices of the model, at the widths they are read at, fit in
                                         ``sram_bytes``, else every weight read comes from DRAM; no split), or
                                         always "sram" or always "dram"
    reads_included                       kinds of operation ("mac", "ac") whose price already includes reading
                                         their weight (a chip's synaptic operation, a compute-in-memory macro):
                                         their bytes are counted but not priced again
    float_weight_bits                    the width unquantized (float) weights are stored and read at: that of
                                         the profile's datapath (32 on fp32, 16 on fp16, 8 on int8), not the
                                         dtype the estimate ran in; quantized models (``config.weight_bits``)
                                         are read at their own width on every profile

A profile without memory prices (an older file) counts the bytes but prices no data movement, and says so.

Built-in profiles live here as data (the 45 nm and Loihi ones) and as TOML files beside this module
(``profile_data/``, one per chip: OpenSpike, the RRAM compute-in-memory macro); users add their own as a small TOML
or JSON file with the same fields (``spikegpt energy --list-profiles`` prints the built-ins in that format).
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import EnergyError

COST_FIELDS = ("mac_pj", "ac_pj", "neuron_pj", "elementwise_pj")
TEXT_FIELDS = ("name", "description", "source", "leaves_out")
WIDTH_FIELDS = ("mac_pj_by_weight_bits", "ac_pj_by_weight_bits")  # kind → {weight bits: pJ}
MEMORY_PRICE_FIELDS = ("sram_pj_per_byte", "dram_pj_per_byte")  # optional, pJ per byte of weights read
MEMORY_FIELDS = (*MEMORY_PRICE_FIELDS, "sram_bytes", "weight_memory", "reads_included", "float_weight_bits")
WEIGHT_MEMORIES = ("auto", "sram", "dram")
READ_KINDS = ("mac", "ac")  # the kinds of operation that read a weight
PROFILE_DATA = Path(__file__).parent / "profile_data"


@dataclass(frozen=True)
class HardwareProfile:
    """Energy per operation of each kind, in picojoules, with a description of what each figure stands for."""

    name: str
    mac_pj: float
    ac_pj: float
    neuron_pj: float
    elementwise_pj: float
    description: str = ""
    source: str = ""
    leaves_out: str = ""
    mac_pj_by_weight_bits: tuple[tuple[int, float], ...] = ()  # (bits, pJ), ascending bits
    ac_pj_by_weight_bits: tuple[tuple[int, float], ...] = ()
    sram_pj_per_byte: float | None = None
    dram_pj_per_byte: float | None = None
    sram_bytes: int | None = None
    weight_memory: str = "auto"
    reads_included: tuple[str, ...] = ()
    float_weight_bits: int = 32

    def __post_init__(self):
        if self.weight_memory not in WEIGHT_MEMORIES:
            raise EnergyError(f"weight_memory must be one of {', '.join(WEIGHT_MEMORIES)}, got {self.weight_memory!r}")
        if not self.prices_memory and self.weight_memory == "auto":
            return  # an operations-only profile
        needed = {"auto": ("sram_pj_per_byte", "dram_pj_per_byte", "sram_bytes"), "sram": ("sram_pj_per_byte",)}
        missing = [key for key in needed.get(self.weight_memory, ("dram_pj_per_byte",)) if getattr(self, key) is None]
        if missing:
            raise EnergyError(
                f"weight_memory {self.weight_memory!r} needs {', '.join(missing)} (a profile that prices data "
                "movement gives the price of the memory its weights come from, and for 'auto' the SRAM capacity)"
            )

    @property
    def prices_memory(self) -> bool:
        """Whether the profile prices data movement (older profiles count operations only)."""
        return any(getattr(self, key) is not None for key in (*MEMORY_PRICE_FIELDS, "sram_bytes"))

    def memory_for(self, weight_bytes: int) -> str | None:
        """Where a model whose weight matrices take ``weight_bytes`` reads them from: "sram" or "dram" by the rule
        of ``weight_memory`` (module docstring), None when the profile prices no data movement."""
        if not self.prices_memory:
            return None
        if self.weight_memory != "auto":
            return self.weight_memory
        return "sram" if weight_bytes <= self.sram_bytes else "dram"

    def with_weight_memory(self, memory: str) -> HardwareProfile:
        """The profile with its weights kept in ``memory`` ("auto", "sram", "dram"); an EnergyError when the profile
        has no price for that memory."""
        try:
            return replace(self, weight_memory=memory)
        except EnergyError as e:
            raise EnergyError(f"profile {self.name}: {e}") from e

    def joules_per_byte(self, memory: str | None, kind: str) -> float:
        """Energy of reading one byte of weights from ``memory`` for an operation of ``kind``, in joules: 0 where
        the operation's price already includes the read, or no memory is priced."""
        if memory is None or kind in self.reads_included:
            return 0.0
        return getattr(self, f"{memory}_pj_per_byte") * 1e-12

    def joules(self, kind: str, weight_bits: int | None = None) -> float:
        """Energy of one operation of ``kind`` ("mac", "ac", "neuron" or "elementwise"), in joules; for a product
        reading weights of ``weight_bits`` bits, at that width's price when the profile has one (module docstring)."""
        if weight_bits is not None and kind in ("mac", "ac"):
            for bits, pj in getattr(self, f"{kind}_pj_by_weight_bits"):
                if bits >= weight_bits:
                    return pj * 1e-12
        return getattr(self, f"{kind}_pj") * 1e-12

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in WIDTH_FIELDS:
            out[key] = {str(bits): pj for bits, pj in getattr(self, key)}
        out["reads_included"] = list(self.reads_included)
        return out

    def to_toml(self) -> str:
        """The profile as a TOML file that ``load_profile`` reads back unchanged."""
        lines = [f"{key} = {json.dumps(getattr(self, key))}" for key in TEXT_FIELDS]
        lines += [f"{key} = {getattr(self, key)!r}" for key in COST_FIELDS]
        memory = [(key, getattr(self, key)) for key in MEMORY_FIELDS if getattr(self, key) is not None]
        lines += [f"{key} = {json.dumps(value)}" for key, value in memory]
        for key in WIDTH_FIELDS:
            if getattr(self, key):
                lines += [f"[{key}]", *(f'"{bits}" = {pj!r}' for bits, pj in getattr(self, key))]
        return "\n".join(lines) + "\n"


# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm CMOS at 0.9 V:
# add / multiply = 0.9 / 3.7 pJ (fp32), 0.4 / 1.1 pJ (fp16), 0.03 / 0.2 pJ (int8); a MAC is one of each
# (4.6, 1.5, 0.23 pJ), the E_MAC = 4.6 pJ, E_AC = 0.9 pJ pair SNN papers (SpikeGPT included) quote.
HOROWITZ_2014 = "Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014 (45 nm, 0.9 V)"

# Memory, same source, per 64-bit read: SRAM 10 pJ from an 8 KB array, 20 pJ from 32 KB, 100 pJ from 1 MB; DRAM
# 1.3-2.6 nJ. The weights are on chip when they fit the largest array the source prices (1 MB = 2^20 bytes, at its
# 100 / 8 = 12.5 pJ per byte: a model's weights fill a large array, not an 8 KB one); otherwise every read comes
# from DRAM at the low end of the range, 1300 / 8 = 162.5 pJ per byte (the high end doubles it).
HOROWITZ_MEMORY = dict(sram_pj_per_byte=12.5, dram_pj_per_byte=162.5, sram_bytes=2**20)
HOROWITZ_MEMORY_TEXT = (
    "weights read from a 1 MB on-chip SRAM (12.5 pJ/byte) when all of them fit, else from DRAM (162.5 pJ/byte, "
    "the low end of 1.3-2.6 nJ per 64 bits)"
)


def _cmos_45nm(number_format: str, bits: int, add_pj: float, mac_pj: float, by_width=()) -> HardwareProfile:
    # A LIF update V += (X - V) / tau is one subtraction and one multiply-accumulate; the threshold test is one
    # comparison (priced as an add); the hard reset is a select and is not priced. Elementwise steps are priced
    # as one MAC: more than a lone add or multiply costs, less than an exp or a division.
    # Binarized weights (±scale) turn each product's multiply into a sign flip: x·(±1) accumulated is one add
    # (the per-row scale is one multiply per output, not priced). Horowitz gives no figure for a float × 4- or
    # 8-bit-integer multiply, so on the float datapaths 8- and 4-bit weights save memory, not arithmetic.
    return HardwareProfile(
        name=f"45nm-{number_format}",
        mac_pj=mac_pj,
        ac_pj=add_pj,
        neuron_pj=round(mac_pj + 2 * add_pj, 6),
        elementwise_pj=mac_pj,
        description=f"45 nm CMOS, {number_format} arithmetic: MAC = one {number_format} multiply + add; AC = one "
        f"{number_format} add; neuron update = MAC + 2 adds (leak-integrate, threshold test); elementwise op "
        f"priced as one MAC; float weights stored as {number_format} ({bits} bits); {HOROWITZ_MEMORY_TEXT}",
        source=HOROWITZ_2014,
        leaves_out="moving activations and the recurrent state; a weight read reused across the tokens of a batch; "
        "static power, control; figures are for 45 nm at 0.9 V, not a newer node",
        mac_pj_by_weight_bits=((1, add_pj), *by_width),
        float_weight_bits=bits,  # the datapath's number format holds the float weights
        **HOROWITZ_MEMORY,
    )


FP32 = _cmos_45nm("fp32", 32, add_pj=0.9, mac_pj=4.6)
FP16 = _cmos_45nm("fp16", 16, add_pj=0.4, mac_pj=1.5)
INT8 = _cmos_45nm("int8", 8, add_pj=0.03, mac_pj=0.23, by_width=((8, 0.23),))  # 4-bit weights: the 8-bit MAC

# Davies et al., "Loihi: a neuromorphic manycore processor with on-chip learning", IEEE Micro 38(1), 2018,
# Table 2 (14 nm, pre-silicon estimates): synaptic spike operation >= 23.6 pJ (the minimum is used here), neuron
# update 81 pJ active / 52 pJ inactive. Every LIF neuron here receives a dense real-valued input at every token,
# so each update is an active one. Loihi has no datapath for real-valued products, so the dense work (MACs,
# elementwise steps) is priced as on a 45 nm fp32 processor beside it (Horowitz 2014, as above).
# Memory: a synaptic spike operation reads the synapse's weight from the core's own synaptic SRAM and accumulates
# it, so its figure is taken to include that read ("ac" in reads_included; the table prices the operation, not
# the read apart). The companion processor reads its weights (the MAC products, the head, the embedding) as the
# 45 nm profiles do; its fp32 sets the width of float weights.
LOIHI = HardwareProfile(
    name="loihi",
    mac_pj=FP32.mac_pj,
    ac_pj=23.6,
    neuron_pj=81.0,
    elementwise_pj=FP32.elementwise_pj,
    mac_pj_by_weight_bits=FP32.mac_pj_by_weight_bits,  # the companion's: binarized weights make a MAC an add
    description="Loihi-class neuromorphic core for the spike-driven work: AC = one synaptic spike operation "
    "(lower bound, taken to include reading the synapse's weight from the core's SRAM), neuron update = one active "
    "compartment update; MAC and elementwise ops, which Loihi cannot run, priced as 45 nm fp32 on a companion "
    f"processor, whose weight reads are priced as 45 nm memory: {HOROWITZ_MEMORY_TEXT}",
    source="Davies et al., 'Loihi: a neuromorphic manycore processor with on-chip learning', IEEE Micro 2018, "
    f"Table 2; {HOROWITZ_2014} for the dense work",
    leaves_out="spike routing between cores (1.7 pJ within a tile, 3-4 pJ per mesh hop, same table), static power; "
    "pre-silicon estimates; Loihi's synaptic weights are 1-9 bits, priced the same at every width; the on-chip "
    "capacity of Loihi's synaptic memory (the placement rule uses the companion's 1 MB)",
    reads_included=("ac",),
    float_weight_bits=32,
    **HOROWITZ_MEMORY,
)


def profile_from_dict(data: object, origin: str) -> HardwareProfile:
    """A profile from parsed TOML/JSON, checked field by field; ``origin`` names the file in error messages."""
    if not isinstance(data, dict):
        raise EnergyError(f"{origin}: a profile must be a table of fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(TEXT_FIELDS) - set(COST_FIELDS) - set(WIDTH_FIELDS) - set(MEMORY_FIELDS))
    if unknown:
        allowed = ", ".join(TEXT_FIELDS + COST_FIELDS + WIDTH_FIELDS + MEMORY_FIELDS)
        raise EnergyError(f"{origin}: unknown field(s) {', '.join(unknown)}; a profile has {allowed}")
    missing = [key for key in ("name", *COST_FIELDS) if key not in data]
    if missing:
        raise EnergyError(f"{origin}: missing field(s) {', '.join(missing)} (energies in picojoules per operation)")
    for key in TEXT_FIELDS:
        if key in data and not isinstance(data[key], str):
            raise EnergyError(f"{origin}: {key} must be a string, got {data[key]!r}")
    if not data["name"].strip():
        raise EnergyError(f"{origin}: name must not be empty")
    costs = {}
    for key in COST_FIELDS:
        value = data[key]
        if _picojoules(value) is None:
            raise EnergyError(f"{origin}: {key} must be a finite number of picojoules >= 0, got {value!r}")
        costs[key] = float(value)
    widths = {key: _width_table(data.get(key, {}), f"{origin}: {key}") for key in WIDTH_FIELDS}
    try:
        return HardwareProfile(
            name=data["name"].strip(),
            description=data.get("description", ""),
            source=data.get("source", ""),
            leaves_out=data.get("leaves_out", ""),
            **costs,
            **widths,
            **_memory_fields(data),
        )
    except EnergyError as e:
        raise EnergyError(f"{origin}: {e}") from e


def _memory_fields(data: dict) -> dict:
    """The memory settings of a parsed profile, checked; absent (or JSON null) fields keep their defaults."""
    out = {}
    for key in MEMORY_PRICE_FIELDS:
        if data.get(key) is not None:
            if _picojoules(data[key]) is None:
                raise EnergyError(f"{key} must be a finite number of picojoules per byte >= 0, got {data[key]!r}")
            out[key] = float(data[key])
    if data.get("sram_bytes") is not None:
        if not _whole(data["sram_bytes"]) or data["sram_bytes"] < 0:
            raise EnergyError(f"sram_bytes must be a whole number of bytes >= 0, got {data['sram_bytes']!r}")
        out["sram_bytes"] = data["sram_bytes"]
    if "weight_memory" in data:
        out["weight_memory"] = data["weight_memory"]  # checked by HardwareProfile
    if "reads_included" in data:
        kinds = data["reads_included"]
        if not isinstance(kinds, list) or any(kind not in READ_KINDS for kind in kinds):
            raise EnergyError(f"reads_included must be a list of {' or '.join(READ_KINDS)}, got {kinds!r}")
        out["reads_included"] = tuple(kinds)
    if "float_weight_bits" in data:
        bits = data["float_weight_bits"]
        if not _whole(bits) or not 1 <= bits <= 32:
            raise EnergyError(f"float_weight_bits must be a width in bits (1 to 32), got {bits!r}")
        out["float_weight_bits"] = bits
    return out


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _picojoules(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _width_table(table: object, where: str) -> tuple[tuple[int, float], ...]:
    """``{"8": 0.23, "1": 0.03}`` → ((1, 0.03), (8, 0.23)), checked: widths 1-32 bits, finite pJ >= 0."""
    if not isinstance(table, dict):
        raise EnergyError(f"{where} must be a table of weight widths in bits to picojoules, got {table!r}")
    entries = []
    for bits, pj in table.items():
        if not str(bits).isdigit() or not 1 <= int(bits) <= 32:
            raise EnergyError(f"{where}: {bits!r} is not a weight width in bits (1 to 32)")
        if _picojoules(pj) is None:
            raise EnergyError(f"{where}: the price at {bits} bits must be a finite number of picojoules >= 0")
        entries.append((int(bits), float(pj)))
    return tuple(sorted(entries))


def load_profile(path: str | Path) -> HardwareProfile:
    """A profile from a ``.toml`` or ``.json`` file."""
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise EnergyError(f"{path}: a profile file must end in .toml or .json")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise EnergyError(f"{path}: cannot read the profile ({e.strerror or e})") from e
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise EnergyError(f"{path}: not valid {kind} ({e})") from e
    return profile_from_dict(data, str(path))


def _chip_profiles() -> list[HardwareProfile]:
    """The profiles shipped as TOML files in ``profile_data/`` (each names its source and what it leaves out)."""
    return [load_profile(path) for path in sorted(PROFILE_DATA.glob("*.toml"))]


BUILTIN_PROFILES: dict[str, HardwareProfile] = {p.name: p for p in (FP32, FP16, INT8, LOIHI, *_chip_profiles())}
DEFAULT_PROFILE = FP32


def resolve_profile(spec: str | Path | HardwareProfile | None) -> HardwareProfile:
    """A built-in profile by name, a profile file by path, a profile object as is; None: the 45 nm fp32 default."""
    if spec is None:
        return DEFAULT_PROFILE
    if isinstance(spec, HardwareProfile):
        return spec
    if str(spec) in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[str(spec)]
    if Path(spec).suffix in (".toml", ".json") or Path(spec).exists():
        return load_profile(spec)
    raise EnergyError(
        f"unknown profile {str(spec)!r}: choose one of {', '.join(BUILTIN_PROFILES)} or give a .toml/.json file"
    )
