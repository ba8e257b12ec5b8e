"""`pip install ./examples/pytorch`: the vwn_torch package, built against the PyTorch of the running Python.

The extension module vwn_torch._C is compiled from the project's sources (the operators and modules of ops.cpp and
python.cpp, the reference transformer's width parts of every compiled shape, the checkpoint reader) with
torch.utils.cpp_extension: no CMake, no download. Offline, with the build requirements from the system:

    python3 -m venv --system-site-packages venv && . venv/bin/activate
    pip install --no-build-isolation --no-index ./examples/pytorch

Settings (environment): VWN_SHAPES="2_3;4_8" compiles only these shapes (default: every shape of VWN_ALL_SHAPES in
include/vwn/core/shapes.hpp); VWN_OPT="-O2" the optimisation level (default -O3); MAX_JOBS the parallel compiles
(with ninja). Needs Eigen 3.4 and nlohmann-json headers (Debian: libeigen3-dev, nlohmann-json3-dev).
"""

import os
import re
import sys

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("vwn_torch: building it needs PyTorch importable by this Python (Debian: python3-torch; in a venv, "
             "create it with --system-site-packages), and pip's --no-build-isolation so that the build sees it")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
EXAMPLES = os.path.join(ROOT, "examples")
INCLUDE = os.path.join(ROOT, "include")
GENERATED = os.path.join(HERE, "build", "generated")


def rel(path):
    """Sources as paths relative to this folder (setuptools wants them so)."""
    return os.path.relpath(path, HERE)


def read_version():
    text = open(os.path.join(INCLUDE, "vwn", "core", "version.hpp")).read()
    found = re.search(r'#define VWN_VERSION_STRING "([^"]+)"', text)
    if not found:
        sys.exit("vwn_torch: cannot read VWN_VERSION_STRING from include/vwn/core/version.hpp")
    return found.group(1)


def all_shapes():
    text = open(os.path.join(INCLUDE, "vwn", "core", "shapes.hpp")).read()
    line = re.search(r"^#define VWN_ALL_SHAPES\(X\)(.*)$", text, re.M)
    if not line:
        sys.exit("vwn_torch: cannot read the VWN_ALL_SHAPES line of include/vwn/core/shapes.hpp")
    return [f"{m}_{n}" for m, n in re.findall(r"X\((\d+), *(\d+)\)", line.group(1))]


def write_if_changed(path, text):
    if os.path.exists(path) and open(path).read() == text:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def generated_sources():
    """The width parts of each compiled shape and scalar type (as examples/transformer/CMakeLists.txt makes them),
    and the header selecting the shapes; returns (sources, macros)."""
    shapes = all_shapes()
    wanted = os.environ.get("VWN_SHAPES", "").replace(",", ";")
    selected = [s for s in wanted.split(";") if s] if wanted else shapes
    for s in selected:
        if s not in shapes:
            sys.exit(f"vwn_torch: VWN_SHAPES: expected shapes of VWN_ALL_SHAPES ({' '.join(shapes)}), got '{s}'")
    selected = [s for s in shapes if s in selected]
    template = open(os.path.join(EXAMPLES, "transformer", "width_parts.cpp.in")).read()
    sources = []
    for s in selected:
        m, n = s.split("_")
        for scalar in ("float", "double"):
            text = template.replace("@VWN_M@", m).replace("@VWN_N@", n).replace("@VWN_SCALAR@", scalar)
            path = os.path.join(GENERATED, f"width_parts_{s}_{scalar}.cpp")
            write_if_changed(path, text)
            sources.append(rel(path))
    macros = []
    if selected != shapes:
        header = os.path.join(GENERATED, "vwn_selected_shapes.hpp")
        pairs = " ".join(f"X({s.replace('_', ', ')})" for s in selected)
        write_if_changed(header, f"#pragma once\n#define VWN_SELECTED_SHAPES(X) {pairs}\n")
        macros.append(("VWN_SHAPES_HEADER", f'"{header}"'))
    return sources, macros


def eigen_include():
    for path in ("/usr/include/eigen3", "/usr/local/include/eigen3"):
        if os.path.exists(os.path.join(path, "Eigen", "Core")):
            return path
    sys.exit("vwn_torch: Eigen 3.4 headers not found in /usr/include/eigen3 (Debian: libeigen3-dev)")


width_sources, macros = generated_sources()
sources = [rel(os.path.join(HERE, f)) for f in ("ops.cpp", "python.cpp")]
sources += [rel(os.path.join(EXAMPLES, "train", f)) for f in ("checkpoint.cpp", "settings.cpp", "values.cpp")]
sources += [rel(os.path.join(EXAMPLES, "transformer", "model.cpp"))]
sources += width_sources
optimisation = os.environ.get("VWN_OPT", "-O3")

setup(
    name="vwn_torch",
    version=read_version(),
    description="Virtual Width Networks' width connections (GHC/DGHC, over-width embeddings, reduce head, MTP "
                "mixer) as PyTorch operators and modules, on vwn's C++ host back end",
    packages=["vwn_torch"],
    package_dir={"vwn_torch": "python/vwn_torch"},
    ext_modules=[
        CppExtension(
            name="vwn_torch._C",
            sources=sources,
            include_dirs=[INCLUDE, EXAMPLES, eigen_include()],
            define_macros=macros + [("VWN_MODEL_SCALAR", "float")],
            extra_compile_args=["-std=c++20", optimisation, "-fopenmp", "-DTORCH_EXTENSION_NAME=_C"],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.9",
    zip_safe=False,
)
