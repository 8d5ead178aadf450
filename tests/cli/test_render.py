"""Tables on an 80-column terminal and in a pipe: every value whole, never an ellipsis."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from flows.cli import print_table

RUN_IDS = ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"]


def terminal(width: int = 80) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)


def pipe() -> Console:
    return Console(file=io.StringIO(), width=80, force_terminal=False)


def printed(out: Console) -> list[str]:
    return out.file.getvalue().splitlines()


def assert_readable(lines: list[str], width: int | None, values: list[str]) -> None:
    text = "\n".join(lines)
    assert "…" not in text and "..." not in text
    if width is not None:
        assert max(len(line) for line in lines) <= width, text
    for value in values:
        assert value in text, (value, text)


WIDE_ROWS = [
    {"run_id": RUN_IDS[0], "optimizer_schedule_with_a_long_name": "cosine_with_warm_restarts",
     "validation_mean_absolute_error": 3.14159265, "learning_rate": 0.001, "epochs": 30,
     "dataset_description": "housing_scale, standardized on the training rows"},
    {"run_id": RUN_IDS[1], "optimizer_schedule_with_a_long_name": "constant",
     "validation_mean_absolute_error": 2.71828182, "learning_rate": 0.01, "epochs": 5,
     "dataset_description": None},
]  # fmt: skip
WIDE_COLUMNS = list(WIDE_ROWS[0])
WIDE_VALUES = ["cosine_with_warm_restarts", "constant", "3.142", "2.718", "0.001", "0.01", "30",
               "housing_scale, standardized on the training rows"]  # fmt: skip


def test_a_table_too_wide_for_80_columns_becomes_one_block_per_row():
    out = terminal(80)
    assert print_table("runs", WIDE_ROWS, WIDE_COLUMNS, "same in all: x=1", out=out) == "vertical"
    lines = printed(out)
    assert_readable(lines, 80, [*WIDE_VALUES, *RUN_IDS, "same in all: x=1"])  # ids whole
    assert lines[0] == "runs"
    # values aligned after the longest key (35 + ':'; under half the width)
    assert f"run_id:{' ' * 30}{RUN_IDS[0]}" in lines
    assert f"validation_mean_absolute_error:{' ' * 6}3.142" in lines
    assert "optimizer_schedule_with_a_long_name: cosine_with_warm_restarts" in lines
    # a value too long for its aligned line follows its key unaligned
    assert "dataset_description: housing_scale, standardized on the training rows" in lines
    # the second row has no dataset_description: no empty line for it
    second = lines[lines.index(next(x for x in lines if RUN_IDS[1] in x)) :]
    assert not any(x.startswith("dataset_description") for x in second)


def test_the_same_table_on_a_wide_terminal_is_a_table_with_short_run_ids():
    out = terminal(200)
    assert print_table("runs", WIDE_ROWS, WIDE_COLUMNS, out=out) == "table"
    lines = printed(out)
    assert_readable(lines, 200, [*WIDE_VALUES, RUN_IDS[0][:8], RUN_IDS[1][:8]])
    assert RUN_IDS[0] not in "\n".join(lines)
    header = lines[1].split()
    assert header == WIDE_COLUMNS
    # numbers right-aligned under their header, text left-aligned
    assert lines[3].index("3.142") + 5 == lines[1].index("validation_mean_absolute_error") + 30
    assert lines[3].index("cosine") == lines[1].index("optimizer_schedule")


def test_headers_break_at_underscores_when_that_makes_the_table_fit():
    rows = [{"run_id": RUN_IDS[0], "final_train_accuracy": 0.91, "best_validation_accuracy": 0.88,
             "test_accuracy": 0.875, "number_of_filters": 32, "hidden_dimension": 100,
             "weight_initialisation_scale": 0.001}]  # fmt: skip
    whole = sum(len(c) for c in rows[0]) + 2 * (len(rows[0]) - 1)
    assert whole > 80  # the headers alone would not fit
    out = terminal(80)
    assert print_table("convnet", rows, list(rows[0]), out=out) == "table"
    lines = printed(out)
    assert_readable(lines, 80, ["0.91", "0.88", "0.875", "32", "100", "0.001", RUN_IDS[0][:8]])
    assert lines[1].split()[:2] == ["run_id", "final_"]
    assert lines[2].split()[:2] == ["train_", "validation_"]
    assert lines[3].split()[:2] == ["accuracy", "accuracy"]
    # each header line at most its column's widest value or the header's longest part
    assert max(len(part) for line in lines[1:4] for part in line.split()) == len("initialisation_")


def test_an_optional_column_is_left_out_with_a_line_naming_it():
    rows = [{"trial": n, "val_mae": 3.0 + n, "alpha": 10.0**-n, "state": "COMPLETE",
             "run_id": RUN_IDS[n % 2], "worker": "a-rather-long-host-name.example.org:123456"}
            for n in range(3)]  # fmt: skip
    out = terminal(80)
    assert print_table("sweep", rows, list(rows[0]), optional=["worker"], out=out) == "table"
    lines = printed(out)
    assert_readable(lines, 80, ["COMPLETE", "0.01", "5", RUN_IDS[0][:8]])
    assert "worker" not in lines[1] and lines[-1] == "not shown at 80 columns: worker"
    # on a terminal wide enough, it is shown
    wide = terminal(140)
    print_table("sweep", rows, list(rows[0]), optional=["worker"], out=wide)
    assert "a-rather-long-host-name.example.org:123456" in wide.file.getvalue()


@pytest.mark.parametrize("columns", [WIDE_COLUMNS, ["run_id", "epochs"]])
def test_in_a_pipe_every_value_is_whole_on_aligned_lines(columns):
    from flows.cli import fmt

    out = pipe()
    assert print_table("runs", WIDE_ROWS, columns, "same in all: x=1", out=out) == "plain"
    lines = printed(out)
    values = [fmt(r[c]) for r in WIDE_ROWS for c in columns if r[c] is not None]
    assert set(values) >= set(RUN_IDS)
    assert_readable(lines, None, values)
    assert lines[0] == "runs" and lines[-1] == "same in all: x=1" and len(lines) == 5
    assert lines[1].split() == columns
    for row, line in zip(WIDE_ROWS, lines[2:4], strict=True):
        assert line.startswith(row["run_id"] + "  ")
        # text starts under its header's start, a number ends under its header's end
        for c in columns[1:]:
            value = fmt(row[c]) or "-"
            if isinstance(row[c], str) or row[c] is None:
                assert line[lines[1].index(c) :].startswith(value)
            else:
                assert line[: lines[1].index(c) + len(c)].endswith(value)


def test_floats_have_four_significant_digits_and_none_is_empty():
    from flows.cli import fmt

    assert [fmt(3.14159265), fmt(1234567.0), fmt(1e-10 / 3), fmt(None), fmt(7)] == [
        "3.142", "1.235e+06", "3.333e-11", "", "7"
    ]  # fmt: skip
    assert fmt("two\nlines") == "two lines"


@pytest.fixture
def terminal_80(monkeypatch):
    """The CLI's own console on an 80-column terminal (rich reads both at print time)."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "80")


