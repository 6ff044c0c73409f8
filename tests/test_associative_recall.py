"""scripts/associative_recall.py, the capability check of the H3 paper's associative recall: its data are what the
task says, and a tiny run of every block kind trains and reports (the real run is minutes a model: docs)."""

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "associative_recall.py"
spec = importlib.util.spec_from_file_location("associative_recall", SCRIPT)
associative_recall = importlib.util.module_from_spec(spec)
spec.loader.exec_module(associative_recall)


def test_each_answer_is_the_value_paired_with_the_query_in_its_own_sequence():
    data = associative_recall.make_data(200, vocab=10, length=20, generator=torch.Generator().manual_seed(0))
    assert data.shape == (200, 23)
    keys, values = data[:, :20:2], data[:, 1:20:2]
    assert ((0 <= keys) & (keys < 4)).all() and ((4 <= values) & (values < 8)).all() and (data[:, 20] == 8).all()
    for row in data:
        query, answer = row[21].item(), row[22].item()
        paired = {v.item() for k, v in zip(row[:20:2], row[1:20:2]) if k.item() == query}
        assert paired == {answer}  # the query occurred, always with this value
    assert len({tuple(row[1:20:2].tolist()) for row in data}) > 150  # the maps differ between sequences


def test_a_tiny_run_of_every_block_kind_reports_its_accuracy(tmp_path, capsys):
    out = tmp_path / "recall.json"
    code = associative_recall.main(["--max-steps", "3", "--train-size", "64", "--test-size", "32", "--width", "16",
                                    "--out", str(out)])
    assert code == 0
    results = json.loads(out.read_text())["results"]
    assert [r["model"] for r in results] == list(associative_recall.MODELS)
    assert all(r["steps"] == 3 and 0 <= r["test_accuracy"] <= 1 for r in results)
    assert "| h3 | h3 + h3 |" in capsys.readouterr().out
