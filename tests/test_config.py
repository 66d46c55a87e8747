"""RunConfig: precedence (defaults < preset < file < overrides), YAML round trip, strict keys, casting."""
from __future__ import annotations

import pytest
import yaml

from aelab.config import (DEFAULT_PRESET, DataConfig, RunConfig, TrainConfig, config_from_dict,
                          list_presets, load_preset, resolve_config)
from aelab.errors import ConfigError


def write_yaml(path, tree) -> str:
    path.write_text(yaml.safe_dump(tree))
    return str(path)


# ---------------------------------------------------------------- precedence


def test_each_layer_overrides_the_one_below(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", {
        "train": {"epochs": 5, "batch_size": 32},
        "model": {"latent_dim": 8},
    })
    cfg = resolve_config("seed-ae", config_file, {"train.epochs": "2"})
    assert cfg.train.epochs == 2                      # override beats file
    assert cfg.train.batch_size == 32                 # file beats preset (64)
    assert cfg.model.latent_dim == 8                  # file beats preset (64)
    assert cfg.model.hidden_dims == (512, 256)        # preset, untouched by the file
    assert cfg.model.name == "ae" and cfg.model.loss == "mse"
    assert cfg.train.seed == TrainConfig().seed       # nobody set it: the default
    assert cfg.data.val_fraction == DataConfig().val_fraction
    assert cfg.preset == "seed-ae"


def test_preset_beats_dataclass_defaults():
    cfg = resolve_config("seed-ae")
    assert cfg.train.batch_size == 64 != TrainConfig().batch_size
    assert cfg.model.latent_dim == 64


def test_default_preset_when_neither_preset_nor_file():
    assert DEFAULT_PRESET == "vae-mnist"
    cfg = resolve_config()
    assert cfg.preset == "vae-mnist"
    assert cfg == config_from_dict({**load_preset("vae-mnist"), "preset": "vae-mnist"})


