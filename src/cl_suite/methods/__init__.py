from cl_suite.methods.base import ContrastiveMethod, MethodOutput
from cl_suite.methods.moco import MoCo
from cl_suite.methods.simclr import SimCLR

__all__ = ["ContrastiveMethod", "MethodOutput", "MoCo", "SimCLR"]
