"""Open-AutoGLM's local inference engine: probe the device, plan kernels, run models offline."""

__version__ = "0.1.0"
