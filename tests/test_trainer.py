"""Training in the driver (workers=0, Ray Train local mode): checkpoints kept in storage, local or S3,
resumed from the newest whole one; errors keep their kind."""
import os

import pytest
from pyarrow.fs import FileSelector

from conftest import s3_uri
from vaal_dist.errors import InputError
from vaal_dist.pool.storage import join, resolve
from vaal_dist.train.trainer import TrainingError, fit

pytestmark = pytest.mark.slow          # every test here runs a Ray Train fit


def counting_loop(config: dict) -> None:
    """Reports epochs start+1 .. config['epochs'], each with a checkpoint holding its epoch number."""
    from vaal_dist.train.trainer import latest_checkpoint, report

    start = 0
    resumed = latest_checkpoint()
    if resumed:
        with resumed.as_directory() as d, open(os.path.join(d, "epoch")) as f:
            start = int(f.read())
    for epoch in range(start + 1, config["epochs"] + 1):
        if epoch == config.get("fail_at"):
            raise config["error"]

        def write(d, epoch=epoch):
            with open(os.path.join(d, "epoch"), "w") as f:
                f.write(str(epoch))
        report({"epoch": epoch, "resumed_from": start}, write)


def fit_in_driver(storage: str, **config):
    return fit(counting_loop, config, {}, storage_path=storage, name="count", workers=0, use_gpu=False,
               cpus_per_worker=1, seed=0)


def folders(storage: str) -> list[str]:
    fs, path = resolve(join(storage, "count"))
    return sorted(i.base_name for i in fs.get_file_info(FileSelector(path)))


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs")
    import boto3

    endpoint = request.getfixturevalue("s3_endpoint")
    boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="bucket-1")
    return s3_uri(endpoint, f"runs-{os.path.basename(tmp_path)}")


def test_checkpoints_are_kept_pruned_and_resumed_from_the_newest_whole_one(ray_local, storage):
    fs, path = resolve(join(storage, "count", "checkpoint_2026-11-24_10-00-00.000000"))
    fs.create_dir(path)                        # a Ray Train (worker-mode) checkpoint: not ours to prune
    with fs.open_output_stream(path + "/marker"):
        pass
    with pytest.raises(TrainingError, match="training .*count.* failed: .*injected"):
        fit_in_driver(storage, epochs=5, fail_at=4, error=RuntimeError("injected"))
    assert folders(storage) == ["checkpoint_000002", "checkpoint_000003", "checkpoint_2026-11-24_10-00-00.000000"]
    # A crash while writing epoch 4 left its folder without the completion mark: resumed from 3.
    fs.create_dir(resolve(join(storage, "count", "checkpoint_000004"))[1])
    result = fit_in_driver(storage, epochs=5)
    assert result.metrics == {"epoch": 5, "resumed_from": 3}
    with result.checkpoint.as_directory() as d, open(os.path.join(d, "epoch")) as f:
        assert f.read() == "5"
    assert folders(storage) == ["checkpoint_000004", "checkpoint_000005", "checkpoint_2026-11-24_10-00-00.000000"]


def test_errors_in_the_driver_keep_their_kind(ray_local, tmp_path):
    with pytest.raises(InputError, match="image 'x.png' cannot be decoded"):
        fit_in_driver(str(tmp_path), epochs=2, fail_at=1, error=InputError("image 'x.png' cannot be decoded"))
    with pytest.raises(TrainingError, match="ValueError|boom"):
        fit_in_driver(str(tmp_path / "b"), epochs=2, fail_at=2, error=ValueError("boom"))
    import ray.train

    with pytest.raises(RuntimeError):          # the driver is no Ray Train worker once the run is over
        ray.train.get_context()
