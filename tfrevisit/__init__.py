"""tfrevisit: Revisiting Self-Supervised Visual Representation Learning, TF2/Keras 3."""
import os

# Keras 3 with the TensorFlow backend; tensorflow-probability reads this too.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
