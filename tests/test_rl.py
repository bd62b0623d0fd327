"""Learned backtracking: the environment mirrors the engine, training runs, the operator loads.

Everything runs on tiny-random-qwen2 (random weights, so no completion passes its tests) with
the MBPP train split from the shared data directory, with one torch thread: on a busy shared
CPU the small LSTM is many times faster that way.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sb3_contrib")

from backtrack.engine.decoder import Decoder  # noqa: E402
from backtrack.engine.results import RollbackEvent  # noqa: E402
from backtrack.engine.settings import GenerationConfig
from backtrack.operators import OperatorSpecError, parse_operator  # noqa: E402
from backtrack.operators.features import FEATURE_NAMES  # noqa: E402
from backtrack.operators.learned import (  # noqa: E402
    METADATA_NAME,
    LearnedOperator,
    PolicyLoadError,
)
from backtrack.rl.config import TrainConfig, TrainConfigError  # noqa: E402
from backtrack.rl.env import BacktrackEnv, FeatureOperator, judgement_due  # noqa: E402
from backtrack.rl.env_config import EnvConfig  # noqa: E402
from backtrack.rl.judges import Judge  # noqa: E402
from backtrack.rl.train import (  # noqa: E402
    bias_towards_keeping,
    latest_checkpoint,
    train,
    train_command,
)

REPO = Path(__file__).resolve().parents[1]
PROMPT = "def add(a, b):\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def make_env(tiny, mbpp: str, **overrides) -> BacktrackEnv:
    settings = {"data_path": mbpp, "limit": 6, "max_new_tokens": 12, "max_rollback": 3}
    settings.update(overrides)
    return BacktrackEnv(EnvConfig.from_mapping(settings), model_and_tokenizer=tiny)


def scripted_action(position: int) -> int:
    """A fixed, state-free decision rule both the env loop and an operator can follow."""
    return 2 if position % 4 == 3 else 0


class ScriptedFeatureOperator(FeatureOperator):
    """The env's feature side plus :func:`scripted_action`, usable inside Decoder.generate."""

    def __init__(self, extractor) -> None:
        super().__init__(extractor)
        self.seen: list[np.ndarray] = []

    def __call__(self, step) -> int:
        super().__call__(step)
        self.seen.append(self.observation.copy())
        return scripted_action(step.position)


# ----------------------------------------------------------------------------- environment


