/* The greedy mixed-precision allocation on cases worked by hand, the export's code bytes it
 * budgets with, and a budget below the smallest reachable size refused. */
#include <string.h>

#include "../../runtime/mixed.h"
#include "harness.h"

/* Two layers of 1000 weights; A suffers from low bits (loss 1.0 / 0.5 / 0.1 at 2 / 3 / 4 bits),
 * B hardly (0.2 / 0.15 / 0.1). */
static void two_layers(struct qt_mixed_layer l[2], struct qt_mixed_report *r,
                       struct qt_mixed_config *c)
{
    memset(l, 0, 2 * sizeof *l);
    memset(r, 0, sizeof *r);
    memset(c, 0, sizeof *c);
    const double la[3] = {1.0, 0.5, 0.1}, lb[3] = {0.2, 0.15, 0.1};
    for (int k = 0; k < 3; k++) {
        l[0].loss[k] = la[k];
        l[1].loss[k] = lb[k];
        c->choices[k] = k + 2;
    }
    l[0].count = l[1].count = 1000;
    c->nchoices = 3;
    r->layer = l;
    r->n = 2;
}

QT_TEST(mixed_code_bytes)
{
    /* five ternary codes, two 3- or 4-bit codes, one 5- to 8-bit code per byte; float 4 */
    QT_CHECK(qt_mixed_bytes(1000, 2) == 200);
    QT_CHECK(qt_mixed_bytes(1000, 3) == 500);
    QT_CHECK(qt_mixed_bytes(1000, 4) == 500);
    QT_CHECK(qt_mixed_bytes(1000, 5) == 1000);
    QT_CHECK(qt_mixed_bytes(1000, 8) == 1000);
    QT_CHECK(qt_mixed_bytes(1000, 32) == 4000);
    return 0;
}

QT_TEST(mixed_allocate_by_hand)
{
    struct qt_mixed_layer l[2];
    struct qt_mixed_report r;
    struct qt_mixed_config c;
    struct qt_error e;
    /* Average 3 bits: 8000 bits must drop to 6000. B at 2 bits costs 0.1 for 2000 bits (as
     * cheap per bit as B at 3, and saves more); A at 3 costs 0.4 for 1000. A 4, B 2. */
    two_layers(l, &r, &c);
    c.avg_bits = 3;
    QT_CHECK(qt_mixed_allocate(&r, &c, &e) == 0);
    QT_CHECK(c.choices[l[0].choice] == 4 && c.choices[l[1].choice] == 2);
    QT_CHECK(r.bit_count == 6000 && r.count == 2000 && r.bytes == 700);
    /* 700 bytes: from 1000, B to 2 bits saves 300 for 0.1, A 300 for 0.9; 3 bits saves no
     * byte over 4. A 4, B 2; B cannot go back up to 3 (1000 bytes). */
    two_layers(l, &r, &c);
    c.budget_bytes = 700;
    QT_CHECK(qt_mixed_allocate(&r, &c, &e) == 0);
    QT_CHECK(c.choices[l[0].choice] == 4 && c.choices[l[1].choice] == 2 && r.bytes == 700);
    /* 950 bytes: the same step, then raising fails (B at 3 or 4 takes 1000). */
    two_layers(l, &r, &c);
    c.budget_bytes = 950;
    QT_CHECK(qt_mixed_allocate(&r, &c, &e) == 0);
    QT_CHECK(r.bytes == 700);
    /* Average 3.5 bits: 7000. B to 3 (0.05 per 1000) is the cheapest step that fits. */
    two_layers(l, &r, &c);
    c.avg_bits = 3.5;
    QT_CHECK(qt_mixed_allocate(&r, &c, &e) == 0);
    QT_CHECK(c.choices[l[0].choice] == 4 && c.choices[l[1].choice] == 3 && r.bit_count == 7000);
    /* A fixed 8-bit layer counts but is not moved. */
    two_layers(l, &r, &c);
    l[0].fixed_bits = 8;
    c.budget_bytes = 1200;
    QT_CHECK(qt_mixed_allocate(&r, &c, &e) == 0);
    QT_CHECK(c.choices[l[1].choice] == 2 && r.bytes == 1200);
    /* 300 bytes: both at 2 bits take 400. */
    two_layers(l, &r, &c);
    c.budget_bytes = 300;
    QT_CHECK(qt_mixed_allocate(&r, &c, &e) != 0);
    QT_CHECK(strstr(e.msg, "400 bytes") != NULL);
    return 0;
}
