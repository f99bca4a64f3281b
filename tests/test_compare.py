import json
import math

from admm_jax import compare
from admm_jax.cli import main
from admm_jax.train import History


def _history():
    h = History()
    for i in range(1, 4):
        h.append("steps", iteration=i, loss=1.0 / i, seconds=0.01)
    h.append("epochs", epoch=1, loss=0.5)
    h.append("evals", iteration=3, time=0.03, accuracy=0.7)
    h.meta["iterations"] = 3
    return h


def test_save_keeps_evals_and_epochs_and_steps_only_on_request(tmp_path):
    rows = [{"optimizer": "adam", "final": math.nan}]
    p = compare.save(rows, {"adam": _history()}, {"task": "x"}, tmp_path / "a.json")
    d = json.loads(p.read_text())
    assert set(d["histories"]["adam"]) >= {"epochs", "evals", "meta"}
    assert "steps" not in d["histories"]["adam"]
    assert d["rows"][0]["final"] is None  # strict JSON
    p = compare.save(rows, {"adam": _history()}, {}, tmp_path / "b.json", steps=True)
    assert json.loads(p.read_text())["histories"]["adam"]["steps"]["iteration"] == [1, 2, 3]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temp left


def test_list_aligns_the_descriptions(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.split("optimizers:\n", 1)[1].splitlines()
    starts = set()
    for line in out:
        name = line.split()[0]
        rest = line[2 + len(name):]
        assert rest.startswith("  "), line  # at least two spaces after the longest name
        starts.add(len(line) - len(rest.lstrip()))
    assert len(out) >= 9 and len(starts) == 1, out
