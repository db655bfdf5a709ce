/* The greedy mixed-precision allocation on cases worked by hand, the export's code bytes it
 * budgets with, and a budget below the smallest reachable size refused. */
#include <string.h>

#include "../../passes/passes.h"
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
    /* five ternary codes a byte, eight 3-bit codes in three bytes, two 4-bit codes a byte;
     * 5 bits: three codes in two bytes would need padding (1000 = 3 * 333 + 1) and cost 668
     * bytes and two nodes, four in three bytes divide 1000 (750); four 6-bit codes in three
     * bytes; 8 bits one a byte; float 4 */
    QT_CHECK(qt_mixed_bytes(1000, 2) == 200);
    QT_CHECK(qt_mixed_bytes(1000, 3) == 375);
    QT_CHECK(qt_mixed_bytes(1000, 4) == 500);
    QT_CHECK(qt_mixed_bytes(1000, 5) == 750);
    QT_CHECK(qt_mixed_bytes(1000, 6) == 750);
    QT_CHECK(qt_mixed_bytes(1000, 8) == 1000);
    QT_CHECK(qt_mixed_bytes(1000, 32) == 4000);
    /* the export's layouts: 1001 3-bit codes (7 * 11 * 13): groups of seven in three bytes
     * (143 groups, 429 bytes) beat padding groups of eight (126 groups, 378 bytes and about
     * 100 for the nodes); 8001 (= 7 * 1143): padding pays (1001 groups of eight, 3003 bytes
     * against 3429) */
    struct qt_code_layout lay;
    QT_CHECK(qt_export_code_bytes(7, 1001, &lay) == 429);
    QT_CHECK(lay.group == 7 && lay.group_bytes == 3 && !lay.padded);
    QT_CHECK(qt_export_code_bytes(7, 8001, &lay) == 3003);
    QT_CHECK(lay.group == 8 && lay.group_bytes == 3 && lay.padded);
    /* ternary: five codes a byte, one-byte groups on a tie with ten codes in two bytes */
    QT_CHECK(qt_export_code_bytes(3, 1000, &lay) == 200);
    QT_CHECK(lay.group == 5 && lay.group_bytes == 1 && !lay.padded);
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
    /* 700 bytes (2, 3, 4 bits: 200, 375, 500 bytes a layer): from 1000, B to 2 bits saves
     * 300 for 0.1 (0.00033 a byte), B to 3 125 for 0.05 (0.0004), A 300 for 0.9 or 125 for
     * 0.4. A 4, B 2; B cannot go back up to 3 (875 bytes). */
    two_layers(l, &r, &c);
    c.budget_bytes = 700;
    QT_CHECK(qt_mixed_allocate(&r, &c, &e) == 0);
    QT_CHECK(c.choices[l[0].choice] == 4 && c.choices[l[1].choice] == 2 && r.bytes == 700);
    /* 950 bytes: the same step, then B back up to 3 bits fits (875; at 4 it would be 1000). */
    two_layers(l, &r, &c);
    c.budget_bytes = 950;
    QT_CHECK(qt_mixed_allocate(&r, &c, &e) == 0);
    QT_CHECK(c.choices[l[0].choice] == 4 && c.choices[l[1].choice] == 3 && r.bytes == 875);
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
