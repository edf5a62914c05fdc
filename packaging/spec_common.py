"""What both bundles collect, shared by the two spec files (PyInstaller runs a spec as a script).

Settings come from the environment, set by build.py:
``AUTOGLM_BUNDLE_ONEFILE=1`` one self-extracting file instead of a folder;
``AUTOGLM_BUNDLE_MODELS=DIR`` a model store folder to ship read-only inside (``--with-model``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from PyInstaller.utils.hooks import collect_data_files, collect_dynamic_libs, collect_submodules

# Big things nothing in the app imports at run time; some are pulled in by optional imports of
# the libraries we do use (huggingface_hub, onnx, tokenizers, numpy's test helpers).
EXCLUDES = [
    "torch", "torchvision", "tensorflow", "jax", "sentence_transformers", "transformers", "scipy", "pandas",
    "matplotlib", "IPython", "jupyter", "notebook", "tkinter", "_tkinter", "pytest", "_pytest", "openai",
    "numba", "llvmlite", "PIL", "cv2", "sklearn", "pygame", "setuptools", "pkg_resources",
]
# Qt modules the desktop app does not use (it needs QtCore, QtGui and QtWidgets).
QT_EXCLUDES = [f"PySide6.{m}" for m in (
    "QtNetwork", "QtQml", "QtQuick", "QtQuickWidgets", "QtQuick3D", "QtPdf", "QtPdfWidgets", "QtSql", "QtTest",
    "QtOpenGL", "QtOpenGLWidgets", "QtDBus", "QtConcurrent", "QtXml", "QtSvg", "QtSvgWidgets", "QtPrintSupport",
    "QtDesigner", "QtHelp", "QtUiTools", "QtMultimedia", "QtWebEngineCore", "QtCharts", "QtDataVisualization")]


def llama_binaries() -> list[tuple[str, str]]:
    """llama.cpp's libraries beside llama_cpp's modules (where it loads them from); a portable
    build's CPU variants (installed into site-packages/bin by its wheel) go there too, which is
    where engine.backends.llama_lib loads them from."""
    import llama_cpp

    binaries = collect_dynamic_libs("llama_cpp")
    portable = Path(llama_cpp.__file__).parent.parent / "bin"
    binaries += [(str(p), "llama_cpp/lib") for p in sorted(portable.glob("libggml*.so*"))]
    return binaries


def onnxruntime_transformers() -> tuple[list[str], list[str]]:
    """onnxruntime's quantizer imports helpers of onnxruntime/transformers as top-level modules
    (``from fusion_utils import ...`` after putting that folder on sys.path): collect them so."""
    import onnxruntime

    folder = Path(onnxruntime.__file__).parent / "transformers"
    return [str(folder)], sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")


ROOT = Path(__file__).resolve().parent.parent


def staged_sources() -> str:
    """The package as installed (engine/ and app/ inside autoglm/), copied to build/: pyproject's
    package-dir maps them so, and PyInstaller follows neither package-dir nor an editable install's
    import hook. On sys.path first, so collecting submodules sees the same tree."""
    stage = ROOT / "build" / "autoglm-src"
    shutil.rmtree(stage, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "src" / "autoglm", stage / "autoglm", ignore=skip)
    for name in ("engine", "app"):
        shutil.copytree(ROOT / name, stage / "autoglm" / name, ignore=skip)
    sys.path.insert(0, str(stage))
    return str(stage)


def inputs(gui: bool) -> dict:
    source = staged_sources()
    ort_path, ort_modules = onnxruntime_transformers()
    # fleets run from a Python install (Ray Serve is hundreds of MB): the bundles leave engine.cluster out
    ours = collect_submodules("autoglm", filter=lambda name: (gui or not name.startswith("autoglm.app"))
                              and not name.startswith("autoglm.engine.cluster"))
    hidden = ort_modules + collect_submodules("onnxruntime.quantization") + ours
    hidden += collect_submodules("pip") + ["uvicorn.lifespan.on", "uvicorn.loops.auto", "uvicorn.protocols.http.auto"]
    datas = collect_data_files("pip")  # pypi: model sources run pip as a child of the bundle
    datas += collect_data_files("magika")  # markitdown (documents) detects file types with magika's model
    models = os.environ.get("AUTOGLM_BUNDLE_MODELS")
    if models:
        datas += [(str(p), str(Path("models") / p.parent.relative_to(models)))
                  for p in Path(models).rglob("*") if p.is_file()]
    excludes = EXCLUDES + ["ray", "autoglm.engine.cluster"] + (QT_EXCLUDES if gui else ["PySide6", "shiboken6",
                                                                                        "autoglm.app"])
    if gui:
        hidden += collect_submodules("autoglm.app")
    return {"hiddenimports": hidden, "datas": datas, "binaries": llama_binaries(), "excludes": excludes,
            "pathex": [source, *ort_path]}


def onefile() -> bool:
    return os.environ.get("AUTOGLM_BUNDLE_ONEFILE") == "1"
