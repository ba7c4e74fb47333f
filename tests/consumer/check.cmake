# Installs a built distrlock into a scratch prefix, then builds and runs tests/consumer against it twice:
# once through find_package(distrlock) and once through pkg-config. Fails on the first step that fails,
# printing that step's command and output.
#
#   cmake -DBUILD_DIR=<distrlock build dir> -DWORK_DIR=<scratch dir, emptied first> -DSOURCE_DIR=<repo root>
#         [-DCONFIG=<build type>] [-DCXX=<compiler>] [-DCXX_FLAGS=<flags>] [-DLINKER_FLAGS=<flags>]
#         [-DGENERATOR=<cmake generator>] [-DBUILD_TARGETS=<target>|...] -P tests/consumer/check.cmake
#
# BUILD_TARGETS, when given, are built in BUILD_DIR first: every target that has install rules, so that
# nothing stale or missing is installed.
#
# CONFIG, CXX, CXX_FLAGS and LINKER_FLAGS should match the distrlock build (a sanitizer build installs an
# instrumented static library, which only links into a consumer built with the same flags). CXX defaults to
# $ENV{CXX}, then c++. GENERATOR defaults to CMake's default.
cmake_minimum_required(VERSION 3.25)

foreach(var IN ITEMS BUILD_DIR WORK_DIR SOURCE_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check.cmake: pass -D${var}=<path> (see the header of this file)")
  endif()
  cmake_path(ABSOLUTE_PATH ${var} NORMALIZE)
endforeach()

set(prefix "${WORK_DIR}/prefix")
set(consumer_source "${SOURCE_DIR}/tests/consumer")
set(consumer_build "${WORK_DIR}/consumer-build")

if(NOT DEFINED CXX OR CXX STREQUAL "")
  if(DEFINED ENV{CXX} AND NOT "$ENV{CXX}" STREQUAL "")
    set(CXX "$ENV{CXX}")
  else()
    find_program(CXX NAMES c++ g++ clang++ REQUIRED)
  endif()
endif()
separate_arguments(cxx_flags UNIX_COMMAND "${CXX_FLAGS}")
separate_arguments(linker_flags UNIX_COMMAND "${LINKER_FLAGS}")

# run_step(<name> [OUTPUT_VARIABLE <var>] COMMAND <command>...): runs the command, fails with its output.
function(run_step name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "OUTPUT_VARIABLE" "COMMAND")
  list(JOIN arg_COMMAND " " shown)
  message(STATUS "[${name}] ${shown}")
  execute_process(COMMAND ${arg_COMMAND} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT result STREQUAL "0")
    message(FATAL_ERROR "step \"${name}\" failed (${result}):\n  ${shown}\n${out}")
  endif()
  if(arg_OUTPUT_VARIABLE)
    string(STRIP "${out}" out)
    set(${arg_OUTPUT_VARIABLE} "${out}" PARENT_SCOPE)
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(config_args "")
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()

# ---- (a) install ----------------------------------------------------------------------------------------
if(BUILD_TARGETS)
  string(REPLACE "|" ";" BUILD_TARGETS "${BUILD_TARGETS}")
  run_step(build-installed-targets COMMAND "${CMAKE_COMMAND}" --build "${BUILD_DIR}" --target ${BUILD_TARGETS}
                                           ${config_args})
endif()
run_step(install COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${prefix}" ${config_args})

# ---- (b) find_package(distrlock) consumer ---------------------------------------------------------------
set(configure_args
    -S "${consumer_source}" -B "${consumer_build}"
    "-DCMAKE_PREFIX_PATH=${prefix}"
    "-DCMAKE_CXX_COMPILER=${CXX}"
    "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
    "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}"
    # Only the package we just installed may satisfy find_package(distrlock).
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(GENERATOR)
  list(APPEND configure_args -G "${GENERATOR}")
endif()
if(CONFIG)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${CONFIG}")
endif()
run_step(configure-consumer COMMAND "${CMAKE_COMMAND}" ${configure_args})

# A stale distrlock under /usr/local would also satisfy find_package; make sure ours was the one found.
file(STRINGS "${consumer_build}/CMakeCache.txt" found_dir REGEX "^distrlock_DIR:")
string(REGEX REPLACE "^[^=]*=" "" found_dir "${found_dir}")
cmake_path(IS_PREFIX prefix "${found_dir}" NORMALIZE found_in_prefix)
if(NOT found_in_prefix)
  message(FATAL_ERROR "find_package(distrlock) found \"${found_dir}\", not the package installed in ${prefix}")
endif()

run_step(build-consumer COMMAND "${CMAKE_COMMAND}" --build "${consumer_build}" ${config_args})

# ---- (c) run it -----------------------------------------------------------------------------------------
set(consumer_exe "${consumer_build}/distrlock_consumer")
if(CONFIG AND EXISTS "${consumer_build}/${CONFIG}/distrlock_consumer")  # multi-config generators
  set(consumer_exe "${consumer_build}/${CONFIG}/distrlock_consumer")
endif()
run_step(run-consumer COMMAND "${consumer_exe}")

# ---- (d) pkg-config consumer ----------------------------------------------------------------------------
find_program(PKG_CONFIG NAMES pkg-config pkgconf REQUIRED)
file(GLOB_RECURSE pc_files "${prefix}/*/distrlock.pc")
if(NOT pc_files)
  message(FATAL_ERROR "distrlock.pc was not installed under ${prefix}")
endif()
list(GET pc_files 0 pc_file)
cmake_path(GET pc_file PARENT_PATH pc_dir)
# PKG_CONFIG_PATH is searched before the system directories, which must stay visible for libpq.pc.
set(ENV{PKG_CONFIG_PATH} "${pc_dir}")

run_step(pkg-config-version COMMAND "${PKG_CONFIG}" --print-errors "distrlock >= 0.1")

# Plain --libs, as users type it, must link: a static libdistrlock.a lists libpq in Requires, not in
# Requires.private, because `--static` would also demand libpq's own static dependencies. The rpath finds
# a shared libdistrlock.so at run time.
run_step(pkg-config-libdir OUTPUT_VARIABLE pc_libdir COMMAND "${PKG_CONFIG}" --variable=libdir distrlock)
file(GLOB libs "${pc_libdir}/libdistrlock.*")
if(NOT libs)
  message(FATAL_ERROR "distrlock.pc says libdir=${pc_libdir}, which holds no libdistrlock")
endif()
run_step(pkg-config-flags OUTPUT_VARIABLE pc_flags COMMAND "${PKG_CONFIG}" --print-errors --cflags --libs distrlock)
separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
set(pkgconfig_exe "${WORK_DIR}/pkgconfig-consumer")
run_step(build-pkgconfig-consumer
         COMMAND "${CXX}" ${cxx_flags} "${consumer_source}/main.cpp" -o "${pkgconfig_exe}" ${pc_flags}
                 ${linker_flags} "-Wl,-rpath,${pc_libdir}")
run_step(run-pkgconfig-consumer COMMAND "${pkgconfig_exe}")

message(STATUS "the installed package builds and runs a consumer through find_package and pkg-config")
