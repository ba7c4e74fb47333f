// Runs every TEST_P(Conformance, ...) once per backend under test.
#include "fixture.hpp"

namespace dltest {
INSTANTIATE_TEST_SUITE_P(AllBackends, Conformance, ::testing::ValuesIn(backend_names()), backend_test_name);
INSTANTIATE_TEST_SUITE_P(ServerBackends, ServerConformance, ::testing::ValuesIn(server_backend_names()),
                         backend_test_name);
}
