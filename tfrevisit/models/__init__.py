"""The paper's backbones: `backbone(name, filters_factor=k, ...)` -> keras.Model.

Importing this package registers resnet50_v1, resnet50_v2, revnet50 and vgg19.
"""
from tfrevisit.models import resnet, revnet, vgg  # pylint: disable=unused-import  # registers
from tfrevisit.models.factory import BACKBONES, backbone
from tfrevisit.models.revnet import ReversibleStage, ReversibleUnit, RevNetRoot

__all__ = ["BACKBONES", "backbone", "ReversibleStage", "ReversibleUnit",
           "RevNetRoot"]
