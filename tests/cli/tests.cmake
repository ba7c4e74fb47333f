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
