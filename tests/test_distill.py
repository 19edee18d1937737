"""Distilling a finished tiny run into a student: KD works, the baseline trains, counts hold."""

import json

import pytest
import torch

from fedfm.distill import distill_run, kd_loss
from fedfm.errors import ConfigError
from fedfm.models.students import BERT_STUDENTS, build_bert_student
from fedfm.run import run


def test_kd_loss_is_zero_on_the_teacher_and_positive_elsewhere():
    teacher = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    assert float(kd_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(kd_loss(torch.zeros(2, 2), teacher, 2.0)) > 0


def bert_params(vocab, hidden, ffn, positions, classes):
    """Parameters of a 2-layer BERT without pooler, plus a linear head."""
    embeddings = (vocab + positions + 2) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 2 * 2 * hidden + 2 * hidden * ffn + ffn + hidden
    return embeddings + 2 * layer + hidden * classes + classes


@pytest.mark.parametrize("name", sorted(BERT_STUDENTS))
def test_student_parameter_count(name):
    hidden, _, ffn = BERT_STUDENTS[name]
    student = build_bert_student(name, 1000, 3, 32, seed=0)
    assert sum(p.numel() for p in student.parameters()) == bert_params(1000, hidden, ffn, 128, 3)


def test_distill_run_reports_and_moves_student_to_teacher(tiny_cfg, tmp_path):
    # Prepare: a finished tiny run (the teacher)
    run(tiny_cfg, tmp_path / "run")
    # Execute
    report = distill_run(tmp_path / "run", tmp_path / "out", "tiny", epochs=3, temperature=2.0)
    # Assert: KD loss falls, the baseline trains, the student agrees with the teacher
    assert report.distill_losses[-1] < report.distill_losses[0]
    assert report.alone_losses[-1] < report.alone_losses[0]
    assert report.student_teacher_agreement > 0.5  # two classes: chance is 1/2 at most
    assert report.student_params < report.teacher_params
    assert report.student_params == bert_params(30522, 32, 64, 128, 2)
    assert report.teacher_seconds_per_example > 0 and report.student_seconds_per_example > 0
    stored = json.loads((tmp_path / "out" / "distill.json").read_text())
    assert stored["student_accuracy"] == report.student_accuracy
    assert (tmp_path / "out" / "student" / "config.json").exists()
    assert "student tiny, distilled" in report.table()
    # the same command gives the same numbers
    again = distill_run(tmp_path / "run", tmp_path / "out2", "tiny", epochs=3, temperature=2.0)
    assert again.distill_losses == report.distill_losses
    assert again.student_accuracy == report.student_accuracy


def test_unknown_student_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="tiny, bert-2layer"):
        distill_run(tmp_path, tmp_path / "out", "huge")


def test_cli_distill_reports_a_bad_student_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from fedfm.cli import app

    result = CliRunner().invoke(app, ["distill", str(tmp_path), "--student", "huge"])
    assert result.exit_code == 2
    assert "--student" in result.output and "bert-2layer" in result.output
