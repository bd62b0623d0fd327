"""transformers' ``model.generate(custom_generate=backtrack.hf.generate)`` and the
``custom_generate`` directory (``hub/``), on models built in code.

References: plain ``model.generate`` (with no operator the engine must give token for token
what it gives: the same forward passes, warpers and random draws), ``backtrack generate`` on
the same prompt and seed (with an operator), and the engine's own ``Decoder`` for settings
transformers does not have.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    TextIteratorStreamer,
    TextStreamer,
)
from transformers.dynamic_module_utils import get_imports
from transformers.generation.streamers import BaseStreamer
from typer.testing import CliRunner

import backtrack
from backtrack.cli import app
from backtrack.engine import Decoder, GenerationConfig
from backtrack.engine.settings import GENERATION_KEYS
from backtrack.hf import BACKTRACK_SETTINGS, BacktrackGenerateOutput
from backtrack.operators import Chaos

REPO = Path(__file__).resolve().parents[1]
HUB_DIR = REPO / "hub"
PROMPT = "def fib(n):\n    "
CHAOS = "chaos:p=0.4,max=3,seed=2"
SAMPLING = dict(do_sample=True, temperature=0.8, top_k=30, top_p=0.9)


@pytest.fixture(scope="module")
def random_llama():
    """A small random Llama built in code (another architecture than the tiny Qwen2), used
    from input ids only: it has no tokenizer at all."""
    torch.manual_seed(7)
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _ids(tokenizer, text: str = PROMPT) -> dict:
    return dict(tokenizer(text, return_tensors="pt", add_special_tokens=False))


@pytest.mark.parametrize(
    "settings",
    [
        dict(do_sample=False),
        dict(do_sample=False, repetition_penalty=1.3),
        SAMPLING,
        dict(do_sample=True, temperature=1.2, min_p=0.05, repetition_penalty=1.1),
    ],
    ids=["greedy", "greedy-repetition", "sampling", "sampling-min-p"],
)
@pytest.mark.parametrize("model_name", ["tiny-qwen2", "random-llama"])
def test_no_operator_is_token_for_token_model_generate(tiny, random_llama, model_name, settings):
    """From input ids alone (no tokenizer anywhere): the same sequences as model.generate, for
    greedy decoding and for seeded sampling, with and without an explicit `never` operator."""
    model = tiny[0] if model_name == "tiny-qwen2" else random_llama
    input_ids = torch.tensor([[5, 17, 42, 99, 3, 250, 11]])
    for seed in range(3):
        torch.manual_seed(seed)
        reference = model.generate(input_ids, max_new_tokens=24, **settings)
        torch.manual_seed(seed)
        ours = model.generate(
            input_ids, max_new_tokens=24, custom_generate=backtrack.hf.generate, **settings
        )
        torch.manual_seed(seed)
        never = model.generate(
            input_ids, max_new_tokens=24, custom_generate=backtrack.hf.generate,
            operator="never", **settings,
        )  # fmt: skip
        assert torch.equal(ours, reference) and torch.equal(never, reference)
        # seed= draws from a generator of its own: the same draws as torch.manual_seed(seed).
        torch.manual_seed(seed + 100)
        seeded = model.generate(
            input_ids, max_new_tokens=24, custom_generate=backtrack.hf.generate, seed=seed,
            **settings,
        )  # fmt: skip
        assert torch.equal(seeded, reference)


def test_operator_result_equals_backtrack_generate(tiny, tmp_path: Path) -> None:
    """The same prompt, operator, sampling settings and seed as `backtrack generate`: the same
    tokens, the same rollbacks."""
    model, tokenizer = tiny
    out = tmp_path / "cli.json"
    args = ["generate", "--model", "tiny-random-qwen2", "--prompt", PROMPT, "--operator", CHAOS,
            "--seed", "4", "--temperature", "0.8", "--top-k", "30", "--top-p", "0.9",
            "--max-new-tokens", "32", "--period", "2", "--dtype", "float32",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cli = json.loads(out.read_text())
    inputs = _ids(tokenizer)
    ours = model.generate(
        **inputs, custom_generate=backtrack.hf.generate, operator=CHAOS, seed=4, period=2,
        max_new_tokens=32, return_dict_in_generate=True, **SAMPLING,
    )  # fmt: skip
    assert isinstance(ours, BacktrackGenerateOutput)
    (row,) = ours.results
    assert row.token_ids == cli["token_ids"]

    # Decoded from input ids alone, so the trace has no text; the rollbacks are the same.
    def rollbacks(events):
        return [(e["position"], e["k"], list(e["removed_token_ids"]), e["operator"])
                for e in events if e["kind"] == "rollback"]  # fmt: skip

    assert rollbacks(cli["trace"]) == rollbacks([vars(e) for e in row.trace])
    assert row.counts.backtracks > 0
    prompt_length = inputs["input_ids"].shape[1]
    assert ours.sequences[0, prompt_length:].tolist() == cli["token_ids"]


def test_backtracking_settings_reach_the_engine(tiny) -> None:
    """Every setting transformers lacks is a keyword argument named as in GenerationConfig,
    and reaches the engine (compared with Decoder.generate under the same config)."""
    model, tokenizer = tiny
    hf_names = set(backtrack.hf.arguments.HFGenerationConfig().to_dict())
    assert set(BACKTRACK_SETTINGS) == set(GENERATION_KEYS) - hf_names
    assert {"period", "ban", "rollback_window", "stop", "max_backtracks"} <= set(BACKTRACK_SETTINGS)
    import inspect

    assert set(BACKTRACK_SETTINGS) <= set(inspect.signature(backtrack.hf.generate).parameters)
    settings = dict(period=2, ban="next", max_retries_per_position=1, max_discarded_tokens=5,
                    rollback_window=6, presence_penalty=0.5)  # fmt: skip
    ours = model.generate(
        **_ids(tokenizer), custom_generate=backtrack.hf.generate, operator=CHAOS, seed=3,
        max_new_tokens=24, return_dict_in_generate=True, **SAMPLING, **settings,
    )  # fmt: skip
    config = GenerationConfig.from_flat(
        dict(max_new_tokens=24, temperature=0.8, top_k=30, top_p=0.9, **settings)
    )
    reference = Decoder(model, tokenizer).generate(
        PROMPT, Chaos(p=0.4, max=3, seed=2), config, seed=3
    )
    assert ours.results[0].token_ids == reference.token_ids
    assert ours.results[0].counts.tokens_discarded == reference.counts.tokens_discarded <= 5


def test_text_settings_need_the_tokenizer_and_work_with_it(tiny) -> None:
    model, tokenizer = tiny
    inputs = _ids(tokenizer)
    for text_setting in (dict(stop=["\n"]), dict(operator="line-restart"),
                         dict(banned_strings=["fib"]), dict(dry_multiplier=0.8)):  # fmt: skip
        with pytest.raises(ValueError, match=r"needs the tokenizer.*functools\.partial"):
            model.generate(
                **inputs, custom_generate=backtrack.hf.generate, max_new_tokens=4, **text_setting
            )
    bound = functools.partial(backtrack.hf.generate, tokenizer=tokenizer)
    ours = model.generate(
        **inputs, custom_generate=bound, operator="line-restart+" + CHAOS, seed=1,
        stop=["\n"], max_new_tokens=40, return_dict_in_generate=True, **SAMPLING,
    )  # fmt: skip
    config = GenerationConfig(max_new_tokens=40, temperature=0.8, top_k=30, top_p=0.9, stop=["\n"])
    reference = Decoder(model, tokenizer).generate(
        PROMPT, backtrack.operators.parse_operator("line-restart+" + CHAOS), config, seed=1
    )
    assert ours.results[0].token_ids == reference.token_ids
    assert ours.results[0].text == reference.text


class _Recorder(BaseStreamer):
    """Every put, as lists of ids; the prompt's put first."""

    def __init__(self) -> None:
        self.puts: list[list[int]] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        assert not self.ended
        self.puts.append(value.flatten().tolist())

    def end(self) -> None:
        self.ended = True

    def streamed(self) -> list[int]:
        return [t for put in self.puts[1:] for t in put]


