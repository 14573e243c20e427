"""Run a script with DeepSpeed's CPU shared-memory all-reduce kernel switched off.

DeepSpeed compiles that C++ kernel on first use (about a minute on 2 cores), then falls back to
torch's collectives (gloo here) when it is absent. Tests take the fallback to stay fast.
Usage: python without_shm_kernel.py SCRIPT [ARGS...] (also under torchrun).
"""
import runpy
import sys

import deepspeed.comm.torch

deepspeed.comm.torch.build_shm_op = lambda: None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
