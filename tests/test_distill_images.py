"""Distilling a finished tiny image run (tiny-cnn teacher, MNIST 5k) into the cnn-tiny student."""

import json
import math

import numpy as np
import pytest
import torch

from fedfm.config import load_config
from fedfm.data.federated import federate
from fedfm.distill import agreement, distill_run, fresh_student, kd_loss
from fedfm.errors import ConfigError
from fedfm.export import load_run_model
from fedfm.models.students import CNNStudent, load_student
from fedfm.run import run
from tests.helpers import CONFIGS
from tests.tasks.test_image_classification import TINY_VISION

# A teacher that learned something (~0.36 accuracy, predictions spread over the classes):
# the whole model trained, IID clients, all of them each round, 5 local epochs.
TEACHER = [
    *TINY_VISION,
    "adapter.method=full",
    "partition.name=iid",
    "client.lr=0.01",
    "client.epochs=5",
    "strategy.clients_per_round=4",
    "data.max_examples=400",
    "data.test_size=80",
]
EPOCHS = 3


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """(run directory, distill folder, report) of one tiny image run distilled into cnn-tiny."""
    root = tmp_path_factory.mktemp("distill-images")
    run(load_config(CONFIGS / "vision-efficientnet.toml", TEACHER), root / "run")
    report = distill_run(root / "run", root / "out", "cnn-tiny", EPOCHS, lr=1e-2)
    return root / "run", root / "out", report


def test_report_fields_are_consistent(distilled):
    # Prepare
    run_dir, out, report = distilled
    loaded = load_run_model(run_dir)
    student = load_student(out / "student")
    # Assert: counts are the modules', both students did the same work
    assert report.student == "cnn-tiny" and isinstance(student, CNNStudent)
    assert report.teacher_params == sum(p.numel() for p in loaded.module.parameters())
    assert report.student_params == sum(p.numel() for p in student.parameters())
    assert report.student_params < report.teacher_params
    steps_per_epoch = math.ceil(report.transfer_examples / loaded.cfg.client.batch_size)
    assert report.steps == report.alone_steps == EPOCHS * steps_per_epoch
    assert len(report.distill_losses) == len(report.alone_losses) == EPOCHS
    assert report.test_examples == 80
    for acc in (
        report.teacher_accuracy,
        report.student_accuracy,
        report.student_alone_accuracy,
        report.student_teacher_agreement,
    ):
        assert 0.0 <= acc <= 1.0
    assert report.teacher_seconds_per_example > 0 and report.student_seconds_per_example > 0
    assert report.distill_losses[-1] < report.distill_losses[0]
    assert report.alone_losses[-1] < report.alone_losses[0]
    stored = json.loads((out / "distill.json").read_text())
    assert stored["alone_steps"] == report.steps and stored["student"] == "cnn-tiny"
    assert "student cnn-tiny, distilled" in report.table()


def test_saved_student_scores_what_the_report_says(distilled):
    # Prepare
    run_dir, out, report = distilled
    loaded = load_run_model(run_dir)
    examples = loaded.task.load_examples()
    test = federate(examples, loaded.cfg.data, loaded.cfg.partition, loaded.cfg.seed).central_test
    # Execute: the student read back from safetensors + JSON
    student = load_student(out / "student")
    metrics = loaded.task.evaluate(student, examples, test, 64)
    # Assert
    assert metrics["accuracy"] == report.student_accuracy
    assert agreement(loaded.task, student, loaded.module, examples, test) == (
        report.student_teacher_agreement
    )


def test_kd_moves_the_student_toward_the_teacher(distilled):
    # Prepare: the distilled student and a fresh one of the same initialisation
    run_dir, out, _ = distilled
    loaded = load_run_model(run_dir)
    task, teacher = loaded.task, loaded.module
    examples = task.load_examples()
    test = federate(examples, loaded.cfg.data, loaded.cfg.partition, loaded.cfg.seed).central_test
    fresh = fresh_student(task, examples, "cnn-tiny", loaded.cfg.seed).eval()
    student = load_student(out / "student")

    def kl(module: torch.nn.Module) -> float:
        with torch.inference_mode():
            return float(
                np.mean(
                    [
                        kd_loss(task.logits(module, b), task.logits(teacher, b), 2.0)
                        for b in task.batches(examples, test, 64, None)
                    ]
                )
            )

    # Execute
    before = agreement(task, fresh, teacher, examples, test)
    after = agreement(task, student, teacher, examples, test)
    # Assert: on the held-out split, more agreement and a smaller KL to the teacher
    assert after > before
    assert kl(student) < kl(fresh)


def test_a_text_student_on_an_image_run_is_refused_before_loading(distilled, monkeypatch):
    # Prepare: loading the teacher would fail the test
    run_dir, out, _ = distilled

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr("fedfm.export.load_run_model", refuse)
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"allowed: cnn-tiny, cnn-small$"):
        distill_run(run_dir, out / "x", "bert-2layer")


def test_cli_names_the_image_students_in_one_line(distilled):
    from typer.testing import CliRunner

    from fedfm.cli import app

    run_dir, _, _ = distilled
    result = CliRunner().invoke(app, ["distill", str(run_dir), "--student", "tiny"])
    assert result.exit_code == 2
    assert "cnn-tiny, cnn-small" in result.output
