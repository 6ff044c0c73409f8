"""SGConv, the structured global convolution (Li, Cai, Zhang, Chen, Dey, ICLR 2023, "What Makes Convolutional
Models Great on Long Sequence Modeling?", Sec. 3; the ctlllll/SGConv reference's `GConv`), causal.

A kernel of K taps per channel built from S scales of d taps each: sub-kernel i is upsampled by 2^max(0, i−1)
(linear interpolation) and weighted by a decay m^(S−1−i) (m = 2: each scale half the weight of the one before),
and the pieces are laid end to end, d·2^(S−1) >= K taps, cut to K:

    K = [k_0, k_1, up2(k_2)·…, up4(k_3)·…, ...][:K] / ‖·‖

with S = 1 + ⌈log2(K/d)⌉, the norm over the taps of the whole uncut kernel per channel, fixed at initialisation
(the reference fixes it at its first forward; `kernel_norm` here is a buffer, saved with the weights). Training is
the FFT convolution; a step is one dot product with the window of the last K − 1 inputs (window.py). The kernel
length is an option, by default the training length (None in the signature: train.py sets it, as the kernel's
TRAINING_LENGTH_OPTION); **beyond K taps the kernel is zero**: the model sees the last K tokens, and decoding costs
O(K) a token and K − 1 inputs of state per channel.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from transformers import initialization as init

from .window import WindowConv

INITS = ("randn", "cos")


class SGConvKernel(WindowConv):
    OPTIONS = {"kernel_length": int, "kernel_dim": int, "decay_min": float, "decay_max": float, "init": INITS}
    TRAINING_LENGTH_OPTION = "kernel_length"
    EXAMPLE_OPTIONS = ({"kernel_length": 40, "kernel_dim": 8},
                       {"kernel_length": 33, "kernel_dim": 4, "init": "cos", "decay_min": 1.5, "decay_max": 3.0})
    BOUNDARY_LENGTHS = (32, 33, 34, 39, 40, 41)  # around the examples' scales and kernel lengths
    EXAMPLE_MODEL_SETTINGS = dict(ssm_kernel_options={"kernel_length": 48, "kernel_dim": 8})
    # The kernel spans the benchmark's longest training length, 16k (it is zero beyond its length).
    BENCHMARK_SETTINGS = dict(ssm_kernel_options={"kernel_length": 16384, "kernel_dim": 64})

    def __init__(self, channels: int, state_size: int, kernel_length: int | None = None, kernel_dim: int = 64,
                 decay_min: float = 2.0, decay_max: float = 2.0, init: str = "randn"):
        super().__init__(channels, state_size)
        self.validate_options(dict(kernel_length=kernel_length, kernel_dim=kernel_dim, decay_min=decay_min,
                                   decay_max=decay_max, init=init))
        self.kernel_length, self.kernel_dim, self.init = kernel_length, kernel_dim, init
        self.decay_min, self.decay_max = decay_min, decay_max
        self.scales = 1 + math.ceil(math.log2(kernel_length / kernel_dim))
        self.sub_kernels = nn.ParameterList(nn.Parameter(torch.empty(channels, kernel_dim))
                                            for _ in range(self.scales))
        self.register_buffer("decay", torch.empty(channels, 1))
        self.register_buffer("kernel_norm", torch.ones(channels, 1))
        self.reset_parameters()

    @classmethod
    def check_options(cls, options):
        length, dim = options["kernel_length"], options["kernel_dim"]
        if length is None:
            raise ValueError("kernel_length is required: the taps of the kernel, which train.py sets to data.seq_len")
        if dim < 1 or length < dim:
            raise ValueError(f"kernel_length ({length}; train.py sets it to data.seq_len when it is not given) must be "
                             f"at least kernel_dim ({dim}), and kernel_dim at least 1")
        low, high = options["decay_min"], options["decay_max"]
        if not 0 < low <= high:
            raise ValueError(f"decay_min and decay_max must satisfy 0 < decay_min <= decay_max, got {low} and {high}")

    @torch.no_grad()
    def reset_parameters(self):
        # Initial values are made on the CPU (also under a meta-device context) and copied where the tensors are.
        cpu = torch.device("cpu")
        init.copy_(self.decay, torch.linspace(self.decay_min, self.decay_max, self.channels, device=cpu)[:, None])
        for sub_kernel in self.sub_kernels:
            if self.init == "cos":  # channel h: one cosine of h periods over the d taps, channels shuffled per scale
                waves = torch.cos(torch.linspace(0, 1, self.kernel_dim, device=cpu)[None, :] * 2 * math.pi
                                  * torch.arange(self.channels, device=cpu)[:, None])
                init.copy_(sub_kernel, waves[torch.randperm(self.channels, device=cpu)])
            else:
                init.normal_(sub_kernel)
        init.normal_(self.D, std=1.0)
        # The norm of the whole kernel as initialised, fixed from here on (a model built without weights, to be
        # loaded, has none to measure: its saved norm comes with them, and init.copy_ leaves a loaded norm alone).
        if not self.sub_kernels[0].is_meta:
            init.copy_(self.kernel_norm, self.full_kernel().norm(dim=-1, keepdim=True))

    def full_kernel(self) -> torch.Tensor:
        """The S scales laid end to end, upsampled and decayed, before the norm and the cut: (H, d·2^(S−1))."""
        pieces = []
        for index, sub_kernel in enumerate(self.sub_kernels):
            factor = 2 ** max(0, index - 1)
            piece = sub_kernel.to(self.compute_dtype())
            if factor > 1:
                piece = F.interpolate(piece.unsqueeze(0), scale_factor=factor, mode="linear")[0]
            pieces.append(piece * self.decay.to(piece.dtype) ** (self.scales - 1 - index))
        return torch.cat(pieces, dim=-1)

    def taps(self) -> torch.Tensor:
        return self.full_kernel()[:, :self.kernel_length] / self.kernel_norm.to(self.compute_dtype())

    def reference(self, u):
        """SGConv Sec. 3: sub-kernel i upsampled by 2^max(0, i-1) and weighted by decay^(S-1-i), laid end to end,
        divided by the norm fixed at initialisation, cut to K taps; then the causal convolution, zero past K."""
        from .reference import finite_filter, linear_upsample

        scales = len(self.sub_kernels)
        pieces = [linear_upsample(k, 2 ** max(0, i - 1)) * self.decay ** (scales - 1 - i)
                  for i, k in enumerate(self.sub_kernels)]
        taps = torch.cat(pieces, -1)[:, :self.kernel_length] / self.kernel_norm
        return finite_filter(taps, self.D, u)
