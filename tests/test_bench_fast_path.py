"""The fast-path benchmarks: ``vargen bench --compile``, ``--forward`` and ``--suite gpu`` (run on the CPU)."""
import pytest
import torch

from helpers import tiny_gpt
from vargen import SamplingConfig
from vargen.cli import main
from vargen.eval.bench import format_forward_table, forward_table, run_bench
from vargen.pipeline import Pipeline

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _tiny_pipeline():
    return Pipeline("llamagen", tiny_gpt(vocab=16, grid=4, seed=3, n_layer=1, dim=32).requires_grad_(False), None,
                    SamplingConfig(cfg_scale=2.0), name="tiny")


def test_bench_times_eager_and_compiled_rows_against_eager_ar():
    rows = run_bench(_tiny_pipeline(), ["ar"], [2], compile_modes=(False, True), progress=lambda *_: None)
    assert [r.label for r in rows] == ["ar", "ar +compile"]
    assert rows[0].speedup == pytest.approx(1.0) and rows[1].speedup > 0
    assert rows[0].forward_passes == rows[1].forward_passes == 16


def test_forward_table_has_both_widths():
    rows = forward_table(_tiny_pipeline(), [1, 3])
    assert [(b, w) for b, w, _, _ in rows] == [(1, 1), (1, 16), (3, 1), (3, 16)]
    assert all(e > 0 and c is None for _, _, e, c in rows)
    assert "| 3 | 16 |" in format_forward_table(rows)


def test_gpu_suite_runs_on_the_cpu(capsys, tmp_path):
    out = tmp_path / "suite.md"
    assert main(["bench", "--suite", "gpu", "--device", "cpu", "--shapes", "random-gpt-b", "--num-tokens", "4",
                 "--batch", "1", "--compile", "off", "--threads", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "measured copy" in text and "| random-gpt-b | 111M | 1 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| random-gpt-b"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    eager_ms, floor_ms, fraction = float(cells[3]), float(cells[4]), float(cells[5].rstrip("%"))
    assert 0 < floor_ms and fraction == pytest.approx(100 * floor_ms / eager_ms, abs=1)
    assert all("x (" in c for c in cells[6:9])  # sjd, sjd coupled, sd: speed-up (compression)
    assert out.read_text().count("| random-gpt-b") == 1
    assert main(["bench", "--suite", "gpu", "--shapes", "gpt-huge"]) == 2
