"""The paper's backbones: `Backbone(name, filters_factor=k, ...).build(...)`
(or `backbone(name, filters_factor=k, ...)`) -> keras.Model.

Importing this package registers resnet50_v1, resnet50_v2, revnet50 and vgg19.
"""
from tfrevisit.models import resnet, revnet, vgg  # pylint: disable=unused-import  # registers
from tfrevisit.models.factory import (BACKBONES, LAYOUT, Backbone, backbone,
                                      check_layout)
from tfrevisit.models.revnet import ReversibleStage, ReversibleUnit, RevNetRoot

__all__ = ["BACKBONES", "LAYOUT", "Backbone", "backbone", "check_layout",
           "ReversibleStage", "ReversibleUnit", "RevNetRoot"]
