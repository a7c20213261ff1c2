"""Ships mmgc's configs inside the package, as OpenMMLab packages do.

Everything else is in pyproject.toml. MMEngine resolves a base config
``'mmgc::<path>'`` under ``<installed mmgc>/.mim/configs`` (and reads
``.mim/model-index.yml``), so the build puts the repository's ``configs/`` and
``model-index.yml`` there (see :mod:`mmgc.mim`). The repository's ``configs/``
stays the only copy in the source tree:

* a wheel (``pip wheel .``, ``pip install .``, an sdist's build) gets copies,
  written into the build folder, never into the source tree;
* an editable install (``pip install -e .``) gets symlinks
  ``mmgc/.mim/configs -> ../../configs`` and ``mmgc/.mim/model-index.yml``,
  as MMDetection's ``setup.py`` makes in develop mode (``mmgc/.mim`` is
  ignored by git).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: What goes into ``mmgc/.mim``: repository path -> name under ``.mim``.
MIM_FILES = {'configs': 'configs', 'model-index.yml': 'model-index.yml'}


def _ignore(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n == '__pycache__' or n.endswith('.pyc')}


class BuildPyWithConfigs(build_py):
    """``build_py`` that also writes ``mmgc/.mim`` (copies, or symlinks when editable)."""

    def run(self) -> None:
        super().run()
        if getattr(self, 'editable_mode', False):
            self._link_into(ROOT / 'mmgc' / '.mim')
        else:
            self._copy_into(Path(self.build_lib) / 'mmgc' / '.mim')

    @staticmethod
    def _sources() -> dict[Path, str]:
        sources = {ROOT / src: dst for src, dst in MIM_FILES.items()}
        missing = [str(path) for path in sources if not path.exists()]
        if missing:
            raise FileNotFoundError(f'cannot ship the configs: {", ".join(missing)} missing')
        return sources

    def _copy_into(self, mim: Path) -> None:
        if mim.is_symlink() or mim.is_file():
            mim.unlink()
        shutil.rmtree(mim, ignore_errors=True)  # no file left from an older build
        mim.mkdir(parents=True)
        for src, dst in self._sources().items():
            if src.is_dir():
                shutil.copytree(src, mim / dst, ignore=_ignore)
            else:
                shutil.copyfile(src, mim / dst)

    def _link_into(self, mim: Path) -> None:
        mim.mkdir(parents=True, exist_ok=True)
        for src, dst in self._sources().items():
            target = mim / dst
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
            try:
                os.symlink(os.path.relpath(src, mim), target)
            except OSError as err:  # e.g. a file system without symlinks
                warnings.warn(
                    f"cannot link {target} to {src} ({err}): 'mmgc::' configs will not "
                    'resolve in this editable install; the tools still find configs/',
                    stacklevel=1,
                )


setup(cmdclass={'build_py': BuildPyWithConfigs})
