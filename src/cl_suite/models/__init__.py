from cl_suite.models.backbones import CifarResNet, SmallConvNet, TimmBackbone
from cl_suite.models.heads import mlp

__all__ = ["CifarResNet", "SmallConvNet", "TimmBackbone", "mlp"]
