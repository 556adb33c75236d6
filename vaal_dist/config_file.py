"""``--config FILE``: a round's options from a YAML or JSON mapping, or from a finished round's run.json (a
replay). The file's options become flags put before those given, so a flag given overrides the file and
each value passes the same argparse check as on the command line (docs/api.md says why no config library)."""
from __future__ import annotations

import argparse
import difflib
import json

from vaal_dist.errors import InputError, VaalDistError
from vaal_dist.pool.storage import resolve, retrying
from vaal_dist.redaction import HIDDEN, redact

MAX_BYTES = 1024 ** 2          # a round's options take a few hundred bytes, its run.json a few KiB
MAX_VALUES = 10_000            # values in the whole file, alias expansions counted
MAX_DEPTH = 8                  # run.json's config nests 3 deep (acquisition > embedding > weights)

# run.json's "config" (RoundConfig.to_dict) path -> the round option that sets it. Fields no option sets
# keep the preset's values, which the record's preset name gives back.
RECORDED = {
    ("pool",): "pool", ("labeled",): "labeled", ("out",): "out", ("budget",): "budget",
    ("strategy",): "strategy", ("holdout",): "holdout", ("seed",): "seed", ("preset",): "preset",
    ("vaal", "epochs"): "epochs", ("vaal", "batch_size"): "batch_size", ("vaal", "epoch_images"): "epoch_images",
    ("task", "epochs"): "task_epochs", ("task", "min_steps"): "task_min_steps", ("aalu", "epochs"): "aalu_epochs",
    ("acquisition", "mc_passes"): "mc_passes", ("acquisition", "ensemble_members"): "members",
    ("acquisition", "subset_factor"): "subset_factor", ("acquisition", "max_clusters"): "max_clusters",
    ("acquisition", "embedding", "arch"): "embedding", ("acquisition", "embedding", "weights"): "embedding_weights",
    ("acquisition", "embedding", "image_size"): "embedding_image_size", ("acquisition", "embeddings"): "embeddings",
    ("embeddings_cache",): "embeddings_cache",
    ("scoring", "batch_size"): "score_batch_size", ("scoring", "num_actors"): "actors",
    ("scoring", "threads_per_actor"): "threads_per_actor", ("scoring", "amp"): "amp",
    ("scoring", "batch_timeout_s"): "score_timeout", ("placement_timeout",): "placement_timeout",
    ("workers",): "workers", ("use_gpu",): "use_gpu", ("cpus_per_worker",): "cpus_per_worker",
    ("max_failures",): "max_failures",
}


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed, with the options of its ``--config FILE`` (if any) before it: flags given override
    the file's. A credential the file hides (a run.json's ``***``) must be given again."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    options, recorded = load_options(args.config)
    args = parser.parse_args([*option_argv(options, parser), *argv])
    for name, value in options.items():
        if isinstance(value, str) and HIDDEN in value and getattr(args, name) == value:
            raise InputError(f"config {args.config!r} hides the credentials of {name} ({value}): give "
                             f"--{name.replace('_', '-')} again")
    args.replayed = recorded
    return args


def check_replay(recorded: dict | None, resolved: dict) -> None:
    """A replayed round's settings that no option sets (``RoundConfig.to_dict``'s, a Preset built in Python say)
    must be the ones its run.json records, else it is refused naming them; those options set (from the record,
    or the flags given over it) are the user's. A setting the record lacks (added to vaal_dist after that round)
    keeps its default."""
    if recorded is None:
        return
    was, now = _flat(recorded), _flat(resolved)
    differ = [f"{key} {was.get(key)!r} there, {now.get(key)!r} here" for key in sorted(was.keys() | now.keys())
              if key not in _OPTION_KEYS and key in was and was[key] != now.get(key)]
    if differ:
        raise InputError(f"the run.json's round cannot be replayed by options: {'; '.join(differ)}")


# "vaal.epochs", "acquisition.embedding" (None where no embedding was given), ...: the keys options set
_OPTION_KEYS = {".".join(path[:n]) for path in RECORDED for n in range(1, len(path) + 1)}


