"""mlsd_jax: machine-learning system designs as fast, end-to-end JAX systems."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.10.2,<0.12",
    "jaxlib>=0.10.2,<0.12",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "chex>=0.1.92,<0.2",
    "hydra-core>=1.3.8,<1.4",
    "wandb>=0.31,<0.32",
    "tensorflow-datasets>=4.9.10,<4.10",
    "importlib-resources>=6",  # tensorflow-datasets' builders import it (through etils.epath)
    "numpy>=1.26,<3",
    "pyarrow>=15",
    "tqdm>=4.66",
    "rdata>=1.0",  # reads R data files (Spambase from kernlab's spam.rda)
    "tokenizers>=0.20",  # fits the subword (WordPiece) vocabulary of text features
]
# FarmHash in C for hashed features (a pure-Python port of the same hash is used without it).
FAST = ["pyfarmhash>=0.4"]
EXPORT = ["tensorflow-cpu>=2.21,<2.22"]
# The model server: REST (TF Serving + KServe V2) on Starlette/uvicorn, gRPC, Prometheus metrics.
# httptools: uvicorn's C HTTP parser (without it uvicorn falls back to the pure-Python h11).
SERVE = EXPORT + ["starlette>=0.40", "uvicorn>=0.30", "httptools>=0.6", "grpcio>=1.60",
                  "protobuf>=5", "prometheus-client>=0.20", "httpx>=0.27"]
# Batch scoring on Apache Spark (mapInPandas); needs Java 17.
SPARK = ["pyspark>=3.5", "pandas>=2"]
# Video files: PyAV (FFmpeg) writes clips and reads frames back; imageio reads them too (tests).
VIDEO = ["imageio>=2.30", "av>=12"]
TEST = [
    "pytest>=8",
    "nbmake>=1.5",
    "ipykernel>=6",
    "matplotlib>=3.8",
    "portpicker>=1.6",
    "scikit-learn>=1.5",
    "hypothesis>=6.100",
    "imbalanced-learn>=0.12",
] + VIDEO
BENCH = ["lightgbm>=4.5,<5", "matplotlib>=3.8", "scikit-learn>=1.5", "imbalanced-learn>=0.12"]

setup(
    name="mlsd_jax",
    version="0.1.0",
    description="JAX framework for end-to-end machine-learning system designs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mlsd_jax", "mlsd_jax.*", "experiments"]) + ["mlsd_jax._configs"],
    package_dir={"mlsd_jax._configs": "configs"},
    package_data={"mlsd_jax._configs": ["*.yaml", "*/*.yaml", "*/*/*.yaml"],
                  "mlsd_jax.serving.tfs_protos": ["NOTICE"]},
    install_requires=CORE,
    extras_require={
        "export": EXPORT,
        "test": TEST + SERVE + SPARK + BENCH,
        "bench": BENCH,
        "fast": FAST,
        "serve": SERVE,
        "spark": SPARK,
        "video": VIDEO,
        "all": SERVE + SPARK + TEST + BENCH + FAST,
    },
)
