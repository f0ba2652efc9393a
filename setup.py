from setuptools import find_packages, setup

EXTRAS = {
    "export": ["tf2onnx>=1.16", "onnx", "onnxruntime"],
    "labelme": ["labelme", "pillow>=9.1,<11.1"],
    "coco": ["pycocotools"],
    "serve": ["flask>=2.3"],
}
EXTRAS["dev"] = sorted(
    {d for ds in EXTRAS.values() for d in ds} | {"pytest>=7", "pytest-xdist>=3", "jax[cpu]", "selenium>=4.11"}
)
# NVIDIA GPUs (not part of dev: it pulls several GB of CUDA libraries)
EXTRAS["gpu"] = ["tensorflow[and-cuda]>=2.16"]
# kseg benchmark --peers: the PyTorch peers (not part of dev: CI has no torch; kseg never imports it at run time)
EXTRAS["bench"] = ["torch", "torchvision", "segmentation-models-pytorch"]

setup(
    name="kseg",
    version="0.1.0",
    description="Semantic segmentation for Keras 3: a paper-faithful model zoo, losses, metrics and tools",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["kseg", "kseg.*"]),
    package_data={"kseg.serve": ["templates/*", "static/*"], "kseg.recipes": ["*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.8",
        "numpy",
        "opencv-python",
        "pillow",
        "tifffile",  # multi-band / 16-bit TIFF images (kseg.data.io)
        "Augmentor",
        "tensorboard",
        "pyyaml",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["kseg = kseg.cli:main"]},
    license="MIT",
)
