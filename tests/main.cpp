#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "tests/test_util.h"

namespace dg::test {
unsigned g_skipped = 0;

// Listens to doctest's run and prints the one line CI reads: "tests: N passed, N failed".
struct CountingListener : doctest::IReporter {
  explicit CountingListener(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& st) override {
    const unsigned failed = st.numTestCasesFailed, skipped = g_skipped;
    const unsigned passed = st.numTestCasesPassingFilters - failed - skipped;
    std::printf("tests: %u passed, %u failed, %u skipped\n", passed, failed, skipped);
  }
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("dg_counts", 1, CountingListener);
}  // namespace dg::test

int main(int argc, char** argv) {
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
