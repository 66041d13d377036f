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

Built-in profiles live here as data (the 45 nm and Loihi ones) and as TOML files beside this module
(``profile_data/``, one per chip: OpenSpike, the RRAM compute-in-memory macro); users add their own as a small TOML
or JSON file with the same fields (``spikegpt energy --list-profiles`` prints the built-ins in that format).
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import EnergyError

COST_FIELDS = ("mac_pj", "ac_pj", "neuron_pj", "elementwise_pj")
TEXT_FIELDS = ("name", "description", "source", "leaves_out")
WIDTH_FIELDS = ("mac_pj_by_weight_bits", "ac_pj_by_weight_bits")  # kind → {weight bits: pJ}
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
        return out

    def to_toml(self) -> str:
        """The profile as a TOML file that ``load_profile`` reads back unchanged."""
        lines = [f"{key} = {json.dumps(getattr(self, key))}" for key in TEXT_FIELDS]
        lines += [f"{key} = {getattr(self, key)!r}" for key in COST_FIELDS]
        for key in WIDTH_FIELDS:
            if getattr(self, key):
                lines += [f"[{key}]", *(f'"{bits}" = {pj!r}' for bits, pj in getattr(self, key))]
        return "\n".join(lines) + "\n"


# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm CMOS at 0.9 V:
# add / multiply = 0.9 / 3.7 pJ (fp32), 0.4 / 1.1 pJ (fp16), 0.03 / 0.2 pJ (int8); a MAC is one of each
# (4.6, 1.5, 0.23 pJ), the E_MAC = 4.6 pJ, E_AC = 0.9 pJ pair SNN papers (SpikeGPT included) quote.
HOROWITZ_2014 = "Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014 (45 nm, 0.9 V)"


def _cmos_45nm(number_format: str, add_pj: float, mac_pj: float, by_width=()) -> HardwareProfile:
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
        "priced as one MAC",
        source=HOROWITZ_2014,
        leaves_out="memory traffic (a 64-bit SRAM read is ~10 pJ, a DRAM read 1.3-2.6 nJ, same source), static "
        "power, control; figures are for 45 nm at 0.9 V, not a newer node",
        mac_pj_by_weight_bits=((1, add_pj), *by_width),
    )


FP32 = _cmos_45nm("fp32", add_pj=0.9, mac_pj=4.6)
FP16 = _cmos_45nm("fp16", add_pj=0.4, mac_pj=1.5)
INT8 = _cmos_45nm("int8", add_pj=0.03, mac_pj=0.23, by_width=((8, 0.23),))  # 4-bit weights: the 8-bit MAC

# Davies et al., "Loihi: a neuromorphic manycore processor with on-chip learning", IEEE Micro 38(1), 2018,
# Table 2 (14 nm, pre-silicon estimates): synaptic spike operation >= 23.6 pJ (the minimum is used here), neuron
# update 81 pJ active / 52 pJ inactive. Every LIF neuron here receives a dense real-valued input at every token,
# so each update is an active one. Loihi has no datapath for real-valued products, so the dense work (MACs,
# elementwise steps) is priced as on a 45 nm fp32 processor beside it (Horowitz 2014, as above).
LOIHI = HardwareProfile(
    name="loihi",
    mac_pj=FP32.mac_pj,
    ac_pj=23.6,
    neuron_pj=81.0,
    elementwise_pj=FP32.elementwise_pj,
    mac_pj_by_weight_bits=FP32.mac_pj_by_weight_bits,  # the companion's: binarized weights make a MAC an add
    description="Loihi-class neuromorphic core for the spike-driven work: AC = one synaptic spike operation "
    "(lower bound), neuron update = one active compartment update; MAC and elementwise ops, which Loihi cannot "
    "run, priced as 45 nm fp32 on a companion processor",
    source="Davies et al., 'Loihi: a neuromorphic manycore processor with on-chip learning', IEEE Micro 2018, "
    f"Table 2; {HOROWITZ_2014} for the dense work",
    leaves_out="spike routing between cores (1.7 pJ within a tile, 3-4 pJ per mesh hop, same table), static power; "
    "pre-silicon estimates; Loihi's synaptic weights are 1-9 bits, priced the same at every width",
)


def profile_from_dict(data: object, origin: str) -> HardwareProfile:
    """A profile from parsed TOML/JSON, checked field by field; ``origin`` names the file in error messages."""
    if not isinstance(data, dict):
        raise EnergyError(f"{origin}: a profile must be a table of fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(TEXT_FIELDS) - set(COST_FIELDS) - set(WIDTH_FIELDS))
    if unknown:
        allowed = ", ".join(TEXT_FIELDS + COST_FIELDS + WIDTH_FIELDS)
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
    return HardwareProfile(
        name=data["name"].strip(),
        description=data.get("description", ""),
        source=data.get("source", ""),
        leaves_out=data.get("leaves_out", ""),
        **costs,
        **widths,
    )


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
