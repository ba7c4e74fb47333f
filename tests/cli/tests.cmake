# CLI tests: the built `distrlock` binary run as real processes, against the embedded default database and
# against every server backend in dltest::backend_names().
if(DISTRLOCK_BUILD_TOOLS AND TARGET distrlock-cli)
  find_package(nlohmann_json 3 REQUIRED)
  add_executable(cli_tests cli/cli_test.cpp)
  target_link_libraries(cli_tests PRIVATE test_support GTest::gtest_main nlohmann_json::nlohmann_json distrlock_warnings)
  target_compile_definitions(cli_tests PRIVATE DISTRLOCK_CLI="$<TARGET_FILE:distrlock-cli>")
  add_dependencies(cli_tests distrlock-cli)
  if(TARGET distrlock-full)  # `distrlock` is the embedded-only build and execs distrlock-full for servers
    target_compile_definitions(cli_tests PRIVATE DISTRLOCK_CLI_SPLIT)
  endif()
  gtest_discover_tests(cli_tests TEST_PREFIX "cli." DISCOVERY_TIMEOUT 30
                       PROPERTIES TIMEOUT 120 RESOURCE_LOCK database)
endif()

# The pkg-config file, as the build writes it before install (the prefix is filled in at install time).
if(DISTRLOCK_WITH_POSTGRES AND DISTRLOCK_WITH_SQLITE AND DISTRLOCK_WITH_MYSQL)
  get_target_property(distrlock_library_type distrlock TYPE)
  set(distrlock_is_static OFF)
  if(distrlock_library_type STREQUAL "STATIC_LIBRARY")
    set(distrlock_is_static ON)
  endif()
  add_test(NAME cli.pkg_config_lists_the_client_libraries_as_private_requirements
           COMMAND ${CMAKE_COMMAND} -DPC=${PROJECT_BINARY_DIR}/distrlock.pc.in -DSTATIC=${distrlock_is_static}
                   -P ${CMAKE_CURRENT_LIST_DIR}/pc_check.cmake)
endif()
