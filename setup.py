"""paddlegan_lite: small, readable GANs on PaddlePaddle.

Paddle itself is an extra on purpose: `paddlepaddle` (CPU) and `paddlepaddle-gpu` both provide the
`paddle` module, so requiring one would overwrite the other. CPU users install `.[cpu]`; GPU users
install paddlepaddle-gpu first (see the README) and then this package without the extra.
"""

from setuptools import find_packages, setup

setup(
    name="paddlegan_lite",
    version="0.1.0",
    description="Small, readable GANs on PaddlePaddle: one YAML file from training to deployment",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["paddlegan_lite", "paddlegan_lite.*"]),
    # the 5,000 bundled MNIST digits (IDX files): the offline default dataset; the service's page
    package_data={"paddlegan_lite": ["data/*.gz", "data/README.md", "web/*.html"]},
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.22",
        "pillow>=9",
        "pyyaml>=6",
        "visualdl>=2.5",
        "safetensors>=0.4",  # pickle-free weights (Paddle itself depends on it too)
    ],
    extras_require={
        "cpu": ["paddlepaddle>=3.0"],
        # scipy: reference values in tests/unit/test_metrics.py; selenium:
        # tests/e2e/test_serve_browser.py (Service(log_output=...) is 4.13+)
        "dev": ["pytest>=7", "ruff>=0.5", "hypothesis>=6", "scipy>=1.9", "selenium>=4.13"],
        "onnx": ["paddle2onnx>=2.0", "onnxruntime>=1.16"],  # optional: tools/export_model.py --onnx
        # tools/serve.py; httpx is what FastAPI's TestClient (tests/e2e/test_serve_tool.py) runs on
        "serve": ["fastapi>=0.100", "uvicorn>=0.23", "httpx>=0.24"],
    },
)
