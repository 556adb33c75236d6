"""Credentials in URIs (userinfo, secret query parameters) appear in none of what a round writes, prints,
logs or raises; a URI without credentials is left as it is."""
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vaal_dist.cli import main
from vaal_dist.errors import InputError
from vaal_dist.pool.io import PoolMeta, read_pool_ids, write_pool
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.redaction import redact

SECRET = "s3cr3t-VALUE"


@pytest.mark.parametrize("text, redacted", [
    (f"s3://AKID:{SECRET}@bucket/pool", "s3://***@bucket/pool"),
    (f"s3://AKID:{SECRET}/with/slashes@bucket/pool?region=x", "s3://***@bucket/pool?region=x"),
    (f"s3://bucket/p?access_key=AKID&secret_key={SECRET}&session_token={SECRET}&region=eu",
     "s3://bucket/p?access_key=***&secret_key=***&session_token=***&region=eu"),
    (f"cannot read pool 'gs://b/p?token={SECRET}': oops; and 'https://h/x?Password={SECRET}#frag'",
     "cannot read pool 'gs://b/p?token=***': oops; and 'https://h/x?Password=***#frag'"),
    ("s3://***@bucket/p?secret_key=***", "s3://***@bucket/p?secret_key=***"),
    # Secrets holding "#", "?", quotes or spaces, bare and quoted as an error message quotes them.
    (f"cannot open 's3://AKID:abc#{SECRET}@bucket/pool'", "cannot open 's3://***@bucket/pool'"),
    (f"s3://AKID:ab?c {SECRET}@bucket/pool", "s3://***@bucket/pool"),
    (f"cannot open \"s3://AKID:it's {SECRET}@bucket/pool\": no", "cannot open \"s3://***@bucket/pool\": no"),
    (repr(f"s3://AKID:a'b\"{SECRET}@bucket/p"), repr("s3://***@bucket/p").replace('"', "'")),
    (f"'s3://a:{SECRET}@b/p' and 's3://c:{SECRET}@d/q'", "'s3://***@b/p' and 's3://***@d/q'"),
    (f"s3://a:{SECRET}@b/p failed, see 's3://c:{SECRET}@d/q'", "s3://***@b/p failed, see 's3://***@d/q'"),
    # Secret query parameters by their common names, values holding quotes, "?" or spaces.
    (f"https://h/x?pass={SECRET}&pw={SECRET}&auth={SECRET}&user=me", "https://h/x?pass=***&pw=***&auth=***&user=me"),
    (f"'gs://b/p?x=1&api_key={SECRET}'", "'gs://b/p?x=1&api_key=***'"),
    (f"\"gs://b/p?password=it's ?{SECRET}\"", "\"gs://b/p?password=***\""),
    (f"https://h/x?X-Amz-Signature={SECRET}&sig={SECRET}", "https://h/x?X-Amz-Signature=***&sig=***"),
])
def test_credentials_in_uris_are_hidden(text, redacted):
    assert redact(text) == redacted and SECRET not in redact(text)


@pytest.mark.parametrize("text", ["/data/pool", "s3://bucket/pool?endpoint_override=127.0.0.1:9000&scheme=http",
                                  "file:///tmp/pool", "image 'me@home.png' cannot be decoded", "plain words",
                                  "manifest 's3://bucket/l.parquet' names ids, e.g. ['img@2x.png']"])
def test_text_without_credentials_is_unchanged(text):
    assert redact(text) == text


def test_an_error_never_quotes_a_secret():
    assert str(InputError(f"pool 's3://k:{SECRET}@b/p' does not exist")) == "pool 's3://***@b/p' does not exist"


def _leaks(out: Path, capsys, caplog) -> list[str]:
    """The places under ``out``, on the console and in the logs that hold the secret."""
    printed = capsys.readouterr()
    places = {"stdout": printed.out, "stderr": printed.err, "logs": caplog.text}
    places.update({str(f): f.read_text() for f in out.rglob("*.json")})
    return [where for where, text in places.items() if SECRET in text]


