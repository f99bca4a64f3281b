"""mkdocs hook: serve the benchmark plots in ``benchmarks/results`` as ``results/*.png``.

The plots live beside the benchmark JSON that produced them; the docs link to them as
``results/<name>.png`` instead of keeping a second copy inside ``docs/``.
"""

from pathlib import Path

from mkdocs.structure.files import File


def on_files(files, config):
    root = Path(config["config_file_path"]).parent / "benchmarks"
    for png in sorted((root / "results").rglob("*.png")):
        files.append(File(png.relative_to(root).as_posix(), src_dir=str(root),
                          dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
