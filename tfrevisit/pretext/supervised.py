"""The supervised baseline: softmax over the dataset's labels."""

from tfrevisit import models
from tfrevisit.data import recipes
from tfrevisit.pretext import base


@base.register("supervised")
class SupervisedTask(base.Task):
  """Inception-preprocessed images, cross-entropy on the `logits` head."""

  def __init__(self, backbone: models.Backbone, num_classes: int,
               image_size: int = 224):
    super().__init__(backbone, num_classes, image_size=image_size)
    self.image_size = image_size
    self.train_preprocess = recipes.supervised(image_size)
    self.eval_preprocess = recipes.eval_image(image_size)
    self.encoder = self.build_encoder(num_classes)

  def loss(self, batch, training):
    logits = self.encoder(batch["image"], training=training)["logits"]
    return base.softmax_loss_and_accuracy(logits, batch["label"], num_views=1)
