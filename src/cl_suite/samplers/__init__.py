from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm, SamplerOutput
from cl_suite.samplers.uniform import UniformSampler

__all__ = ["Contrast", "NegativeSampler", "NegativeTerm", "SamplerOutput", "UniformSampler"]
