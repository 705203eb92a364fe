"""Build configuration for the optional C walk (``dotvllm_plugin._cwalk``); metadata is in pyproject.toml.

The extension is optional: without a C compiler the package installs and uses its numpy walk.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("dotvllm_plugin._cwalk", ["dotvllm_plugin/_cwalk.c"], optional=True,
                             extra_compile_args=["-O2"])])