def test_env_passes_gymnasium_and_sb3_checkers(tiny, mbpp) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = make_env(tiny, mbpp)
    assert env.action_space.n == 4
    assert env.observation_space.shape == (len(FEATURE_NAMES),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check(env, skip_render_check=True)
        sb3_check(env, warn=False)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert info["task_id"].startswith("MBPP/") and 601 <= int(info["task_id"][5:]) <= 974


@pytest.mark.parametrize("period", [1, 3])
def test_env_episode_equals_engine_run_with_the_same_decisions(tiny, mbpp, period) -> None:
    """Same seed + same decisions: the env and Decoder.generate produce the same completion,
    the same rollbacks and the same observations (so feature state is restored identically)."""
    env = make_env(tiny, mbpp, period=period, max_new_tokens=16)
    obs, info = env.reset(seed=1)
    observations, rollbacks, done = [obs], [], False
    while not done:
        action = scripted_action(info["position"])
        torch.manual_seed(12345)  # the global RNG must not matter to the env's sampling
        obs, reward, done, truncated, info = env.step(action)
        assert not truncated
        if info["rolled_back"]:
            rollbacks.append(info["rolled_back"])
        if not done:
            observations.append(obs)
    assert rollbacks, "the scripted policy should have backtracked at least once"

    problem = {p.task_id: p for p in env.problems}[info["task_id"]]
    operator = ScriptedFeatureOperator(env.config.feature_extractor())
    config = dataclasses.replace(env.generation_config, seed=info["episode_seed"])
    result = Decoder(*tiny).generate(problem.prompt, operator, config)
    assert result.token_ids == info["token_ids"]
    assert [e.k for e in result.trace if isinstance(e, RollbackEvent)] == rollbacks
    assert result.finish_reason == info["finish_reason"]
    assert len(operator.seen) == len(observations)
    for expected, got in zip(operator.seen, observations, strict=True):
        assert np.array_equal(expected, got)
    env.close()


def test_env_is_reproducible_from_its_seed(tiny, mbpp) -> None:
    env = make_env(tiny, mbpp)

    def episode(seed: int) -> tuple[list[int], float]:
        _, info = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            _, reward, done, _, info = env.step(scripted_action(info["position"]))
            total += reward
        return info["token_ids"], total

    assert episode(7) == episode(7)


class LengthJudge(Judge):
    """A deterministic stand-in judge: longer partial programs score higher."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, problem_prompt: str, partial_code: str) -> float:
        self.calls += 1
        return min(1.0, (len(partial_code) - len(problem_prompt)) / 50.0)


def test_rewards_dense_judge_is_potential_based_and_discards_cost(tiny, mbpp) -> None:
    judge = LengthJudge()
    env = BacktrackEnv(
        EnvConfig.from_mapping(
            dict(data_path=mbpp, limit=4, max_new_tokens=12, max_rollback=3, judge_every=1)
        ),
        model_and_tokenizer=tiny,
        judge=judge,
    )
    env.reset(seed=0)
    start = env._judge_score
    rewards, done = [], False
    while not done:
        _, reward, done, _, info = env.step(0)
        rewards.append(reward)
    assert judge.calls >= 2
    assert info["passed"] is False  # random weights: the tests fail, terminal reward 0
    # Shaping telescopes: the dense rewards sum to the last judged score minus the first.
    assert sum(rewards) == pytest.approx(env._judge_score - start)

    # Tests-only judge: only the discard cost is left, per token actually deleted.
    plain = make_env(tiny, mbpp, discard_cost=0.1)
    plain.reset(seed=0)
    _, reward, _, _, info = plain.step(2)
    assert info["rolled_back"] == 1  # clamped: one token exists after the first sample
    assert reward == pytest.approx(-0.1)
    _, reward, _, _, info = plain.step(0)
    assert info["rolled_back"] == 0 and reward == 0.0


def test_teacher_judges_at_line_ends_and_every_m_tokens_either_way() -> None:
    assert judgement_due("    return x\n", 3, 2, every=16)  # a line end, however short
    assert not judgement_due("x", 17, 2, every=16)
    assert judgement_due("x", 18, 2, every=16)
    assert judgement_due("x", 2, 18, every=16)  # rolled back 16 tokens past the last judgement
    assert not judgement_due("x", 3, 18, every=16)


def test_episode_info_says_what_a_local_teacher_cost(tiny, mbpp) -> None:
    """A real teacher (the tiny model judging through LocalJudge): the last step's info counts
    this episode's requests, cache hits, seconds and the prompt tokens the teacher ran."""
    from backtrack.rl.judges import LocalJudge

    judge = LocalJudge(*tiny)
    env = BacktrackEnv(
        EnvConfig.from_mapping(dict(data_path=mbpp, limit=2, max_new_tokens=10, judge_every=1)),
        model_and_tokenizer=tiny,
        judge=judge,
    )
    for seed in (0, 1):
        before = judge.stats.requests, judge.stats.prompt_tokens
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, done, _, info = env.step(0)
        assert info["judge_requests"] == judge.stats.requests - before[0] >= 2
        assert info["judge_tokens"] == judge.stats.prompt_tokens - before[1] > 0
        assert info["judge_seconds"] > 0.0 and 0 <= info["judge_hits"] <= info["judge_requests"]


# ----------------------------------------------------------------------------- training


def test_fresh_policy_starts_near_plain_sampling(tiny, mbpp) -> None:
    """init_keep_prob: whatever it observes, a fresh policy deletes nothing that often."""
    from sb3_contrib import RecurrentPPO

    env = make_env(tiny, mbpp)
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=8, batch_size=8, seed=0)
    uniform = _action_counts(model, env, 400)
    assert uniform[0] < 0.5 * 400  # sb3's own start: ~uniform over 0..K
    bias_towards_keeping(model.policy, 0.9)
    counts = _action_counts(model, env, 4000)
    # Sampling error, not rounding: over 4000 draws the binomial standard deviation is 0.0047
    # for p=0.9 and 0.0028 for p=1/30, so these bounds sit at 4.2 and 5.3 sigma.
    assert abs(counts[0] / 4000 - 0.9) < 0.02
    assert all(abs(c / 4000 - 0.1 / 3) < 0.015 for c in counts[1:])


