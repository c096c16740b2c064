"""paddlegan_lite: small, readable GANs on PaddlePaddle, from one YAML file to deployment."""

from paddlegan_lite.runtime import configure_process_env

configure_process_env()  # before anything imports paddle: CPU math path and quiet warnings

__version__ = "0.1.0"
