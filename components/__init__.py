"""The pipeline's library: each stage a plain function with typed inputs and outputs (no Prefect here), grouped
in subpackages by layer, each importing only those below it:

    core -> data -> features -> models -> evaluation -> tracking -> training -> compression -> serving -> registry

The flows (`flows/`) import the library; nothing here imports them.
"""

import os
import platform

# The same numbers on every x86-64 machine. torch's CPU kernels, MKL and oneDNN choose their code by instruction set,
# and AVX-512 rounds differently from AVX2, so a model trained on one CPU would differ in its last bits from the same
# training on another. They are held to AVX2, which every x86-64 CPU of the last decade has. The libraries read these
# when torch loads, so they are set here, before any component imports it; a value the user set wins.
if platform.machine().lower() in ("x86_64", "amd64"):
    for name, value in {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}.items():
        os.environ.setdefault(name, value)
