"""The compressed checkpoint (DESIGN.md, "Compressed checkpoint"): exact round trips, the
smallest encoding per tensor, the codec stage, the size bound, and refusal of damaged, edited or
foreign files (decompression bombs included)."""

from __future__ import annotations

import json
import lzma
import math
import pickle
import re
import tracemalloc
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from sparsebench import checkpoint
from sparsebench.checkpoint import ENCODINGS, codec, decode, encode, encoded_sizes
from sparsebench.checkpoint.encoding import SPARSE_DTYPES
from sparsebench.checkpoint.fileformat import payload_sha256
from sparsebench.checkpoint.reader import inspect_all
from sparsebench.core.metrics import prunable_modules
from sparsebench.core.models import build_model
from sparsebench.core.sparsity import apply_masks, magnitude_masks, make_permanent
from sparsebench.util.errors import UsageError

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SETTINGS = settings(deadline=None, max_examples=60,
                    suppress_health_check=[HealthCheck.too_slow])


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bits: compares NaN payloads and signed zeros, which torch.equal cannot."""
    return t.contiguous().view(SPARSE_DTYPES[t.dtype])


@st.composite
def sparse_tensors(draw) -> torch.Tensor:
    """Any bit pattern (NaN, inf, subnormals) at a random density, zeros of either sign."""
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=4)))
    dtype = draw(st.sampled_from(FLOATS))
    density = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    int_dtype = SPARSE_DTYPES[dtype]
    info = torch.iinfo(int_dtype)
    raw = torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64)
    keep = torch.rand(shape, generator=g) < density
    negative_zero = torch.rand(shape, generator=g) < 0.5  # info.min is the bits of -0.0
    raw = torch.where(keep, raw, torch.where(negative_zero, info.min, 0))
    return raw.to(int_dtype).view(dtype)


def pruned(name: str, sparsity: float, dtype: torch.dtype = torch.float32, **args):
    torch.manual_seed(0)
    model = build_model(name, **args)
    apply_masks(model, magnitude_masks(model, sparsity))
    make_permanent(model)
    return model.to(dtype)


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)  # make_permanent re-registers weight after bias
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------------- tensor encodings


@SETTINGS
@given(t=sparse_tensors())
def test_every_encoding_round_trips_bit_for_bit(t):
    canonical = torch.where(t == 0, torch.zeros((), dtype=t.dtype), t)  # -0.0 reads as +0.0
    for encoding in ENCODINGS:
        out = decode(encode(t, encoding), tuple(t.shape), t.dtype)
        assert out.shape == t.shape and out.dtype == t.dtype
        expected = t if encoding == "dense" else canonical
        assert torch.equal(bits(out), bits(expected)), encoding


@SETTINGS
@given(t=sparse_tensors())
def test_chosen_encoding_is_the_smallest(t):
    sizes = {encoding: encode(t, encoding).nbytes for encoding in ENCODINGS}
    chosen = encode(t)
    assert encoded_sizes(t) == sizes  # the predicted sizes are the real ones
    assert chosen.nbytes == min(sizes.values())
    assert chosen.encoding == min(sizes, key=sizes.__getitem__)


def test_long_gaps_are_written_with_escapes():
    t = torch.zeros(200_000)
    t[[0, 70_000, 199_999]] = torch.tensor([1.0, -2.0, 3.0])
    enc = encode(t, "delta-u16")
    assert enc.index.tolist() == [0, 65535, 69999 - 65535, 65535, 129998 - 65535]
    for encoding in ("delta-u8", "delta-u16", "delta-u32"):
        assert torch.equal(decode(encode(t, encoding), (200_000,), torch.float32), t)


def test_all_zero_tensor_costs_no_payload():
    assert encode(torch.zeros(64, 32)).nbytes == 0


def test_decode_refuses_parts_that_do_not_fit():
    enc = encode(torch.tensor([0.0, 1.0, 0.0, 2.0]), "bitmask")
    with pytest.raises(ValueError, match="2 positions, 1 values"):
        decode(type(enc)("bitmask", 2, enc.values[:1], enc.index), (4,), torch.float32)


# ---------------------------------------------------------------------- model round trips


@settings(deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    image_size=st.integers(1, 5),
    dtype=st.sampled_from(FLOATS),
    densities=st.lists(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0), min_size=4,
                       max_size=4),
    seed=st.integers(0, 2**31),
)
def test_model_round_trip_is_exact(tmp_path_factory, widths, image_size, dtype, densities, seed):
    g = torch.Generator().manual_seed(seed)
    model = build_model("mlp", widths=widths, image_size=image_size).to(dtype)
    for (_, module), density in zip(prunable_modules(model), densities, strict=False):
        with torch.no_grad():  # masking by multiplication, as pruning does: -0.0 appear
            module.weight.mul_(torch.rand(module.weight.shape, generator=g) < density)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    checkpoint.save(model, path)
    loaded = checkpoint.load(path)
    assert_same_model(model, loaded)
    x = torch.randn(3, 1, image_size, image_size, generator=g).to(dtype)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("name, args", [("lenet5", {"image_size": 16}), ("resnet20", {})])
def test_conv_models_round_trip_with_batch_norm_state(tmp_path, name, args):
    model = pruned(name, 0.9, **args)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # as after training, not the defaults
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(123)
    checkpoint.save(model, tmp_path / "m.safetensors")
    loaded = checkpoint.load(tmp_path / "m.safetensors")
    assert_same_model(model, loaded)
    if name == "lenet5":  # equal tensors give equal outputs; one conv forward shows it (fast)
        x = torch.randn(2, 1, 16, 16)
        with torch.no_grad():
            assert torch.equal(model.eval()(x), loaded.eval()(x))


def test_masked_model_is_saved_folded_and_left_unchanged(tmp_path):
    model = build_model("mlp", widths=[8], image_size=4)
    apply_masks(model, magnitude_masks(model, 0.75))
    checkpoint.save(model, tmp_path / "m.safetensors")
    assert hasattr(model.layers[1], "weight_mask")  # the caller's model keeps its masks
    make_permanent(model)
    assert_same_model(model, checkpoint.load(tmp_path / "m.safetensors"))


def test_model_without_arch_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"model: it has no \.arch"):
        checkpoint.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "m.safetensors")


def test_model_that_differs_from_its_arch_is_refused(tmp_path):
    model = build_model("mlp", widths=[8], image_size=4)
    model.arch = {"name": "mlp", "args": {"widths": [9], "image_size": 4}}
    with pytest.raises(UsageError, match=r"tensor 'layers.1.weight' has shape \(8, 16\)"):
        checkpoint.save(model, tmp_path / "m.safetensors")


@pytest.mark.parametrize("name, sparsity", [("mlp", 0.5), ("mlp", 0.99), ("resnet20", 0.9),
                                            ("resnet20", 0.999)])
def test_file_size_is_within_two_percent_and_4kib_of_the_bound(tmp_path, name, sparsity):
    model = pruned(name, sparsity)
    checkpoint.save(model, tmp_path / "m.safetensors")
    checkpoint.save(model, tmp_path / "raw.safetensors", compress=False)
    size, bound = (tmp_path / "m.safetensors").stat().st_size, checkpoint.information_bound(model)
    raw = (tmp_path / "raw.safetensors").stat().st_size
    assert bound <= raw <= 1.02 * bound + 4096  # the encodings alone: above the bound, near it
    assert size < raw  # the codec stage: these random-init weights' exponents repeat


def test_dense_model_files_still_round_trip(tmp_path):
    model = pruned("mlp", 0.5, widths=[8], image_size=4)
    checkpoint.save_model(model, tmp_path / "m.safetensors", meta={"seed": 3})
    loaded, meta = checkpoint.load_model(tmp_path / "m.safetensors")
    assert meta == {"seed": 3}
    assert_same_model(model, loaded)


def test_inspect_reports_every_tensor(tmp_path):
    model = pruned("lenet5", 0.95, image_size=16)
    checkpoint.save(model, tmp_path / "m.safetensors")
    rows = {r["name"]: r for r in checkpoint.inspect(tmp_path / "m.safetensors")}
    assert sorted(rows) == sorted(model.state_dict())
    fc1 = rows["fc1.weight"]
    assert fc1["nonzeros"] == int(model.fc1.weight.count_nonzero())
    assert fc1["encoding"] == encode(model.fc1.weight).encoding and fc1["prunable"]
    assert rows["fc1.bias"]["encoding"] == "dense" and not rows["fc1.bias"]["prunable"]


# ---------------------------------------------------------------------- the codec stage


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(itemsize=st.sampled_from([1, 2, 4, 8]), data=st.data())
def test_every_codec_round_trips_bit_for_bit(itemsize, data):
    elements = data.draw(st.integers(1, 300))
    raw = data.draw(st.binary(min_size=elements * itemsize, max_size=elements * itemsize)
                    | st.just(bytes(elements * itemsize)))  # incompressible or constant
    outputs = codec.candidates(raw, itemsize)
    assert set(outputs) == ({"zlib", "lzma"} if itemsize == 1 else set(codec.CODECS))
    for method, stored in outputs.items():
        assert codec.decompress(method, stored, len(raw), itemsize) == raw, method


def test_a_blob_over_large_is_coded_by_zlib_alone_shuffled_as_its_sample_codes_shorter():
    """Each blob over `LARGE` gets one codec, zlib at level 6, shuffled when its first MiB
    codes shorter so (float weights: their exponent bytes repeat), never for single bytes;
    it round-trips."""
    g = torch.Generator().manual_seed(0)
    weights = (torch.randn(codec.LARGE // 4 + 1024, generator=g) * 0.01).numpy().tobytes()
    counts = torch.randint(0, 7, (codec.LARGE // 2 + 4096,), generator=g, dtype=torch.int16)
    for raw, itemsize in ((weights, 4), (counts.numpy().tobytes(), 2), (weights, 1)):
        assert len(raw) > codec.LARGE
        (name, stored), = codec.candidates(raw, itemsize).items()
        sample = raw[:codec._SAMPLE]
        shorter = (itemsize > 1 and len(zlib.compress(codec.shuffle(sample, itemsize), 6))
                   < len(zlib.compress(sample, 6)))
        assert name == ("zlib+shuffle" if shorter else "zlib")
        plain = codec.shuffle(raw, itemsize) if shorter else raw
        assert stored == zlib.compress(plain, 6)
        assert codec.decompress(name, stored, len(raw), itemsize) == raw
    assert next(iter(codec.candidates(weights, 4))) == "zlib+shuffle"


@pytest.mark.parametrize("method", codec.CODECS)
def test_codec_output_never_exceeds_the_declared_length(method):
    huge = bytes(64 << 20)  # 64 MiB of zeros: a few KiB coded
    if method.startswith("zlib"):
        bomb = zlib.compress(huge, 1)
    else:
        flt = {"id": lzma.FILTER_LZMA2, "preset": 1, "dict_size": codec.dict_size(4096)}
        bomb = lzma.compress(huge, format=lzma.FORMAT_RAW, filters=[flt])
    del huge
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"{re.escape(method)}: decompresses to more than "
                                             "the 4096 bytes declared; refused"):
            codec.decompress(method, bomb, 4096, 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_codec_stage_keeps_a_blob_raw_when_compression_does_not_pay(tmp_path):
    g = torch.Generator().manual_seed(0)
    model = build_model("mlp", widths=[8], image_size=4)
    with torch.no_grad():  # random bits (no NaN): nothing for a compressor to find
        for p in model.parameters():
            bits = torch.randint(0, 2**23, p.shape, generator=g, dtype=torch.int32)
            p.copy_((bits | (torch.randint(0, 254, p.shape, generator=g) << 23).int()).view(
                torch.float32))
    path = tmp_path / "m.safetensors"
    checkpoint.save(model, path)
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["codecs"]) == {}
        assert f.get_slice("data.F32").get_dtype() == "F32"  # stored as it is
    assert_same_model(model, checkpoint.load(path))


def test_codec_stage_codes_what_repeats_and_the_table_adds_up(tmp_path):
    model = pruned("resnet20", 0.999)  # batch norm at its init: constant weights and stats
    checkpoint.save(model, tmp_path / "m.safetensors")
    checkpoint.save(model, tmp_path / "raw.safetensors", compress=False)
    rows, payloads = inspect_all(tmp_path / "m.safetensors")
    coded = {p["name"]: p for p in payloads if p["codec"] != "raw"}
    assert "data.F32" in coded and coded["data.F32"]["stored_bytes"] < coded["data.F32"][
        "raw_bytes"] / 4
    raw_rows, raw_payloads = inspect_all(tmp_path / "raw.safetensors")
    assert rows == raw_rows  # the tensors and their encodings are the same either way
    assert all(p["codec"] == "raw" for p in raw_payloads)
    assert {p["name"]: p["raw_bytes"] for p in payloads} == {
        p["name"]: p["stored_bytes"] for p in raw_payloads}
    table = checkpoint.inspect_table(tmp_path / "m.safetensors").splitlines()
    size = (tmp_path / "m.safetensors").stat().st_size
    column = [int(line.split()[-1]) for line in table[1:-2]]  # every tensor, codec and header row
    assert sum(column) == size and any(line.startswith("(codec data.F32)") for line in table)
    assert_same_model(model, checkpoint.load(tmp_path / "m.safetensors"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_coded_delta_streams_with_escapes_round_trip(tmp_path, dtype):
    model = build_model("mlp", widths=[64], image_size=28).to(dtype)
    with torch.no_grad():  # fc1: dense-ish at the start, then one nonzero at the very end
        w = model.layers[1].weight.view(-1)
        keep = torch.zeros_like(w, dtype=torch.bool)
        keep[:2000:4] = True
        keep[-1] = True
        w.mul_(keep)
    assert encode(model.layers[1].weight).encoding == "delta-u8"
    path = tmp_path / "m.safetensors"
    checkpoint.save(model, path)
    with safe_open(str(path), framework="pt") as f:
        codecs = json.loads(f.metadata()["codecs"])
    gap = 50176 - 1 - 1996 - 1  # before the last nonzero: 188 escapes of 255 positions
    assert codecs["index.delta-u8"][1] == 501 + gap // 255  # beyond the 501 the nonzeros give
    assert_same_model(model, checkpoint.load(path))


def test_a_file_without_codecs_reads_as_all_raw(tmp_path):
    model = pruned("lenet5", 0.9, image_size=16)
    checkpoint.save(model, tmp_path / "raw.safetensors", compress=False)
    _rewrite(tmp_path / "raw.safetensors", tmp_path / "old.safetensors",
             lambda m: m.pop("codecs"))  # as the writer made them before the codec stage
    assert_same_model(model, checkpoint.load(tmp_path / "old.safetensors"))


def _with_payload(src: Path, dst: Path, name: str, stored: bytes, raw_bytes: int | None = None):
    """Copy a checkpoint with one payload replaced by zlib ``stored`` bytes and a valid checksum:
    what a hostile writer, who can compute SHA-256 too, would make."""
    with safe_open(str(src), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    codecs = json.loads(metadata["codecs"])
    tensors[name] = torch.frombuffer(bytearray(stored), dtype=torch.uint8)
    codecs[name] = ["zlib", codecs[name][1] if raw_bytes is None else raw_bytes]
    metadata["codecs"] = json.dumps(codecs)
    metadata["sha256"] = payload_sha256(tensors)
    save_file(tensors, dst, metadata=metadata)


def test_decompression_bomb_is_refused_in_one_line_without_expanding(good_file):
    declared = json.loads(safe_open(str(good_file), framework="pt").metadata()["codecs"])
    raw_bytes = declared["data.F32"][1]
    # 256 MiB of zeros in about 250 KiB, declared as the payload's few KiB
    packer = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(256)) + packer.flush()
    bad = good_file.with_name("bomb.safetensors")
    _with_payload(good_file, bad, "data.F32", bomb)
    tracemalloc.start()
    try:
        with pytest.raises(UsageError, match=(
            rf"payload 'data.F32' \(zlib\): zlib: decompresses to more than the {raw_bytes} "
            r"bytes declared; refused \(a decompression bomb\?\)")) as info:
            checkpoint.load(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    assert peak < 16 * 2**20  # the 256 MiB were never produced


def test_a_stream_just_one_byte_too_long_is_refused(good_file):
    with safe_open(str(good_file), framework="pt") as f:
        raw_bytes = json.loads(f.metadata()["codecs"])["data.F32"][1]
    bad = good_file.with_name("long.safetensors")
    _with_payload(good_file, bad, "data.F32", zlib.compress(bytes(raw_bytes + 1), 9))
    with pytest.raises(UsageError, match="zlib: decompresses to more than"):
        checkpoint.verify(bad)
    _with_payload(good_file, bad, "data.F32", zlib.compress(bytes(raw_bytes - 4), 9))
    with pytest.raises(UsageError, match=f"the stream ends after {raw_bytes - 4} of the "
                                         f"{raw_bytes} bytes declared"):
        checkpoint.verify(bad)
    _with_payload(good_file, bad, "data.F32", zlib.compress(bytes(raw_bytes), 9) + b"x")
    with pytest.raises(UsageError, match=r"stray bytes \(1\) after the end of the stream"):
        checkpoint.verify(bad)
    _with_payload(good_file, bad, "data.F32", b"not zlib at all")
    with pytest.raises(UsageError, match=r"zlib: corrupt stream \(Error -3 "):
        checkpoint.verify(bad)


def test_a_stream_of_the_declared_size_with_wrong_content_is_caught_by_the_decoder(good_file):
    with safe_open(str(good_file), framework="pt") as f:
        raw_bytes = json.loads(f.metadata()["codecs"])["data.F32"][1]
    bad = good_file.with_name("zeros.safetensors")
    _with_payload(good_file, bad, "data.F32", zlib.compress(bytes(raw_bytes), 9))
    with pytest.raises(UsageError, match="a stored value is zero"):  # decoded, then checked
        checkpoint.verify(bad)


# ---------------------------------------------------------------------- hostile files


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy a checkpoint with edited metadata; the payload (and its checksum) stays valid."""
    with safe_open(str(src), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    edit(metadata)
    save_file(tensors, dst, metadata=metadata)


def _edit_json(key: str, change):
    def edit(metadata: dict) -> None:
        value = json.loads(metadata[key])
        change(value)
        metadata[key] = json.dumps(value)
    return edit


class _Touch:
    """Unpickling this creates the marker file: the proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _one_more_nonzero(tensors: dict) -> None:
    entry = tensors["fc1.weight"]  # [shape, dtype, encoding, nonzeros, sparsity]
    entry[3] += 1
    entry[4] = round(1 - entry[3] / math.prod(entry[0]), 4)  # consistent, so only data can tell


def _truncated(good: Path, bad: Path) -> None:
    bad.write_bytes(good.read_bytes()[:-100])


def _flipped(good: Path, bad: Path) -> None:
    data = bytearray(good.read_bytes())
    data[-5] ^= 0x01  # in the payload, which sits after the header
    bad.write_bytes(bytes(data))


def _torch_pickle(good: Path, bad: Path) -> None:
    torch.save({"fc1.weight": torch.zeros(2, 2)}, bad)


def _foreign(good: Path, bad: Path) -> None:
    save_file({"weight": torch.zeros(3)}, bad, metadata={"framework": "other"})


def _swap_codec(codecs: dict) -> None:
    entry = codecs["data.F32"]
    entry[0] = "zlib" if entry[0].startswith("lzma") else "lzma"


HOSTILE = {
    "truncated": (_truncated, "not a readable safetensors file .*incomplete metadata"),
    "flipped-payload-byte": (_flipped, r"checksum mismatch \(sha256\)"),
    "shape-edited": (
        lambda g, b: _rewrite(g, b, _edit_json("tensors", lambda t: t["fc1.weight"][0].reverse())),
        r"tensors\['fc1.weight'\].shape: \[50, 500\] does not match the architecture; "
        r"allowed: \[500, 50\]",
    ),
    "unknown-version": (
        lambda g, b: _rewrite(g, b, lambda m: m.update(format="sparsebench-ckpt/9")),
        "format 'sparsebench-ckpt/9' is not supported; allowed: sparsebench-ckpt/1",
    ),
    "unknown-architecture": (
        lambda g, b: _rewrite(g, b, _edit_json("arch", lambda a: a.update(name="vgg"))),
        "arch.name: unknown name 'vgg'; allowed: convnet, lenet5, mlp",
    ),
    "nonzeros-edited": (  # the coded payload's declared length no longer fits
        lambda g, b: _rewrite(g, b, _edit_json("tensors", _one_more_nonzero)),
        r"payload 'data.F32' \([a-z+]+\): 24520 raw bytes declared; allowed: 24524",
    ),
    "codec-size-edited": (
        lambda g, b: _rewrite(g, b, _edit_json("codecs", lambda c: c["data.F32"].__setitem__(
            1, c["data.F32"][1] + 4))),
        r"payload 'data.F32' \([a-z+]+\): 24524 raw bytes declared; allowed: 24520, as the "
        "tensors metadata implies",  # 6130 nonzero values of 4 bytes
    ),
    "codec-swapped": (
        lambda g, b: _rewrite(g, b, _edit_json("codecs", _swap_codec)),
        r"payload 'data.F32' \((zlib|lzma)\): (zlib|lzma): corrupt stream",
    ),
    "codec-unknown": (
        lambda g, b: _rewrite(g, b, _edit_json("codecs", lambda c: c["data.F32"].__setitem__(
            0, "brotli"))),
        r"codecs\['data.F32'\]: \['brotli', 24520\] is malformed; allowed: \[codec, raw bytes\] "
        "with codec one of zlib, zlib\\+shuffle, lzma, lzma\\+shuffle",
    ),
    "codec-dropped": (
        lambda g, b: _rewrite(g, b, lambda m: m.update(codecs="{}")),
        r"payload tensor 'data.F32' \(torch.uint8, 1-D\) is not part of sparsebench-ckpt/1",
    ),
    "codec-for-a-missing-payload": (
        lambda g, b: _rewrite(g, b, _edit_json("codecs", lambda c: c.update(
            {"index.bitmask": ["zlib", 100]}))),
        r"codecs\['index.bitmask'\]: the file holds no such payload",
    ),
    "torch-save-pickle": (_torch_pickle, "not a readable safetensors file"),
    "foreign-safetensors": (_foreign, "format None is not supported; allowed: sparsebench-ckpt/1"),
}


@pytest.fixture
def good_file(tmp_path) -> Path:
    path = tmp_path / "good.safetensors"
    checkpoint.save(pruned("lenet5", 0.9, image_size=16), path)
    return path


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_file_is_refused_in_one_line(good_file, case):
    make, message = HOSTILE[case]
    bad = good_file.with_name("bad.safetensors")
    make(good_file, bad)
    for read in (checkpoint.load, checkpoint.verify, checkpoint.inspect):
        with pytest.raises(UsageError, match=message) as info:
            read(bad)
        assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_nonzeros_edited_in_a_raw_file_is_caught_by_the_decoder(tmp_path):
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    checkpoint.save(pruned("lenet5", 0.9, image_size=16), good, compress=False)
    _rewrite(good, bad, _edit_json("tensors", _one_more_nonzero))
    with pytest.raises(UsageError, match=r"tensor 'fc[12].weight': "):
        checkpoint.load(bad)


def test_pickle_payload_is_never_executed(tmp_path):
    payload = pickle.dumps(_Touch(tmp_path / "proof"))
    pickle.loads(payload)  # the payload is live: unpickling it does create its marker
    assert (tmp_path / "proof").exists()
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps(_Touch(tmp_path / "marker")))
    with pytest.raises(UsageError, match="not a readable safetensors file"):
        checkpoint.load(bad)
    assert not (tmp_path / "marker").exists()


def test_dense_model_file_is_not_a_checkpoint(good_file):
    dense = good_file.with_name("dense.safetensors")
    checkpoint.save_model(checkpoint.load(good_file), dense)
    with pytest.raises(UsageError, match="format 'sparsebench-model/1' is not supported"):
        checkpoint.load(dense)


def test_sparsity_in_metadata_matches_nonzeros(good_file):
    with safe_open(str(good_file), framework="pt") as f:
        tensors = json.loads(f.metadata()["tensors"])
    for shape, _, _, nonzeros, sparsity in tensors.values():
        assert sparsity == pytest.approx(1 - nonzeros / math.prod(shape), abs=1e-4)
