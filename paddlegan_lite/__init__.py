"""paddlegan_lite: small, readable GANs on PaddlePaddle, from one YAML file to deployment.

Importing the package changes nothing in the process: the tools set it up for CPU speed first
(paddlegan_lite.ops.process.configure_process_env, before Paddle loads).
"""

__version__ = "0.1.0"