def _flat(config: dict, prefix: str = "") -> dict:
    """``{"vaal.epochs": 2, ...}`` with values as run.json holds them."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = _as_recorded(value)
    return flat


def _as_recorded(value):
    """Strings redacted, tuples as lists."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return [_as_recorded(v) for v in value]
    return value


def option_argv(options: dict, parser: argparse.ArgumentParser) -> list[str]:
    """``{"batch_size": 32, "use_gpu": True, "seeds": [0, 1]}`` as the flags ``parser`` reads; an option
    it does not have, or a value of the wrong shape, is an InputError naming it. None leaves an option unset."""
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    argv = []
    for name, value in options.items():
        action = actions.get(name)
        if action is None:
            raise InputError(f"unknown option {name!r}{_did_you_mean(name, actions)}")
        flag = action.option_strings[-1]
        if value is None or (value is False and action.nargs == 0):
            continue
        if action.nargs == 0:
            if value is not True:
                raise InputError(f"option {name!r}: expected true or false, got {value!r}")
            argv.append(flag)
        elif action.nargs in ("+", "*"):
            values = value if isinstance(value, (list, tuple)) else [value]
            argv += [flag, *(_scalar(name, v) for v in values)]
        else:
            argv.append(f"{flag}={_scalar(name, value)}")
    return argv


def _scalar(name: str, value) -> str:
    if not isinstance(value, (str, int, float)):
        raise InputError(f"option {name!r}: expected one value, got a {type(value).__name__}")
    return str(value)


def _did_you_mean(name: str, actions: dict) -> str:
    close = difflib.get_close_matches(name, actions, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; options: {', '.join(sorted(actions))}"


def load_options(uri: str) -> tuple[dict, dict | None]:
    """The options a config file holds, and the config it records if it is a run record (a run.json, whose
    config becomes the options that recreate it); else a mapping of option names (``batch_size`` or
    ``batch-size``) to values."""
    loaded = _parse(uri, _read(uri))
    _check_shape(uri, loaded)
    if loaded is None:
        raise InputError(f"config {uri!r} is empty")
    if not isinstance(loaded, dict):
        raise InputError(f"config {uri!r} must be a mapping of option names to values, not a "
                         f"{type(loaded).__name__}")
    if isinstance(loaded.get("config"), dict) and "versions" in loaded:
        return options_from_record(loaded["config"]), loaded["config"]
    options = {str(name).replace("-", "_"): value for name, value in loaded.items()}
    if "config" in options:
        raise InputError(f"config {uri!r} names another config file: give its options instead")
    return options, None


def options_from_record(config: dict) -> dict:
    """The options that give a round the config its run.json records (``RoundConfig.to_dict``)."""
    options = {}
    for path, name in RECORDED.items():
        value = config
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        options[name] = value
    return options


def _read(uri: str) -> bytes:
    fs, path = resolve(uri)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read(MAX_BYTES + 1)
    try:
        data = retrying(f"cannot read config {uri!r}", read)
    except VaalDistError:
        raise
    except OSError as e:                # missing, a folder, not permitted: the user's to fix
        raise InputError(f"cannot read config {uri!r}: {e.strerror or _one_line(e)}") from None
    if len(data) > MAX_BYTES:
        raise InputError(f"config {uri!r} is larger than {MAX_BYTES:,} bytes")
    return data


def _parse(uri: str, data: bytes):
    import yaml

    try:
        text = data.decode("utf-8")
        if uri.partition("?")[0].lower().endswith(".json"):
            return json.loads(text)
        # libyaml's loader where PyYAML has it: it refuses deep nesting at once, the pure-Python one takes seconds
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except RecursionError:
        raise InputError(f"config {uri!r} nests deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:     # JSONDecodeError is a ValueError
        raise InputError(f"config {uri!r} is not valid JSON or YAML: {_one_line(e)}") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _check_shape(uri: str, loaded) -> None:
    """At most MAX_VALUES values (a YAML alias counts each time it is used) nested at most MAX_DEPTH deep."""
    stack, seen = [(loaded, 1)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise InputError(f"config {uri!r} holds more than {MAX_VALUES:,} values")
        if depth > MAX_DEPTH:
            raise InputError(f"config {uri!r} nests deeper than {MAX_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack += [(child, depth + 1) for child in children]
