"""mmens: learned ensembling of object detectors, as an MMDetection plugin."""
import os.path as osp

from setuptools import find_packages, setup

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


if __name__ == '__main__':
    setup(
        name='mmens',
        version=get_version(),
        description='Learned ensembling of object detectors (WBF, learned '
        'fusion, e2e-CEL selection) as an MMDetection 3.x plugin',
        long_description=open(osp.join(HERE, 'README.md'), encoding='utf-8').read()
        if osp.exists(osp.join(HERE, 'README.md')) else '',
        long_description_content_type='text/markdown',
        packages=find_packages(exclude=('configs', 'tools', 'tests', 'scripts')),
        include_package_data=True,
        python_requires='>=3.9',
        license='Apache License 2.0',
        install_requires=parse_requirements('runtime.txt'),
        extras_require={
            'mim': parse_requirements('mminstall.txt'),
            'tests': parse_requirements('tests.txt'),
        },
        zip_safe=False)
