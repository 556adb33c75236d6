"""`vaal-dist round --config FILE`: a YAML or JSON mapping of the round's options, flags given override it; a
finished round's run.json replays its config, credentials it hides given again. Hostile files are one error
line naming the file and the key, exit 2, before Ray starts and before anything is written."""
import argparse
import json
import re

import pytest

import vaal_dist
from vaal_dist import cli, cli_args
from vaal_dist.config_file import MAX_BYTES, check_replay, parse_with_config
from vaal_dist.errors import InputError
from vaal_dist.pool.storage import read_json
from vaal_dist.redaction import redact_all
from conftest import read_selection


def resolved(argv: list[str]):
    """The RoundConfig `vaal-dist round ARGV` runs (api.run_round's checks, before Ray)."""
    args = parse_with_config(cli_args.add_round_args(argparse.ArgumentParser()), argv)
    config = cli_args.config_from_args(args)
    check_replay(getattr(args, "replayed", None), config.to_dict())
    return config


YAML = """
pool: {pool}
labeled: {labeled}
budget: 12
out: {out}
strategy: entropy
preset: cpu
batch-size: 16
task_epochs: 3
use_gpu: true
amp: false
workers: 2
seed: 9
"""


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_config_file_sets_the_options_and_flags_given_override_it(tmp_path, suffix):
    values = {"pool": "p", "labeled": "l.txt", "out": "o"}
    config = tmp_path / f"round.{suffix}"
    text = YAML.format(**values)
    if suffix == "json":
        import yaml

        text = json.dumps(yaml.safe_load(text))
    config.write_text(text)
    cfg = resolved(["--config", str(config), "--task-epochs", "5", "--budget", "7"])
    assert (cfg.pool, cfg.labeled, cfg.out, cfg.strategy, cfg.seed) == ("p", "l.txt", "o", "entropy", 9)
    assert (cfg.setup.preset.name, cfg.vaal.batch_size, cfg.task.epochs, cfg.budget) == ("cpu", 16, 5, 7)
    assert (cfg.use_gpu, cfg.scoring.amp, cfg.workers) == (True, False, 2)
    assert cfg.vaal.epochs == vaal_dist.config.PRESETS["cpu"].vaal.epochs      # not in the file: the preset's


SECRET = "AKIAEXAMPLE:se/cret+key"
EVERY_OPTION = ["--pool", f"s3://{SECRET}@bucket/pool", "--labeled", "l.parquet", "--budget", "11", "--out", "old",
                "--strategy", "typiclust", "--holdout", "h.txt", "--seed", "5", "--preset", "imagenet",
                "--epochs", "3", "--batch-size", "8", "--epoch-images", "100", "--task-epochs", "4",
                "--task-min-steps", "0", "--aalu-epochs", "6", "--mc-passes", "7", "--members", "2",
                "--subset-factor", "3", "--max-clusters", "50", "--embedding", "resnet18",
                "--embedding-weights", f"s3://{SECRET}@bucket/w.pt", "--embedding-image-size", "64", "--workers", "0",
                "--cpus-per-worker", "1.5", "--max-failures", "1", "--score-batch-size", "64", "--actors", "3",
                "--threads-per-actor", "2", "--amp", "--score-timeout", "120", "--placement-timeout", "30",
                "--embeddings-cache", "cache"]


def write_record(path, cfg) -> None:
    """run.json as run_round writes it, for what a replay reads (its config)."""
    path.write_text(json.dumps({"config": redact_all(cfg.to_dict()), "versions": {"vaal_dist": "0.1.0"},
                                "budget": cfg.budget}))


