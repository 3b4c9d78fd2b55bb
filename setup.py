"""mmens: learned ensembling of object detectors, as an MMDetection plugin.

``pip install -e . --no-build-isolation`` also compiles ``mmens._ext``, the
C++ CPU kernels of the fusion ops (mmens/ops/csrc), against the installed
torch, the way mmcv and torchvision build their ops. Set
``MMENS_WITH_KERNEL=0`` to skip it (mmens then runs its pure-torch path and
warns once).
"""
import os
import os.path as osp

from setuptools import Extension, find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def get_version() -> str:
    """Read ``__version__`` from mmens/version.py without importing mmens."""
    scope: dict = {}
    with open(osp.join(HERE, 'mmens', 'version.py'), encoding='utf-8') as f:
        exec(compile(f.read(), 'version.py', 'exec'), scope)
    return scope['__version__']


def parse_requirements(fname: str) -> list:
    """Requirement lines of ``requirements/<fname>``, without comments."""
    reqs = []
    with open(osp.join(HERE, 'requirements', fname), encoding='utf-8') as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line and not line.startswith('-'):
                reqs.append(line)
    return reqs


#: the installed package: mmens and its subpackages only (configs, tools with their report
#: helpers, tests and scripts stay in the repository)
PACKAGES = find_packages(where=HERE, include=('mmens', 'mmens.*'))


def torch_requirement() -> list:
    """torch, as a run-time requirement of the wheel: pinned to the release that
    ``mmens._ext`` is compiled against (the C++ ABI of its headers, as torchvision pins
    it); any release without the kernel (``MMENS_WITH_KERNEL=0``)."""
    if os.environ.get('MMENS_WITH_KERNEL', '1') == '0':
        return ['torch']
    import torch
    return [f"torch=={torch.__version__.split('+')[0]}"]


def get_extensions() -> dict:
    """``ext_modules``/``cmdclass`` for the C++ kernels (needs torch at build
    time, hence ``--no-build-isolation``).

    Environment: ``MMENS_PORTABLE=1`` builds without x86-specific code (no
    AVX2 clone, no private SLEEF symbol; e.g. for aarch64);
    ``MMENS_SANITIZE=1`` builds with AddressSanitizer and UBSan (``make
    sanitize``, into a separate build directory)."""
    if os.environ.get('MMENS_WITH_KERNEL', '1') == '0':
        return {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    # -ffp-contract=off: no FMA may change a rounding (outputs follow the
    # numerical contract of mmens/ops/kernel.py); OpenMP runs the groups in
    # parallel and resolves to the libgomp torch already loaded.
    cflags = ['-O3', '-g0', '-fopenmp', '-ffp-contract=off']
    lflags = ['-fopenmp']
    if os.environ.get('MMENS_PORTABLE', '0') == '1':
        # plain C++: no AVX2 clone, no private SLEEF symbol (aarch64 builds)
        cflags.append('-DMMENS_PORTABLE')
    if os.environ.get('MMENS_SANITIZE', '0') == '1':  # `make sanitize`
        san = ['-fsanitize=address,undefined', '-fno-sanitize-recover=all']
        cflags = ['-O1', '-g', '-fno-omit-frame-pointer', '-fopenmp',
                  '-ffp-contract=off'] + san + cflags[4:]
        lflags += san
    ext = CppExtension('mmens._ext', ['mmens/ops/csrc/fusion_cpu.cpp',
                                      'mmens/ops/csrc/pack_lists.cpp'],
                       depends=['mmens/ops/csrc/pool.h'],
                       extra_compile_args=cflags, extra_link_args=lflags)
    # the COCO-results decoder: plain CPython, no torch (loadable before torch is imported)
    io_flags = ['-O3', '-g0'] + [f for f in cflags if f.startswith('-fsanitize')]
    results_io = Extension('mmens._results_io', ['mmens/ops/csrc/results_io.cpp'],
                           extra_compile_args=io_flags,
                           extra_link_args=[f for f in lflags if f.startswith('-fsan')],
                           language='c++')
    return dict(ext_modules=[ext, results_io],
                cmdclass={'build_ext': BuildExtension.with_options(
                    use_ninja=True)})


if __name__ == '__main__':
    setup(
        name='mmens',
        version=get_version(),
        description='Learned ensembling of object detectors (WBF, learned '
        'fusion, e2e-CEL selection) as an MMDetection 3.x plugin',
        long_description=open(osp.join(HERE, 'README.md'), encoding='utf-8').read()
        if osp.exists(osp.join(HERE, 'README.md')) else '',
        long_description_content_type='text/markdown',
        packages=PACKAGES,
        include_package_data=True,
        python_requires='>=3.9',
        license='Apache License 2.0',
        install_requires=parse_requirements('runtime.txt') + torch_requirement(),
        extras_require={
            'mim': parse_requirements('mminstall.txt'),
            'tests': parse_requirements('tests.txt'),
        },
        zip_safe=False,
        **get_extensions())