def _action_counts(model, env, n: int) -> np.ndarray:
    """Sampled actions of ``model`` over ``n`` random observations, each with its own memory."""
    env.observation_space.seed(0)
    observations = np.stack([env.observation_space.sample() for _ in range(n)])
    torch.manual_seed(0)
    actions, _ = model.predict(
        observations, state=None, episode_start=np.ones(n, dtype=bool), deterministic=False
    )
    return np.bincount(actions, minlength=env.action_space.n)


@pytest.fixture(scope="module")
def trained(tiny, mbpp, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rl") / "run"
    policy = train(
        {
            "model": "tiny-random-qwen2",
            "data_path": mbpp,
            "limit": 6,
            "max_new_tokens": 12,
            "K": 3,
            "output_dir": str(out),
            "total_timesteps": 64,
            "n_steps": 32,
            "batch_size": 16,
            "n_epochs": 2,
            "lstm_hidden_size": 16,
            "net_arch": [16],
            "checkpoint_every": 32,
            "progress_bar": False,
            "seed": 0,
        },
        model_and_tokenizer=tiny,
    )
    return policy


def test_training_writes_policy_checkpoints_logs_and_metadata(trained: Path) -> None:
    out = trained.parent
    assert trained.name == "policy.zip" and trained.is_file()
    with zipfile.ZipFile(trained) as archive:
        meta = json.loads(archive.read(METADATA_NAME))
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert meta["max_rollback"] == 3 and meta["max_new_tokens"] == 12
    assert json.loads((out / METADATA_NAME).read_text()) == meta
    assert TrainConfig.load(out / "config.yaml").env.max_rollback == 3
    assert latest_checkpoint(out) == out / "checkpoints" / "policy_64_steps.zip"
    assert any((out / "tb").rglob("events.out.tfevents.*"))
    # monitor.csv: one line per episode with its verdict, deletions and judge cost. With the
    # tests-only reward the deletions also follow from the reward: the two must agree.
    lines = (out / "monitor.csv").read_text().splitlines()[1:]  # first: sb3's JSON comment
    episodes = list(csv.DictReader(lines))
    assert len(episodes) >= 2
    assert set(episodes[0]) >= {"r", "l", "passed", "tokens_discarded", "judge_requests"}
    cfg = TrainConfig.load(out / "config.yaml").env
    assert cfg.judge == "tests" and cfg.forward_cost == 0
    for e in episodes:
        reward = cfg.pass_reward * (e["passed"] == "True")
        reward -= cfg.discard_cost * int(e["tokens_discarded"])
        assert float(e["r"]) == pytest.approx(reward, abs=1e-5)  # monitor rounds r to 6 digits
    assert any(int(e["tokens_discarded"]) > 0 for e in episodes)  # sb3's fresh policy deletes


def test_learned_operator_loads_from_spec_and_decodes_deterministically(tiny, trained) -> None:
    operator = parse_operator(f"rl:path={trained}")
    assert isinstance(operator, LearnedOperator) and operator.name == "rl"
    assert operator.max_rollback == 3
    decoder = Decoder(*tiny)
    config = GenerationConfig(max_new_tokens=16, temperature=0.5, top_k=50, seed=0)
    first = decoder.generate(PROMPT, operator, config)
    second = decoder.generate(PROMPT, parse_operator(f"rl:path={trained}"), config)
    assert first.token_ids == second.token_ids
    assert len(first.token_ids) <= 16
    assert all(e.k <= 3 for e in first.trace if isinstance(e, RollbackEvent))
    # A checkpoint is a usable policy on its own (its zip carries the metadata too).
    assert LearnedOperator(str(latest_checkpoint(trained.parent))).max_rollback == 3


def test_policy_is_loaded_once_per_file_version(trained, tmp_path) -> None:
    """An evaluation builds one operator per row: they share the network, not the memory."""
    copy = tmp_path / "policy.zip"
    shutil.copy(trained, copy)
    first, second = LearnedOperator(str(copy)), LearnedOperator(str(copy))
    assert first.model is second.model
    first.reset()
    second.reset()
    assert first.get_state() is not second.get_state()
    # Retrained in place (new content at the same path): the new file is loaded.
    shutil.copy(latest_checkpoint(trained.parent), copy)
    os.utime(copy, ns=(1, 1))
    assert LearnedOperator(str(copy)).model is not first.model


def _drive(session, operator, steps: int) -> list:
    """Mirror run(): sample, consult the operator (never rolling back), advance."""
    recorded = []
    session.prefill()
    for _ in range(steps):
        step = session.sample()
        recorded.append(dataclasses.replace(step, generated=tuple(step.generated)))
        operator(step)
        session.advance()
    return recorded


def _assert_same_state(a, b) -> None:
    assert a[0] == b[0]  # feature history
    assert np.array_equal(a[1][0], b[1][0]) and np.array_equal(a[1][1], b[1][1])  # LSTM h, c
    assert a[2] == b[2]  # episode_start


@pytest.mark.parametrize("deterministic", [True, False])
def test_direct_network_call_equals_sb3_predict_bit_for_bit(trained, deterministic) -> None:
    # The operator calls the actor network directly instead of sb3's `predict` (the cost);
    # over random observations, with episode starts, actions, LSTM states and the action
    # RNG's consumption must all be exactly sb3's.
    operator = LearnedOperator(str(trained))
    rng = np.random.default_rng(0)
    space = operator.model.observation_space
    lstm = operator.initial_state()[1]
    ref_lstm = lstm
    actions = []
    for i in range(300):
        observation = rng.uniform(space.low, space.high).astype(np.float32)
        start = i % 97 == 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            action, lstm = operator._act(observation, lstm, start, deterministic)
            after = torch.get_rng_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            reference, ref_lstm = operator.model.predict(
                observation,
                state=ref_lstm,
                episode_start=np.array([start]),
                deterministic=deterministic,
            )
            assert torch.equal(after, torch.get_rng_state())
        assert action == int(reference)
        assert np.array_equal(lstm[0], ref_lstm[0]) and np.array_equal(lstm[1], ref_lstm[1])
        actions.append(action)
    if not deterministic:
        assert len(set(actions)) > 1  # the sampled path really sampled


def test_learned_operator_state_after_rollback_equals_fresh_replay(tiny, trained) -> None:
    operator = LearnedOperator(str(trained))
    config = GenerationConfig(max_new_tokens=32, temperature=0.5, top_k=50)
    torch.manual_seed(0)
    session = Decoder(*tiny).session(PROMPT, operator, config)
    steps = _drive(session, operator, 8)
    before = operator.get_state()
    assert not before[1][0].flags.writeable  # immutable snapshots
    assert session.rollback(3, "test") == 3

    fresh = LearnedOperator(str(trained))
    fresh.reset()
    for step in steps[:5]:
        fresh(step)
    _assert_same_state(operator.get_state(), fresh.get_state())
    assert not np.array_equal(before[1][0], fresh.get_state()[1][0])  # the memory did move
    # Both continue identically from the restored state.
    assert operator(steps[5]) == fresh(steps[5])
    _assert_same_state(operator.get_state(), fresh.get_state())


def test_sampled_actions_draw_afresh_after_a_rollback_and_per_generation(tiny, trained) -> None:
    """The action RNG advances through rollbacks (a rewound one would redo the decision that
    asked for the rollback with the same draw, and repeat it), and each generation's seed
    gives its own stream, while memory and features are still restored exactly."""
    operator = LearnedOperator(str(trained), deterministic=False, seed=3)
    config = GenerationConfig(max_new_tokens=32, temperature=0.5, top_k=50, seed=11)
    session = Decoder(*tiny).session(PROMPT, operator, config)
    first_stream = operator.get_state()[3]
    steps = _drive(session, operator, 8)
    before = operator.get_state()
    assert session.rollback(3, "test") == 3
    after = operator.get_state()
    assert torch.equal(after[3], before[3])  # not rewound
    fresh = LearnedOperator(str(trained))
    fresh.reset()
    for step in steps[:5]:
        fresh(step)
    assert after[0] == fresh.get_state()[0]  # features restored exactly
    assert np.array_equal(after[1][0], fresh.get_state()[1][0])  # so is the memory
    # Streams: the same seeds give the same one, another generation seed another one.
    again = LearnedOperator(str(trained), deterministic=False, seed=3)
    Decoder(*tiny).session(PROMPT, again, config)
    assert torch.equal(again.get_state()[3], first_stream)
    other = LearnedOperator(str(trained), deterministic=False, seed=3)
    Decoder(*tiny).session(PROMPT, other, dataclasses.replace(config, seed=12))
    assert not torch.equal(other.get_state()[3], first_stream)


def test_restore_memory_false_keeps_the_lstm_running(tiny, trained) -> None:
    operator = LearnedOperator(str(trained), restore_memory=False)
    torch.manual_seed(0)
    session = Decoder(*tiny).session(PROMPT, operator, GenerationConfig(max_new_tokens=32))
    steps = _drive(session, operator, 6)
    before = operator.get_state()
    session.rollback(2, "test")
    after = operator.get_state()
    fresh = FeatureOperator(operator.extractor)
    fresh.reset()
    for step in steps[:4]:
        fresh(step)
    assert after[0] == fresh.state  # features restored exactly
    assert np.array_equal(after[1][0], before[1][0])  # LSTM kept, as during training


def test_resume_continues_the_timestep_count(tiny, trained, tmp_path) -> None:
    from sb3_contrib import RecurrentPPO

    out = tmp_path / "resumed"
    shutil.copytree(trained.parent, out)
    config = TrainConfig.load(out / "config.yaml")
    config = dataclasses.replace(config, output_dir=str(out), total_timesteps=96)
    # A run started by an older version logged no tokens_discarded column: resuming appends
    # rows in the file's own columns (sb3 does not rewrite the header), never misaligned ones.
    monitor = out / "monitor.csv"
    comment, *rows = monitor.read_text().splitlines()
    old = [line.split(",") for line in rows]
    drop = old[0].index("tokens_discarded")
    lines = [comment] + [",".join(c[:drop] + c[drop + 1 :]) for c in old]
    monitor.write_text("\n".join(lines) + "\n")
    policy = train(config, resume=True, model_and_tokenizer=tiny)
    assert RecurrentPPO.load(policy, device="cpu").num_timesteps == 96
    assert latest_checkpoint(out) == out / "checkpoints" / "policy_96_steps.zip"
    header, *episodes = monitor.read_text().splitlines()[1:]
    assert "tokens_discarded" not in header and len(episodes) > len(old) - 1
    assert all(len(e.split(",")) == len(header.split(",")) for e in episodes)
    # The resumed episodes go on with fresh problems and seeds: sb3 seeds a loaded model with
    # the run's seed again, which would replay the draws of the run's first episodes.
    columns = header.split(",")
    drawn = [tuple(e.split(",")[columns.index(c)] for c in ("task_id", "episode_seed"))
             for e in episodes]  # fmt: skip
    first, resumed = drawn[: len(old) - 1], drawn[len(old) - 1 :]
    assert not set(first) & set(resumed)


def test_shipped_policy_loads_and_decodes(tiny) -> None:
    """The policy in policies/ matches this code's features and runs as an operator.

    If the features change (FEATURE_VERSION), this fails until the policy is retrained.
    """
    policy = REPO / "policies" / "qwen2.5-coder-0.5b-instruct" / "policy.zip"
    assert policy.stat().st_size < 1_000_000  # small enough to ship in the repository
    operator = parse_operator(f"rl:path={policy},deterministic=false,seed=3")
    assert isinstance(operator, LearnedOperator) and operator.max_rollback == 4
    meta = operator.metadata
    assert meta["model"] == "qwen2.5-coder-0.5b-instruct" and meta["split"] == "train"
    # Its features do not depend on the model, so it runs on the tiny one too.
    config = GenerationConfig(max_new_tokens=24, temperature=0.5, top_k=50, seed=0)
    result = Decoder(*tiny).generate(PROMPT, operator, config)
    assert all(e.k <= 4 for e in result.trace if isinstance(e, RollbackEvent))
    # Sampled actions come from the operator's own seeded RNG: the run repeats exactly.
    again = parse_operator(f"rl:path={policy},deterministic=false,seed=3")
    assert Decoder(*tiny).generate(PROMPT, again, config).token_ids == result.token_ids


# ----------------------------------------------------------------------------- errors


def test_missing_corrupt_and_mismatched_policies_are_refused(trained, tmp_path) -> None:
    with pytest.raises(PolicyLoadError, match="not found"):
        LearnedOperator(str(tmp_path / "nope.zip"))
    with pytest.raises(OperatorSpecError, match="not found"):
        parse_operator(f"rl:path={tmp_path / 'nope.zip'}")
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"not a zip at all")
    with pytest.raises(PolicyLoadError, match="corrupt"):
        LearnedOperator(str(corrupt))

    mismatched = tmp_path / "old.zip"
    with zipfile.ZipFile(trained) as src, zipfile.ZipFile(mismatched, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == METADATA_NAME:
                meta = json.loads(data)
                meta["feature_version"] = 999
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    with pytest.raises(PolicyLoadError, match="feature version 999"):
        LearnedOperator(str(mismatched))


def test_config_files_and_command_errors(tmp_path, capsys) -> None:
    for name in ("train-tiny.yaml", "train-default.yaml", "train-restarts.yaml"):
        config = TrainConfig.load(REPO / "configs" / name)
        assert config.env.split == "train" and config.env.max_rollback >= 1
    assert TrainConfig.load(REPO / "configs" / "train-tiny.yaml").env.model == "tiny-random-qwen2"
    with pytest.raises(TrainConfigError, match="init_keep_prob"):
        TrainConfig.load({"init_keep_prob": 1.0})
    assert TrainConfig.load({"init_keep_prob": None}).init_keep_prob is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny-random-qwen2\nlearning_rat: 0.1\n")
    assert train_command(bad, resume=False) == 2
    assert "learning_rat" in capsys.readouterr().err
    assert train_command(tmp_path / "missing.yaml", resume=False) == 2


def test_policy_metadata_records_the_whole_generation_config(trained: Path) -> None:
    meta = json.loads((trained.parent / METADATA_NAME).read_text())
    trained_with = TrainConfig.load(trained.parent / "config.yaml").env.generation
    assert GenerationConfig.from_flat(meta["generation"]) == trained_with
    assert trained_with.max_new_tokens == 12 and trained_with.ban == "accumulate"


def test_learned_operator_warns_under_settings_it_was_not_trained_with(trained: Path) -> None:
    operator = LearnedOperator(str(trained))
    same = GenerationConfig.from_flat(operator.trained_generation())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        operator.check_config(dataclasses.replace(same, stop=("\n\n",)))  # stops do not count
    other = dataclasses.replace(same, temperature=0.9, ban="none")
    with pytest.warns(UserWarning, match=r"temperature: trained 0\.5, now 0\.9.*ban"):
        operator.check_config(other)
    # Checking changes nothing: the sampled actions' stream is seeded by begin(), which the
    # engine calls for each generation (the server checks a request before it is decoded).
    sampled = LearnedOperator(str(trained), deterministic=False)
    sampled.reset()
    before = sampled.get_state()[3]
    sampled.check_config(dataclasses.replace(same, seed=7))
    assert torch.equal(sampled.get_state()[3], before)
    sampled.begin(dataclasses.replace(same, seed=7))
    assert not torch.equal(sampled.get_state()[3], before)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parent.parent / "configs").glob("train-*.yaml")), ids=str
)
def test_shipped_training_configs_load_and_name_a_valid_judge(path, tiny) -> None:
    """Every config in configs/ loads (unknown keys and bad values are refused) and its judge
    spec builds (option names and types checked; a local teacher is stood in for by the tiny
    model), so a typo fails here and not an hour into a run."""
    from backtrack.rl.config import TrainConfig
    from backtrack.rl.judges import make_judge

    config = TrainConfig.load(path)
    judge = make_judge(config.env.judge, model_and_tokenizer=tiny)
    assert 0.0 <= judge.score("def f():\n", "    return 1\n") <= 1.0
    judge.close()
