"""The Accelerate launcher configs (configs/accelerate/): what can be checked without several GPUs. Each parses as
`accelerate launch` reads it; DDP and both ZeRO stages train on 2 CPU ranks elsewhere (test_training.py); FSDP,
which needs GPUs, builds its plugin from the config as a launch would and wraps exactly the model's blocks."""

import os
from pathlib import Path
from unittest import mock

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

from ssmlm import SSMLMForCausalLM

from invariants import tiny_config

CONFIGS = Path(__file__).resolve().parents[1] / "ssmlm" / "configs" / "accelerate"
KINDS = {"single-process": DistributedType.NO, "ddp": DistributedType.MULTI_GPU,
         "deepspeed-zero2": DistributedType.DEEPSPEED, "deepspeed-zero3": DistributedType.DEEPSPEED,
         "fsdp": DistributedType.FSDP}


def test_every_launcher_config_parses_as_accelerate_reads_it():
    assert {path.stem for path in CONFIGS.glob("*.yaml")} == set(KINDS)
    for name, kind in KINDS.items():
        assert load_config_from_file(str(CONFIGS / f"{name}.yaml")).distributed_type == kind


@pytest.mark.parametrize("block_types", [["gss", "gss"], ["gss", "attention"], ["mega", "h3", "ssm"]])
def test_fsdp_wraps_each_block_of_the_model_and_nothing_else(block_types):
    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    # `accelerate launch` hands the config to the processes as FSDP_* variables, which the plugin reads.
    launch_env = {key.upper(): str(value).lower() if isinstance(value, bool) else str(value)
                  for key, value in fsdp.items()} | {"ACCELERATE_USE_FSDP": "true"}
    with mock.patch.dict(os.environ, launch_env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    model = SSMLMForCausalLM(tiny_config(block_types=block_types, num_hidden_layers=len(block_types),
                                         block_options={"attention": {"num_heads": 2}}))
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    assert [module for module in model.modules() if policy(module)] == list(model.model.layers)
