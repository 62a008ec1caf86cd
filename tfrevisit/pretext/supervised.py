"""The supervised baseline: softmax over the dataset's labels."""
import gin

from tfrevisit.data import recipes
from tfrevisit.pretext import base


@base.TASKS.register("supervised")
@gin.configurable("supervised")
class SupervisedTask(base.Task):
  """Inception-preprocessed images, cross-entropy on the `logits` head."""

  name = "supervised"

  def __init__(self, num_classes: int, image_size: int = 224):
    self.image_size = image_size
    self.train_preprocess = recipes.supervised(image_size)
    self.eval_preprocess = recipes.eval_image(image_size)
    self.encoder = base.build_encoder(num_classes, image_size)

  def loss(self, batch, training):
    logits = self.encoder(batch["image"], training=training)["logits"]
    return base.softmax_loss_and_accuracy(logits, batch["label"], num_views=1)
