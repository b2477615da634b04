"""nemo-vwn: Virtual Width Networks for Megatron-core and the NeMo framework (Megatron-Bridge).

`recipes/` and `patches/` live at the top of the repository and ship inside the distribution as
`nemo_vwn.recipes` and `nemo_vwn.patches`.

torch and Transformer Engine are never pinned here, so `pip install -e .` inside an NGC/NeMo
container keeps the container's builds. The exact versions of the CPU development stack are pinned
in requirements/cpu-dev.txt (used by scripts/setup_env.sh).
"""

from setuptools import setup

setup(
    name="nemo-vwn",
    version="0.1.0",
    description=("Virtual Width Networks (GHC/DGHC, wide embedding, collapse) "
                 "for Megatron-core and NeMo"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",
    packages=[
        "nemo_vwn.convert",
        "nemo_vwn",
        "nemo_vwn.bridge",
        "nemo_vwn.data",
        "nemo_vwn.hf",
        "nemo_vwn.testing",
        "nemo_vwn.kernels",
        "nemo_vwn.patches",
        "nemo_vwn.recipes",
    ],
    package_dir={
        "nemo_vwn": "nemo_vwn",
        "nemo_vwn.patches": "patches",
        "nemo_vwn.recipes": "recipes",
    },
    install_requires=[
        "torch>=2.9",
        "megatron-core>=0.19,<0.20",
        "packaging",
    ],
    extras_require={
        # Megatron-Bridge cannot be installed with its declared dependencies on a CPU machine
        # (fast-hadamard-transform needs CUDA to build); scripts/setup_env.sh installs it with
        # --no-deps plus requirements/bridge.txt. In a NeMo container it is already present.
        "bridge": ["megatron-bridge>=0.6,<0.7"],
        "test": ["pytest>=8", "psutil"],
        # NeMo-Run launchers (nemo_vwn.bridge.launch, `nemo-vwn launch`). Optional: nemo-run
        # 0.11.1 pins anyio<=4.9 / httpx==0.27.2 / urllib3<2 through leptonai, downgrading the
        # Bridge stack. leptonai 0.47 (what pip picks) lacks leptonai.api.v1, which nemo_run
        # 0.11.1 imports; 0.26.6 was checked to work.
        "run": ["nemo-run>=0.11.1,<0.12", "leptonai>=0.26.6,<0.27"],
    },
    entry_points={"console_scripts": ["nemo-vwn=nemo_vwn.cli:main"]},
)
