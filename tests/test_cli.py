"""The admm-jax command line (tiny budgets): run as a subprocess like a user would where the
process matters (exit codes, checkpoints across processes), in-process otherwise."""

import json
import os
import re
import subprocess
import sys

import pytest

from admm_jax import cli, optimizers, tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--train-subset", "64", "--test-subset", "32", "--hidden", "8", "--batch-size", "16",
        "--no-progress"]


def run_cli(args, cwd, data_dir=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if data_dir is not None:
        env["ADMM_JAX_DATA"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "admm_jax.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


TASK_ARGS = {
    "row-mnist": [],
    "pixel-mnist": ["--seq-len", "56"],
    "permuted-mnist": ["--seq-len", "56"],
    "imdb": ["--seq-len", "20", "--vocab-size", "500"],
    "copying": ["--seq-len", "3", "--num-train", "64", "--num-test", "32"],
    "adding": ["--seq-len", "10", "--num-train", "64", "--num-test", "32"],
    "text": ["--seq-len", "8"],
}


# pixel- and permuted-MNIST take row-MNIST's path with another layout (the layouts themselves:
# tests/data/test_mnist.py), so their end-to-end runs are in the slow suite only.
SAME_PATH_AS_ROW_MNIST = ("pixel-mnist", "permuted-mnist")


def test_every_task_has_a_smoke_test():
    assert set(TASK_ARGS) == set(tasks.names())


@pytest.mark.parametrize("task", [
    pytest.param(t, marks=pytest.mark.slow) if t in SAME_PATH_AS_ROW_MNIST else t
    for t in TASK_ARGS])
def test_compare_smoke(task, tmp_path, data_dir, capsys, monkeypatch):
    extra = list(TASK_ARGS[task])
    if task == "text":
        f = tmp_path / "corpus.txt"
        f.write_text("the quick brown fox jumps over the lazy dog. " * 40)
        extra += ["--text", str(f)]
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["compare", "--task", task, "--optimizers", "admmirnn,admm_kfac,adam",
                   "--iterations", "3", "--out", "out", "--data-dir", str(data_dir), *TINY,
                   *extra])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| admmirnn |" in out and "| adam |" in out and "| admm_kfac |" in out
    res = json.loads((tmp_path / "out" / f"compare_{task}.json").read_text())
    assert [row["optimizer"] for row in res["rows"]] == ["admmirnn", "admm_kfac", "adam"]
    assert all(row["iterations"] == 3 for row in res["rows"])
    assert (tmp_path / "out" / f"compare_{task}.png").stat().st_size > 10000
    assert f"out/compare_{task}.png" in out


def test_compare_trains_a_flax_cell_model_with_k_fac(tmp_path, data_dir, capsys):
    """--cell/--layers/--embed build admm_jax.StackedRNN (an nnx.Embed, two GRU layers); the
    default optimizer list drops the Elman-only admmirnn and keeps admm_kfac."""
    rc = cli.main(["compare", "--task", "imdb", *TASK_ARGS["imdb"], "--cell", "gru",
                   "--layers", "2", "--embed", "8", "--iterations", "3", "--out", str(tmp_path),
                   "--data-dir", str(data_dir), *TINY])
    out = capsys.readouterr().out
    assert rc == 0 and "gru RNN H=8 x 2" in out
    res = json.loads((tmp_path / "compare_imdb.json").read_text())
    names = [row["optimizer"] for row in res["rows"]]
    assert "admm_kfac" in names and "admmirnn" not in names
    assert all(row["iterations"] == 3 for row in res["rows"])


def test_train_checkpoint_and_resume(tmp_path):
    base = ["train", "--task", "adding", "--seq-len", "6", "--num-train", "64", "--num-test",
            "16", "--hidden", "8", "--batch-size", "16", "--no-progress", "--optimizer", "adam",
            "--checkpoint-dir", "ck", "--out", "out"]
    r = run_cli([*base, "--epochs", "1"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from admm_jax.train import checkpoint_steps

    assert checkpoint_steps(tmp_path / "ck") == [4]
    r = run_cli([*base, "--epochs", "2", "--resume"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at epoch 1" in r.stdout
    h = json.loads((tmp_path / "out" / "train_adding_adam.json").read_text())
    assert h["steps"]["iteration"] == list(range(1, 9))


def test_unknown_names_give_the_listed_error(capsys):
    for args, valid in ((["compare", "--task", "cifar"], tasks.names()),
                        (["compare", "--optimizers", "adam,lbfgs"], optimizers.names()),
                        (["train", "--optimizer", "lbfgs"], optimizers.names()),
                        (["compare", "--lr", "foo=1"], optimizers.names())):
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "unknown" in err and all(v in err for v in valid), err


def test_help_explains_every_flag(capsys):
    for sub in ("compare", "train"):
        with pytest.raises(SystemExit):
            cli.main([sub, "--help"])
        out = capsys.readouterr().out
        parser = cli.build_parser()
        sp = parser._subparsers._group_actions[0].choices[sub]  # noqa: SLF001
        for action in sp._actions:  # noqa: SLF001
            if action.option_strings and action.dest != "help":
                assert action.help, action.option_strings
                assert action.option_strings[0] in out


def test_admm_default_is_not_refused_for_per_sample_state_it_does_not_keep(tmp_path, data_dir):
    """The coupled default keeps no per-sample state, so the memory guard lets full
    pixel-MNIST (60000 samples x T=784) run."""
    task = tasks.load("pixel-mnist", data_dir=data_dir, test_subset=10)
    assert task.state_bytes("admmirnn", 64) == 0
    r = run_cli(["compare", "--task", "pixel-mnist", "--optimizers", "admmirnn", "--iterations",
                 "1", "--no-progress", "--out", "out"], tmp_path, data_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "per-sample state" not in r.stderr and "| admmirnn |" in r.stdout


@pytest.mark.slow
def test_readme_main_command_finishes_in_three_minutes(tmp_path):
    import time

    t = time.perf_counter()
    r = run_cli(["compare", "--no-progress"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.perf_counter() - t < 180
    assert (tmp_path / "admm_jax_results" / "compare_adding.png").is_file()
    assert "| admmirnn |" in r.stdout


def test_p_detach_adds_runs_beside_gradient_optimizers_only(tmp_path):
    r = run_cli(["compare", "--task", "adding", "--optimizers",
                 "admmirnn,admm_preconditioned,adam", "--iterations", "3", "--p-detach", "0.5",
                 "--seq-len", "6", "--num-train", "32", "--num-test", "16", "--hidden", "8",
                 "--batch-size", "16", "--no-progress", "--out", "out"],
                tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| adam+hdetach0.5 |" in r.stdout and "| adam |" in r.stdout
    assert "admmirnn+hdetach" not in r.stdout  # ADMM computes no gradient to detach
    # the batch-taking methods run once each, never with h-detach or gradient clipping
    assert "| admm_preconditioned |" in r.stdout
    assert "admm_preconditioned+hdetach" not in r.stdout


def test_train_divergence_exits_cleanly_and_keeps_the_checkpoint(tmp_path):
    base = ["train", "--task", "adding", "--seq-len", "6", "--num-train", "64", "--num-test",
            "16", "--hidden", "8", "--batch-size", "16", "--no-progress", "--optimizer", "sgd",
            "--checkpoint-dir", "ck", "--out", "out", "--epochs", "3"]
    r = run_cli([*base, "--learning-rate", "1e36"], tmp_path)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    m = re.search(r"admm-jax: error: training diverged at iteration (\d+)", r.stderr)
    assert m, r.stderr[-3000:]
    from admm_jax.train import checkpoint_steps

    steps = checkpoint_steps(tmp_path / "ck")
    assert all(s < int(m.group(1)) for s in steps)
    if steps:
        assert f"last good checkpoint (iteration {steps[-1]}) kept in ck" in r.stderr
    else:
        assert "no checkpoint was written" in r.stderr
    # "stop" ends the run cleanly and records where it diverged
    r = run_cli([*base, "--learning-rate", "1e36", "--on-divergence", "stop", "--checkpoint-dir",
                 "ck2"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    h = json.loads((tmp_path / "out" / "train_adding_sgd.json").read_text())
    assert h["meta"]["diverged_at"] == int(m.group(1))
    assert checkpoint_steps(tmp_path / "ck2")[-1] == int(m.group(1)) - 1


# ----------------------------------------------------------------- issue 19: bad flags

ADDING = ["--task", "adding", "--seq-len", "5", "--num-train", "64", "--num-test", "32",
          "--hidden", "4", "--batch-size", "16", "--no-progress"]

BAD_FLAGS = [
    (["train", "--learning-rate", "inf"], "--learning-rate"),
    (["train", "--learning-rate", "-1"], "--learning-rate"),
    (["train", "--learning-rate", "nan"], "--learning-rate"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--seed", "x"], "--seed"),
    (["train", "--hidden", "0"], "--hidden"),
    (["train", "--batch-size", "abc"], "--batch-size"),
    (["train", "--optimizer", "lbfgs"], "--optimizer"),
    (["train", "--optimizer", "admmirnn", "--learning-rate", "0.1"], "--learning-rate"),
    (["train", "--resume"], "--resume"),
    (["train", "--task", "nope"], "--task"),
    (["train", "--p-detach", "2"], "--p-detach"),
    (["train", "--p-detach", "nan"], "--p-detach"),
    (["train", "--on-divergence", "explode"], "--on-divergence"),
    (["train", "--on-divergence", "increase_rho", "--optimizer", "adam"], "--on-divergence"),
    (["train", "--checkpoint-every", "3"], "--checkpoint-every"),
    (["compare", "--lr", "adam=-1"], "--lr"),
    (["compare", "--lr", "adam=inf"], "--lr"),
    (["compare", "--lr", "adam=abc"], "--lr"),
    (["compare", "--lr", "adam"], "--lr"),
    (["compare", "--lr", "admmirnn=0.1"], "--lr"),
    (["compare", "--lr", "novograd=0.1", "--optimizers", "adam,sgd"], "--lr"),
    (["compare", "--optimizers", "adam,lbfgs"], "--optimizers"),
    (["compare", "--optimizers", ","], "--optimizers"),
    (["compare", "--target", "inf"], "--target"),
    (["compare", "--budget-seconds", "0"], "--budget-seconds"),
    (["compare", "--iterations", "-3"], "--iterations"),
    (["compare", "--layers", "2"], "--layers"),
    (["train", "--embed", "8"], "--embed"),
    (["compare", "--cell", "lstm", "--optimizers", "admmirnn,adam"], "--optimizers"),
    (["train", "--cell", "gru", "--optimizer", "admmirnn"], "--optimizer:"),
    (["compare", "--cell", "rnn"], "--cell"),
    # issue 29: paths checked up front ({file}: an existing file; /proc takes no new folder)
    (["compare", "--out", "{file}"], "--out"),
    (["compare", "--out", "{file}/results"], "--out"),
    (["compare", "--out", "/proc/admm-jax-results"], "--out"),
    (["train", "--out", "{file}"], "--out"),
    (["train", "--out", "/proc/admm-jax-results"], "--out"),
    (["train", "--checkpoint-dir", "{file}"], "--checkpoint-dir"),
    (["train", "--checkpoint-dir", "{file}/ck", "--resume"], "--checkpoint-dir"),
    (["train", "--checkpoint-dir", "/proc/admm-jax-ck"], "--checkpoint-dir"),
]


@pytest.mark.parametrize("argv, flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_exits_2_with_one_line_naming_it(argv, flag, capsys, tmp_path):
    file = tmp_path / "a_file"
    file.write_text("not a folder")
    argv = [a.replace("{file}", str(file)) for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        # the bad flag last: it overrides ADDING's value of the same flag
        cli.main([argv[0], *ADDING, *argv[1:], *out])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and "error" in lines[0], err
    assert "Traceback" not in err


def test_on_divergence_stop_says_so_and_prints_strict_json(capsys, tmp_path):
    rc = cli.main(["train", *ADDING, "--optimizer", "sgd", "--learning-rate", "1e30",
                   "--iterations", "8", "--on-divergence", "stop", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0  # "stop" is the clean end (test_train_divergence_exits_cleanly_...)
    assert "warning: training diverged at iteration" in err and "Traceback" not in err
    line = next(x for x in out.splitlines() if x.startswith("{"))

    def reject(c):
        raise AssertionError(f"non-strict JSON constant {c}")

    summary = json.loads(line, parse_constant=reject)
    assert summary["diverged_at"] >= 1


def test_resumed_iterations_are_the_total(capsys, tmp_path):
    ck = ["--checkpoint-dir", str(tmp_path / "ck"), "--out", str(tmp_path)]
    assert cli.main(["train", *ADDING, "--iterations", "4", *ck]) == 0
    assert cli.main(["train", *ADDING, "--iterations", "10", "--resume", *ck]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [json.loads(x)["iterations"] for x in lines] == [4, 10]


def test_default_optimizer_list_holds_the_winning_admm_family_method():
    """admm_kfac beat tuned Adam and Muon on row-MNIST (docs/admm_preconditioned.md)."""
    names = cli.DEFAULT_OPTIMIZERS.split(",")
    assert "admm_kfac" in names and "adam" in names
    assert all(optimizers.entry(n) for n in names)
