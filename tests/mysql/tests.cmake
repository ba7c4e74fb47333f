# MySQL/MariaDB-specific tests. Included from tests/CMakeLists.txt.
if(DISTRLOCK_WITH_MYSQL)
  add_executable(mysql_tests ${CMAKE_CURRENT_LIST_DIR}/mysql_test.cpp)
  target_link_libraries(mysql_tests PRIVATE test_support GTest::gtest_main PkgConfig::MariaDB distrlock_warnings)
  gtest_discover_tests(mysql_tests TEST_PREFIX "mysql." DISCOVERY_TIMEOUT 30
                       PROPERTIES TIMEOUT 120 RESOURCE_LOCK database)
endif()
if(DISTRLOCK_WITH_MYSQL)
  # ssl-mode=required against a server that offers no TLS (a relay that takes it away).
  add_executable(mysql_tls_tests ${CMAKE_CURRENT_LIST_DIR}/tls_enforce_test.cpp)
  target_link_libraries(mysql_tls_tests PRIVATE test_support GTest::gtest_main distrlock_warnings)
  gtest_discover_tests(mysql_tls_tests TEST_PREFIX "mysql." DISCOVERY_TIMEOUT 30
                       PROPERTIES TIMEOUT 120 RESOURCE_LOCK database)
endif()
if(DISTRLOCK_WITH_MYSQL)
  # Failover (issue 12): a primary and a GTID replica from `scripts/services start mariadb-pair`, rebuilt by each
  # test. RESOURCE_LOCK database, as every server test: the tests share the pair, which each of them destroys,
  # and rebuilding it loads the machine's disk.
  add_executable(mysql_replica_tests ${CMAKE_CURRENT_LIST_DIR}/replica_test.cpp)
  target_link_libraries(mysql_replica_tests PRIVATE test_support GTest::gtest_main distrlock_warnings)
  gtest_discover_tests(mysql_replica_tests TEST_PREFIX "mysql." DISCOVERY_TIMEOUT 30
                       PROPERTIES TIMEOUT 120 RESOURCE_LOCK database)
endif()