def test_replaying_a_run_json_gives_the_same_resolved_config(tmp_path):
    original = resolved(EVERY_OPTION)
    write_record(tmp_path / "run.json", original)
    replay = resolved(["--config", str(tmp_path / "run.json"), "--out", "new", "--pool", original.pool,
                       "--embedding-weights", original.acquisition.embedding.weights])
    assert replay.to_dict() == {**original.to_dict(), "out": "new"}
    changed = resolved(["--config", str(tmp_path / "run.json"), "--pool", "p2", "--labeled", "l2", "--budget", "3",
                        "--embedding-weights", "w2.pt", "--epochs", "9"])
    assert (changed.pool, changed.labeled, changed.budget, changed.vaal.epochs) == ("p2", "l2", 3, 9)
    assert changed.out == "old" and changed.acquisition.embedding.weights == "w2.pt"
    default = resolved(["--pool", "p", "--labeled", "l", "--budget", "1", "--out", "o"])
    write_record(tmp_path / "default.json", default)
    assert resolved(["--config", str(tmp_path / "default.json")]) == default


def test_a_run_json_from_before_later_options_replays_with_their_defaults(tmp_path):
    """Settings added to vaal_dist after a round ran are missing from its run.json: not a difference."""
    original = resolved(["--pool", "p", "--labeled", "l", "--budget", "1", "--out", "o", "--embeddings", "e.pq"])
    record = redact_all(original.to_dict())
    for later in (record, record["scoring"], record["acquisition"]):
        for key in ("placement_timeout", "embeddings_cache", "batch_timeout_s", "embeddings"):
            later.pop(key, None)
    (tmp_path / "run.json").write_text(json.dumps({"config": record, "versions": {}}))
    replay = resolved(["--config", str(tmp_path / "run.json")])
    assert replay.to_dict() == {**original.to_dict(), "acquisition": {**original.to_dict()["acquisition"],
                                                                     "embeddings": None}}


def test_select_takes_the_strategy_from_a_config_file_unless_given(tmp_path, monkeypatch):
    (tmp_path / "round.yaml").write_text("strategy: entropy\nepochs: 3\n")
    from vaal_dist import api

    class Ran(Exception):
        pass

    def run_round(args):
        raise Ran(args)
    monkeypatch.setattr(api, "run_round", run_round)
    for given, strategy in ({}, "entropy"), ({"strategy": "margin"}, "margin"):
        with pytest.raises(Ran) as ran:
            vaal_dist.select("p", "l", 1, out="o", config=str(tmp_path / "round.yaml"), **given)
        args = ran.value.args[0]
        assert (args.strategy, args.epochs) == (strategy, 3)


