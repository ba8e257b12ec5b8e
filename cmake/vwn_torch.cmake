# Finds what vwn's PyTorch integration (examples/pytorch, docs/torch.md) needs: Debian's LibTorch (libtorch-dev) for
# the C++ operators and modules; for the Python module also an interpreter that imports torch (python3-torch), its
# headers (python3-dev) and pybind11 (pybind11-dev). Sets VWN_TORCH_FOUND, VWN_TORCH_CXX_FLAGS and, for Python,
# VWN_TORCH_PYTHON, VWN_PYTHON, VWN_TORCH_PYTHON_INCLUDE, VWN_TORCH_PYTHON_SUFFIX, VWN_TORCH_PYTHON_LIBRARY.
# Included by the top-level CMakeLists.txt, so that examples/ and tests/ both see the result.
set(VWN_TORCH_FOUND OFF)
set(VWN_TORCH_PYTHON OFF)
if(VWN_TORCH AND NOT VWN_SANITIZE)
  find_package(Torch CONFIG QUIET)
  if(Torch_FOUND)
    set(VWN_TORCH_FOUND ON)
    # TORCH_CXX_FLAGS: the C++ ABI LibTorch was built with (-D_GLIBCXX_USE_CXX11_ABI=...).
    separate_arguments(VWN_TORCH_CXX_FLAGS UNIX_COMMAND "${TORCH_CXX_FLAGS}")
    # The interpreter (-DVWN_PYTHON=... chooses it): an active virtual environment's first (a venv made with
    # --system-site-packages sees Debian's torch), then Debian's (python3-torch installs into it), then python3 on
    # PATH. It must import torch.
    if(DEFINED ENV{VIRTUAL_ENV})
      find_program(VWN_PYTHON NAMES python3 PATHS "$ENV{VIRTUAL_ENV}/bin" NO_DEFAULT_PATH)
    endif()
    find_program(VWN_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
    if(NOT VWN_PYTHON)
      find_program(VWN_PYTHON NAMES python3)
    endif()
    if(VWN_PYTHON)
      execute_process(
        COMMAND ${VWN_PYTHON} -c "import sysconfig, torch, os; print(sysconfig.get_paths()['include']); print(sysconfig.get_config_var('EXT_SUFFIX')); print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"
        OUTPUT_VARIABLE _vwn_py OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _vwn_py_rc ERROR_QUIET)
      if(_vwn_py_rc EQUAL 0)
        string(REPLACE "\n" ";" _vwn_py "${_vwn_py}")
        list(GET _vwn_py 0 VWN_TORCH_PYTHON_INCLUDE)
        list(GET _vwn_py 1 VWN_TORCH_PYTHON_SUFFIX)
        list(GET _vwn_py 2 _vwn_torch_lib)
        find_library(VWN_TORCH_PYTHON_LIBRARY torch_python PATHS ${TORCH_INSTALL_PREFIX}/lib ${_vwn_torch_lib})
        find_path(VWN_PYBIND11_INCLUDE pybind11/pybind11.h)
        if(EXISTS "${VWN_TORCH_PYTHON_INCLUDE}/Python.h" AND VWN_TORCH_PYTHON_LIBRARY AND VWN_PYBIND11_INCLUDE)
          set(VWN_TORCH_PYTHON ON)
        endif()
      endif()
    endif()
    if(VWN_TORCH_PYTHON)
      message(STATUS "vwn: PyTorch integration: LibTorch ${Torch_VERSION}, Python module for ${VWN_PYTHON}")
    else()
      message(STATUS "vwn: PyTorch integration: LibTorch ${Torch_VERSION}, no Python module (needs python3-torch, "
                     "python3-dev and pybind11-dev)")
    endif()
  else()
    message(STATUS "vwn: LibTorch not found (libtorch-dev): no PyTorch integration")
  endif()
endif()
