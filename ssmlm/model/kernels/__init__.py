"""SSM kernels, one file each, all keeping the contract of base.py: `y, state = kernel(u, state)`.

KERNELS is the one registry: the config's allowed `ssm_kernel` names and the tests derive from it, and a block
builds its kernel with `build_ssm`. A new kernel is one file plus its entry here: what the file provides,
the tests included, is in docs/kernels.md ("Adding a kernel or a block").
"""

from .base import SSMKernel
from .diagonal import DiagonalSSM
from .dlr import DLRKernel
from .dss import DSSKernel
from .dss_softmax import DSSSoftmaxKernel
from .ema import DampedEMA
from .liquid_s4 import LiquidS4Kernel
from .s4 import S4Kernel
from .s4d import S4DKernel
from .s5 import S5Kernel
from .sgconv import SGConvKernel
from .shift import ShiftSSM

KERNELS: dict[str, type[SSMKernel]] = {
    "dss": DSSKernel,  # DSS-exp as GSS uses it: modes shared by all channels, Δ = 1
    "s4d": S4DKernel,
    "ema": DampedEMA,  # Mega's multi-dimensional damped EMA (real modes)
    "dss-softmax": DSSSoftmaxKernel,  # normalised at a fixed length
    "dlr": DLRKernel,
    "s4": S4Kernel,  # DPLR with HiPPO (LegS, LegT, FouT)
    "s5": S5Kernel,  # one MIMO diagonal SSM over all channels
    "liquid-s4": LiquidS4Kernel,  # S4D plus causal input-correlation terms
    "sgconv": SGConvKernel,  # a multi-scale finite kernel: no recurrence, a window state
    "shift": ShiftSSM,  # H3's shift SSM: a short learned causal filter
}


def check_options(kind: str, options: dict, field: str = "ssm_kernel_options", state_size: int | None = None) -> None:
    """Raise ValueError for an unknown kernel, options it does not take (naming `field.key`), or a state size they
    cannot serve."""
    if kind not in KERNELS:
        raise ValueError(f"unknown SSM kernel {kind!r}; expected one of {', '.join(KERNELS)}")
    KERNELS[kind].validate_options(options, field)
    if state_size is not None:
        try:
            KERNELS[kind].check_state_size(state_size, KERNELS[kind].with_defaults(options))
        except ValueError as error:
            raise ValueError(f"{field}.{error}") from None


def build_ssm(kind: str, channels: int, state_size: int, options: dict | None = None) -> SSMKernel:
    """The kernel `kind` over `channels` channels with `state_size` states, configured by `options`."""
    options = dict(options or {})
    check_options(kind, options)
    return KERNELS[kind](channels, state_size, **options)


__all__ = ["KERNELS", "DampedEMA", "DiagonalSSM", "DLRKernel", "DSSKernel", "DSSSoftmaxKernel", "LiquidS4Kernel",
           "S4DKernel", "S4Kernel", "S5Kernel", "SGConvKernel", "ShiftSSM", "SSMKernel", "build_ssm", "check_options"]
