from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm, SamplerOutput
from cl_suite.samplers.debiased import DebiasedSampler
from cl_suite.samplers.hard import HardSampler
from cl_suite.samplers.mixing import MixingSampler
from cl_suite.samplers.ring import RingSampler
from cl_suite.samplers.uniform import UniformSampler

__all__ = ["Contrast", "DebiasedSampler", "HardSampler", "MixingSampler", "NegativeSampler", "NegativeTerm",
           "RingSampler", "SamplerOutput", "UniformSampler"]
