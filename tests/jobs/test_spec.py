"""Job specs: strict YAML, errors with key paths, defaults, overrides, schema, and the examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.spec import JobSpec, SpecError, json_schema, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _minimal(**extra):
    return {"kind": "pretrain", "model": {"size": "tiny"}, "output": {"output_dir": "/tmp/x"}, **extra}


def test_defaults_are_filled_and_round_trip():
    spec = parse_spec(_minimal())
    assert spec.training.train_batch_size == 32 and spec.training.optimizer == "adam_bert"
    assert spec.data.max_seq_length == 128 and spec.output.save_checkpoints_steps == 1000
    assert JobSpec.model_validate_json(spec.to_json()) == spec


def test_unknown_keys_are_rejected_with_their_path():
    with pytest.raises(SpecError, match=r"training\.learning_rat: unknown key"):
        parse_spec(_minimal(training={"learning_rat": 1e-4}))
    with pytest.raises(SpecError, match=r"output\.output_dir: required"):
        parse_spec({"kind": "pretrain", "model": {"size": "tiny"}, "output": {}})
    with pytest.raises(SpecError, match=r"kind"):
        parse_spec(_minimal(kind="summarize"))


def test_batch_arithmetic_is_explained():
    with pytest.raises(SpecError, match=r"train_batch_size 30 is not divisible by gradient_accumulation_steps 4 "
                                        r"x data-parallel size 1 = 4"):
        parse_spec(_minimal(training={"train_batch_size": 30, "gradient_accumulation_steps": 4}))
    assert parse_spec(_minimal(training={"train_batch_size": 32, "gradient_accumulation_steps": 4})).batch == (8, 4)
    four_workers = {"backend": "ddp", "devices_per_host": 2, "num_hosts": 2}
    spec = parse_spec(_minimal(training={"train_batch_size": 64, "micro_batch_size": 8}, resources=four_workers))
    assert spec.batch == (8, 2)
    with pytest.raises(SpecError, match=r"micro_batch_size 8 x gradient_accumulation_steps 3 x data-parallel size 4 "
                                        r"= 96, not train_batch_size 64"):
        parse_spec(_minimal(training={"train_batch_size": 64, "micro_batch_size": 8, "gradient_accumulation_steps": 3},
                            resources=four_workers))
    with pytest.raises(SpecError, match="backend 'local' runs one process"):
        parse_spec(_minimal(resources={"devices_per_host": 2}))


def test_xla_runs_one_worker_and_says_how_to_use_all_of_a_hosts_chips():
    """Several XLA workers would each train alone (their PJRT runtimes never meet); the error says so
    up front, at submit, instead of after the gang was placed."""
    one_host = parse_spec(_minimal(resources={"accelerator": "tpu", "backend": "xla", "devices_per_host": 4,
                                              "xla": {"spmd": True}}))
    assert one_host.resources.num_workers == 1
    for resources in ({"accelerator": "tpu", "num_hosts": 2, "xla": {"spmd": True}},
                      {"accelerator": "cpu", "devices_per_host": 2, "xla": {"pjrt_device": "CPU"}}):
        with pytest.raises(SpecError, match="backend xla runs on one host for now, but 2 workers.*"
                                            "use num_hosts: 1 and xla.spmd: true"):
            parse_spec(_minimal(resources={"backend": "xla", **resources}))


def test_yaml_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: pretrain\nmodel: {size: tiny\noutput:\n  output_dir: x\n")
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_spec(bad)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "none.yaml")
    wrong = tmp_path / "list.yaml"
    wrong.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping of sections"):
        load_spec(wrong)


def test_overrides_are_type_checked(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("kind: pretrain\nmodel: {size: tiny}\noutput: {output_dir: out}\n")
    spec = load_spec(path, ["training.learning_rate=1e-4", "training.num_train_steps=10"])
    assert spec.training.learning_rate == 1e-4 and spec.training.num_train_steps == 10
    with pytest.raises(SpecError, match=r"training\.num_train_steps"):
        load_spec(path, ["training.num_train_steps=many"])
    with pytest.raises(SpecError, match="section.key=value"):
        load_spec(path, ["nonsense"])


def test_schema_and_examples_validate():
    schema = json_schema()
    assert "training" in schema["properties"] and "kind" in schema["required"]
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert examples
    for path in examples:
        load_spec(path)
