"""Data-parallel training under torchrun, on CPU processes (gloo): two processes train like one
with twice the batch (same weights within float tolerance, the same optimizer steps, half the
steps of one process with the same --batch-size), rank 0 alone writes, and a rank that dies or
hangs does not leave the other waiting forever."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmdemo.datasets.csv_table import read_csv
from mmdemo.training import distributed
from mmdemo.training.loop import train
from mmdemo.training.settings import TrainSettings

from ..conftest import tiny_config, write_colour_scenes

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
# a tiny model on the default recipe's path: both encoders frozen, their outputs cached
TINY = [
    "--image-encoder", "small_cnn", "--image-size", "32", "--text-encoder", "gru", "--fusion-dim", "32",
    "--fusion-heads", "2", "--fusion-layers", "1", "--region-layers", "1", "--dropout", "0",
    "--epochs", "3", "--lr", "3e-3", "--modality-dropout", "0.2", "--patience", "10",
    "--freeze", "image_encoder", "text_encoder",
]  # fmt: skip


def _train_cli(prefix: list[str], csv_path, out: Path, batch_size: int, *extra: str) -> list[dict]:
    command = [*prefix, "-m", "mmdemo", "train", "--csv", str(csv_path), "--out", str(out), *extra]
    command += ["--batch-size", str(batch_size), *TINY]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_two_processes_train_like_one_with_twice_the_batch(tmp_path):
    val_csv = Path(write_colour_scenes(tmp_path / "data"))  # 96 rows, 24 images
    # training rows: those 96 and one more, so the last global batch of 16 has a single row and
    # the second process no share of it
    csv_path = val_csv.with_name("train.csv")
    csv_path.write_text(val_csv.read_text() + "img/0.png,which colour is the square?,cat\n")
    val = ("--val-csv", str(val_csv))
    (one,) = _train_cli([sys.executable], csv_path, tmp_path / "one", 16, *val)
    two = _train_cli([*TORCHRUN, "--nproc_per_node", "2"], csv_path, tmp_path / "two", 8, *val)
    assert len(two) == 1, two  # one summary, from rank 0
    (two,) = two

    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-3, rtol=1e-3, msg=key)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)
    assert two["val_accuracy"] == one["val_accuracy"] and two["train_accuracy"] == one["train_accuracy"]

    record = json.loads((tmp_path / "two" / "config.json").read_text())["training"]
    assert record["world_size"] == 2 and record["global_batch_size"] == 16 and record["settings"]["batch_size"] == 8
    assert record["command"].startswith("torchrun --nproc_per_node 2 -m mmdemo train")
    assert record["optimizer_steps"] == one["optimizer_steps"] == two["optimizer_steps"] == 3 * 7  # ceil(97/16)
    assert [h["optimizer_steps"] for h in record["history"]] == [7, 7, 7] and record["optimizer_steps_per_epoch"] == 7
    # the validation logits rank 0 calibrates with (gathered from both processes); the fitted
    # temperature itself is ill-conditioned on this untrained model (17.5 vs 17.8 was seen)
    assert record["calibration"]["ece_before"] == pytest.approx(one["val_ece_before"], rel=1e-3)
    # rank 0 alone wrote: the checkpoint, its scope statistics, no resume state left behind
    assert (tmp_path / "two" / "scope.safetensors").is_file() and "scope" in json.loads(
        (tmp_path / "two" / "config.json").read_text()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "one", "two"]
    assert record["data"].startswith("train.csv: 97 rows")

    # one process with the same --batch-size: twice the optimizer steps
    dataset = read_csv(csv_path)
    settings = TrainSettings(epochs=3, batch_size=8, freeze=["image_encoder", "text_encoder"], seed=0)
    single = train(dataset, read_csv(val_csv), settings, config=tiny_config(labels=dataset.labels))
    steps = sum(h["optimizer_steps"] for h in single.history)
    # per epoch ceil(97 / 8) = 13 on one process, ceil(97 / (2 * 8)) = 7 on two
    assert steps == 3 * 13 and record["optimizer_steps"] == 3 * math.ceil(13 / 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_process_group_of_one_trains_exactly_like_no_group(tmp_path, monkeypatch):
    """``torchrun --nproc_per_node 1``: DDP with one process (the path the CUDA test runs with
    NCCL) gives the weights of a plain run."""
    dataset = read_csv(write_colour_scenes(tmp_path))
    # one torch thread in both (the thread count changes the order of float sums; an app launched
    # earlier in this process may have set it to 1)
    settings = TrainSettings(
        epochs=2, batch_size=16, freeze=["image_encoder"], modality_dropout=0.2, seed=0, cpu_threads=1
    )
    config = tiny_config(labels=dataset.labels)
    plain = train(dataset, None, settings, config=config)
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        grouped = train(dataset, None, settings, config=config)
        assert torch.distributed.get_backend() == "gloo" and grouped.world_size == 1
    finally:
        distributed.teardown()
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(grouped.model.state_dict()[key], value, atol=1e-6, rtol=1e-5, msg=key)
    assert [h["optimizer_steps"] for h in grouped.history] == [h["optimizer_steps"] for h in plain.history]


def test_resuming_with_another_number_of_processes_is_refused(tmp_path):
    dataset = read_csv(write_colour_scenes(tmp_path))
    settings = TrainSettings(epochs=2, batch_size=32, seed=0)
    states = []
    train(dataset, None, settings, config=tiny_config(labels=dataset.labels), on_epoch=states.append)
    states[0].world_size = 2
    with pytest.raises(ValueError, match="trained by 2 process"):
        train(dataset, None, settings, config=tiny_config(labels=dataset.labels), resume=states[0])


_STUCK_PEER = textwrap.dedent(
    """
    import sys, time, torch
    from mmdemo.training import distributed
    ctx, _ = distributed.setup(torch.device("cpu"))
    if ctx.rank == 1:
        time.sleep(120)  # stuck (a long computation, a debugger): never joins the next step
    start = time.monotonic()
    try:
        ctx.agree(lambda: False)
    except Exception as e:
        print(f"gave up after {time.monotonic() - start:.1f} s: {type(e).__name__}", flush=True)
        distributed.teardown()  # as the CLI does after a failure: the exit code is then ours
        sys.exit(3)
    """
)


def test_a_stuck_process_makes_the_other_give_up_not_hang(tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    env["MMDEMO_DIST_TIMEOUT_S"] = "5"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _STUCK_PEER],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        out, err = ranks[0].communicate(timeout=90)
        assert ranks[0].returncode == 3, err[-2000:]
        assert "gave up after" in out
    finally:
        ranks[1].kill()
        ranks[1].wait()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _rank_of(pid: int) -> str | None:
    try:
        environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e[5:].decode() for e in environ if e.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the ranks through /proc")
def test_when_one_rank_dies_torchrun_stops_the_run(tmp_path):
    csv_path = write_colour_scenes(tmp_path / "data")
    command = [*TORCHRUN, "--nproc_per_node", "2", "-m", "mmdemo", "train", "--csv", csv_path]
    command += ["--out", str(tmp_path / "m"), "--batch-size", "2", *TINY, "--epochs", "200", "--patience", "200"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "m" / "config.json").exists():  # the first epoch is done: training runs
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-2000:]
            time.sleep(0.5)
        rank_1 = next(pid for pid in _children(launcher.pid) if _rank_of(pid) == "1")
        os.kill(rank_1, signal.SIGKILL)  # as the out-of-memory killer would
        start = time.monotonic()
        _, err = launcher.communicate(timeout=120)
        assert launcher.returncode != 0
        assert time.monotonic() - start < 60, "the surviving rank was not stopped promptly"
        assert "FAILED" in err or "failed" in err.lower()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
