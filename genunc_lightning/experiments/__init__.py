"""The paper's experiments in miniature, on checkpoints shipped with the package: `genunc demo`.

Not the library: the demo (``demo``), the digits-only networks and encoders (``digits``) and the
shipped assets (``assets``) live here, so ``genunc_lightning``'s other modules read as the library.
"""
