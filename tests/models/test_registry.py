"""The architecture registry (models/registry.py) is the one table: the model classes, the demo
configs, `linexport train --arch` and the test fixtures all read it."""

import subprocess
import sys

import pytest

from linexport.errors import LinexportError
from linexport.models import ARCH_NAMES, build_model, model_class
from linexport.models.base import PAST_SEQ
from linexport.models.registry import ARCHS


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_entry_builds_its_demo_and_test_models(arch):
    entry = ARCHS[arch]
    cls = model_class(arch)
    assert cls.arch == arch and cls.__name__ == entry.class_name
    for config in (entry.demo_config, entry.test_config):
        model = build_model(arch, config)
        assert isinstance(model, cls)
        assert {k: v for k, v in model.config_dict().items() if k in config} == config
        kv_cache = any(PAST_SEQ in spec.shape for spec in model.state_specs())
        assert kv_cache == entry.kv_cache  # the flag the export and runtime tests read


def test_train_and_cli_read_the_registry():
    from linexport.cli.train import command
    from linexport.models.train import DEMO_CONFIGS

    assert DEMO_CONFIGS == {name: a.demo_config for name, a in ARCHS.items()}
    arch_option = next(p for p in command.params if p.name == "arch")
    assert tuple(arch_option.type.choices) == ARCH_NAMES == ("linear", "flash", "softmax", "reformer")


def test_unknown_arch_names_the_known_ones():
    with pytest.raises(LinexportError, match="unknown architecture 'mamba': expected one of linear, flash"):
        build_model("mamba", {})


def test_importing_the_registry_needs_no_torch():
    """The CLI builds `train --arch` from it at startup; torch loads only when a model is built."""
    code = ("import sys, linexport.models, linexport.cli\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "from linexport.models import CausalLM\n"
            "assert 'torch' in sys.modules and CausalLM.__name__ == 'CausalLM'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
