"""Bad input to `ablation train`: one line naming the problem, exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def ablation(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, expected", [
    (["epochs=-1"], "epochs=-1 is out of range (must be >= 1)"),
    (["epochs=0"], "epochs=0 is out of range"),
    (["freeze=9"], "freeze=9 is out of range (must be in [0, 5])"),
    (["colour=red"], "unknown key 'colour'"),
    (["epoch=3"], "did you mean 'epochs'?"),
    (["lr=fast"], "lr must be float, got 'fast'"),
    (["stem=vit"], "stem='vit' is not one of imagenet, cifar"),
    (["dataset=mnist"], "dataset='mnist' is not one of cifar10, fashion-mnist, imagefolder"),
    (["stage=finetune", "init=pretrained"], "init=pretrained needs pretrained_from="),
    (["epochs"], "override 'epochs' is not key=value"),
])
def test_bad_train_input_is_one_line_and_exit_2(tmp_path, args, expected):
    out = tmp_path / "run"
    result = ablation("train", *args, "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert not out.exists()


def in_process(capfd, *args) -> tuple[int, str]:
    """`ablation ARGS` in this process (torch already loaded: seconds saved), its exit code and what reached
    the stderr file descriptor (C++ and library output included), for errors raised after torch loads."""
    from ablation.cli import main

    capfd.readouterr()
    code = main(list(args))
    return code, capfd.readouterr().err


def test_missing_dataset_offline_is_one_line(tmp_path, capfd):
    out = tmp_path / "run"
    code, err = in_process(capfd, "train", "dataset=imagefolder", f"data_dir={tmp_path / 'nowhere'}", "--out", str(out))
    assert code == 2 and err.count("\n") == 1
    assert "data_dir= must hold train" in err and not out.exists()


def test_cuda_request_without_gpu_is_one_line(tmp_path, capfd):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = in_process(capfd, "train", "device=cuda", "dataset=fashion-mnist", "--out", str(tmp_path / "run"))
    assert code == 2 and "no GPU is visible" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, expected", [
    (["train", "epochs=-1"], "epochs=-1 is out of range"),  # the Core issue's commands, as written: no --out
    (["train", "freeze=9"], "freeze=9 is out of range"),
    (["train", "colour=red"], "unknown key 'colour'"),
    (["train", "stage=rotation"], "train needs --out DIR"),
    (["sweep"], "required: spec (see ablation sweep --help)"),
    (["trian"], "invalid choice: 'trian'"),
])
def test_bad_command_line_is_one_line_and_exit_2(tmp_path, args, expected):
    result = ablation(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, overrides", [
    (["sweep", "s.yaml", "--storage", "/s", "seeds=[0]", "resources.gpu=0.5"], ["seeds=[0]", "resources.gpu=0.5"]),
    (["sweep", "s.yaml", "seeds=[0]", "--storage", "/s", "name=x"], ["seeds=[0]", "name=x"]),
    (["train", "epochs=1", "--out", "o", "seed=3"], ["epochs=1", "seed=3"]),
])
def test_overrides_may_follow_options(argv, overrides):
    from ablation.cli import parse

    assert parse(argv).overrides == overrides


def test_a_stray_word_after_options_is_still_an_error(tmp_path):
    result = ablation("sweep", "s.yaml", "--storage", str(tmp_path), "seeds", cwd=tmp_path)
    assert result.returncode == 2 and "unrecognized arguments: seeds" in result.stderr


@pytest.mark.parametrize("tracker, expected", [
    ("aim", "--callback aim needs the aim package: pip install aim"),  # mlflow and wandb are test extras
    ("tensorboardx", "--callback tensorboardx: unknown tracker; choose from mlflow, wandb, aim"),
])
def test_a_tracker_that_cannot_be_used_is_one_line_before_anything_runs(tmp_path, tracker, expected):
    import importlib.util

    if importlib.util.find_spec(tracker):
        pytest.skip(f"{tracker} is installed here")
    spec = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    result = ablation("sweep", str(spec), "--storage", str(tmp_path / "st"), "--callback", tracker, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == f"ablation: error: {expected}\n", result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_address_where_no_ray_head_answers_is_one_line_at_once(tmp_path):
    import time

    spec = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    started = time.monotonic()
    result = ablation("sweep", str(spec), "--storage", str(tmp_path / "st"), "--address", "127.0.0.1:1", cwd=tmp_path)
    assert time.monotonic() - started < 30
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--address 127.0.0.1:1: no Ray head answers there" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_empty_address_is_one_line(tmp_path):
    """`--address ''` (an unset variable in a job script) was passed to ray.init: its traceback."""
    spec = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    result = ablation("sweep", str(spec), "--storage", str(tmp_path / "st"), "--address", "", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--address : not HOST:PORT (e.g. 10.0.0.5:6379) or auto" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b""], ids=["text", "empty"])
def test_pretrained_from_a_file_that_is_no_checkpoint_is_one_line(tmp_path, capfd, content):
    """torch's unpickler printed a 34-line traceback for it."""
    bad = tmp_path / "weights.pt"
    bad.write_bytes(content)
    out = tmp_path / "run"
    code, err = in_process(capfd, "train", "stage=finetune", "init=pretrained", f"pretrained_from={bad}",
                           "dataset=fashion-mnist", "train_subset=64", "test_subset=64", "--out", str(out))
    assert code == 2 and err.count("\n") == 1, err
    assert f"pretrained_from={bad}: not a checkpoint torch can read as weights" in err and not out.exists()


