/* Learning-rate schedules against their definitions, and parameter discovery by role. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../graph/builder.h"
#include "../../runtime/params.h"
#include "harness.h"

QT_TEST(params_schedules)
{
    struct qt_schedule s;
    memset(&s, 0, sizeof s);
    s.base_lr = 0.1f;
    s.kind = QT_SCHED_CONST;
    QT_CHECK_NEAR(qt_schedule_lr(&s, 1000), 0.1, 1e-7);
    /* Multistep: x gamma at each milestone reached (PyTorch's MultiStepLR, per step). */
    s.kind = QT_SCHED_MULTISTEP;
    s.gamma = 0.1f;
    s.nmilestones = 2;
    s.milestones[0] = 150;
    s.milestones[1] = 225;
    QT_CHECK_NEAR(qt_schedule_lr(&s, 149), 0.1, 1e-7);
    QT_CHECK_NEAR(qt_schedule_lr(&s, 150), 0.01, 1e-8);
    QT_CHECK_NEAR(qt_schedule_lr(&s, 300), 0.001, 1e-9);
    /* Cosine from base to min over total steps: min + (base - min)(1 + cos(pi t / T)) / 2. */
    s.kind = QT_SCHED_COSINE;
    s.total_steps = 100;
    s.min_lr = 0.001f;
    for (int t = 0; t <= 100; t += 7)
        QT_CHECK_NEAR(qt_schedule_lr(&s, t), 0.001 + 0.099 * 0.5 * (1 + cos(M_PI * t / 100.0)), 1e-6);
    QT_CHECK_NEAR(qt_schedule_lr(&s, 150), 0.001, 1e-7);
    /* Linear warm-up over the first steps, then the cosine over the remaining ones. */
    s.warmup_steps = 10;
    QT_CHECK_NEAR(qt_schedule_lr(&s, 0), 0.01, 1e-7);
    QT_CHECK_NEAR(qt_schedule_lr(&s, 9), 0.1, 1e-7);
    QT_CHECK_NEAR(qt_schedule_lr(&s, 10), 0.1, 1e-7);
    QT_CHECK_NEAR(qt_schedule_lr(&s, 55), 0.001 + 0.099 * 0.5 * (1 + cos(M_PI * 0.5)), 1e-6);
    return 0;
}

QT_TEST(params_found_by_role)
{
    struct qt_graph *g;
    struct qt_error e;
    if (qt_build_resnet(&g, "resnet20", 3, 32, 32, 10, 1, &e)) return qt_test_fail("%s", e.msg);
    struct qt_params ps;
    if (qt_params_find(g, &ps, &e)) {
        qt_graph_free(g);
        return qt_test_fail("%s", e.msg);
    }
    int count[QT_ROLE_COUNT] = {0};
    for (int i = 0; i < ps.n; i++) count[ps.p[i].role]++;
    int state = 0;
    for (int v = 0; v < g->nvalues; v++) state += (g->values[v].flags & QT_V_STATE) != 0;
    int64_t total = ps.total;
    qt_params_free(&ps);
    qt_graph_free(g);
    /* 21 conv + 1 fc weights, the fc bias, 21 BatchNorms x (scale, bias) and x 2 statistics. */
    QT_CHECK(count[QT_ROLE_WEIGHT] == 22 && count[QT_ROLE_BIAS] == 1 && count[QT_ROLE_BN] == 42);
    QT_CHECK(state == 42);
    QT_CHECK(total == 272474);
    return 0;
}
