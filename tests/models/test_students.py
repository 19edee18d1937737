"""Distillation students: registries per task, CNN shapes and sizes, save/load round trips."""

import json

import pytest
import torch

from fedfm.errors import CheckpointError, ConfigError
from fedfm.models.students import (
    CNN_STUDENTS,
    DEFAULT_STUDENT,
    CNNStudent,
    build_bert_student,
    build_cnn_student,
    check_student_name,
    load_student,
    save_student,
    student_for,
)


def cnn_params(channels, pool, classes, c_in=3):
    """Parameters of 3x3 convs without bias, BatchNorm weight and bias, a linear head."""
    total = 0
    for c in channels:
        total += c_in * c * 9 + 2 * c
        c_in = c
    return total + c_in * pool * pool * classes + classes


@pytest.mark.parametrize("name", sorted(CNN_STUDENTS))
def test_cnn_student_parameter_count_and_output_shape(name):
    # Prepare
    spec = CNN_STUDENTS[name]
    student = build_cnn_student(name, 7, seed=0)
    # Execute
    out = student.eval()(torch.randn(2, 3, 16, 16))
    # Assert: 16 px is the smallest image the task allows
    assert out.shape == (2, 7)
    expected = cnn_params(spec.channels, spec.pool, 7)
    assert sum(p.numel() for p in student.parameters()) == expected


def test_cnn_student_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_cnn_student("cnn-tiny", 10, seed=5), build_cnn_student("cnn-tiny", 10, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c = build_cnn_student("cnn-tiny", 10, seed=6)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_cnn_save_load_round_trip_gives_identical_logits(tmp_path):
    # Prepare: a student whose BatchNorm statistics moved away from their start
    student = build_cnn_student("cnn-small", 4, seed=0)
    student.train()
    with torch.no_grad():
        for _ in range(3):
            student(torch.randn(8, 3, 20, 20) * 2 + 1)
    x = torch.randn(5, 3, 20, 20)
    expected = student.eval()(x)
    # Execute
    save_student(student, tmp_path / "student")
    loaded = load_student(tmp_path / "student")
    # Assert: same logits bit for bit, safetensors + JSON only
    assert isinstance(loaded, CNNStudent) and not loaded.training
    assert torch.equal(loaded(x), expected)
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == [
        "model.safetensors",
        "student.json",
    ]
    config = json.loads((tmp_path / "student" / "student.json").read_text())
    assert config == {
        "kind": "cnn",
        "channels": [16, 32, 64],
        "pool": 2,
        "num_classes": 4,
        "in_channels": 3,
    }


def test_bert_save_load_round_trip_gives_identical_logits(tmp_path):
    student = build_bert_student("tiny", 100, 3, 16, seed=0).eval()
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones_like(ids)
    save_student(student, tmp_path / "student")
    loaded = load_student(tmp_path / "student")
    with torch.inference_mode():
        expected = student(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, expected)


def test_load_refuses_an_empty_folder_and_mismatched_weights(tmp_path):
    with pytest.raises(CheckpointError, match="holds no student"):
        load_student(tmp_path)
    save_student(build_cnn_student("cnn-tiny", 10, seed=0), tmp_path / "s")
    config = json.loads((tmp_path / "s" / "student.json").read_text())
    config["channels"] = [8, 32]  # the weights were written for (8, 16)
    (tmp_path / "s" / "student.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a readable CNN student"):
        load_student(tmp_path / "s")


def test_default_student_depends_on_the_task():
    assert student_for("text_classification", None) == DEFAULT_STUDENT["text_classification"]
    assert student_for("text_classification", None) == "bert-2layer"
    assert student_for("image_classification", None) == "cnn-small"
    assert student_for("image_classification", "cnn-tiny") == "cnn-tiny"


@pytest.mark.parametrize(
    ("task", "name", "allowed"),
    [
        ("image_classification", "bert-2layer", "cnn-tiny, cnn-small"),
        ("image_classification", "tiny", "cnn-tiny, cnn-small"),
        ("text_classification", "cnn-small", "tiny, bert-2layer"),
    ],
)
def test_a_student_of_another_task_is_refused_naming_the_allowed_ones(task, name, allowed):
    with pytest.raises(ConfigError, match=f"allowed: {allowed}$") as info:
        student_for(task, name)
    assert "\n" not in str(info.value) and task in str(info.value)


def test_unknown_names_and_tasks_are_refused():
    with pytest.raises(ConfigError, match=r"tiny, bert-2layer .*cnn-tiny, cnn-small"):
        check_student_name("huge")
    check_student_name("cnn-small")  # known to some task: accepted here
    with pytest.raises(ConfigError, match="this run's task is 'digits'"):
        student_for("digits", None)
