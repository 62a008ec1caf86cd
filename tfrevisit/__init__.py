"""tfrevisit: Revisiting Self-Supervised Visual Representation Learning, TF2/Keras 3."""
import os

# Keras 3 with the TensorFlow backend; tensorflow-probability reads this too.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Hide TensorFlow's C++ INFO lines; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
