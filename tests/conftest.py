"""Test defaults: quiet TensorFlow, CPU only, one host device unless a test asks for more. The library's
default settings: the CPU tuning of `modular.platform` is tested on its own, in tests/platform."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
