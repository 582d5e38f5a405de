import pytest

from ltdistill.config import apply_overrides, load_yaml, valid_keys
from ltdistill.errors import ConfigError
from ltdistill.evaluate import EvalConfig
from ltdistill.methods import make_config


def test_overrides_typed_and_dotted():
    cfg = apply_overrides(make_config("kcenter"), ["data.imbalance=50", "ipc=20", "embed_epochs=2", "device=cpu"])
    assert cfg.data.imbalance == 50.0 and cfg.ipc == 20 and cfg.options.embed_epochs == 2
    assert "options.embed_epochs" in valid_keys(cfg)


def test_unknown_key():
    with pytest.raises(ConfigError, match="unknown config key 'ipcs'"):
        apply_overrides(make_config("random"), ["ipcs=3"])


def test_wrong_type_and_form():
    with pytest.raises(ConfigError, match="expects an integer"):
        apply_overrides(make_config("random"), ["ipc=ten"])
    with pytest.raises(ConfigError, match="expects an integer"):
        apply_overrides(EvalConfig(), ["epochs=1.5"])
    with pytest.raises(ConfigError, match="true/false"):
        apply_overrides(EvalConfig(), ["dsa=maybe"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(EvalConfig(), ["epochs"])


def test_optional_field_accepts_none():
    cfg = apply_overrides(make_config("random"), ["data_root=/x", "data_root=none"])
    assert cfg.data.data_root is None


def test_missing_preset():
    with pytest.raises(ConfigError, match="no config file or preset"):
        load_yaml("no-such-preset")
