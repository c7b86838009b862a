"""The one compiled part of the package: the seed network's LSTMs in C (moderation/_lstm_cell.c).

Everything else is declared in pyproject.toml. The extension is optional: on a
machine without a C compiler the install still succeeds and NumPy computes the
step itself (slower on CPUs without AVX-512; ``moderation.numpy_lstm.compiled_cell``
says which). ``-fno-trapping-math`` lets the compiler vectorise the tanh's
clamp; ``target_clones`` in the source picks AVX2 at run time where the CPU
has it.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "moderation._lstm_cell",
            sources=["moderation/_lstm_cell.c"],
            extra_compile_args=["-O3", "-fno-trapping-math"],
            optional=True,
        )
    ]
)
