"""Test defaults: quiet TensorFlow, CPU only, one host device unless a test asks for more; host memory
reused across steps as in experiments.run (modular.host_memory), set before anything starts JAX."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from modular import host_memory  # noqa: E402  (after the environment above)

host_memory.reuse_freed_memory()
