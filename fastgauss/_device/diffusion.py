"""Per-element diffusion formulas shared by the CPU and CUDA kernels."""


def q_sample_element(signal_scale, x0, noise_scale, noise):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for one element."""
    return signal_scale * x0 + noise_scale * noise
