"""Build pegasus and its C++ extension `pegasus._C` against the torch already installed.

Install with `pip install --no-build-isolation -e .` after `pip install torch==2.13.0`: an isolated
build would fetch its own (CUDA, multi-GB) torch and compile against a different ABI.
"""
import glob

from setuptools import find_packages, setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError as e:  # pragma: no cover - a build-environment problem, explained to the user
    raise SystemExit(
        "pegasus builds its C++ extension against the installed torch, which was not found "
        f"({e}). Install torch first (`pip install torch==2.13.0`), then "
        "`pip install --no-build-isolation -e .`."
    )

_openmp = ["-fopenmp"]
ext = CppExtension(
    name="pegasus._C",
    # Every C++ source under csrc/: a new backend directory (csrc/<key>/) needs no change here.
    sources=sorted(glob.glob("csrc/**/*.cpp", recursive=True)),
    extra_compile_args={"cxx": ["-O3", *_openmp]},
    extra_link_args=_openmp,
    py_limited_api=False,
)

setup(
    name="pegasus",
    version="0.1.0",
    description="White winged horses from a VQ-VAE and a PixelCNN prior, with fast C++/Triton paths",
    packages=find_packages(include=["pegasus", "pegasus.*"]) + ["pegasus.kernels"],
    package_dir={"pegasus.kernels": "kernels"},
    # The pretrained run (pegasus.pretrained(), `pegasus generate`): ~5 MB of float16 safetensors.
    # The classifiers of `pegasus evaluate` (weights/) and of the method (weights/aux/); demo/index.html:
    # the demo's page (`pegasus demo`), script and style inline.
    package_data={"pegasus": ["weights/*.safetensors", "weights/*.json", "weights/aux/*.safetensors", "weights/aux/*.json", "demo/index.html"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=[
        # Pinned: this is the CPU build on the project's machines; an unpinned torch pulls CUDA.
        "torch==2.13.0",
        "numpy",
        "pillow",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # triton: CI runs the Triton kernels on CPU tensors in its interpreter (TRITON_INTERPRET=1).
        # selenium: the demo's browser tests drive Debian's chromium through its chromedriver.
        "test": ["pytest", "triton", "hypothesis", "selenium"],
        # The demo (`pegasus demo`) is served by the standard library: nothing to add. The extra
        # exists so that `pip install -e '.[demo]'` is the one way to ask for it, should it need more.
        "demo": [],
        "triton": ["triton"],
        "bench": ["pytest-benchmark", "faiss-cpu"],
    },
    entry_points={"console_scripts": ["pegasus=pegasus.cli:main"]},
)
