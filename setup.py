"""Map methods/, backbones/ and benchmarks/ into the one distribution as migbench.* sub-packages."""

from setuptools import find_packages, setup

ROOTS = {"migbench": "migbench", "migbench.methods": "methods",
         "migbench.backbones": "backbones", "migbench.benchmarks": "benchmarks"}
PACKAGES = [f"{name}.{sub}" if sub else name for name, folder in ROOTS.items()
            for sub in ["", *find_packages(where=folder)]]

setup(
    packages=PACKAGES,
    package_dir=ROOTS,
    package_data={"migbench": ["weights/*.json", "weights/*.safetensors"],
                  "migbench.backbones": ["*/keys/*.json"],
                  "migbench.benchmarks": ["suites/*.toml", "papers/*.toml"]},
    include_package_data=True,
)
