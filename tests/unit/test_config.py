from pathlib import Path

import pytest

from searchrl.config import ConfigError, load_config


def test_defaults_and_tiny_load(tmp_path):
    cfg = load_config(None)
    assert cfg.trainer.algo == "reinforce_pp" and cfg.rollout.budgets().top_k == 3
    tiny = load_config("configs/tiny.yaml")
    assert tiny.trainer.group_size == 4 and [s.reward_preset for s in tiny.trainer.stages] == [
        "r1s-stage1",
        "r1s-stage2",
    ]


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("trainer:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(f) in str(e.value) and "trainer.learning_rate" in str(e.value)


def test_bad_value_names_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("rollout:\n  top_p: 2.0\n")
    with pytest.raises(ConfigError, match=r"rollout\.top_p"):
        load_config(f)


def test_overrides_are_yaml_typed_and_validated(tmp_path):
    cfg = load_config("configs/tiny.yaml", ["trainer.lr=3e-4", "trainer.bf16=true", "rollout.top_k=5"])
    assert cfg.trainer.lr == pytest.approx(3e-4) and cfg.trainer.bf16 is True and cfg.rollout.top_k == 5
    with pytest.raises(ConfigError, match=r"--set trainer.algo=ppo2\): trainer\.algo"):
        load_config("configs/tiny.yaml", ["trainer.algo=ppo2"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(None, ["trainer.lr"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "x.yaml"
    f.write_text("trainer: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_env_sets_addresses_only(monkeypatch):
    monkeypatch.setenv("SEARCHRL_REDIS_URL", "redis://:secret@redis:6379/0")
    monkeypatch.setenv("SEARCHRL_RETRIEVER_ADDR", "retriever:50051")
    monkeypatch.setenv("SEARCHRL_ROLLOUT_ADDRS", "a:1,b:2")
    cfg = load_config(None)
    assert cfg.addresses.redis_url == "redis://:secret@redis:6379/0"
    assert cfg.addresses.retriever == "retriever:50051" and cfg.addresses.rollout == ["a:1", "b:2"]


def test_relative_paths_in_a_file_resolve_against_its_folder_from_any_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "c.yaml").write_text(
        "run: {run_dir: runs}\n"
        "model: {path: builtin:tiny-searcher, cache_dir: ~/.cache/x}\n"
        "retriever: {corpus: ../data/corpus.jsonl, index_dir: /abs/index, embedder: models/emb}\n"
        "trainer: {stages: [{name: a, data: a.jsonl, steps: 1}, {name: b, data: sub/b.jsonl}]}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config("elsewhere/c.yaml", ["security.token_file=tok"])
    assert cfg.run.run_dir == str(folder / "runs")
    assert cfg.retriever.corpus == str(tmp_path / "data" / "corpus.jsonl")
    assert cfg.retriever.embedder == str(folder / "models" / "emb")
    assert [s.data for s in cfg.trainer.stages] == [str(folder / "a.jsonl"), str(folder / "sub" / "b.jsonl")]
    # builtin names, ~ and absolute paths are kept; --set values and defaults are relative to the working
    # directory, and a loaded config holds them absolute
    assert cfg.model.path == "builtin:tiny-searcher" and cfg.model.cache_dir == "~/.cache/x"
    assert cfg.retriever.index_dir == "/abs/index" and cfg.security.token_file == str(tmp_path / "tok")
    assert cfg.eval.suite_dir == str(tmp_path / "data" / "r1searcher")
    # the bundled configs find the repo's data from any working directory
    monkeypatch.chdir("/")
    assert Path(load_config(Path(__file__).parents[2] / "configs" / "tiny.yaml").retriever.corpus).is_file()