class _WatchingChaos(Chaos):
    """Chaos that notes, at each rollback it asks for, how many tokens were already streamed."""

    def __init__(self, recorder: _Recorder, **params) -> None:
        super().__init__(**params)
        self.recorder, self.asked_after_streaming = recorder, 0

    def __call__(self, step) -> int:
        k = super().__call__(step)
        if k and self.recorder.streamed():
            self.asked_after_streaming += 1
        return k


@pytest.mark.parametrize("how", ["model.generate's streamer=", "bound with partial"])
def test_streamer_receives_only_text_no_rollback_can_delete(tiny, how) -> None:
    model, tokenizer = tiny
    inputs = _ids(tokenizer)
    recorder = _Recorder()
    operator = _WatchingChaos(recorder, p=0.5, max=3, seed=5)
    common = dict(operator=operator, seed=2, rollback_window=4, max_new_tokens=60,
                  return_dict_in_generate=True, **SAMPLING)  # fmt: skip
    if how == "bound with partial":
        bound = functools.partial(backtrack.hf.generate, streamer=recorder)
        out = model.generate(**inputs, custom_generate=bound, **common)
    else:
        out = model.generate(**inputs, custom_generate=backtrack.hf.generate, streamer=recorder,
                             **common)  # fmt: skip
    (row,) = out.results
    assert recorder.puts[0] == inputs["input_ids"][0].tolist()  # the prompt, once
    assert recorder.ended
    # Streamed while rollbacks still happened, and nothing streamed was ever deleted: the
    # pieces are exactly the final completion.
    assert len(recorder.puts) > 5 and operator.asked_after_streaming > 0
    assert row.counts.backtracks > 5
    assert recorder.streamed() == row.token_ids
    # A TextStreamer shows exactly the final text.
    shown: list[str] = []

    class Shown(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            shown.append(text)

    shower = Shown(tokenizer, skip_prompt=True)
    again = model.generate(
        **inputs, custom_generate=backtrack.hf.generate, streamer=shower,
        **{**common, "operator": Chaos(p=0.5, max=3, seed=5)},
    )  # fmt: skip
    assert again.results[0].token_ids == row.token_ids
    assert "".join(shown) == tokenizer.decode(row.token_ids)


def test_a_refused_call_releases_an_iterator_streamer(tiny) -> None:
    """transformers gave the streamer the prompt already; a refusal must still end it, or the
    consumer of a TextIteratorStreamer would wait forever."""
    model, tokenizer = tiny
    streamer = TextIteratorStreamer(tokenizer, timeout=10)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        model.generate(**_ids(tokenizer), custom_generate=backtrack.hf.generate,
                       streamer=streamer, stop=["\n"], max_new_tokens=4)  # fmt: skip
    assert "".join(streamer).startswith("def fib")  # the prompt, then the end


def test_left_padded_batches_decode_each_row_as_alone(tiny) -> None:
    model, tokenizer = tiny
    prompts = [PROMPT, "import math\n", "class Stack:\n    def push(self, item):\n"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(
        **batch, custom_generate=backtrack.hf.generate, operator=CHAOS, max_new_tokens=16,
        return_dict_in_generate=True,
    )  # fmt: skip
    width = batch["input_ids"].shape[1]
    for i, prompt in enumerate(prompts):
        alone = Decoder(model, tokenizer).generate(
            prompt, Chaos(p=0.4, max=3, seed=2), GenerationConfig(max_new_tokens=16, temperature=0)
        )
        assert out.results[i].token_ids == alone.token_ids
        tail = out.sequences[i, width:].tolist()
        assert tail[: len(alone.token_ids)] == alone.token_ids
        assert set(tail[len(alone.token_ids) :]) <= {tokenizer.pad_token_id}
    # Greedy without an operator: each row is model.generate on its prompt alone.
    plain = model.generate(**batch, custom_generate=backtrack.hf.generate, max_new_tokens=16)
    for i, prompt in enumerate(prompts):
        alone_ids = _ids(tokenizer, prompt)
        single = model.generate(**alone_ids, max_new_tokens=16)[
            0, alone_ids["input_ids"].shape[1] :
        ]
        assert plain[i, width : width + len(single)].tolist() == single.tolist()
    right = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="right")
    with pytest.raises(ValueError, match="not left-padded"):
        model.generate(**right, custom_generate=backtrack.hf.generate, max_new_tokens=4)
    empty = {**batch, "attention_mask": batch["attention_mask"].clone()}
    empty["attention_mask"][1] = 0
    with pytest.raises(ValueError, match="row 1 of attention_mask masks every token"):
        model.generate(**empty, custom_generate=backtrack.hf.generate, max_new_tokens=4)


class _AddOne(LogitsProcessor):
    def __call__(self, input_ids, scores):
        return scores + 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(num_beams=2), "beam_search"),
        (dict(output_scores=True, return_dict_in_generate=True), "output_scores"),
        (dict(no_repeat_ngram_size=2), "NoRepeatNGramLogitsProcessor"),
        (dict(logits_processor=LogitsProcessorList([_AddOne()])), "_AddOne"),
        (dict(max_time=5.0), "MaxTimeCriteria"),
        (dict(streamer=_Recorder(), num_return_sequences=2, do_sample=True), "one row"),
        (dict(operator="no-such-operator"), "no-such-operator"),
        (dict(period=0), "period must be >= 1"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_what_it_cannot_honour_is_a_one_line_error(tiny, arguments, message) -> None:
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=message) as info:
        model.generate(
            **_ids(tokenizer), custom_generate=backtrack.hf.generate, max_new_tokens=4, **arguments
        )
    assert "\n" not in str(info.value)


