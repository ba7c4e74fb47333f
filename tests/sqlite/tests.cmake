# SQLite-specific tests. Included from tests/CMakeLists.txt.
if(DISTRLOCK_WITH_SQLITE)
  add_executable(sqlite_probe ${CMAKE_CURRENT_LIST_DIR}/sqlite_probe.cpp)
  target_link_libraries(sqlite_probe PRIVATE distrlock::distrlock distrlock_warnings)

  add_executable(sqlite_tests ${CMAKE_CURRENT_LIST_DIR}/sqlite_test.cpp)
  target_link_libraries(sqlite_tests PRIVATE test_support GTest::gtest_main SQLite::SQLite3 distrlock_warnings)
  target_compile_definitions(sqlite_tests PRIVATE DISTRLOCK_SQLITE_PROBE="$<TARGET_FILE:sqlite_probe>")
  add_dependencies(sqlite_tests sqlite_probe)
  gtest_discover_tests(sqlite_tests TEST_PREFIX "sqlite." DISCOVERY_TIMEOUT 30
                       PROPERTIES TIMEOUT 120 RESOURCE_LOCK database)
endif()
