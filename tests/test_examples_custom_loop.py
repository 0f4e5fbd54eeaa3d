"""examples/custom_loop.py: every tfkit piece by hand, callbacks through CallbackList."""

import custom_loop


def test_custom_loop_example_trains_with_one_trace():
    out = custom_loop.main(["--epochs", "4"])
    assert out["trace_count"] == 1
    assert out["test_accuracy"] >= 0.9
    first, last = out["history"][0], out["history"][-1]
    assert last["loss"] < first["loss"]
    # The logger's values reach the loop's logs: rate and momentum actually used.
    assert {"learning_rate", "momentum", "val_loss"} <= set(last)