def test_pretrained_from_a_state_dict_of_something_else_is_one_line(tmp_path, capfd):
    import torch

    bad = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3), "note": "x"}, bad)
    code, err = in_process(capfd, "train", "stage=finetune", "init=pretrained", f"pretrained_from={bad}",
                           "dataset=fashion-mnist", "train_subset=64", "test_subset=64", "--out", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and "holds no state dict of weights" in err, err


@pytest.mark.slow  # starts the test run's Ray
def test_address_auto_never_joins_another_drivers_private_ray(tmp_path, ray_session):
    """This test session's own Ray (ray_session: what `ablation sweep` without --address starts too) is a
    private Ray of another driver on this host. Ray's own `auto` joined any Ray it found running, and the
    second sweep's trials ran inside the first's; now `auto` is only the cluster `ray start` recorded (none
    here: an empty RAY_TMPDIR) or RAY_ADDRESS."""
    import os

    from conftest import write_spec

    spec = write_spec(tmp_path / "a.yaml", name="a", seeds=[0], init=["random"], freeze=[0],
                      finetune={"epochs": 1}, pretrain={"epochs": 1})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(tmp_path / "raytmp")}
    (tmp_path / "raytmp").mkdir()
    result = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage",
                             str(tmp_path / "st"), "--address", "auto"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert "--address auto: this machine belongs to no Ray cluster" in result.stderr
    assert not (tmp_path / "st").exists()


def test_an_address_where_something_other_than_ray_listens_is_one_line_at_once(tmp_path):
    """A port that accepts connections (a proxy, another service) passed the socket check, and ray.init then
    logged ~20 lines of its C++ client's retries for ~25 s before its own error."""
    import socket
    import threading
    import time

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer():  # an HTTP/1.1 server's answer to gRPC's HTTP/2 preface
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    spec = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    started = time.monotonic()
    try:
        result = ablation("sweep", str(spec), "--storage", str(tmp_path / "st"), "--address", f"127.0.0.1:{port}",
                          cwd=tmp_path)
    finally:
        server.close()
    assert time.monotonic() - started < 15
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"--address 127.0.0.1:{port}: something listens there, but no Ray head (" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_study_spec_given_to_train_says_to_sweep_it(tmp_path):
    spec = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    result = ablation("train", "--config", str(spec), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"{spec} is a study spec (" in result.stderr and f"run it with `ablation sweep {spec}`" in result.stderr
    assert list(tmp_path.iterdir()) == []
