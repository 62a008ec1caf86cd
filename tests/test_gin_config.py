"""The `backbone.*` bindings and the old names of the backbone's settings;
the tasks and sources, built with their bindings by the command lines only."""
import gin
import pytest

from tfrevisit import data
from tfrevisit import gin_config
from tfrevisit import models
from tfrevisit import pretext
from tfrevisit.data import sources

_NAME = 'backbone.name = "resnet50_v2"\nbackbone.filters_factor = 1\n'


@pytest.mark.parametrize("bindings", [
    "backbone.batch_norm_momentum = 0.9\nbackbone.batch_norm_epsilon = 1e-5\n"
    'backbone.kernel_initializer = "he_normal"',
    'batch_norm.momentum = 0.9\nbatch_norm.epsilon = 1e-5\n'
    'kernel_initializer.name = "he_normal"',
    # Both names of one value agree: as in a config.gin of an older run.
    "batch_norm.epsilon = 1e-5\nbackbone.batch_norm_epsilon = 1e-5\n"
    "batch_norm.momentum = 0.9\n"
    'kernel_initializer.name = "he_normal"'])
def test_new_and_old_names_give_the_same_backbone(bindings):
  gin.parse_config(_NAME + bindings)
  assert gin_config.configured_backbone() == models.Backbone(
      "resnet50_v2", 1, batch_norm_momentum=0.9, batch_norm_epsilon=1e-5,
      kernel_initializer="he_normal")


def test_unbound_settings_are_the_release_defaults():
  gin.parse_config(_NAME)
  backbone = gin_config.configured_backbone()
  assert (backbone.batch_norm_momentum, backbone.batch_norm_epsilon,
          backbone.kernel_initializer) == (0.99, 1e-3, "glorot_uniform")


def test_contradicting_names_are_a_one_line_error():
  gin.parse_config(_NAME + "batch_norm.epsilon = 1e-5\n"
                   "backbone.batch_norm_epsilon = 1e-4")
  with pytest.raises(ValueError) as error:
    gin_config.configured_backbone()
  first_line = str(error.value).splitlines()[0]
  assert first_line == (
      "backbone.batch_norm_epsilon = 0.0001 contradicts the old binding "
      "batch_norm.epsilon = 1e-05; bind only backbone.batch_norm_epsilon.")


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_norm_momentum": 1.0}, "batch_norm_momentum must be in"),
    ({"batch_norm_epsilon": 0.0}, "batch_norm_epsilon must be > 0"),
])
def test_bad_settings_name_the_fix(kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.Backbone("resnet50_v2", 1, **kwargs)


def test_an_unknown_initializer_fails_when_building():
  backbone = models.Backbone("resnet50_v2", 1, kernel_initializer="he_nromal")
  with pytest.raises(ValueError, match="must name a Keras initializer"):
    backbone.build()


def test_tasks_take_their_bindings_only_through_the_command_line_builder():
  gin.parse_config("rotation.image_size = 32")
  backbone = models.Backbone("resnet50_v2", 1)
  configured = gin_config.configured_task("rotation", backbone=backbone,
                                          num_classes=10)
  plain = pretext.get_task("rotation", backbone=backbone, num_classes=10)
  assert type(configured) is type(plain) is pretext.TASKS.get("rotation")
  assert (configured.image_size, plain.image_size) == (32, 224)
  assert configured.options == {"image_size": 32}
  assert "rotation.image_size = 32" in gin.operative_config_str()


def test_sources_take_their_bindings_only_through_the_command_line_builder():
  gin.parse_config('source.name = "random"\nsource.num_examples = 11')
  source = gin_config.configured_source()
  assert isinstance(source, sources.RandomSource)
  assert source.num_examples("train") == 11  # The default is 64.
  with pytest.raises(TypeError):
    data.get_source()  # The library ignores gin: `name` is missing.


def test_an_unknown_task_lists_the_known_ones():
  with pytest.raises(ValueError, match="Unknown task 'colorization'; valid "
                     "choices: exemplar, jigsaw"):
    gin_config.configured_task("colorization", backbone=None, num_classes=1)
