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

# The README's C++ example, run as it is written (only its database URL replaced by a scratch SQLite file), with
# "invoice-42" already held by someone else: the busy path must not end the program.
if(DISTRLOCK_WITH_SQLITE)
  set(readme ${PROJECT_SOURCE_DIR}/README.md)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${readme})
  file(READ ${readme} readme_text)
  string(FIND "${readme_text}" "```cpp\n" block_start)
  if(block_start EQUAL -1)
    message(FATAL_ERROR "README.md has no C++ example")
  endif()
  math(EXPR block_start "${block_start} + 7")
  string(SUBSTRING "${readme_text}" ${block_start} -1 readme_text)
  string(FIND "${readme_text}" "\n```" block_end)
  string(SUBSTRING "${readme_text}" 0 ${block_end} example)
  string(REPLACE "\"postgresql://app@db/app\"" "db_url" example "${example}")
  # Its #include lines go to the top of the file; the rest (a using-directive too) runs inside main().
  string(REGEX MATCHALL "#include[^\n]*" example_head "${example}")
  string(REGEX REPLACE "#include[^\n]*\n" "" example_body "${example}")
  string(REPLACE ";" "\n" example_head "${example_head}")  # #include lines have no ';' of their own
  file(READ ${CMAKE_CURRENT_LIST_DIR}/readme_example.cpp.in example_template)
  string(REPLACE "@EXAMPLE_HEAD@" "${example_head}" example_source "${example_template}")
  string(REPLACE "@EXAMPLE_BODY@" "${example_body}" example_source "${example_source}")
  file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/readme_example.cpp CONTENT "${example_source}")
  add_executable(readme_example ${CMAKE_CURRENT_BINARY_DIR}/readme_example.cpp)
  target_link_libraries(readme_example PRIVATE distrlock::distrlock)
  add_test(NAME cli.the_readme_example_runs_to_the_end_when_the_key_is_busy COMMAND readme_example)
endif()
