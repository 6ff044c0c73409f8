"""SSM kernels. Each gives its convolution kernel for any length, continues a chunk from a state, and steps."""

from .diagonal import DiagonalSSM
from .dss import DSSKernel
from .ema import DampedEMA
from .s4d import S4DKernel


def build_ssm_kernel(config, channels: int) -> DiagonalSSM:
    """The SSM a block runs in its narrow width, chosen by `config.ssm_kernel`."""
    if config.ssm_kernel == "dss":
        return DSSKernel(channels, config.ssm_state_size)
    if config.ssm_kernel == "s4d":
        return S4DKernel(channels, config.ssm_state_size, init_method=config.s4d_init,
                         discretization=config.s4d_discretization, dt_min=config.s4d_dt_min,
                         dt_max=config.s4d_dt_max)
    raise ValueError(f"unknown ssm_kernel {config.ssm_kernel!r}")


__all__ = ["DampedEMA", "DiagonalSSM", "DSSKernel", "S4DKernel", "build_ssm_kernel"]