def test_a_housing_sweep_leaderboard_fits_80_columns(terminal_80, capsys):
    from flows.cli import show_sweep_result
    from tasks.sweep import leaderboard

    worker = "a-build-machine-with-a-long-name.example.org:4242424"
    trials = [
        {"number": n, "state": "COMPLETE", "params": {"model": "ridge", "alpha": alpha},
         "metrics": {"val_mae": mae, "train_mae": mae - 0.1, "test_mae": mae + 0.1,
                     "test_r2": 0.7},
         "worker": worker, "run_id": RUN_IDS[n % 2]}
        for n, (alpha, mae) in enumerate([(1e-4, 3.4567), (10.0, 3.1234), (100.0, 3.9876)])
    ]  # fmt: skip
    error = "ValueError: SGD diverged: the loss is nan after epoch 3 of 30"
    trials.append({"number": 3, "state": "FAIL", "params": {"model": "sgd", "alpha": 1.0},
                   "error": error})  # fmt: skip
    board = leaderboard(trials, "val_mae", higher_is_better=False)
    show_sweep_result({
        "leaderboard": board, "metric": "val_mae", "best": {**trials[1], "number": 1},
        "sweep_wall_s": 12.345, "run_id": "c" * 32,
    })  # fmt: skip
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "…" not in out and max(len(line) for line in lines) <= 80, out
    assert lines[1].split() == ["trial", "val_mae", "model", "alpha", "state", "train_mae",
                                "test_mae", "test_r2", "run_id"]  # fmt: skip
    assert [line.split()[:2] for line in lines[3:7]] == [
        ["1", "3.123"], ["0", "3.457"], ["2", "3.988"], ["3", "sgd"]
    ]  # fmt: skip
    assert lines[4].split()[-1] == RUN_IDS[0][:8]
    assert "not shown at 80 columns: worker" in lines
    # the error of the failed trial whole on a line below, the best trial's and sweep's ids whole
    assert f"trial 3 (FAIL): {error}" in lines
    assert f"(child run {RUN_IDS[1]})" in out and lines[-1] == f"MLflow run id: {'c' * 32}"


def test_the_housing_result_fits_80_columns(terminal_80, capsys):
    from flows.cli import show_housing_result

    models = [("ols", {}), ("ridge", {"alpha": 0.0001}), ("ridge", {"alpha": 10.0}),
              ("sgd", {"lr": 0.01, "epochs": 30, "batch_size": 32})]  # fmt: skip
    results = [
        {"model": kind, **hp, "train_mae": 3.1 + i, "val_mae": 3.2 + i / 10, "test_mae": 3.3,
         "test_r2": 0.6789, "run_id": RUN_IDS[i % 2]}
        for i, (kind, hp) in enumerate(models)
    ]  # fmt: skip
    show_housing_result({"results": results, "best": results[0], "run_id": "d" * 32})
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "…" not in out and max(len(line) for line in lines) <= 80, out
    assert lines[1].split() == ["model", "val_mae", "test_mae", "test_r2", "train_mae"]
    assert lines[6].split() == ["sgd(lr=0.01,", "epochs=30,", "batch_size=32)", "3.5", "3.3",
                                "0.6789", "6.1"]  # fmt: skip
    assert lines[-2] == f"best by val_mae: ols (child run {RUN_IDS[0]})"
    assert lines[-1] == f"MLflow run id: {'d' * 32}"
