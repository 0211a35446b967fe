from cl_suite.methods.base import ContrastiveMethod, MethodOutput
from cl_suite.methods.cmc import CMC
from cl_suite.methods.instance_recognition import InstanceRecognition
from cl_suite.methods.moco import MoCo
from cl_suite.methods.simclr import SimCLR

__all__ = ["CMC", "ContrastiveMethod", "InstanceRecognition", "MethodOutput", "MoCo", "SimCLR"]