def test_custom_generate_directory_for_the_hub(tiny) -> None:
    """hub/ as transformers loads a custom_generate from a local directory (as from the Hub):
    with no operator the same as model.generate; with tokenizer=, stop_strings and a streamer
    (which a directory receives directly) the same as the engine."""
    model, tokenizer = tiny
    inputs = _ids(tokenizer)
    reference = model.generate(**inputs, max_new_tokens=20)
    ours = model.generate(
        **inputs, max_new_tokens=20, custom_generate=str(HUB_DIR), trust_remote_code=True
    )
    assert torch.equal(ours, reference)
    recorder = _Recorder()
    out = model.generate(
        **inputs, custom_generate=str(HUB_DIR), trust_remote_code=True, tokenizer=tokenizer,
        streamer=recorder, stop_strings=["\n"], operator="line-restart+" + CHAOS, seed=1,
        max_new_tokens=40, return_dict_in_generate=True, **SAMPLING,
    )  # fmt: skip
    config = GenerationConfig(max_new_tokens=40, temperature=0.8, top_k=30, top_p=0.9, stop=["\n"])
    expected = Decoder(model, tokenizer).generate(
        PROMPT, backtrack.operators.parse_operator("line-restart+" + CHAOS), config, seed=1
    )
    assert out.results[0].token_ids == expected.token_ids
    assert recorder.puts[0] == inputs["input_ids"][0].tolist() and recorder.ended
    assert recorder.streamed() == expected.token_ids


def test_the_directory_never_suggests_installing_another_package() -> None:
    """transformers checks a custom_generate file's imports and suggests `pip install
    <module>` for a missing one; for `backtrack` that is an unrelated project, so the file
    imports it where that check does not look, and names the right package itself."""
    generate_py = HUB_DIR / "custom_generate" / "generate.py"
    assert get_imports(str(generate_py)) == []
    assert "pip install backtrack-decoding" in generate_py.read_text()
