"""tfrevisit: Revisiting Self-Supervised Visual Representation Learning in TF2/Keras 3."""
import setuptools

setuptools.setup(
    name="tfrevisit",
    version="0.1.0",
    description=(
        "Self-supervised pretext tasks (rotation, exemplar, relative patch "
        "location, jigsaw) on ResNet/RevNet/VGG backbones, TF-Hub-style export "
        "and per-layer linear evaluation, after Kolesnikov, Zhai & Beyer (2019)."),
    packages=setuptools.find_packages(include=["tfrevisit", "tfrevisit.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorboard>=2.21,<2.22",  # tf.summary needs it; TF 2.21 no longer pulls it in
        "keras>=3.12,<3.16",
        "tensorflow-probability>=0.25,<0.26",
        "tf-keras>=2.21,<2.22",
        "tensorflow-datasets>=4.9.9,<4.10",
        "gin-config>=0.5,<0.6",
        "numpy>=1.26,<2.5",
        "matplotlib>=3.8,<3.12",  # the study's plots (Agg backend)
        "scikit-learn>=1.5,<1.10",  # evaluate --plots: t-SNE
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "tensorflow-hub>=0.16,<0.17",
        ],
    },
    entry_points={
        "console_scripts": [
            "tfrevisit-train=tfrevisit.train:main",
            "tfrevisit-export=tfrevisit.export:main",
            "tfrevisit-convert-release=tfrevisit.convert_release:main",
            "tfrevisit-evaluate=tfrevisit.evaluate:main",
            "tfrevisit-quickstart=tfrevisit.quickstart:main",
            "tfrevisit-study=tfrevisit.study.__main__:main",
            "tfrevisit-study-report=tfrevisit.study.report:main",
        ],
    },
)
