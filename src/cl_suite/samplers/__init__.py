from cl_suite.samplers.base import NegativeSampler, SamplerOutput
from cl_suite.samplers.uniform import UniformSampler

__all__ = ["NegativeSampler", "SamplerOutput", "UniformSampler"]
