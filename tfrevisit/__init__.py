"""tfrevisit: Revisiting Self-Supervised Visual Representation Learning, TF2/Keras 3."""
import os

# Keras 3 with the TensorFlow backend; tensorflow-probability reads this too.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Hide TensorFlow's C++ INFO lines; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# oneDNN kernels, which TensorFlow turns on by itself only on CPUs with AVX-512:
# on a 2-core AVX2 CPU they trained ResNet50 v2 (k=1, 32x32) 1.7x faster
# (docs/benchmarks.md). Set TF_ENABLE_ONEDNN_OPTS=0 to turn them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
