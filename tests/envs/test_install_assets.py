"""setup.sh's LIBERO step: assets linked and config written once, stale ones repaired, errors in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ript.envs import install_assets


@pytest.fixture
def fake_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A libero package folder and an assets package folder under tmp_path, and a config path there."""
    pkg = tmp_path / "site" / "libero" / "libero"
    for sub in ("bddl_files", "init_files"):
        (pkg / sub).mkdir(parents=True)
    src = tmp_path / "assets_pkg" / "assets"
    (src / "scenes").mkdir(parents=True)
    monkeypatch.setattr(install_assets, "libero_package_dir", lambda: pkg)
    monkeypatch.setattr(install_assets, "assets_source_dir", lambda: src)
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path / "cfg"))
    return pkg, src


def test_links_the_assets_and_writes_a_config_that_points_at_them(fake_install: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pkg, src = fake_install
    assert install_assets.main() == 0
    link = pkg / "assets"
    assert link.is_symlink() and link.resolve() == src.resolve()
    cfg = yaml.safe_load(install_assets.config_file().read_text())
    assert cfg["bddl_files"] == str(pkg / "bddl_files") and cfg["init_states"] == str(pkg / "init_files")
    assert cfg["assets"] == str(link) and cfg["benchmark_root"] == str(pkg)
    assert "LIBERO ready" in capsys.readouterr().out


def test_a_valid_config_is_kept_and_a_stale_one_rewritten(fake_install: tuple[Path, Path]) -> None:
    pkg, _ = fake_install
    install_assets.ensure_libero_ready()
    cfg = install_assets.config_file()
    cfg.write_text(cfg.read_text() + "# kept\n")
    install_assets.ensure_libero_ready()  # a second run (setup.sh is re-runnable) changes nothing
    assert cfg.read_text().endswith("# kept\n")
    cfg.write_text(yaml.safe_dump({"bddl_files": "/old/venv/bddl_files", "init_states": "/old", "assets": "/old"}))
    install_assets.ensure_libero_ready()  # written for another install: rewritten for this one
    assert yaml.safe_load(cfg.read_text())["bddl_files"] == str(pkg / "bddl_files")
    cfg.write_text("{unclosed: [")  # unreadable YAML is rewritten too, not an error
    install_assets.ensure_libero_ready()
    assert yaml.safe_load(cfg.read_text())["init_states"] == str(pkg / "init_files")


def test_a_dangling_link_from_an_older_install_is_replaced(fake_install: tuple[Path, Path], tmp_path: Path) -> None:
    pkg, src = fake_install
    (pkg / "assets").symlink_to(tmp_path / "gone", target_is_directory=True)
    install_assets.ensure_libero_ready()
    assert (pkg / "assets").resolve() == src.resolve()


def test_incomplete_assets_fail_with_one_line(fake_install: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, src = fake_install
    (src / "scenes").rmdir()
    assert install_assets.main() == 1
    err = capsys.readouterr().err
    assert err.startswith("error: LIBERO assets at") and "incomplete" in err and err.count("\n") == 1
    assert not install_assets.config_file().exists()


def test_the_real_packages_are_found_and_missing_ones_name_the_setup_step(monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = install_assets.libero_package_dir()
    assert pkg.parts[-2:] == ("libero", "libero") and (pkg / "bddl_files").is_dir()
    assert (install_assets.assets_source_dir() / "scenes").is_dir()
    monkeypatch.setattr(install_assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="hf-libero is not installed: run ./setup.sh"):
        install_assets.libero_package_dir()
    with pytest.raises(RuntimeError, match="LIBERO assets missing: run ./setup.sh"):
        install_assets.assets_source_dir()
