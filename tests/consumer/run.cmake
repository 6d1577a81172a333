# SPDX-License-Identifier: BSD-2-Clause
# The install test (ctest install_consumer): install the build into a scratch prefix, then build
# tests/consumer/main.c against it with pkg-config (shared and static) and with
# find_package(atscale) (both targets), and run every program. The same source is also built as
# strict ISO C11 with gcc and clang and as C++17 with g++ and clang++ (-Wall -Wextra -Wpedantic
# -Werror): every public header must compile in every mode.
set(prefix ${BINARY_DIR}/consumer-prefix)
set(work ${BINARY_DIR}/consumer-work)
file(REMOVE_RECURSE ${prefix} ${work})
file(MAKE_DIRECTORY ${work})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed: ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${prefix})
foreach(f include/atscale/atscale.h include/atscale/error.h ${LIBDIR}/pkgconfig/atscale.pc ${LIBDIR}/libatscale.a
          ${LIBDIR}/cmake/atscale/atscaleConfig.cmake)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "not installed: ${f}")
  endif()
endforeach()
file(GLOB sonames ${prefix}/${LIBDIR}/libatscale.so.*)
if(NOT sonames)
  message(FATAL_ERROR "no versioned shared library installed")
endif()

# pkg-config, shared then static.
set(ENV{PKG_CONFIG_PATH} ${prefix}/${LIBDIR}/pkgconfig)
execute_process(COMMAND pkg-config --cflags --libs atscale OUTPUT_VARIABLE flags OUTPUT_STRIP_TRAILING_WHITESPACE
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config cannot find the installed atscale.pc")
endif()
execute_process(COMMAND pkg-config --static --cflags --libs atscale OUTPUT_VARIABLE sflags
                OUTPUT_STRIP_TRAILING_WHITESPACE)
separate_arguments(flags UNIX_COMMAND "${flags}")
separate_arguments(sflags UNIX_COMMAND "${sflags}")
run(${C_COMPILER} ${SOURCE_DIR}/tests/consumer/main.c -o ${work}/pc_shared ${flags} -Wl,-rpath,${prefix}/${LIBDIR})
run(${work}/pc_shared)
run(${C_COMPILER} ${SOURCE_DIR}/tests/consumer/main.c -o ${work}/pc_static -static-libgcc
    -Wl,-Bstatic -latscale -Wl,-Bdynamic ${sflags})
run(${work}/pc_static)

# Every compiler mode: strict C11 with gcc and clang, C++17 with g++ and clang++.
set(strict -Wall -Wextra -Wpedantic -Werror)
foreach(cc gcc clang g++ clang++)
  find_program(ATS_CC_${cc} NAMES ${cc})
  if(NOT ATS_CC_${cc})
    message(FATAL_ERROR "the install test builds the consumer with ${cc}, which is not installed")
  endif()
  if(cc MATCHES "\\+\\+$")
    set(mode -std=c++17 ${strict} -x c++ ${SOURCE_DIR}/tests/consumer/main.c -x none)
  else()
    set(mode -std=c11 ${strict} ${SOURCE_DIR}/tests/consumer/main.c)
  endif()
  string(MAKE_C_IDENTIFIER ${cc} id)
  run(${ATS_CC_${cc}} ${mode} -o ${work}/strict_${id} ${flags} -Wl,-rpath,${prefix}/${LIBDIR})
  run(${work}/strict_${id})
endforeach()

# find_package(atscale).
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${work}/cmake -DCMAKE_PREFIX_PATH=${prefix}
    -DCMAKE_C_COMPILER=${C_COMPILER} -DCMAKE_BUILD_RPATH=${prefix}/${LIBDIR})
run(${CMAKE_COMMAND} --build ${work}/cmake)
run(${work}/cmake/consumer_shared)
run(${work}/cmake/consumer_static)
run(${work}/cmake/consumer_rdynamic)
