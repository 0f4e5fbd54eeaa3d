import csv

import quickstart


def test_quickstart_reaches_95_percent_and_writes_history(tmp_path):
    summary = quickstart.main(["--quiet", "--output-dir", str(tmp_path)])
    assert summary["test_accuracy"] >= 0.95
    with open(summary["history_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["epochs"]
    assert {"loss", "accuracy", "val_loss"} <= set(rows[0])