def test_a_round_with_secrets_in_its_file_uris_writes_and_prints_none(ray_local, tiny_pool, tmp_path, capsys,
                                                                      caplog):
    pool, labeled, ids, _ = tiny_pool
    out = tmp_path / "out"

    def round_with(secret: str) -> int:
        return main(["round", "--pool", f"file://{pool}?token={secret}", "--labeled",
                     f"file://{labeled}?password={secret}", "--out",
                     f"file://{out}?access_key=AKID&secret_key={secret}&session_token={secret}", "--budget", "5",
                     "--strategy", "random", "--score-batch-size", "64", "--actors", "1"])

    caplog.set_level(logging.INFO)
    assert round_with(SECRET) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["pool"]["uri"] == f"file://{pool}?token=***"
    assert record["config"]["out"] == f"file://{out}?access_key=***&secret_key=***&session_token=***"
    assert f"selection: file://{out}/selection.parquet?access_key=***" in capsys.readouterr().out
    assert round_with(SECRET) == 0               # the second run finds the round complete and logs so
    assert round_with("rotated") == 0            # new credentials, same round: not refused as other inputs
    assert "already complete" in caplog.text and _leaks(out, capsys, caplog) == []

    write_manifest(str(tmp_path / "stranger.parquet"), ["not-in-the-pool"])
    assert main(["round", "--pool", f"file://{pool}?token={SECRET}", "--labeled",
                 f"file://{tmp_path}/stranger.parquet?password={SECRET}", "--out",
                 f"file://{tmp_path}/refused?secret_key={SECRET}", "--budget", "5", "--strategy", "random"]) == 2
    err = capsys.readouterr().err
    assert f"labeled manifest 'file://{tmp_path}/stranger.parquet?password=***' names 1 ids" in err
    assert SECRET not in err and not (tmp_path / "refused").exists()


def test_an_unparseable_uri_is_refused_without_its_secret(ray_local, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["round", "--pool", f"s3://AKID:{SECRET}/unencoded@bucket/pool", "--labeled", "l.txt",
                 "--budget", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaal-dist: error: cannot open 's3://***@bucket/pool'") and SECRET not in err
    assert not out.exists()


@pytest.mark.slow
def test_a_round_on_s3_with_credentials_in_its_uris_writes_and_prints_none(ray_local, s3_endpoint, tiny_pool,
                                                                          capsys, caplog):
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}", region_name="us-east-1",
                      aws_access_key_id="AKID", aws_secret_access_key=SECRET)
    s3.create_bucket(Bucket="secret-round")

    def uri(key: str) -> str:
        return f"s3://AKID:{SECRET}@secret-round/{key}?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"

    pool, labeled, ids, labeled_ids = tiny_pool
    write_pool(uri("pool"), [pq.read_table(f) for f in sorted(Path(pool).glob("*.parquet"))],
               PoolMeta("raw", (32, 32, 1)))
    assert read_pool_ids(uri("pool")).to_pylist() == list(ids)
    write_manifest(uri("labeled.parquet"), labeled_ids)

    caplog.set_level(logging.INFO)
    assert main(["round", "--pool", uri("pool"), "--labeled", uri("labeled.parquet"), "--out", uri("round"),
                 "--budget", "5", "--strategy", "random", "--score-batch-size", "64", "--actors", "1"]) == 0
    written = {key: s3.get_object(Bucket="secret-round", Key=f"round/{key}")["Body"].read().decode()
               for key in ("run.json", "inputs.json")}
    assert json.loads(written["run.json"])["pool"]["uri"] == uri("pool").replace(f"AKID:{SECRET}", "***")
    printed = capsys.readouterr()
    assert [where for where, text in {**written, "stdout": printed.out, "stderr": printed.err,
                                      "logs": caplog.text}.items() if SECRET in text] == []
    selection = pq.read_table(pa.BufferReader(
        s3.get_object(Bucket="secret-round", Key="round/selection.parquet")["Body"].read())).column("id").to_pylist()
    assert len(set(selection)) == 5 and set(selection) <= set(ids) - set(labeled_ids)
