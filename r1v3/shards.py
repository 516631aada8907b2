"""Safetensors shards read without trusting them: each header bounded and checked against the file's
size (dtype x shape = bytes, no gaps, no overlaps, nothing trailing), and the shard index against the
shards, before any loader maps a byte. Used when a model enters the store (import-model) and when one
is assembled from others (compose)."""

from __future__ import annotations

import math
from pathlib import Path

from r1v3 import jsonio
from r1v3.errors import UserError

INDEX = "model.safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit on the header's JSON
# bytes per element of each safetensors dtype this toolkit's torch can load
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _tensor_entry(name: str, entry, where: str) -> tuple[int, int]:
    """(begin, end) of one header entry, after checking its dtype and shape agree with its size."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: tensor {name!r} is not described by an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise UserError(f"{where}: tensor {name!r} has dtype {dtype!r}; expected one of {', '.join(DTYPE_SIZES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise UserError(f"{where}: tensor {name!r} has shape {shape!r}; expected a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise UserError(f"{where}: tensor {name!r} has data_offsets {offsets!r}; expected [begin, end]")
    size = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != size:
        raise UserError(f"{where}: tensor {name!r} ({dtype} {shape}) needs {size} bytes but its data_offsets span "
                        f"{offsets[1] - offsets[0]}")
    return offsets[0], offsets[1]


def check_safetensors(path: Path) -> dict:
    """The header of a safetensors file, {tensor name: {dtype, shape, data_offsets}}, once it is
    known to describe the file: a sane header length, bounded JSON, and tensors whose data
    exactly fill the rest of the file without gaps or overlaps. Anything else is a UserError
    naming the file (and the tensor)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, MAX_HEADER):
                raise UserError(f"{path}: not a safetensors file (its first 8 bytes announce a {n}-byte header, "
                                f"the file has {size} bytes: truncated, or another format renamed)")
            raw = f.read(n)
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    header = jsonio.loads(raw, f"{path}: safetensors header")
    if not isinstance(header, dict):
        raise UserError(f"{path}: the safetensors header is not an object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise UserError(f"{path}: the safetensors __metadata__ must map names to strings")
    spans = sorted((*_tensor_entry(name, entry, str(path)), name) for name, entry in header.items())
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise UserError(f"{path}: tensor {name!r} starts at byte {begin} of the data, expected {end} "
                            "(gap or overlap between tensors)")
        end = stop
    if 8 + n + end != size:
        raise UserError(f"{path}: the tensors fill {8 + n + end} bytes but the file has {size} "
                        f"({'truncated' if size < 8 + n + end else 'trailing bytes'})")
    return header


def check_shards(files: list[Path]) -> dict[str, tuple[str, dict]]:
    """{tensor name: (file name, header entry)} over every imported shard, checked against the
    shard index when there is one (it must name only present files and the tensors they hold)."""
    tensors: dict[str, tuple[str, dict]] = {}
    for f in files:
        if f.suffix == ".safetensors":
            for name, entry in check_safetensors(f).items():
                if name in tensors:
                    raise UserError(f"{f}: tensor {name!r} is also in {tensors[name][0]}")
                tensors[name] = (f.name, entry)
    index = next((f for f in files if f.name == INDEX), None)
    if index is None:
        return tensors
    weight_map = jsonio.read(index)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict):
        raise UserError(f"{index}: no 'weight_map' object of tensor names to shard files")
    names = {f.name for f in files}
    for name, shard in weight_map.items():
        if shard not in names:
            raise UserError(f"{index}: tensor {name!r} is in shard {shard!r}, which is not in the model directory")
        if tensors.get(name, ("",))[0] != shard:
            raise UserError(f"{index}: tensor {name!r} is not in shard {shard!r}")
    return tensors
