"""BertConfig: Google and Hugging Face files, named sizes, validation."""

from __future__ import annotations

import json

import pytest

from models.config import NAMED_SIZES, BertConfig, ConfigError


def test_google_config_gelu_means_tanh(shared):
    config = BertConfig.from_google_json(shared / "fixtures/tf_checkpoint_small/bert_config.json")
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (99, 32, 2)
    assert config.intermediate_size == 37 and config.initializer_range == 0.5
    assert config.hidden_act == "gelu_tanh"
    assert config.to_google_dict()["hidden_act"] == "gelu"


def test_hf_config_gelu_means_erf(minilm_dir):
    config = BertConfig.from_hf_json(minilm_dir / "config.json")
    assert config.hidden_act == "gelu"
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 384, 12)
    assert BertConfig.from_json(minilm_dir / "config.json") == config


def test_round_trips_through_both_formats(tmp_path):
    config = BertConfig.named("mini", vocab_size=1000)
    config.to_google_json(tmp_path / "bert_config.json")
    config.to_hf_json(tmp_path / "config.json")
    assert BertConfig.from_google_json(tmp_path / "bert_config.json") == config
    assert BertConfig.from_hf_json(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text())["hidden_act"] == "gelu_new"


def test_hf_config_is_read_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    BertConfig.named("tiny", hidden_act="gelu").to_hf_json(tmp_path / "config.json")
    theirs = transformers.BertConfig.from_pretrained(tmp_path)
    assert (theirs.num_hidden_layers, theirs.hidden_size, theirs.num_attention_heads) == (2, 128, 2)
    assert theirs.intermediate_size == 512 and theirs.hidden_act == "gelu"


def test_the_24_compact_sizes_and_aliases():
    assert len(NAMED_SIZES) == 25
    for layers in (2, 4, 6, 8, 10, 12):
        for hidden in (128, 256, 512, 768):
            config = BertConfig.named(f"uncased_L-{layers}_H-{hidden}_A-{hidden // 64}")
            assert (config.num_hidden_layers, config.hidden_size) == (layers, hidden)
            assert config.num_attention_heads == hidden // 64 and config.intermediate_size == 4 * hidden
    expected = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512),
                "base": (12, 768), "large": (24, 1024), "bert-base": (12, 768)}
    for name, (layers, hidden) in expected.items():
        config = BertConfig.named(name)
        assert (config.num_hidden_layers, config.hidden_size) == (layers, hidden), name
    assert BertConfig.named("large").num_attention_heads == 16


@pytest.mark.parametrize("kwargs, message", [
    ({"hidden_size": 100, "num_attention_heads": 12}, "not divisible"),
    ({"hidden_act": "gelu_fancy"}, "hidden_act"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"vocab_size": -5}, "vocab_size"),
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
])
def test_validation_names_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BertConfig(**kwargs)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        BertConfig.from_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        BertConfig.from_json(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text(json.dumps({"hidden_size": 30, "num_attention_heads": 4}))
    with pytest.raises(ConfigError, match="odd.json.*not divisible"):
        BertConfig.from_google_json(tmp_path / "odd.json")
    with pytest.raises(ConfigError, match="unknown model size"):
        BertConfig.named("gigantic")