def test_config_file_alone_does_not_pull_in_the_default_preset(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", {"model": {"name": "ae", "latent_dim": 3}})
    cfg = resolve_config(config_file=config_file)
    assert cfg.preset is None
    assert cfg.model.name == "ae" and cfg.model.latent_dim == 3
    assert cfg.train == TrainConfig()


def test_model_flags_over_a_config_file_without_a_model_section_set_the_default_family(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", {"train": {"epochs": 1}})
    cfg = resolve_config(config_file=config_file, overrides={"model.hidden_dims": "16",
                                                            "model.beta": "2"})
    assert cfg.model.name == "vae" and cfg.model.hidden_dims == (16,) and cfg.model.beta == 2.0
    assert cfg.train.epochs == 1


def test_config_file_with_another_family_replaces_the_preset_model_section(tmp_path):
    # vae-mnist sets likelihood and hidden_dims (400,); none of that may leak into the ae
    config_file = write_yaml(tmp_path / "run.yaml", {"model": {"name": "ae", "latent_dim": 7}})
    cfg = resolve_config("vae-mnist", config_file)
    assert cfg.model.name == "ae"
    assert cfg.model.latent_dim == 7
    assert cfg.model.hidden_dims == type(cfg.model)().hidden_dims   # the ae default, not (400,)
    assert not hasattr(cfg.model, "likelihood")


def test_config_file_with_the_same_family_merges_into_the_preset_model(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", {"model": {"beta": 4.0}})
    cfg = resolve_config("vae-mnist", config_file)
    assert cfg.model.beta == 4.0
    assert cfg.model.hidden_dims == (400,) and cfg.model.likelihood == "bernoulli"


def test_changing_model_name_by_override_drops_options_the_new_family_lacks():
    cfg = resolve_config("vae-mnist", overrides={"model.name": "ae"})
    assert cfg.model.name == "ae"
    assert not hasattr(cfg.model, "likelihood")
    assert cfg.model.latent_dim == 20 and cfg.model.hidden_dims == (400,)   # shared keys stay


def test_changing_model_name_keeps_options_set_alongside_it_whatever_their_order():
    cfg = resolve_config("seed-ae", overrides={"model.likelihood": "gaussian", "model.name": "vae"})
    assert cfg.model.name == "vae" and cfg.model.likelihood == "gaussian"


def test_an_explicit_option_the_new_family_lacks_is_an_error_not_dropped():
    with pytest.raises(ConfigError, match="likelihood"):
        resolve_config("vae-mnist", overrides={"model.likelihood": "gaussian", "model.name": "ae"})


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_builds_and_is_described(name):
    description = list_presets()[name].get("description")
    assert isinstance(description, str) and description.strip()
    cfg = resolve_config(name)
    assert isinstance(cfg, RunConfig) and cfg.preset == name


def test_unknown_preset_suggests_the_nearest():
    with pytest.raises(ConfigError, match="unknown preset 'vae-mnsit'.*did you mean 'vae-mnist'"):
        resolve_config("vae-mnsit")


# ---------------------------------------------------------------- YAML round trip


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_yaml_round_trip(name):
    cfg = resolve_config(name, overrides={"data.data_dir": "/some/dir", "model.hidden_dims": "32,16",
                                          "device": "cuda:1"})
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    again = config_from_dict(yaml.safe_load(text))
    assert again == cfg
    assert again.model.hidden_dims == (32, 16) and again.data.data_dir == "/some/dir"


def test_to_dict_is_plain_yaml():
    text = yaml.safe_dump(resolve_config().to_dict())
    assert "!!python" not in text


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize("tree, bad, nearest", [
    ({"trian": {"epochs": 2}}, "trian", "train"),
    ({"data": {"nmae": "mnist"}}, "data.nmae", "data.name"),
    ({"train": {"epoch": 2}}, "train.epoch", "train.epochs"),
    ({"model": {"name": "vae", "lattent_dim": 4}}, "model.lattent_dim", "model.latent_dim"),
])
def test_unknown_key_names_it_and_suggests_the_nearest(tree, bad, nearest):
    with pytest.raises(ConfigError) as err:
        config_from_dict(tree)
    assert repr(bad) in str(err.value)
    assert f"did you mean {nearest!r}" in str(err.value)


def test_an_option_of_another_family_names_the_families_that_have_it():
    with pytest.raises(ConfigError, match=r"model.noise is an option of ae, not of vae"):
        resolve_config(overrides={"model.name": "vae", "model.noise": "gaussian:0.3"})
    with pytest.raises(ConfigError, match=r"model.k is an option of .*iwae.*, not of ae"):
        config_from_dict({"model": {"name": "ae", "k": 5}})


def test_unknown_key_in_an_override_is_an_error():
    with pytest.raises(ConfigError, match="did you mean 'model.latent_dim'"):
        resolve_config(overrides={"model.lattent_dim": "4"})


def test_unknown_key_in_a_config_file_is_an_error(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", {"train": {"lr": 0.1, "bacth_size": 3}})
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        resolve_config(config_file=config_file)


def test_unknown_model_suggests_the_nearest():
    with pytest.raises(ConfigError, match="unknown model 'vea'.*did you mean 'vae'"):
        resolve_config(overrides={"model.name": "vea"})
    with pytest.raises(ConfigError, match="unknown model 'vea'"):
        config_from_dict({"model": {"name": "vea"}})


def test_model_section_without_a_name_is_an_error():
    with pytest.raises(ConfigError, match="name"):
        config_from_dict({"model": {"latent_dim": 4}})


def test_unreadable_or_non_mapping_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_config(config_file=str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config(config_file=str(tmp_path / "list.yaml"))
    (tmp_path / "bad.yaml").write_text("train: {epochs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(config_file=str(tmp_path / "bad.yaml"))
    (tmp_path / "data.npz").write_bytes(b"PK\x03\x04\x99\xff\xfe binary")
    with pytest.raises(ConfigError, match="not text"):
        resolve_config(config_file=str(tmp_path / "data.npz"))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("overrides, words", [
    ({"train.epochs": "0"}, "epochs"),
    ({"train.batch_size": "0"}, "batch size"),
    ({"train.lr": "0"}, "learning rate"),
    ({"model.latent_dim": "0"}, "latent"),
    ({"model.hidden_dims": "16,0"}, "hidden"),
    ({"model.beta": "-0.5"}, "beta"),
    ({"model.obs_sigma": "-1"}, "obs_sigma"),
    ({"model.likelihood": "poisson"}, "poisson"),
    ({"model.name": "ae", "model.loss": "l1"}, "l1"),
    ({"device": "tpu"}, "tpu"),
    ({"device": "gpu"}, "gpu"),
    ({"data.val_fraction": "1"}, "val_fraction"),
])
def test_out_of_range_values_are_config_errors(overrides, words):
    with pytest.raises(ConfigError, match=words):
        resolve_config(overrides=overrides)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_known_devices_are_accepted(device):
    assert resolve_config(overrides={"device": device}).device == device


# ---------------------------------------------------------------- casting through field types


def test_strings_from_flags_are_cast_to_field_types():
    cfg = resolve_config(overrides={
        "train.lr": "1e-3", "train.epochs": "3", "model.hidden_dims": "512,256",
        "model.beta": "2", "data.binarize": "true", "data.fallback": "false",
    })
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.model.hidden_dims == (512, 256)
    assert cfg.model.beta == 2.0 and isinstance(cfg.model.beta, float)
    assert cfg.data.binarize is True and cfg.data.fallback is False


def test_yaml_1e_minus_3_without_a_dot_is_read_as_float(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("train:\n  lr: 1e-3\n")
    assert isinstance(yaml.safe_load(config_file.read_text())["train"]["lr"], str)  # PyYAML's quirk
    assert resolve_config(config_file=str(config_file)).train.lr == pytest.approx(1e-3)


def test_yaml_list_becomes_tuple_and_single_int_a_one_tuple(tmp_path):
    cfg = config_from_dict({"model": {"name": "vae", "hidden_dims": [64, 32]}})
    assert cfg.model.hidden_dims == (64, 32)
    cfg = config_from_dict({"model": {"name": "vae", "hidden_dims": 64}})
    assert cfg.model.hidden_dims == (64,)


def test_optional_string_from_none_and_null():
    assert resolve_config(overrides={"data.data_dir": None}).data.data_dir is None
    assert resolve_config(overrides={"data.data_dir": "null"}).data.data_dir is None


@pytest.mark.parametrize("path, value", [
    ("train.epochs", "two"), ("train.epochs", "2.5"), ("train.lr", "fast"),
    ("data.binarize", "maybe"), ("model.hidden_dims", "512,big"),
])
def test_uncastable_values_are_config_errors_naming_the_key(path, value):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        resolve_config(overrides={path: value})
