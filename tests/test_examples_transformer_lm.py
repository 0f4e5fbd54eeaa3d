"""examples/transformer_lm.py: warmup+cosine, Recompute and accumulation on a Transformer."""

import pytest
import transformer_lm


def test_tiny_run_learns(tmp_path):
    out = transformer_lm.main(
        ["--updates", "12", "--warmup", "3", "--blocks", "1", "--dim", "32", "--heads", "2",
         "--chars", "20000", "--output-dir", str(tmp_path)]
    )
    # Uniform guessing over 96 characters is log2(96) = 6.6 bits/char.
    assert out["bpc_after"] < out["bpc_before"] - 1.0
    assert out["sample"].startswith("Return the ")
    assert (tmp_path / "history.csv").exists()


@pytest.mark.parametrize("argv", [["--warmup", "200"], ["--dim", "30", "--heads", "4"]])
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        transformer_lm.main(argv)
    assert exc.value.code == 2
