"""mmgc's configs as an installed package ships them: the ``mmgc::`` scope.

OpenMMLab packages ship their configs inside the package, under
``<package>/.mim/configs`` (with ``.mim/model-index.yml``), and MMEngine's
config loader resolves a base ``'<scope>::<folder>/<file>.py'`` there, for the
scopes listed in its table ``mmengine.config.utils.MODULE2PACKAGE``. mmgc's
build does the same: ``setup.py`` copies the repository's ``configs/`` and
``model-index.yml`` into ``mmgc/.mim/`` of the wheel (an editable install gets
symlinks to them instead), and :func:`register_config_scope`, called by
``import mmgc``, adds ``mmgc`` to that table. A user's config elsewhere can
then say::

    _base_ = 'mmgc::mmdet/baselines/mask_rcnn_r50_fpn.py'

as long as ``mmgc`` is imported before the config is loaded (the mmgc tools
do; ``custom_imports`` comes too late, it is read after the bases).
MMEngine 0.10 takes a ``<scope>::`` path only with a folder in it, and every
shipped config is in one (the paper's detection rows in ``configs/mmdet/``:
``'mmgc::mmdet/mask_rcnn_r50_fpn_gc.py'``). The dicts of such a base
get the registry scope ``mmgc``, which :mod:`mmgc.registry` resolves as
the run's codebase's (MMDetection's, MMSegmentation's or MMPretrain's).
"""

from __future__ import annotations

from pathlib import Path

from mmengine.config.utils import MODULE2PACKAGE

__all__ = ['CONFIG_SCOPE', 'configs_root', 'register_config_scope']

#: The scope of mmgc's configs in ``_base_`` paths (``'mmgc::...'``).
CONFIG_SCOPE = 'mmgc'

_PACKAGE = Path(__file__).resolve().parent


def register_config_scope() -> None:
    """Add ``mmgc`` to MMEngine's table of packages that ship configs, so that
    ``Config.fromfile`` resolves ``'mmgc::...'`` bases. An entry already there
    is kept.

    The table maps a scope to what MMEngine's ``get_installed_path`` looks up.
    For a distribution name it answers ``<site-packages>/<name>``, which an
    editable install (PEP 660: only a finder in site-packages) does not have.
    This module's import name is no distribution, so the lookup falls back to
    ``importlib.util.find_spec`` and answers the folder mmgc is imported from,
    for every kind of install: site-packages for a wheel, the checkout for an
    editable install (whose ``mmgc/.mim`` links to ``configs/``).
    """
    MODULE2PACKAGE.setdefault(CONFIG_SCOPE, __name__)


def configs_root() -> Path:
    """The folder of mmgc's configs: ``mmgc/.mim/configs`` of the installed
    package, or the ``configs/`` of the source checkout that ``mmgc`` is
    imported from (before any build made the ``.mim`` folder).

    Returns:
        Path: A folder holding ``metafile.yml`` and the configs.

    Raises:
        FileNotFoundError: If neither folder exists.
    """
    candidates = (_PACKAGE / '.mim' / 'configs', _PACKAGE.parent / 'configs')
    for folder in candidates:
        if (folder / 'metafile.yml').is_file():
            return folder
    raise FileNotFoundError(
        f"mmgc's configs are in neither '{candidates[0]}' nor '{candidates[1]}'; "
        'reinstall mmgc (pip install .) to ship them.'
    )
