/* Tests of the test harness itself: data locations come from tests/paths.conf, and a missing
 * folder skips a test only outside CI (with CI=true it fails the test). */
#include <stdlib.h>
#include <string.h>

#include "harness.h"

QT_TEST(harness_missing_data_fails_under_ci)
{
    char out[1300], want[1300], why[1400];
    QT_CHECK(qt_test_data_path("fashion-mnist") && qt_test_data_path("onnx-testdata") &&
             qt_test_data_path("shared") && !qt_test_data_path("no-such-key"));
    const char *old = getenv("CI");
    char *saved = old ? strdup(old) : NULL;
    setenv("CI", "true", 1);
    const int ci_missing = qt_test_data_find(out, sizeof out, "shared", "no/such/file.bin", why,
                                             sizeof why);
    const int ci_unknown = qt_test_data_find(out, sizeof out, "no-such-key", "", why, sizeof why);
    setenv("CI", "false", 1);
    const int local_missing = qt_test_data_find(out, sizeof out, "shared", "no/such/file.bin",
                                                why, sizeof why);
    if (saved) {
        setenv("CI", saved, 1);
        free(saved);
    } else {
        unsetenv("CI");
    }
    QT_CHECK(ci_missing == 1 && ci_unknown == 1 && local_missing == QT_SKIP);
    snprintf(want, sizeof want, "%s/no/such/file.bin", qt_test_data_path("shared"));
    QT_CHECK(strcmp(out, want) == 0 && strstr(why, "not found"));
    return 0;
}