def test_a_uri_the_run_json_hides_must_be_given_again(tmp_path, no_ray, capsys):
    write_record(tmp_path / "run.json", resolved(EVERY_OPTION))
    assert cli.main(["round", "--config", str(tmp_path / "run.json"), "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err == (f"vaal-dist: error: config '{tmp_path}/run.json' hides the credentials of pool "
                   f"(s3://***@bucket/pool): give --pool again\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    with pytest.raises(InputError, match=r"hides the credentials of embedding_weights \(s3://\*\*\*@bucket/w.pt\): "
                                         r"give --embedding-weights again$"):
        vaal_dist.select("p", "l", 5, config=str(tmp_path / "run.json"))


def test_a_run_json_whose_config_no_options_give_is_refused_naming_the_fields(tmp_path, no_ray, capsys):
    original = resolved(["--pool", "p", "--labeled", "l", "--budget", "1", "--out", "o", "--preset", "cpu"])
    record = redact_all(original.to_dict())
    record["vaal"]["latent_dim"] = 64                # a Preset built in Python: no option sets it
    record["scoring"]["block_bytes"] = 1024
    (tmp_path / "run.json").write_text(json.dumps({"config": record, "versions": {}}))
    assert cli.main(["round", "--config", str(tmp_path / "run.json"), "--out", str(tmp_path / "new")]) == 2
    assert capsys.readouterr().err == ("vaal-dist: error: the run.json's round cannot be replayed by options: "
                                       "scoring.block_bytes 1024 there, 8388608 here; vaal.latent_dim 64 there, "
                                       "32 here\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def billion_laughs(levels: int = 5) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HOSTILE = [
    ("list.yaml", b"- 1\n- 2\n", r"must be a mapping of option names to values, not a list"),
    ("number.json", b"42", r"must be a mapping of option names to values, not a int"),
    ("empty.yaml", b"", r"is empty"),
    ("unknown.yaml", b"epochs: 2\nbogus: 1\n", r"unknown option 'bogus'; options: "),
    ("typo.yaml", b"batch_sise: 2\n", r"unknown option 'batch_sise' \(did you mean 'batch_size'\?\)"),
    ("list-value.yaml", b"epochs: [1, 2]\n", r"option 'epochs': expected one value, got a list"),
    ("dict-value.yaml", b"pool: {a: 1}\n", r"option 'pool': expected one value, got a dict"),
    ("switch.yaml", b"use_gpu: 1\n", r"option 'use_gpu': expected true or false, got 1"),
    ("word.yaml", b"epochs: many\n", r"argument --epochs: expected an integer, got 'many'"),
    ("range.json", b'{"seed": -1}', r"argument --seed: must be between 0 and 4294967295, got -1"),
    ("huge.yaml", b"#" * (MAX_BYTES + 1), r"is larger than 1,048,576 bytes"),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, r"nests deeper than 8 levels"),     # past Python's stack
    ("deep.yaml", b"a: " + b"[" * 100_000 + b"]" * 100_000, r"exceeded maximum nesting depth|nests deeper than 8"),
    ("nine-deep.yaml", b"epochs: " + b"[" * 8 + b"]" * 8, r"nests deeper than 8 levels"),
    ("laughs.yaml", billion_laughs().encode(), r"holds more than 10,000 values"),
    ("tag.yaml", b"!!python/object/apply:os.system ['touch pwned']\n", r"is not valid JSON or YAML: could not "
                                                                        r"determine a constructor"),
    ("latin1.yaml", b"pool: caf\xe9\n", r"is not valid JSON or YAML: 'utf-8' codec can't decode"),
    ("broken.yaml", b"epochs: [1,\n", r"is not valid JSON or YAML: while parsing"),
    ("broken.json", b'{"epochs": 1,}', r"is not valid JSON or YAML: Expecting property name"),
    ("nested.yaml", b"config: other.yaml\n", r"names another config file"),
]


@pytest.mark.parametrize("name, content, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_config_file_is_one_error_line_naming_it(name, content, message, tmp_path, no_ray, capsys,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    argv = ["round", "--config", str(tmp_path / name), "--out", str(tmp_path / "out")]
    try:
        assert cli.main(argv) == 2
    except SystemExit as stop:                  # a value argparse refuses: its usage line, then the error
        assert stop.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("error" in line for line in err) == 1
    assert err[-1].startswith(("vaal-dist: error: ", "vaal-dist round: error: "))
    assert re.search(message, err[-1]), err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("target", ["missing.yaml", "."])
def test_a_config_that_cannot_be_read_is_named(target, tmp_path, no_ray, capsys):
    assert cli.main(["round", "--config", str(tmp_path / target)]) == 2
    assert capsys.readouterr().err.startswith(f"vaal-dist: error: cannot read config '{tmp_path / target}': ")


@pytest.mark.slow           # two VAAL rounds
def test_a_replayed_round_selects_what_the_original_did(ray_local, tiny_pool, tmp_path, capsys):
    pool, labeled = tiny_pool[:2]
    first, again = tmp_path / "first", tmp_path / "again"
    assert cli.main(["round", "--pool", pool, "--labeled", labeled, "--budget", "6", "--out", str(first),
                     "--preset", "cpu", "--epochs", "1", "--batch-size", "16", "--workers", "0",
                     "--score-batch-size", "32", "--seed", "3"]) == 0
    assert cli.main(["round", "--config", str(first / "run.json"), "--out", str(again)]) == 0
    capsys.readouterr()
    original, replay = read_json(str(first / "run.json")), read_json(str(again / "run.json"))
    assert replay["config"] == {**original["config"], "out": str(again)}
    assert read_selection(again)["id"] == read_selection(first)["id"]
