"""vaal_dist.select / prepare / export / import_labels / experiment: the CLI's path as functions. Bad options
raise the InputError whose message the CLI prints; a fresh interpreter starts Ray once and reuses it; the
walk-through in docs/api.md runs as written."""
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vaal_dist
from vaal_dist import cli
from vaal_dist.errors import InputError

DOC = Path(__file__).parents[1] / "docs" / "api.md"

# (select's keyword arguments, the same as `vaal-dist round` flags)
BAD_OPTIONS = [
    ({"epochs": 0}, ["--epochs", "0"]),
    ({"budget": 0}, ["--budget", "0"]),
    ({"seed": -1}, ["--seed", "-1"]),
    ({"strategy": "vaa"}, ["--strategy", "vaa"]),
    ({"cpus_per_worker": float("nan")}, ["--cpus-per-worker", "nan"]),
    ({"preset": "cifar11"}, ["--preset", "cifar11"]),
    ({"labeled": None}, []),                                    # with --pool, also give --labeled
    ({"embedding": "resnet18"}, ["--embedding", "resnet18"]),   # without its weights
]


def cli_error(capsys, argv) -> str:
    """The message `vaal-dist round ARGV` prints after "error: " (argparse's or run_safely's line)."""
    try:
        assert cli.main(["round", *argv]) == 2
    except SystemExit as stop:
        assert stop.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1].split("error: ", 1)[1]


@pytest.mark.parametrize("options, flags", BAD_OPTIONS)
def test_a_bad_option_raises_the_input_error_the_cli_prints(options, flags, tmp_path, no_ray, capsys):
    given = {"pool": str(tmp_path / "pool"), "labeled": str(tmp_path / "l.txt"), "budget": 5,
             "out": str(tmp_path / "out")}
    argv = [f"--{name}={value}" for name, value in given.items() if name not in options] + flags
    with pytest.raises(InputError) as raised:
        vaal_dist.select(**{**given, **options})
    assert str(raised.value) == cli_error(capsys, argv)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_option_is_named_as_in_a_config_file(tmp_path, no_ray, capsys):
    with pytest.raises(InputError, match=r"^unknown option 'epoch' \(did you mean 'epochs'\?\)$") as raised:
        vaal_dist.select("pool", "l.txt", 5, out=str(tmp_path / "out"), epoch=2)
    (tmp_path / "c.yaml").write_text("epoch: 2\n")
    assert cli_error(capsys, ["--config", str(tmp_path / "c.yaml")]) == str(raised.value)
    with pytest.raises(InputError, match=r"^unknown option 'image_sizes' \(did you mean 'image_size'\?\)$"):
        vaal_dist.prepare("src", str(tmp_path / "dest"), image_sizes=32)
    with pytest.raises(InputError, match="^argument --to: invalid choice: 'xml'"):
        vaal_dist.export(str(tmp_path), "xml", str(tmp_path / "tasks"))
    assert list(tmp_path.iterdir()) == [tmp_path / "c.yaml"]


def test_import_vaal_dist_loads_no_ray_or_torch_until_a_function_is_used():
    code = ("import sys, vaal_dist; assert not {'ray', 'torch'} & set(sys.modules); "
            "assert all(callable(getattr(vaal_dist, n)) for n in vaal_dist.API); print(sorted(vaal_dist.API))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['experiment',", "'export',", "'import_labels',", "'prepare',", "'select']"]


SELECT_TWICE = textwrap.dedent("""
    import json, sys
    import ray
    import vaal_dist
    from vaal_dist.errors import InputError

    pool, labeled = sys.argv[1:3]
    assert not ray.is_initialized()
    first = vaal_dist.select(pool, labeled, 7, strategy="random", seed=3, preset="cpu")
    session = ray.get_runtime_context().get_job_id(), ray.get_runtime_context().gcs_address
    second = vaal_dist.select(pool, labeled, 5, strategy="random", seed=4, preset="cpu", out="again")
    same = (ray.get_runtime_context().get_job_id(), ray.get_runtime_context().gcs_address) == session
    try:
        vaal_dist.select(pool, labeled, 9999, strategy="random", preset="cpu", out="too-many")
        error = None
    except InputError as e:
        error = str(e)
    print(json.dumps({"first": first.to_pydict(), "second": second.to_pydict(), "same_ray": same,
                      "error": error}))
""")


@pytest.mark.slow           # starts Ray in a subprocess
def test_select_twice_in_a_fresh_interpreter_starts_ray_once(tmp_path, tiny_pool, capsys):
    pool, labeled, ids, labeled_ids = tiny_pool
    (tmp_path / "run").mkdir()
    done = subprocess.run([sys.executable, "-c", SELECT_TWICE, pool, labeled], cwd=tmp_path / "run",
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    unlabeled = set(ids) - set(labeled_ids)
    for table, budget in ((got["first"], 7), (got["second"], 5)):
        assert list(table) == ["id", "score", "rank"] and table["rank"] == list(range(1, budget + 1))
        assert len(set(table["id"])) == budget and set(table["id"]) <= unlabeled
    assert got["same_ray"]
    assert got["error"] == cli_error(capsys, ["--pool", pool, "--labeled", labeled, "--budget", "9999", "--out",
                                              str(tmp_path / "cli"), "--strategy", "random"])
    written = [p.relative_to(tmp_path / "run") for p in (tmp_path / "run").glob("*/*/selection.parquet")]
    assert len(written) == 1 and re.fullmatch(r"results/random-\d{8}-\d{6}-\d{6}", str(written[0].parent))
    assert (tmp_path / "run" / "again" / "selection.parquet").exists()
    assert not (tmp_path / "run" / "too-many").exists()


def doc_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


@pytest.mark.slow           # starts Ray in a subprocess; two VAAL rounds
def test_the_walk_through_in_docs_api_md_runs(tmp_path):
    """The python blocks of docs/api.md, in order, in a fresh interpreter in an empty folder (as a notebook)."""
    blocks = doc_blocks()
    assert len(blocks) == 7
    facts = 'import json; print(json.dumps([done.labeled, done.new, len(picks), len(picks_2)]))'
    done = subprocess.run([sys.executable, "-c", "\n".join([*blocks, facts])], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert "60 images in 3 shards" in printed
    assert "budget 1000 is larger than the unlabeled pool (42 of 60 images" in printed
    assert json.loads(printed.strip().splitlines()[-1]) == [18, 8, 8, 8]
