from cl_suite.methods.base import ContrastiveMethod, MethodOutput
from cl_suite.methods.cmc import CMC
from cl_suite.methods.instance_recognition import InstanceRecognition
from cl_suite.methods.kmclr import KMCLR
from cl_suite.methods.moco import MoCo
from cl_suite.methods.nnclr import NNCLR
from cl_suite.methods.rince import RINCE
from cl_suite.methods.simclr import SimCLR
from cl_suite.methods.supcon import SupCon
from cl_suite.methods.supervised import Supervised

__all__ = ["CMC", "KMCLR", "NNCLR", "RINCE", "ContrastiveMethod", "InstanceRecognition", "MethodOutput", "MoCo",
           "SimCLR", "SupCon", "Supervised"]
