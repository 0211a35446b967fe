from cl_suite.methods.base import ContrastiveMethod, MethodOutput
from cl_suite.methods.simclr import SimCLR

__all__ = ["ContrastiveMethod", "MethodOutput", "SimCLR"]
